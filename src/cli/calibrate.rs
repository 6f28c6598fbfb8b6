//! `callguard calibrate`: per-channel-class enter thresholds from a site's own genuine calls,
//! scored exactly as `scan` scores them, written as a config fragment for
//! `[verdict] thresholds_file`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use callguard::audio::ChannelPick;
use callguard::config::Config;
use callguard::eval::calibrate::{self as cal, Choice, GenuineCall};
use callguard::eval::{Label, Manifest, RateCurve, plot_alert_rates};
use callguard::pipeline::{Engine, Screening, score_files_as};
use callguard::verdict::{AlertKind, ChannelClass, EnterThreshold, alert_peak};
use serde_json::{Value, json};

pub struct Options {
    pub input: PathBuf,
    pub alerts_per_hour: f64,
    pub class: Option<ChannelClass>,
    pub out: PathBuf,
    pub json: bool,
    pub plot: Option<PathBuf>,
    pub allow_below_half: bool,
    pub pick: ChannelPick,
}

/// The genuine files to calibrate on, and how many spoof rows of a manifest were skipped.
fn inputs(path: &Path) -> Result<(Vec<PathBuf>, usize)> {
    if path.is_dir() {
        let mut files = Vec::new();
        walk(path, &mut files)?;
        files.sort();
        if files.is_empty() {
            bail!("no WAV or FLAC files under {}", path.display());
        }
        return Ok((files, 0));
    }
    let manifest = Manifest::load(path)?;
    let (genuine, spoof): (Vec<_>, Vec<_>) = manifest
        .entries
        .iter()
        .partition(|e| e.label == Label::Bonafide);
    if genuine.is_empty() {
        bail!(
            "manifest {} has no bonafide rows to calibrate on",
            path.display()
        );
    }
    Ok((
        genuine.iter().map(|e| e.path.clone()).collect(),
        spoof.len(),
    ))
}

/// Every WAV and FLAC under `dir` (symlinked folders are not followed).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("wav") || e.eq_ignore_ascii_case("flac"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// One class's calls, its threshold before and after, and what to know about it.
struct ClassReport {
    class: ChannelClass,
    calls: usize,
    call_hours: f64,
    scored_hours: f64,
    peaks: Vec<f32>,
    before: EnterThreshold,
    choice: Choice,
    notes: Vec<String>,
}

impl ClassReport {
    fn outcome(&self, threshold: f32) -> Value {
        let alerts = cal::alerts_at(&self.peaks, threshold);
        json!({
            "threshold": threshold,
            "alerts": alerts,
            "alerts_per_hour": (self.call_hours > 0.0).then(|| alerts as f64 / self.call_hours),
            "share_alerted": alerts as f64 / self.calls as f64,
        })
    }

    fn json(&self) -> Value {
        let mut before = self.outcome(self.before.p_spoof);
        before["source"] = json!(self.before.source.as_str());
        json!({
            "calls": self.calls,
            "call_hours": self.call_hours,
            "speech_hours": self.scored_hours,
            "allowed_alerts": self.choice.allowed_alerts,
            "resolved": !self.choice.unresolved,
            "before": before,
            "after": self.outcome(self.choice.threshold),
            "notes": self.notes,
        })
    }
}

fn class_report(
    class: ChannelClass,
    calls: &[&GenuineCall],
    config: &Config,
    engine: &Engine,
    o: &Options,
) -> ClassReport {
    let floor = if o.allow_below_half {
        cal::LOWEST_THRESHOLD
    } else {
        cal::HALF
    };
    let peaks: Vec<f32> = calls.iter().map(|c| c.peak).collect();
    let call_hours = cal::call_hours(calls);
    let before = engine.enter_threshold(class);
    let mut choice = cal::choose_threshold(&peaks, call_hours, o.alerts_per_hour, floor);
    let mut notes = Vec::new();
    if choice.unresolved {
        let highest = peaks.iter().copied().fold(0.0, f32::max);
        // No alert observed in too few hours is no evidence that a lower threshold is safe:
        // the data may raise the threshold, never lower it.
        let kept = choice.threshold < before.p_spoof;
        if kept {
            choice.threshold = before.p_spoof;
        }
        notes.push(format!(
            "too little data to resolve the target: {call_hours:.3} call-hours is less than the \
             {:.1} h (1 / target) needed to allow one alert, so none is allowed: {}; calibrate on \
             at least {:.1} h of calls",
            1.0 / o.alerts_per_hour,
            if kept {
                format!(
                    "no call alerted at the current threshold, which is kept (the highest peak \
                     is {highest:.4})"
                )
            } else {
                format!("the threshold is set above the highest peak ({highest:.4})")
            },
            1.0 / o.alerts_per_hour
        ));
    }
    if let Some(t) = choice.raised_from {
        notes.push(format!(
            "the target allows {t:.4}, below {floor}: kept at {floor}{}",
            if o.allow_below_half {
                ""
            } else {
                " (--allow-below-half to go lower)"
            }
        ));
    }
    if calls.iter().all(|c| c.scored_ms == 0) {
        notes.push("no call had enough speech to be scored".into());
    }
    if let Some(t) = config.verdict.enter_thresholds.get(class) {
        notes.push(format!(
            "the config's [verdict.enter_thresholds] {class} = {t} takes precedence over this \
             calibration: remove it for the file to apply"
        ));
    }
    ClassReport {
        class,
        calls: calls.len(),
        call_hours,
        scored_hours: cal::scored_hours(calls),
        peaks,
        before,
        choice,
        notes,
    }
}

