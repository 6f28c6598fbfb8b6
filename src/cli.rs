//! Subcommands and their output. This is the only place that prints to stdout.

mod calibrate;
mod voices;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use callguard::audio::ChannelPick;
use callguard::audio::capture;
use callguard::config::Config;
use callguard::eval::{self, Label, Manifest};
use callguard::guard::{DeviceSpec, Guard};
use callguard::pipeline::{
    CallSummary, Engine, EngineEvent, FileOutcome, Screening, score_files, score_files_as,
};
use callguard::verdict::ChannelClass;
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "callguard",
    version,
    about = "Real-time deepfake guard for voice calls"
)]
pub struct Args {
    /// Configuration file (default: ./config.toml or the project's, else built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log debug detail to stderr (or set CALLGUARD_LOG).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum SinksCommand {
    /// Print each sink's delivery state from the alert log (the daemon may be running).
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon until SIGINT/SIGTERM: serve gRPC (`[server] listen`), the connectors
    /// (`[connectors]`), SIPREC (`[siprec]`) and the operations HTTP listener (`[http]`), and
    /// screen the configured sound devices (the default input device when nothing else is
    /// configured).
    Run {
        /// Print every event (window, alert, call end) to stdout as a JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Score recorded calls as if they were live; print verdicts and score timelines.
    Scan {
        /// Audio files (WAV, FLAC, raw .ulaw/.alaw), each scored as one call.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print each file's result as a JSON line instead of a table.
        #[arg(long)]
        json: bool,
        /// Channel that carries the caller (0-based); default: mix all channels.
        #[arg(long)]
        caller_channel: Option<u16>,
        /// Screen as this tenant's calls: its allowed voices (`allow-voice`) apply.
        #[arg(long)]
        tenant: Option<String>,
        /// Every file claims to be this protected person of the tenant (`enroll`).
        #[arg(long, requires = "tenant")]
        claim: Option<String>,
    },
    /// Detection quality on a labelled manifest (CSV: path,label[,system]).
    Eval {
        /// CSV with a header row `path,label[,system]`; label is bonafide or spoof; paths are
        /// relative to the manifest's folder.
        manifest: PathBuf,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Write per-file scores as CSV.
        #[arg(long)]
        scores: Option<PathBuf>,
        /// Draw DET curves (overall and per system) as PNG.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Per-channel-class enter thresholds from a site's own genuine recorded calls: the lowest
    /// that keeps false alerts within a target per call-hour. Writes a TOML fragment for
    /// `[verdict] thresholds_file`.
    Calibrate {
        /// A manifest (CSV: path,label[,system]; only bonafide rows are used) or a folder
        /// (every WAV and FLAC under it).
        input: PathBuf,
        /// Most false alerts per genuine call-hour.
        #[arg(long, default_value_t = callguard::eval::calibrate::DEFAULT_ALERTS_PER_HOUR)]
        alerts_per_hour: f64,
        /// Screen every file as this class (wideband, narrowband_g711, narrowband_lossy), e.g.
        /// PCM recordings that came through AMR; default: from each file's rate and codec.
        #[arg(long)]
        class: Option<callguard::verdict::ChannelClass>,
        /// Where to write the thresholds.
        #[arg(long, default_value = "calibration.toml")]
        out: PathBuf,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Draw false alerts per call-hour against the threshold, per class, as PNG.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Allow thresholds below 0.5.
        #[arg(long)]
        allow_below_half: bool,
        /// Channel that carries the caller (0-based); default: mix all channels.
        #[arg(long)]
        caller_channel: Option<u16>,
    },
    /// Fingerprint a synthetic voice the tenant runs itself (IVR prompts, voicemail
    /// greetings, its own assistants) from recordings of it (5 s of speech or more): its windows
    /// are then not evidence of a clone on that tenant's calls. Needs [voice] speaker_model.
    AllowVoice {
        /// The voice's name, shown on the call's timeline.
        name: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        tenant: String,
    },
    /// Enrol a protected person (an executive's line) from genuine recordings (30 s of speech
    /// or more); no audio is kept. Needs [voice] speaker_model.
    Enroll {
        name: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        tenant: String,
    },
    /// List a tenant's voiceprints (names and score profiles), or remove one.
    Voices {
        #[arg(long)]
        tenant: String,
        /// `allowed` (allow-voice) or `protected` (enroll).
        #[arg(long, default_value = "allowed")]
        kind: String,
        /// Forget this voice.
        #[arg(long)]
        remove: Option<String>,
    },
    /// List capture hosts, input devices and their configurations.
    Devices {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Where each alert sink ([[sinks.webhook]], [[sinks.syslog]]) stands: delivered, pending,
    /// failures, the last error.
    Sinks {
        #[command(subcommand)]
        what: SinksCommand,
    },
    /// Check a config without starting anything: every problem at once (keys, values, model,
    /// VAD and TLS files), exit status 0 when it is usable, 1 when not.
    CheckConfig,
    /// Make a new bearer token for a gRPC tenant and print it with its config entry (only the
    /// token's SHA-256 goes in the config).
    Token {
        /// The tenant's name.
        tenant: String,
    },
}

impl Args {
    /// What is logged when `CALLGUARD_LOG` is not set: the daemon says what an operator needs
    /// (calls, refusals, status) at INFO; `-v` adds callguard's own DEBUG detail. The
    /// dependencies' internals (h2 frames, hyper, ONNX Runtime) stay at WARN either way.
    pub fn default_log_filter(&self) -> &'static str {
        match (&self.command, self.verbose) {
            (_, true) => "callguard=debug,warn,symphonia=off",
            (Command::Run { .. }, false) => "callguard=info,warn,symphonia=off",
            // symphonia logs its own ERROR for a file callguard then reports, once, itself.
            (_, false) => "warn,symphonia=off",
        }
    }

    /// `[log] format` of the config the command will use; text if it cannot be read (the
    /// command itself then reports why).
    pub fn log_format(&self) -> callguard::config::LogFormat {
        let path = self
            .config
            .clone()
            .or_else(|| callguard::assets::locate(Path::new("config.toml"), None));
        path.and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| Config::from_toml(&text).ok())
            .map(|c| c.log.format)
            .unwrap_or_default()
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    if let Some(p) = path {
        return Ok(Config::load(p)?);
    }
    if let Some(found) = callguard::assets::locate(Path::new("config.toml"), None) {
        return Ok(Config::load(&found)?);
    }
    let mut config = Config::default();
    config.resolve_paths(None);
    config.validate().map_err(|problems| {
        anyhow::anyhow!(
            "built-in defaults are not usable here:\n  {}",
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    })?;
    Ok(config)
}

pub fn run(args: Args) -> Result<ExitCode> {
    match &args.command {
        Command::Devices { json } => return devices(*json),
        Command::Token { tenant } => return new_token(tenant),
        Command::CheckConfig => {
            return match load_config(args.config.as_deref()) {
                Ok(config) => check_config(&config),
                Err(e) => {
                    eprintln!("{e:#}");
                    Ok(ExitCode::from(1))
                }
            };
        }
        _ => {}
    }
    let config = load_config(args.config.as_deref())?;
    match args.command {
        Command::CheckConfig => unreachable!("handled before loading"),
        Command::Sinks {
            what: SinksCommand::Status { json },
        } => sinks_status(&config, json),
        Command::Run { json } => run_daemon(&config, json),
        Command::Scan {
            files,
            json,
            caller_channel,
            tenant,
            claim,
        } => scan(
            &config,
            &files,
            json,
            ChannelPick::from_option(caller_channel),
            tenant.as_deref().map(|t| (t, claim.as_deref())),
        ),
        Command::Eval {
            manifest,
            json,
            scores,
            plot,
        } => evaluate(&config, &manifest, json, scores.as_deref(), plot.as_deref()),
        Command::Calibrate {
            input,
            alerts_per_hour,
            class,
            out,
            json,
            plot,
            allow_below_half,
            caller_channel,
        } => calibrate::run(
            &config,
            &calibrate::Options {
                input,
                alerts_per_hour,
                class,
                out,
                json,
                plot,
                allow_below_half,
                pick: ChannelPick::from_option(caller_channel),
            },
        ),
        Command::AllowVoice {
            name,
            files,
            tenant,
        } => voices::make(
            &config,
            &voices::Options {
                name,
                files,
                tenant,
                kind: voices::ALLOWED,
                min_speech_s: 5.0,
            },
        ),
        Command::Enroll {
            name,
            files,
            tenant,
        } => voices::make(
            &config,
            &voices::Options {
                name,
                files,
                tenant,
                kind: voices::PROTECTED,
                min_speech_s: 30.0,
            },
        ),
        Command::Voices {
            tenant,
            kind,
            remove,
        } => {
            if ![voices::ALLOWED, voices::PROTECTED].contains(&kind.as_str()) {
                bail!("--kind is allowed or protected, not {kind:?}");
            }
            voices::list(&config, &tenant, &kind, remove.as_deref())
        }
        Command::Devices { .. } | Command::Token { .. } => unreachable!("handled above"),
    }
}

fn progress(n: usize) -> indicatif::ProgressBar {
    if n < 2 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} files {elapsed_precise} eta {eta}",
        )
        .expect("static template"),
    );
    bar
}

