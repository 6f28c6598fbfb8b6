//! Channel classes: a wideband call and an 8 kHz phone call score differently, so each class
//! has its own enter threshold. Adapters classify a call from its source format when they open
//! it; the engine only uses the class to pick the call's parameters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Lowest source rate that counts as wideband.
pub const WIDEBAND_MIN_RATE: u32 = 16_000;

/// The channel a call's audio went through before it reached callguard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelClass {
    /// Source audio at 16 kHz or more, PCM or float.
    Wideband,
    /// G.711 mu-law or A-law, or PCM below 16 kHz.
    NarrowbandG711,
    /// Narrowband audio that went through a lossy low-rate codec upstream (GSM, AMR, Opus).
    NarrowbandLossy,
}

impl ChannelClass {
    pub const ALL: [Self; 3] = [Self::Wideband, Self::NarrowbandG711, Self::NarrowbandLossy];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wideband => "wideband",
            Self::NarrowbandG711 => "narrowband_g711",
            Self::NarrowbandLossy => "narrowband_lossy",
        }
    }

    pub fn is_narrowband(self) -> bool {
        self != Self::Wideband
    }

    /// The class of audio at `sample_rate` Hz: G.711-coded audio is `narrowband_g711`, other
    /// audio below 16 kHz is `narrowband` (the site's `verdict.narrowband_class`), the rest is
    /// wideband.
    pub fn of_source(sample_rate: u32, g711: bool, narrowband: ChannelClass) -> Self {
        if g711 {
            Self::NarrowbandG711
        } else if sample_rate >= WIDEBAND_MIN_RATE {
            Self::Wideband
        } else {
            narrowband
        }
    }
}

impl fmt::Display for ChannelClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChannelClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a channel class (wideband, narrowband_g711, narrowband_lossy)"
                )
            })
    }
}

/// An optional enter threshold (spoof probability) per channel class: the sidecar's
/// `threshold.by_class`, the config's `[verdict.enter_thresholds]`, a calibration file's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassThresholds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wideband: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narrowband_g711: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narrowband_lossy: Option<f32>,
}

impl ClassThresholds {
    pub fn get(&self, class: ChannelClass) -> Option<f32> {
        match class {
            ChannelClass::Wideband => self.wideband,
            ChannelClass::NarrowbandG711 => self.narrowband_g711,
            ChannelClass::NarrowbandLossy => self.narrowband_lossy,
        }
    }

    pub fn set(&mut self, class: ChannelClass, value: Option<f32>) {
        match class {
            ChannelClass::Wideband => self.wideband = value,
            ChannelClass::NarrowbandG711 => self.narrowband_g711 = value,
            ChannelClass::NarrowbandLossy => self.narrowband_lossy = value,
        }
    }

    /// The classes that have a threshold, in [`ChannelClass::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (ChannelClass, f32)> + '_ {
        ChannelClass::ALL
            .into_iter()
            .filter_map(|c| self.get(c).map(|t| (c, t)))
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// `(class, value)` of every threshold that is not a probability strictly inside (0, 1).
    pub fn not_probabilities(&self) -> Vec<(ChannelClass, f32)> {
        self.iter()
            .filter(|&(_, t)| !(t > 0.0 && t < 1.0))
            .collect()
    }
}

/// Where a class's enter threshold came from, highest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdSource {
    /// `[verdict.enter_thresholds].<class>` in the config.
    ConfigClass,
    /// The `[verdict.enter_thresholds]` of `verdict.thresholds_file` (a calibration).
    ThresholdsFile,
    /// `[verdict] enter_threshold`, for every class.
    ConfigAll,
    /// The sidecar's `threshold.by_class.<class>`.
    ModelClass,
    /// The sidecar's `threshold.p_spoof`.
    Model,
}

impl ThresholdSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConfigClass => "verdict.enter_thresholds",
            Self::ThresholdsFile => "verdict.thresholds_file",
            Self::ConfigAll => "verdict.enter_threshold",
            Self::ModelClass => "model threshold.by_class",
            Self::Model => "model threshold.p_spoof",
        }
    }
}

/// A class's enter threshold and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnterThreshold {
    pub p_spoof: f32,
    pub source: ThresholdSource,
}

