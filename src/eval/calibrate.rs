//! Site calibration: a bank's own lines differ from any corpus, so a site sets each channel
//! class's enter threshold on its own genuine calls. Each call's *peak* is the highest enter
//! threshold at which the daemon's rule would have alerted on it ([`crate::verdict::alert_peak`]);
//! a class's threshold is the lowest that keeps the false alerts per genuine call-hour within a
//! target.

use crate::verdict::{ChannelClass, WindowScore};

/// Default target: false alerts per genuine call-hour.
pub const DEFAULT_ALERTS_PER_HOUR: f64 = 0.5;
/// Calibrated thresholds stay at or above this unless allowed lower.
pub const HALF: f32 = 0.5;
/// The lowest threshold calibration ever sets (a threshold must be a probability above 0).
pub const LOWEST_THRESHOLD: f32 = 0.01;

const MS_PER_HOUR: f64 = 3_600_000.0;

/// One genuine call, as calibration sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GenuineCall {
    pub channel_class: ChannelClass,
    /// The highest enter threshold at which the call would have alerted (0: never).
    pub peak: f32,
    /// The call's audio, and the part of it that scored windows cover, in ms.
    pub audio_ms: u64,
    pub scored_ms: u64,
}

/// Audio time covered by a timeline's windows (their union), in ms: the scored speech.
pub fn scored_ms(timeline: &[WindowScore]) -> u64 {
    let mut spans: Vec<(u64, u64)> = timeline.iter().map(|w| (w.start_ms, w.end_ms)).collect();
    spans.sort_unstable();
    let mut total = 0;
    let mut open: Option<(u64, u64)> = None;
    for (start, end) in spans {
        match &mut open {
            Some((_, e)) if start <= *e => *e = (*e).max(end),
            _ => {
                if let Some((s, e)) = open {
                    total += e - s;
                }
                open = Some((start, end));
            }
        }
    }
    total + open.map_or(0, |(s, e)| e - s)
}

/// Calls among `peaks` that alert at enter threshold `threshold`.
pub fn alerts_at(peaks: &[f32], threshold: f32) -> usize {
    peaks.iter().filter(|&&p| p >= threshold).count()
}

/// A class's chosen threshold and how it was reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub threshold: f32,
    /// Alerts the target allows on these calls: floor(target * call-hours).
    pub allowed_alerts: u64,
    /// The calls are too few hours to resolve the target (fewer than 1 / target): no alert
    /// is allowed, so the threshold is just above the highest peak.
    pub unresolved: bool,
    /// What the data alone gave, when it was below `floor` and raised to it.
    pub raised_from: Option<f32>,
}

/// The lowest threshold `t` with `alerts_at(peaks, t) / call_hours <= alerts_per_hour`, placed
/// halfway between the lowest peak it allows and the peak below it (halfway between the highest
/// peak and 1 when no alert is allowed); never below `floor`.
pub fn choose_threshold(
    peaks: &[f32],
    call_hours: f64,
    alerts_per_hour: f64,
    floor: f32,
) -> Choice {
    let budget = alerts_per_hour * call_hours;
    // A hair of tolerance so that exactly 1/R hours allows its one alert.
    let allowed_alerts = if budget.is_finite() && budget > 0.0 {
        (budget * (1.0 + 1e-12)).floor() as u64
    } else {
        0
    };
    let mut values: Vec<f32> = peaks.iter().copied().filter(|&p| p > 0.0).collect();
    values.sort_unstable_by(f32::total_cmp);
    values.dedup();
    let highest = values.last().copied().unwrap_or(0.0);
    // Ascending peaks alert on fewer and fewer calls: the first within budget is the lowest.
    // Every threshold between it and the peak below alerts on the same calls; the midpoint keeps
    // a margin on both sides, so the float noise of batched scoring (about 1e-7) moves no call.
    let from_data = match values
        .iter()
        .position(|&t| alerts_at(peaks, t) as u64 <= allowed_alerts)
    {
        Some(0) => values[0],
        Some(k) => values[k - 1] + (values[k] - values[k - 1]) / 2.0,
        None => highest + (1.0 - highest) / 2.0,
    };
    let threshold = from_data.max(floor);
    Choice {
        threshold,
        allowed_alerts,
        unresolved: allowed_alerts == 0,
        raised_from: (from_data < floor).then_some(from_data),
    }
}

/// False alerts per call-hour against the enter threshold, as a step curve from 0 to 1: at
/// each peak the rate still counts the call, just above it no longer.
pub fn rate_curve(peaks: &[f32], call_hours: f64) -> Vec<(f64, f64)> {
    if call_hours <= 0.0 {
        return Vec::new();
    }
    let rate = |n: usize| n as f64 / call_hours;
    let mut values: Vec<f32> = peaks.iter().copied().filter(|&p| p > 0.0).collect();
    values.sort_unstable_by(f32::total_cmp);
    values.dedup();
    let mut points = vec![(0.0, rate(alerts_at(peaks, f32::MIN_POSITIVE)))];
    for v in values {
        points.push((v as f64, rate(alerts_at(peaks, v))));
        points.push((v as f64, rate(alerts_at(peaks, v.next_up()))));
    }
    points.push((1.0, 0.0));
    points
}

