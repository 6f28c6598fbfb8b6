//! Detection quality on labelled sets: the evaluation manifest, EER, minDCF and DET curves;
//! and site calibration of per-class thresholds on a site's own genuine calls.

pub mod calibrate;
mod det;
mod manifest;
mod metrics;

pub use det::{RateCurve, plot_alert_rates, plot_det, plot_panels};
pub use manifest::{Label, Manifest, ManifestEntry, ManifestError};
pub use metrics::{
    DCF_COST_FA, DCF_COST_MISS, DCF_PRIOR_SPOOF, ErrorRates, det_points, eer, min_dcf,
};