fn score_with_progress(
    config: &Config,
    engine: &Engine,
    files: &[PathBuf],
    pick: ChannelPick,
) -> Vec<FileOutcome> {
    let bar = progress(files.len());
    let outcomes = score_files(engine, files, pick, config.detector_workers(), &|_| {
        bar.inc(1)
    });
    bar.finish_and_clear();
    outcomes
}

fn summary_json(s: &CallSummary) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("summary serialises");
    v["path"] = json!(s.call_id);
    v
}

fn scan(
    config: &Config,
    files: &[PathBuf],
    as_json: bool,
    pick: ChannelPick,
    tenant: Option<(&str, Option<&str>)>,
) -> Result<ExitCode> {
    let engine = Engine::start(config)?;
    let mut screening = Screening::default();
    if let Some((t, claim)) = tenant.filter(|_| config.voice.speaker_model.is_some()) {
        let store = callguard::alert::AlertLog::open_store(&config.store)?;
        screening.allowed_voices = store.voices(t, voices::ALLOWED)?.into();
        if let Some(name) = claim {
            let voice = store
                .voices(t, voices::PROTECTED)?
                .into_iter()
                .find(|v| v.name == name);
            let Some(voice) = voice else {
                bail!("no protected voice {name:?} for tenant {t:?} (callguard enroll)");
            };
            screening.claimed = Some(std::sync::Arc::new(voice));
        }
    }
    let bar = progress(files.len());
    let outcomes = score_files_as(
        &engine,
        files,
        pick,
        &screening,
        config.detector_workers(),
        &|_| bar.inc(1),
    );
    bar.finish_and_clear();
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    let mut out = std::io::stdout().lock();
    if as_json {
        let files: Vec<_> = outcomes
            .iter()
            .map(|o| match &o.result {
                Ok(s) => summary_json(s),
                Err(e) => json!({ "path": o.path.display().to_string(), "error": e }),
            })
            .collect();
        let thresholds: serde_json::Map<String, serde_json::Value> = ChannelClass::ALL
            .into_iter()
            .map(|c| (c.to_string(), json!(engine.enter_threshold(c).p_spoof)))
            .collect();
        let doc = json!({
            "model": engine.card().id(),
            "threshold": engine.card().threshold.p_spoof,
            "thresholds": thresholds,
            "files": files,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        // The JSON has each problem; a person watching stderr sees them too.
        for o in &outcomes {
            if let Err(e) = &o.result {
                eprintln!("error: {}", with_path(&o.path, e));
            }
        }
    } else {
        // Results on stdout, problems on stderr: each once.
        for o in &outcomes {
            match &o.result {
                Ok(s) => write_summary(&mut out, s)?,
                Err(e) => eprintln!("error: {}", with_path(&o.path, e)),
            }
        }
    }
    log_transcribe_stats(&engine);
    engine.shutdown();
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn fmt_p(p: Option<f32>) -> String {
    p.map_or("-".into(), |p| format!("{p:.3}"))
}

fn fmt_ms(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| format!("{:.2}s", ms as f64 / 1000.0))
}

/// Timeline entries printed in text mode before it is summarised.
const TEXT_TIMELINE: usize = 24;

fn write_summary(out: &mut impl Write, s: &CallSummary) -> Result<()> {
    writeln!(
        out,
        "{}: {} ({}) p_spoof={} peak={} first_alert={} audio={} speech={} windows={}{}",
        s.call_id,
        s.verdict.as_str().to_uppercase(),
        s.channel_class,
        fmt_p(s.p_spoof),
        fmt_p(s.p_spoof_peak),
        fmt_ms(s.first_alert_ms),
        fmt_ms(Some(s.audio_ms)),
        fmt_ms(Some(s.speech_ms)),
        s.windows_scored,
        if s.windows_dropped + s.windows_failed > 0 {
            format!(
                " (dropped {}, failed {})",
                s.windows_dropped, s.windows_failed
            )
        } else {
            String::new()
        }
    )?;
    if !s.timeline.is_empty() {
        let shown: Vec<String> = s
            .timeline
            .iter()
            .take(TEXT_TIMELINE)
            .map(|w| format!("{:.1}s:{:.2}", w.end_ms as f64 / 1000.0, w.fused))
            .collect();
        let more = s.timeline.len().saturating_sub(TEXT_TIMELINE);
        writeln!(
            out,
            "  timeline (end time: fused p_spoof) {}{}",
            shown.join(" "),
            if more > 0 {
                format!(" ... {more} more (use --json)")
            } else {
                String::new()
            }
        )?;
    }
    for a in &s.alerts {
        writeln!(
            out,
            "  alert {:?} at {} p_spoof={:.3} risk={:.3} (threshold {:.3}, {} windows){}",
            a.kind,
            fmt_ms(Some(a.audio_ms)),
            a.p_spoof,
            a.risk,
            a.threshold,
            a.evidence.len(),
            fmt_cues(&a.cues)
        )?;
    }
    for seg in &s.transcript {
        write_segment(out, "  ", seg)?;
    }
    let c = &s.segment_counts;
    if c.skipped + c.failed + c.unintelligible > 0 {
        writeln!(
            out,
            "  transcription: {} of {} segments skipped (over budget), {} failed, {} unintelligible",
            c.skipped, s.segments, c.failed, c.unintelligible
        )?;
    }
    Ok(())
}

fn fmt_cues(cues: &[callguard::transcribe::Cue]) -> String {
    if cues.is_empty() {
        return String::new();
    }
    let names: Vec<String> = cues
        .iter()
        .map(|c| format!("{}:\"{}\"", c.rule, c.text))
        .collect();
    format!(" cues [{}]", names.join(", "))
}

fn write_segment(
    out: &mut impl Write,
    indent: &str,
    seg: &callguard::transcribe::TranscriptSegment,
) -> Result<()> {
    writeln!(
        out,
        "{indent}{}-{} \"{}\"{}",
        fmt_ms(Some(seg.start_ms)),
        fmt_ms(Some(seg.end_ms)),
        seg.text,
        fmt_cues(&seg.cues)
    )?;
    Ok(())
}

fn evaluate(
    config: &Config,
    manifest_path: &Path,
    as_json: bool,
    scores_path: Option<&Path>,
    plot_path: Option<&Path>,
) -> Result<ExitCode> {
    let manifest = Manifest::load(manifest_path)?;
    // Evaluation measures the detector; transcripts would only cost time.
    let mut config = config.clone();
    config.transcribe.enabled = false;
    let config = &config;
    let engine = Engine::start(config)?;
    let paths: Vec<PathBuf> = manifest.entries.iter().map(|e| e.path.clone()).collect();
    let outcomes = score_with_progress(config, &engine, &paths, ChannelPick::Mix);

    // A file with no scored speech counts as "not flagged" (score 0): a spoof that evades the
    // speech gate is a miss, not an exclusion.
    let score_of = |o: &FileOutcome| {
        o.result
            .as_ref()
            .ok()
            .map(|s| s.p_spoof.unwrap_or(0.0) as f64)
    };
    let mut bona = Vec::new();
    let mut per_system: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let (mut failed, mut unscored) = (0, 0);
    for (entry, o) in manifest.entries.iter().zip(&outcomes) {
        let Some(score) = score_of(o) else {
            failed += 1;
            continue;
        };
        if o.result.as_ref().is_ok_and(|s| s.p_spoof.is_none()) {
            unscored += 1;
        }
        match entry.label {
            Label::Bonafide => bona.push(score),
            Label::Spoof => per_system
                .entry(entry.system.as_str())
                .or_default()
                .push(score),
        }
    }
    let spoof: Vec<f64> = per_system.values().flatten().copied().collect();
    let overall = eval::eer(&bona, &spoof);
    let dcf = eval::min_dcf(&bona, &spoof);
    let systems: serde_json::Map<String, serde_json::Value> = per_system
        .iter()
        .map(|(name, scores)| {
            let e = eval::eer(&bona, scores).map(|(e, _)| e);
            (name.to_string(), json!({ "n": scores.len(), "eer": e }))
        })
        .collect();
    let report = json!({
        "eer": overall.map(|(e, _)| e),
        "eer_threshold": overall.map(|(_, t)| t),
        "min_dcf": dcf.map(|(d, _)| d),
        "min_dcf_threshold": dcf.map(|(_, t)| t),
        "dcf_params": { "c_miss": eval::DCF_COST_MISS, "c_fa": eval::DCF_COST_FA, "p_spoof": eval::DCF_PRIOR_SPOOF },
        "files": manifest.entries.len(),
        "bonafide": bona.len(),
        "spoof": spoof.len(),
        "failed": failed,
        "unscored": unscored,
        "score": "p_spoof: the file's final fused probability (0 when no speech was scored)",
        "model": engine.card().id(),
        "per_system": systems,
    });
    if let Some(path) = scores_path {
        let mut w = csv::Writer::from_path(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        w.write_record([
            "path",
            "label",
            "system",
            "p_spoof",
            "p_spoof_peak",
            "verdict",
            "error",
        ])?;
        for (entry, o) in manifest.entries.iter().zip(&outcomes) {
            let label = match entry.label {
                Label::Bonafide => "bonafide",
                Label::Spoof => "spoof",
            };
            let (p, peak, verdict, err) = match &o.result {
                Ok(s) => (
                    fmt_p(s.p_spoof),
                    fmt_p(s.p_spoof_peak),
                    s.verdict.as_str().to_string(),
                    String::new(),
                ),
                Err(e) => ("-".into(), "-".into(), "error".into(), e.clone()),
            };
            w.write_record([
                &entry.path.display().to_string(),
                label,
                &entry.system,
                &p,
                &peak,
                &verdict,
                &err,
            ])?;
        }
        w.flush()?;
    }
    if let Some(path) = plot_path {
        let mut curves = vec![("all systems".to_string(), eval::det_points(&bona, &spoof))];
        curves.extend(
            per_system
                .iter()
                .take(8)
                .map(|(name, s)| (name.to_string(), eval::det_points(&bona, s))),
        );
        eval::plot_det(path, &format!("DET: {}", engine.card().id()), &curves)
            .map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        let pct = |v: &serde_json::Value| {
            v.as_f64()
                .map_or("-".into(), |e| format!("{:.2}%", e * 100.0))
        };
        writeln!(
            out,
            "{} files ({} bonafide, {} spoof, {} failed, {} without speech); model {}",
            manifest.entries.len(),
            bona.len(),
            spoof.len(),
            failed,
            unscored,
            engine.card().id()
        )?;
        writeln!(
            out,
            "EER {} at p_spoof {}; minDCF {}",
            pct(&report["eer"]),
            report["eer_threshold"]
                .as_f64()
                .map_or("-".into(), |t| format!("{t:.3}")),
            report["min_dcf"]
                .as_f64()
                .map_or("-".into(), |d| format!("{d:.3}"))
        )?;
        for (name, v) in &systems {
            writeln!(out, "  {name:40} n={:4} EER {}", v["n"], pct(&v["eer"]))?;
        }
    }
    for o in &outcomes {
        if let Err(e) = &o.result {
            eprintln!("error: {}", with_path(&o.path, e));
        }
    }
    engine.shutdown();
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn devices(as_json: bool) -> Result<ExitCode> {
    let list = capture::list_devices();
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
    } else if list.is_empty() {
        writeln!(out, "no input devices found")?;
    } else {
        for d in &list {
            writeln!(
                out,
                "{} / {}{}  default: {}",
                d.host,
                d.name,
                if d.is_default { " (default)" } else { "" },
                d.default_config.as_deref().unwrap_or("-")
            )?;
            for c in &d.configs {
                writeln!(out, "    {c}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn new_token(tenant: &str) -> Result<ExitCode> {
    if !callguard::config::valid_name(tenant) {
        bail!("tenant {tenant:?} is not 1-64 letters, digits or -_.");
    }
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("cannot open /dev/urandom")?,
        &mut bytes,
    )?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let token = format!("cg_{token}");
    let mut out = std::io::stdout().lock();
    writeln!(out, "token (give to the client; it is not stored): {token}")?;
    writeln!(out, "config entry (append it to the end of config.toml):")?;
    writeln!(out, "[[server.tenants]]")?;
    writeln!(out, "name = {tenant:?}")?;
    writeln!(
        out,
        "token_sha256 = \"{}\"",
        callguard::grpc::token_sha256(&token)
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Waits for SIGINT or SIGTERM, then sets `stop`; on SIGHUP, every TLS listener reads its
/// certificate, key and client CA again (calls in progress keep their sessions).
fn watch_signals(stop: &'static AtomicBool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start signal runtime")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
                let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => break,
                        _ = term.recv() => break,
                        _ = hup.recv() => reload_tls(),
                    }
                }
            });
            tracing::info!("Signal received; shutting down.");
            stop.store(true, Ordering::SeqCst);
        })?;
    Ok(())
}

fn reload_tls() {
    let outcomes = callguard::tls::reload_all();
    if outcomes.is_empty() {
        tracing::info!("SIGHUP: no TLS listener to reload.");
    }
    for (listener, outcome) in outcomes {
        match outcome {
            Ok(()) => tracing::info!(listener, "SIGHUP: TLS certificates reloaded."),
            Err(e) => tracing::warn!(
                listener,
                error = %e,
                "SIGHUP: TLS certificates not reloaded; the previous ones stay in use."
            ),
        }
    }
}

fn sinks_status(config: &Config, as_json: bool) -> Result<ExitCode> {
    let log = callguard::alert::AlertLog::open_store(&config.store)?;
    let sinks = callguard::sinks::status(&config.sinks, &log)?;
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string(&sinks)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if sinks.is_empty() {
        writeln!(
            out,
            "no sinks configured ([[sinks.webhook]], [[sinks.syslog]])"
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<16} {:<8} {:>9} {:>8} {:>9} {:>9}  last error",
        "sink", "kind", "delivered", "pending", "failures", "after seq"
    )?;
    for s in &sinks {
        writeln!(
            out,
            "{:<16} {:<8} {:>9} {:>8} {:>9} {:>9}  {}",
            s.state.name,
            s.kind,
            s.state.delivered,
            s.pending,
            s.state.failures,
            s.state.sequence,
            s.state.last_error.as_deref().unwrap_or("-")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `error` with the file's path in front, unless it already names it.
fn with_path(path: &Path, error: &impl std::fmt::Display) -> String {
    let message = error.to_string();
    let shown = path.display().to_string();
    if message.contains(&shown) {
        message
    } else {
        format!("{shown}: {message}")
    }
}

/// What `Config::load` cannot see: the files the config names must exist and be readable.
fn check_config(config: &Config) -> Result<ExitCode> {
    let mut problems = Vec::new();
    let mut file = |key: &str, path: &Path| {
        if let Err(e) = std::fs::File::open(path) {
            problems.push(format!("{key}: {}: {e}", path.display()));
        }
    };
    file("detector.model", &config.detector.model);
    file("speech.vad_model", &config.speech.vad_model);
    if config.transcribe.enabled {
        file("transcribe.model", &config.transcribe.model);
    }
    for (key, tls) in [
        ("server.tls", config.server.tls.as_ref()),
        ("connectors.tls", config.connectors.tls.as_ref()),
        ("siprec.tls", config.siprec.tls.as_ref()),
    ] {
        if let Some(tls) = tls {
            file(&format!("{key}.cert"), &tls.cert);
            file(&format!("{key}.key"), &tls.key);
            if let Some(ca) = &tls.client_ca {
                file(&format!("{key}.client_ca"), ca);
            }
        }
    }
    if let Err(e) = callguard::assets::onnx_runtime() {
        problems.push(format!("ONNX Runtime: {e}"));
    }
    if problems.is_empty() {
        let mut out = std::io::stdout().lock();
        writeln!(out, "config OK")?;
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("config has {} problem(s):", problems.len());
    for p in &problems {
        eprintln!("  {p}");
    }
    Ok(ExitCode::from(1))
}

fn run_daemon(config: &Config, as_json: bool) -> Result<ExitCode> {
    static STOP: AtomicBool = AtomicBool::new(false);
    watch_signals(&STOP)?;
    let observer: callguard::guard::Observer = Box::new(move |event| {
        let mut out = std::io::stdout().lock();
        if let Err(e) = print_event(&mut out, event, as_json) {
            tracing::warn!(error = %e, "Cannot write an event to stdout.");
        }
    });
    let guard = Arc::new(Guard::start(config, Some(observer))?);
    let cluster = if config.cluster.is_active() {
        let local = Arc::new(callguard::cluster::GuardCalls(Arc::downgrade(&guard)));
        let cluster = Arc::new(callguard::cluster::Cluster::start(
            &config.cluster,
            &config.store,
            local,
        )?);
        guard.attach_cluster(cluster.clone());
        eprintln!(
            "callguard: cluster node {} (NATS {})",
            cluster.node(),
            config.cluster.nats.join(",")
        );
        Some(cluster)
    } else {
        None
    };
    let mut devices = config.capture.devices.clone();
    if devices.is_empty()
        && config.server.listen.is_none()
        && !config.connectors.is_active()
        && !config.siprec.is_active()
    {
        devices.push(callguard::config::CaptureDevice {
            name: "default".into(),
            caller_channel: None,
            call_id: None,
            tenant: None,
        });
    }
    for d in &devices {
        guard.bind_device(
            DeviceSpec {
                tenant: d.tenant.clone().unwrap_or_else(|| LOCAL_TENANT.into()),
                device: d.name.clone(),
                call_id: d.call_id.clone().unwrap_or_else(|| d.name.clone()),
                caller_channel: d.caller_channel,
                metadata: Default::default(),
            },
            true,
        )?;
    }
    let server = match config.server.listen {
        Some(addr) => Some(start_server(guard.clone(), addr, &STOP)?),
        None => None,
    };
    let connectors = if config.connectors.is_active() || config.siprec.is_active() {
        Some(start_connectors(guard.clone(), &STOP)?)
    } else {
        None
    };
    let ops = match config.http.listen {
        Some(addr) => Some(start_ops(guard.clone(), addr, &STOP)?),
        None => None,
    };
    // The cluster's publisher is a sink like the others: the alert log is its outbox.
    let publisher: Vec<_> = cluster
        .iter()
        .map(|c| callguard::sinks::Sink {
            name: callguard::cluster::PUBLISHER.into(),
            tenants: Vec::new(),
            backoff: callguard::sinks::Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(5),
            },
            out: Box::new(c.publisher()),
        })
        .collect();
    // On a single node the configured sinks deliver from the alert log; in a cluster from
    // the stream, once for the whole cluster.
    let mut cluster_sinks = match &cluster {
        Some(c) => Some(c.start_sinks(
            callguard::sinks::configured(&config.sinks)?,
            guard.metrics().clone(),
        )?),
        None => None,
    };
    let local_sinks = match cluster {
        Some(_) => callguard::config::SinksConfig::default(),
        None => config.sinks.clone(),
    };
    let mut sinks = if local_sinks.webhook.is_empty()
        && local_sinks.syslog.is_empty()
        && publisher.is_empty()
    {
        None
    } else {
        let log = Arc::new(callguard::alert::AlertLog::open_store(&config.store)?);
        Some(callguard::sinks::Sinks::start(
            &local_sinks,
            publisher,
            log,
            guard.metrics().clone(),
        )?)
    };
    guard.readiness().set_listeners_bound(true);
    eprintln!(
        "callguard: screening {} device(s) with {}; Ctrl-C to stop",
        devices.len(),
        guard.model()
    );
    let mut next_report = std::time::Instant::now() + STATS_INTERVAL;
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        if std::time::Instant::now() >= next_report {
            log_stats(&guard, "Detector status.");
            next_report += STATS_INTERVAL;
        }
    }
    if let Some((runtime, task)) = server {
        match runtime.block_on(task) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "gRPC server failed."),
            Err(e) => tracing::error!(error = %e, "gRPC server task failed."),
        }
    }
    if let Some((runtime, task)) = connectors {
        match runtime.block_on(task) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "Connectors failed."),
            Err(e) => tracing::error!(error = %e, "Connectors task failed."),
        }
    }
    if let Some((runtime, task)) = ops {
        match runtime.block_on(task) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "Operations listener failed."),
            Err(e) => tracing::error!(error = %e, "Operations listener task failed."),
        }
    }
    guard.shutdown();
    if let Some(s) = &mut sinks {
        s.shutdown();
    }
    if let Some(s) = &mut cluster_sinks {
        s.shutdown();
    }
    if let Some(c) = &cluster {
        c.shutdown();
    }
    log_stats(&guard, "Detector totals.");
    Ok(ExitCode::SUCCESS)
}