/// The TOML fragment: a header that says what it was made from, and the thresholds.
fn fragment(reports: &[ClassReport], engine: &Engine, config: &Config, o: &Options) -> String {
    let v = &config.verdict;
    let mut text = format!(
        "# callguard calibration: enter thresholds per channel class, set on a site's own genuine calls.\n\
         # Written by `callguard calibrate` on {} (UTC) for model {}, from {}.\n\
         # Target: at most {} false alerts per genuine call-hour, with smoothing_windows = {} and\n\
         # enter_windows = {} (calibrate again when the model or those change).\n",
        cal::utc_date(callguard::alert::now_ms()),
        engine.card().id(),
        o.input.display(),
        o.alerts_per_hour,
        v.smoothing_windows,
        v.enter_windows,
    );
    for r in reports {
        text += &format!(
            "#   {}: {} calls, {:.3} call-hours, {:.3} h of scored speech; {:.4} -> {:.4}{}\n",
            r.class,
            r.calls,
            r.call_hours,
            r.scored_hours,
            r.before.p_spoof,
            r.choice.threshold,
            if r.choice.unresolved {
                " (too little data: no alert allowed)"
            } else {
                ""
            }
        );
    }
    text += "# Use it with `[verdict] thresholds_file = \"<this file>\"` in config.toml; the config's own\n\
             # [verdict.enter_thresholds] take precedence over it.\n\n[verdict.enter_thresholds]\n";
    for r in reports {
        text += &format!("{} = {}\n", r.class, cal::toml_float(r.choice.threshold));
    }
    text
}

fn curves(reports: &[ClassReport]) -> Vec<RateCurve> {
    reports
        .iter()
        .map(|r| {
            let t = r.choice.threshold;
            let rate = if r.call_hours > 0.0 {
                cal::alerts_at(&r.peaks, t) as f64 / r.call_hours
            } else {
                0.0
            };
            RateCurve {
                name: format!("{} ({} calls, {:.2} h)", r.class, r.calls, r.call_hours),
                points: cal::rate_curve(&r.peaks, r.call_hours),
                chosen: Some((t as f64, rate)),
            }
        })
        .collect()
}

