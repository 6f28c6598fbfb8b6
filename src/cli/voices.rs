//! `callguard allow-voice`, `callguard enroll` and `callguard voices`: voiceprints of a tenant,
//! made from recordings run through the engine exactly as a call would be (speech gate,
//! windows, detector, speaker encoder), kept in the alert log's store without any audio.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use callguard::alert::AlertLog;
use callguard::config::Config;
use callguard::pipeline::{Engine, voiceprint};
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
    let made = voiceprint(&engine, &o.name, &o.files, o.min_speech_s)
        .map_err(|e| anyhow::anyhow!("a {} voiceprint: {e}", o.kind))?;
    let voice = made.voice;
    let log =
        AlertLog::open_store(&config.store).context("opening the store for the voiceprint")?;
    log.put_voice(&o.tenant, o.kind, &voice)?;
    let doc = json!({
        "tenant": o.tenant, "kind": o.kind, "name": o.name, "files": o.files.len(),
        "speech_s": (made.speech_s * 10.0).round() / 10.0, "windows": made.windows,
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