/// Resolves once the signal watcher has set `stop` (the shutdown future of every listener).
async fn stopped(stop: &'static AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tenant of configured devices that name none.
const LOCAL_TENANT: &str = "local";

type ServerTask = tokio::task::JoinHandle<Result<(), callguard::grpc::ServeError>>;

/// Binds `addr` and serves gRPC on a runtime of its own until `stop`.
fn start_server(
    guard: Arc<Guard>,
    addr: std::net::SocketAddr,
    stop: &'static AtomicBool,
) -> Result<(tokio::runtime::Runtime, ServerTask)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)))
        .thread_name("grpc")
        .enable_all()
        .build()
        .context("cannot start the gRPC runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let tls = if guard.config().server.tls.is_some() {
        "TLS"
    } else {
        "plaintext"
    };
    eprintln!("callguard: gRPC listening on {local} ({tls})");
    let task = runtime.spawn(callguard::grpc::serve(guard, listener, stopped(stop)));
    Ok((runtime, task))
}

type OpsTask = tokio::task::JoinHandle<Result<(), callguard::ops::HttpError>>;

/// Binds the `[http]` operations listener (`/metrics`, `/healthz`, `/readyz`) and serves it on
/// a one-thread runtime of its own until `stop`.
fn start_ops(
    guard: Arc<Guard>,
    addr: std::net::SocketAddr,
    stop: &'static AtomicBool,
) -> Result<(tokio::runtime::Runtime, OpsTask)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ops")
        .enable_all()
        .build()
        .context("cannot start the operations runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("cannot listen on {addr} ([http] listen)"))?;
    eprintln!(
        "callguard: operations HTTP listening on {} (/metrics, /healthz, /readyz)",
        listener.local_addr()?
    );
    let task = runtime.spawn(callguard::ops::serve(guard, listener, stopped(stop)));
    Ok((runtime, task))
}