/// Call-hours of `calls`.
pub fn call_hours(calls: &[&GenuineCall]) -> f64 {
    calls.iter().map(|c| c.audio_ms as f64).sum::<f64>() / MS_PER_HOUR
}

/// Scored speech hours of `calls`.
pub fn scored_hours(calls: &[&GenuineCall]) -> f64 {
    calls.iter().map(|c| c.scored_ms as f64).sum::<f64>() / MS_PER_HOUR
}

/// A threshold as TOML text that reads back as exactly the same `f32` (the shortest form when
/// it does).
pub fn toml_float(t: f32) -> String {
    let short = format!("{t:?}");
    if short.parse::<f64>().map(|v| v as f32) == Ok(t) {
        short
    } else {
        format!("{:?}", t as f64)
    }
}

/// `YYYY-MM-DD` (UTC) of a time in ms since the Unix epoch.
pub fn utc_date(ms: i64) -> String {
    // Howard Hinnant's civil-from-days.
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start_ms: u64, end_ms: u64) -> WindowScore {
        WindowScore {
            seq: 0,
            start_ms,
            end_ms,
            p_spoof: 0.1,
            fused: 0.1,
            allowed_voice: false,
        }
    }

    #[test]
    fn scored_speech_is_the_union_of_windows() {
        assert_eq!(scored_ms(&[]), 0);
        assert_eq!(scored_ms(&[w(0, 1000), w(500, 1500), w(3000, 4000)]), 2500);
    }

    #[test]
    fn the_lowest_peak_within_budget_is_chosen() {
        let peaks = [0.0, 0.55, 0.6, 0.7, 0.8, 0.9];
        // 4 h at 0.5/h: two alerts allowed, so 0.8 (alerts on 0.8 and 0.9).
        let c = choose_threshold(&peaks, 4.0, 0.5, HALF);
        assert_eq!(
            (c.threshold, c.allowed_alerts, c.unresolved),
            (0.75, 2, false)
        );
        assert_eq!(alerts_at(&peaks, c.threshold), 2);
        // Exactly 2 h: one alert, halfway between 0.8 and 0.9.
        assert_eq!(choose_threshold(&peaks, 2.0, 0.5, HALF).threshold, 0.85);
        // Budget for everything: the lowest peak (a peak of 0 never alerts).
        let all = choose_threshold(&peaks, 100.0, 0.5, HALF);
        assert_eq!((all.threshold, all.raised_from), (0.55, None));
        let low = choose_threshold(&[0.2, 0.3], 100.0, 0.5, LOWEST_THRESHOLD);
        assert_eq!(low.threshold, 0.2);
        assert_eq!(
            choose_threshold(&[0.2, 0.3], 100.0, 0.5, HALF).raised_from,
            Some(0.2)
        );
    }

    #[test]
    fn too_little_data_allows_no_alert() {
        let peaks = [0.6, 0.7];
        let c = choose_threshold(&peaks, 1.0, 0.5, HALF);
        assert!(c.unresolved);
        assert_eq!(c.allowed_alerts, 0);
        assert!(c.threshold > 0.7 && c.threshold == 0.85);
        assert_eq!(alerts_at(&peaks, c.threshold), 0);
        // Ties at the top are excluded together.
        let tied = choose_threshold(&[0.7, 0.7, 0.6], 2.0, 0.5, HALF);
        assert_eq!(alerts_at(&[0.7, 0.7, 0.6], tied.threshold), 0);
    }

    #[test]
    fn the_rate_curve_steps_down_at_each_peak() {
        let curve = rate_curve(&[0.0, 0.6, 0.8], 2.0);
        assert_eq!(curve.first(), Some(&(0.0, 1.0)));
        assert!(curve.contains(&(0.6f32 as f64, 1.0)));
        assert!(curve.contains(&(0.6f32 as f64, 0.5)));
        assert_eq!(curve.last(), Some(&(1.0, 0.0)));
        assert!(
            curve
                .windows(2)
                .all(|p| p[1].0 >= p[0].0 && p[1].1 <= p[0].1)
        );
    }

    #[test]
    fn thresholds_read_back_exactly() {
        for t in [0.5f32, 0.74489, 0.1f32.next_up(), 0.7f32.next_up()] {
            let text = format!("x = {}", toml_float(t));
            let v: toml::Table = toml::from_str(&text).unwrap();
            assert_eq!(v["x"].as_float().unwrap() as f32, t, "{text}");
        }
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
        assert_eq!(utc_date(1_795_698_944_114), "2026-11-26");
    }
}