pub fn run(config: &Config, o: &Options) -> Result<ExitCode> {
    if !(o.alerts_per_hour > 0.0 && o.alerts_per_hour.is_finite()) {
        bail!(
            "--alerts-per-hour {} is not a positive rate",
            o.alerts_per_hour
        );
    }
    let (files, spoof_skipped) = inputs(&o.input)?;
    // Scored as `scan` scores them, at the thresholds the daemon uses without a thresholds
    // file (the "before"); transcripts play no part in detection, so they are not made.
    let mut scoring = config.clone();
    scoring.transcribe.enabled = false;
    scoring.verdict.thresholds_file = None;
    scoring.verdict.file_thresholds = Default::default();
    let engine = Engine::start(&scoring)?;
    let bar = super::progress(files.len());
    let outcomes = score_files_as(
        &engine,
        &files,
        o.pick,
        &Screening {
            class: o.class,
            ..Screening::default()
        },
        scoring.detector_workers(),
        &|_| bar.inc(1),
    );
    bar.finish_and_clear();

    let v = &scoring.verdict;
    let mut calls = Vec::new();
    let mut failed = Vec::new();
    for outcome in &outcomes {
        let s = match &outcome.result {
            Ok(s) => s,
            Err(e) => {
                failed.push((outcome.path.clone(), e.clone()));
                continue;
            }
        };
        let call = GenuineCall {
            channel_class: s.channel_class,
            peak: alert_peak(
                s.timeline.iter().map(|w| w.p_spoof),
                v.smoothing_windows,
                v.enter_windows,
            ),
            audio_ms: s.audio_ms,
            scored_ms: cal::scored_ms(&s.timeline),
        };
        let alerted = s.alerts.iter().any(|a| a.kind == AlertKind::SuspectedClone);
        if alerted != (call.peak >= s.enter_threshold) || s.timeline_truncated > 0 {
            tracing::warn!(path = %outcome.path.display(), peak = call.peak, enter_threshold = s.enter_threshold, alerted, "The peak disagrees with the scan's alerts.");
        }
        calls.push((outcome.path.clone(), call));
    }
    for (path, e) in &failed {
        eprintln!("error: {}: {e}", path.display());
    }
    if calls.is_empty() {
        bail!("no file could be scored; nothing to calibrate on");
    }
    let mut by_class: BTreeMap<ChannelClass, Vec<&GenuineCall>> = BTreeMap::new();
    for (_, c) in &calls {
        by_class.entry(c.channel_class).or_default().push(c);
    }
    let reports: Vec<ClassReport> = by_class
        .iter()
        .map(|(&class, calls)| class_report(class, calls, config, &engine, o))
        .collect();

    std::fs::write(&o.out, fragment(&reports, &engine, &scoring, o))
        .with_context(|| format!("cannot write {}", o.out.display()))?;
    if let Some(path) = &o.plot {
        plot_alert_rates(
            path,
            &format!("False alerts per call-hour: {}", engine.card().id()),
            &curves(&reports),
            o.alerts_per_hour,
        )
        .map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))?;
    }

    let mut out = std::io::stdout().lock();
    if o.json {
        let after_of = |c: ChannelClass| {
            reports
                .iter()
                .find(|r| r.class == c)
                .map_or(0.0, |r| r.choice.threshold)
        };
        let doc = json!({
            "model": engine.card().id(),
            "target_alerts_per_hour": o.alerts_per_hour,
            "smoothing_windows": v.smoothing_windows,
            "enter_windows": v.enter_windows,
            "out": o.out.display().to_string(),
            "files": files.len(),
            "scored": calls.len(),
            "spoof_rows_skipped": spoof_skipped,
            "classes": reports.iter().map(|r| (r.class.to_string(), r.json())).collect::<serde_json::Map<_, _>>(),
            "calls": calls.iter().map(|(path, c)| json!({
                "path": path.display().to_string(),
                "channel_class": c.channel_class,
                "peak": c.peak,
                "audio_ms": c.audio_ms,
                "scored_ms": c.scored_ms,
                "alerted_before": c.peak >= engine.enter_threshold(c.channel_class).p_spoof,
                "alerted_after": c.peak >= after_of(c.channel_class),
            })).collect::<Vec<_>>(),
            "failed": failed.iter().map(|(path, e)| json!({ "path": path.display().to_string(), "error": e })).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        writeln!(
            out,
            "{} genuine files ({} scored, {} failed{}); model {}; target {} false alerts per call-hour",
            files.len(),
            calls.len(),
            failed.len(),
            if spoof_skipped > 0 {
                format!(", {spoof_skipped} spoof rows skipped")
            } else {
                String::new()
            },
            engine.card().id(),
            o.alerts_per_hour
        )?;
        for r in &reports {
            writeln!(
                out,
                "{}: {} calls, {:.3} call-hours, {:.3} h of scored speech",
                r.class, r.calls, r.call_hours, r.scored_hours
            )?;
            let line = |t: f32| {
                let n = cal::alerts_at(&r.peaks, t);
                let rate = if r.call_hours > 0.0 {
                    format!("{:.2}/h", n as f64 / r.call_hours)
                } else {
                    "-".into()
                };
                format!(
                    "{n} alerts, {rate}, {:.1}% of calls",
                    100.0 * n as f64 / r.calls as f64
                )
            };
            writeln!(
                out,
                "  before {:.4} ({}): {}",
                r.before.p_spoof,
                r.before.source.as_str(),
                line(r.before.p_spoof)
            )?;
            writeln!(
                out,
                "  after  {:.4}: {}",
                r.choice.threshold,
                line(r.choice.threshold)
            )?;
            for note in &r.notes {
                writeln!(out, "  note: {note}")?;
            }
        }
        for (path, e) in &failed {
            writeln!(out, "{}: error: {e}", path.display())?;
        }
        writeln!(
            out,
            "wrote {}; use it with [verdict] thresholds_file = {:?}",
            o.out.display(),
            o.out.display().to_string()
        )?;
    }
    engine.shutdown();
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