type ConnectorsTask = tokio::task::JoinHandle<Result<(), callguard::connect::ConnectError>>;

/// Binds the `[connectors]` listeners and serves them on a runtime of their own until `stop`.
fn start_connectors(
    guard: Arc<Guard>,
    stop: &'static AtomicBool,
) -> Result<(tokio::runtime::Runtime, ConnectorsTask)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("connect")
        .enable_all()
        .build()
        .context("cannot start the connectors' runtime")?;
    let connectors = runtime.block_on(callguard::connect::Connectors::bind(
        &guard.config().connectors,
        &guard.config().siprec,
    ))?;
    if let Some((addr, tls)) = connectors.ws_addr() {
        let tls = if tls { "TLS" } else { "plaintext" };
        eprintln!(
            "callguard: connectors listening on {addr} ({tls}; /twilio/TENANT, /audiohook/TENANT)"
        );
    }
    for (addr, tenant) in connectors.audiosocket_addrs() {
        eprintln!("callguard: AudioSocket listening on {addr} (tenant {tenant})");
    }
    let (sip, sip_tls) = connectors.siprec_addrs();
    if let Some(addr) = sip {
        eprintln!("callguard: SIPREC listening on {addr} (UDP and TCP)");
    }
    if let Some(addr) = sip_tls {
        eprintln!("callguard: SIPREC-TLS listening on {addr}");
    }
    let task = runtime.spawn(connectors.serve(guard, stopped(stop)));
    Ok((runtime, task))
}