/// The enter threshold of `class`: `[verdict.enter_thresholds].<class>` >
/// `verdict.thresholds_file` > `[verdict] enter_threshold` > the sidecar's
/// `threshold.by_class.<class>` > the sidecar's `threshold.p_spoof`.
pub fn enter_threshold(
    v: &crate::config::VerdictConfig,
    card: &crate::detect::ModelCard,
    class: ChannelClass,
) -> EnterThreshold {
    let at = |p_spoof, source| EnterThreshold { p_spoof, source };
    if let Some(t) = v.enter_thresholds.get(class) {
        at(t, ThresholdSource::ConfigClass)
    } else if let Some(t) = v.file_thresholds.get(class) {
        at(t, ThresholdSource::ThresholdsFile)
    } else if let Some(t) = v.enter_threshold {
        at(t, ThresholdSource::ConfigAll)
    } else if let Some(t) = card.threshold.by_class.get(class) {
        at(t, ThresholdSource::ModelClass)
    } else {
        at(card.threshold.p_spoof, ThresholdSource::Model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_from_source_format() {
        use ChannelClass::*;
        assert_eq!(
            ChannelClass::of_source(16_000, false, NarrowbandG711),
            Wideband
        );
        assert_eq!(
            ChannelClass::of_source(48_000, false, NarrowbandLossy),
            Wideband
        );
        assert_eq!(
            ChannelClass::of_source(8_000, false, NarrowbandG711),
            NarrowbandG711
        );
        assert_eq!(
            ChannelClass::of_source(8_000, false, NarrowbandLossy),
            NarrowbandLossy
        );
        // G.711 is G.711 whatever the site's upstream default, and at any rate.
        assert_eq!(
            ChannelClass::of_source(8_000, true, NarrowbandLossy),
            NarrowbandG711
        );
        assert_eq!(
            ChannelClass::of_source(16_000, true, NarrowbandG711),
            NarrowbandG711
        );
    }

    fn card(threshold: &str) -> crate::detect::ModelCard {
        serde_json::from_str(&format!(
            r#"{{"name": "m", "version": "1",
                "input": {{"name": "waveform", "sample_rate": 16000, "window_samples": 16000}},
                "output": {{"name": "logit", "kind": "logit"}},
                "threshold": {threshold}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn thresholds_follow_their_precedence() {
        use ChannelClass::*;
        let card = card(r#"{"p_spoof": 0.7, "by_class": {"narrowband_g711": 0.6}}"#);
        let mut v = crate::config::VerdictConfig::default();
        let at = |v: &crate::config::VerdictConfig, c| {
            let t = enter_threshold(v, &card, c);
            (t.p_spoof, t.source)
        };
        assert_eq!(at(&v, Wideband), (0.7, ThresholdSource::Model));
        assert_eq!(at(&v, NarrowbandG711), (0.6, ThresholdSource::ModelClass));
        v.enter_threshold = Some(0.65);
        assert_eq!(at(&v, Wideband), (0.65, ThresholdSource::ConfigAll));
        assert_eq!(at(&v, NarrowbandG711), (0.65, ThresholdSource::ConfigAll));
        v.file_thresholds.narrowband_g711 = Some(0.55);
        assert_eq!(
            at(&v, NarrowbandG711),
            (0.55, ThresholdSource::ThresholdsFile)
        );
        assert_eq!(at(&v, NarrowbandLossy), (0.65, ThresholdSource::ConfigAll));
        v.enter_thresholds.narrowband_g711 = Some(0.52);
        assert_eq!(at(&v, NarrowbandG711), (0.52, ThresholdSource::ConfigClass));
        let p = crate::verdict::FusionParams::from_config(&v, &card, NarrowbandG711, 10);
        assert_eq!((p.enter_threshold, p.exit_threshold), (0.52, 0.3));
        v.enter_thresholds.wideband = Some(0.2);
        let p = crate::verdict::FusionParams::from_config(&v, &card, Wideband, 10);
        assert_eq!(
            (p.channel_class, p.enter_threshold, p.exit_threshold),
            (Wideband, 0.2, 0.2),
            "the exit threshold is at most the class's enter threshold"
        );
    }

    #[test]
    fn names_round_trip() {
        for c in ChannelClass::ALL {
            assert_eq!(c.as_str().parse::<ChannelClass>().unwrap(), c);
            assert_eq!(c.to_string(), c.as_str());
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        assert!("narrowband".parse::<ChannelClass>().is_err());
    }
}
