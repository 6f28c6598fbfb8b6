//! DET curve (miss against false-alarm rate on normal-deviate axes) as a PNG, and its
//! calibration cousin: false alerts per genuine call-hour against the enter threshold.

use std::path::Path;

use plotters::prelude::*;

use super::metrics::ErrorRates;

const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Probability range shown on both axes.
const LO: f64 = 0.001;
const HI: f64 = 0.6;

#[allow(clippy::excessive_precision)] // published coefficients, kept verbatim
/// Inverse of the standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9).
pub fn probit(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e+01,
        2.209460984245205e+02,
        -2.759285104469687e+02,
        1.383577518672690e+02,
        -3.066479806614716e+01,
        2.506628277459239e+00,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e+01,
        1.615858368580409e+02,
        -1.556989798598866e+02,
        6.680131188771972e+01,
        -1.328068155288572e+01,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e+00,
        -2.549732539343734e+00,
        4.374664141464968e+00,
        2.938163982698783e+00,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-03,
        3.224671290700398e-01,
        2.445134137142996e+00,
        3.754408661907416e+00,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

fn load_font() -> Result<(), String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let bytes = FONT_PATHS
                .iter()
                .find_map(|p| std::fs::read(p).ok())
                .ok_or("no TrueType font found (install fonts-dejavu-core)")?;
            plotters::style::register_font(
                "sans-serif",
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .map_err(|_| "unreadable font".to_string())
        })
        .clone()
}

/// Draws one DET curve per named set of operating points into a PNG.
pub fn plot_det(
    path: &Path,
    title: &str,
    curves: &[(String, Vec<ErrorRates>)],
) -> Result<(), String> {
    load_font()?;
    let root = BitMapBackend::new(path, (720, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (lo, hi) = (probit(LO), probit(HI));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(lo..hi, lo..hi)
        .map_err(|e| e.to_string())?;
    let ticks = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4];
    let tick_label = |v: &f64| {
        ticks
            .iter()
            .find(|&&t| (probit(t) - v).abs() < 1e-6)
            .map(|t| format!("{}", t * 100.0))
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .x_desc("spoofs accepted (%)")
        .y_desc("genuine callers flagged (%)")
        .x_labels(0)
        .y_labels(0)
        .disable_mesh()
        .draw()
        .map_err(|e| e.to_string())?;
    // Grid and labels at the probability ticks.
    for &t in &ticks {
        let v = probit(t);
        let grid = ShapeStyle::from(&BLACK.mix(0.15)).stroke_width(1);
        chart
            .draw_series([
                PathElement::new(vec![(v, lo), (v, hi)], grid),
                PathElement::new(vec![(lo, v), (hi, v)], grid),
            ])
            .map_err(|e| e.to_string())?;
        let label = tick_label(&v);
        chart
            .draw_series([
                Text::new(label.clone(), (v, lo - 0.12), ("sans-serif", 14)),
                Text::new(label, (lo - 0.35, v), ("sans-serif", 14)),
            ])
            .map_err(|e| e.to_string())?;
    }
    chart
        .draw_series([PathElement::new(vec![(lo, lo), (hi, hi)], BLACK.mix(0.4))])
        .map_err(|e| e.to_string())?;
    for (i, (name, points)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (probit(p.p_fa).clamp(lo, hi), probit(p.p_miss).clamp(lo, hi)))
            .collect();
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// One channel class's false-alert rate against the threshold, and the threshold chosen.
#[derive(Debug, Clone)]
pub struct RateCurve {
    pub name: String,
    /// `(threshold, false alerts per call-hour)`, thresholds ascending.
    pub points: Vec<(f64, f64)>,
    /// `(threshold, false alerts per call-hour at it)`.
    pub chosen: Option<(f64, f64)>,
}

/// Draws false alerts per call-hour (log scale) against the enter threshold, one curve per
/// class, the target as a dashed line and each chosen threshold marked, into a PNG.
pub fn plot_alert_rates(
    path: &Path,
    title: &str,
    curves: &[RateCurve],
    target: f64,
) -> Result<(), String> {
    load_font()?;
    let root = BitMapBackend::new(path, (720, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let rates = || {
        curves
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.1))
            .filter(|r| *r > 0.0 && r.is_finite())
    };
    // Zero alerts cannot sit on a log axis: they are drawn on the floor.
    let floor = rates().fold(target, f64::min) / 4.0;
    let top = rates().fold(target, f64::max) * 4.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..1f64, (floor..top).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("enter threshold (fused p_spoof)")
        .y_desc("false alerts per call-hour")
        .light_line_style(BLACK.mix(0.05))
        .bold_line_style(BLACK.mix(0.15))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, target), (1.0, target)],
            6,
            4,
            BLACK.mix(0.5).stroke_width(1),
        ))
        .map_err(|e| e.to_string())?
        .label(format!("target {target}/h"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    let on_axis = |r: f64| r.max(floor);
    for (i, curve) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = curve.points.iter().map(|&(t, r)| (t, on_axis(r))).collect();
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(curve.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if let Some((t, rate)) = curve.chosen {
            chart
                .draw_series([PathElement::new(
                    vec![(t, floor), (t, top)],
                    color.mix(0.6).stroke_width(1),
                )])
                .map_err(|e| e.to_string())?;
            chart
                .draw_series([
                    Circle::new((t, on_axis(rate)), 6, color.filled()),
                    Circle::new((t, on_axis(rate)), 6, BLACK.stroke_width(1)),
                ])
                .map_err(|e| e.to_string())?;
            chart
                .draw_series([Text::new(
                    format!("{t:.3}"),
                    (t + 0.01, on_axis(rate) * 1.3),
                    ("sans-serif", 14),
                )])
                .map_err(|e| e.to_string())?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// One panel per named series of (x, y) points, stacked in one PNG: what a soak run measured
/// over time (`bench/soak.rs`). `x_desc` names the shared x axis.
pub fn plot_panels(
    path: &Path,
    title: &str,
    x_desc: &str,
    panels: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String> {
    load_font()?;
    let height = 40 + 220 * panels.len().max(1) as u32;
    let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| e.to_string())?;
    let x_max = panels
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(1.0f64, f64::max);
    for (area, (name, points)) in root
        .split_evenly((panels.len().max(1), 1))
        .iter()
        .zip(panels)
    {
        let y_max = points.iter().map(|(_, y)| *y).fold(0.0f64, f64::max);
        let y_top = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, 0.0..y_top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(name.as_str())
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                BLUE.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probit_matches_known_quantiles() {
        assert!(probit(0.5).abs() < 1e-9);
        assert!((probit(0.975) - 1.959964).abs() < 1e-5);
        assert!((probit(0.001) + 3.090232).abs() < 1e-5);
    }
}