/// How often `run` logs detector counters.
const STATS_INTERVAL: Duration = Duration::from_secs(60);

fn log_stats(guard: &Guard, message: &'static str) {
    if let Some(stats) = guard.ingest_stats() {
        tracing::info!(
            chunks_lost = stats.chunks_lost.load(Ordering::Relaxed),
            chunks_failed = stats.chunks_failed.load(Ordering::Relaxed),
            live_calls = guard.registry().len(),
            subscribers = guard.hub().subscribers(),
            "Ingest status."
        );
    }
    guard.with_engine(|engine| {
        log_detector_stats(engine, message);
        log_transcribe_stats(engine);
    });
}

fn log_transcribe_stats(engine: &Engine) {
    let Some(t) = engine.transcribe_stats() else {
        return;
    };
    let audio_ms = t.audio_ms.load(Ordering::Relaxed);
    let busy_ms = t.busy_ns.load(Ordering::Relaxed) / 1_000_000;
    tracing::info!(
        transcribed = t.segments_transcribed.load(Ordering::Relaxed),
        no_speech = t.segments_no_speech.load(Ordering::Relaxed),
        skipped_queue_full = t.segments_skipped_full.load(Ordering::Relaxed),
        skipped_stale = t.segments_skipped_stale.load(Ordering::Relaxed),
        failed = t.segments_failed.load(Ordering::Relaxed),
        unintelligible = t.segments_unintelligible.load(Ordering::Relaxed),
        masked = t.masked.load(Ordering::Relaxed),
        queued_ms = engine.transcribe_queued_ms(),
        audio_ms,
        busy_ms,
        real_time_factor = busy_ms as f64 / audio_ms.max(1) as f64,
        "Transcription status."
    );
}

