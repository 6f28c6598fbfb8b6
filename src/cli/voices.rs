//! `callguard allow-voice`, `callguard enroll` and `callguard voices`: voiceprints of a tenant,
//! made from recordings run through the engine exactly as a call would be (speech gate,
//! windows, detector, speaker encoder), kept in the alert log's store without any audio.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use callguard::alert::AlertLog;
use callguard::audio::ChannelPick;
use callguard::config::Config;
use callguard::pipeline::{Engine, score_files};
use callguard::verdict::voice::Voiceprint;
use serde_json::json;

/// The kinds of voiceprint: `allowed` synthetic voices, `protected` people.
pub const ALLOWED: &str = "allowed";
pub const PROTECTED: &str = "protected";

pub struct Options {
    pub name: String,
    pub files: Vec<PathBuf>,
    pub tenant: String,
    pub kind: &'static str,
    /// Least speech over all the files, in seconds.
    pub min_speech_s: f64,
}

/// Fingerprints `files` as one voice and keeps it for the tenant.
pub fn make(config: &Config, o: &Options) -> Result<ExitCode> {
    if config.voice.speaker_model.is_none() {
        bail!(
            "voiceprints need the speaker encoder: set [voice] speaker_model = \"models/speaker.onnx\""
        );
    }
    if !config.server.tenants.iter().any(|t| t.name == o.tenant) {
        eprintln!(
            "callguard: tenant {:?} is not in [[server.tenants]]; kept for it anyway",
            o.tenant
        );
    }
    let mut scoring = config.clone();
    scoring.transcribe.enabled = false;
    let engine = Engine::start(&scoring)?;
    let outcomes = score_files(
        &engine,
        &o.files,
        ChannelPick::Mix,
        scoring.detector_workers(),
        &|_| {},
    );
    let mut sum = Vec::<f32>::new();
    let (mut windows, mut speech_ms) = (0u64, 0u64);
    let mut logits = Vec::new();
    for outcome in &outcomes {
        let s = outcome
            .result
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{}: {e}", outcome.path.display()))?;
        speech_ms += s.speech_ms;
        if let Some(e) = &s.voice_embedding {
            sum.resize(e.len(), 0.0);
            for (a, x) in sum.iter_mut().zip(e) {
                *a += x * s.voice_windows as f32;
            }
            windows += s.voice_windows;
        }
        logits.extend(s.timeline.iter().map(|w| {
            let p = w.p_spoof.clamp(1e-6, 1.0 - 1e-6);
            (p / (1.0 - p)).ln()
        }));
    }
    let speech_s = speech_ms as f64 / 1000.0;
    if speech_s < o.min_speech_s || windows == 0 {
        bail!(
            "{speech_s:.1} s of speech in {} file(s); a {} voiceprint needs at least {} s",
            o.files.len(),
            o.kind,
            o.min_speech_s
        );
    }
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt() + 1e-9;
    let mean = logits.iter().sum::<f32>() / logits.len().max(1) as f32;
    let var = logits.iter().map(|l| (l - mean).powi(2)).sum::<f32>() / logits.len().max(1) as f32;
    let voice = Voiceprint {
        name: o.name.clone(),
        embedding: sum.iter().map(|x| x / norm).collect(),
        logit_mean: mean,
        logit_std: var.sqrt(),
    };
    let log =
        AlertLog::open_store(&config.store).context("opening the store for the voiceprint")?;
    log.put_voice(&o.tenant, o.kind, &voice)?;
    let doc = json!({
        "tenant": o.tenant, "kind": o.kind, "name": o.name, "files": o.files.len(),
        "speech_s": (speech_s * 10.0).round() / 10.0, "windows": windows,
        "logit_mean": voice.logit_mean, "logit_std": voice.logit_std,
    });
    writeln!(std::io::stdout().lock(), "{doc}")?;
    Ok(ExitCode::SUCCESS)
}

/// Lists a tenant's voiceprints of `kind` (names and profiles, never embeddings), or removes one.
pub fn list(config: &Config, tenant: &str, kind: &str, remove: Option<&str>) -> Result<ExitCode> {
    let log = AlertLog::open_store(&config.store)?;
    if let Some(name) = remove {
        if !log.remove_voice(tenant, kind, name)? {
            eprintln!("callguard: no {kind} voice {name:?} for tenant {tenant:?}");
            return Ok(ExitCode::from(1));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let voices: Vec<_> = log
        .voices(tenant, kind)?
        .iter()
        .map(|v| json!({"name": v.name, "logit_mean": v.logit_mean, "logit_std": v.logit_std}))
        .collect();
    writeln!(
        std::io::stdout().lock(),
        "{}",
        json!({"tenant": tenant, "kind": kind, "voices": voices})
    )?;
    Ok(ExitCode::SUCCESS)
}