fn log_detector_stats(engine: &Engine, message: &'static str) {
    let Some(stats) = engine.pool_stats() else {
        return;
    };
    let scored = stats.windows_scored.load(Ordering::Relaxed);
    let batches = stats.batches.load(Ordering::Relaxed).max(1);
    tracing::info!(
        scored,
        dropped_queue_full = stats.windows_dropped_full.load(Ordering::Relaxed),
        failed = stats.windows_failed.load(Ordering::Relaxed),
        queue_depth = engine.queue_depth(),
        mean_batch_us = stats.inference_ns.load(Ordering::Relaxed) / batches / 1_000,
        "{message}"
    );
}

fn print_event(out: &mut impl Write, event: &EngineEvent, as_json: bool) -> Result<()> {
    match (event, as_json) {
        (EngineEvent::Window { call_id, score, .. }, true) => writeln!(
            out,
            "{}",
            json!({ "event": "window", "call_id": call_id.as_ref(), "window": score })
        )?,
        (EngineEvent::Alert { alert, .. }, true) => {
            writeln!(out, "{}", json!({ "event": "alert", "alert": alert }))?
        }
        (
            EngineEvent::Transcript {
                call_id, segment, ..
            },
            true,
        ) => writeln!(
            out,
            "{}",
            json!({ "event": "transcript", "call_id": call_id.as_ref(), "segment": segment })
        )?,
        (
            EngineEvent::Transcript {
                call_id, segment, ..
            },
            false,
        ) => write_segment(out, &format!("{call_id}: "), segment)?,
        (EngineEvent::Ended(s), true) => writeln!(
            out,
            "{}",
            json!({ "event": "ended", "summary": summary_json(s) })
        )?,
        (EngineEvent::Window { .. }, false) => {}
        (EngineEvent::Alert { alert, .. }, false) => writeln!(
            out,
            "ALERT {:?} call={} at={} p_spoof={:.3} risk={:.3}{}",
            alert.kind,
            alert.call_id,
            fmt_ms(Some(alert.audio_ms)),
            alert.p_spoof,
            alert.risk,
            fmt_cues(&alert.cues)
        )?,
        (EngineEvent::Ended(s), false) => write_summary(out, s)?,
    }
    out.flush()?;
    Ok(())
}
