//! Recorded audio through the live path: each file is a call, streamed in chunks through the
//! same engine, several files at once. Used by `scan`, `eval`, tests and benches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::engine::{CallSpec, CallSummary, Engine, EngineEvent, drive};
use crate::audio::file::FileSource;
use crate::audio::{AudioSource, ChannelPick};
use crate::config::WhenFull;
use crate::verdict::ChannelClass;
use crate::verdict::voice::Voiceprint;

/// Files keep every window on their timeline up to this many (about 140 hours of speech).
pub const FILE_TIMELINE_LIMIT: usize = 1_000_000;

#[derive(Debug)]
pub struct FileOutcome {
    pub path: PathBuf,
    pub result: Result<CallSummary, String>,
}

/// Scores `files` with `threads` reader threads; `on_done` is called as each file completes.
/// The outcomes are in the order of `files`. Each file's channel class comes from its sample
/// rate and codec ([`Engine::classify`]).
pub fn score_files(
    engine: &Engine,
    files: &[PathBuf],
    pick: ChannelPick,
    threads: usize,
    on_done: &(dyn Fn(&Path) + Sync),
) -> Vec<FileOutcome> {
    score_files_as(engine, files, pick, &Screening::default(), threads, on_done)
}

/// How recorded files are screened beyond their audio: as a channel class (recordings stored
/// as PCM that came through a lossy codec), and with a tenant's allowed synthetic voices.
#[derive(Debug, Clone, Default)]
pub struct Screening {
    pub class: Option<ChannelClass>,
    pub allowed_voices: Arc<[Voiceprint]>,
    /// A protected identity every file claims (`scan --claim`).
    pub claimed: Option<Arc<Voiceprint>>,
}

/// [`score_files`], screened as `screening` says.
pub fn score_files_as(
    engine: &Engine,
    files: &[PathBuf],
    pick: ChannelPick,
    screening: &Screening,
    threads: usize,
    on_done: &(dyn Fn(&Path) + Sync),
) -> Vec<FileOutcome> {
    let next = AtomicUsize::new(0);
    let opened = AtomicUsize::new(0);
    let errors: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; files.len()]);
    let mut summaries: Vec<Option<CallSummary>> = vec![None; files.len()];
    let never = AtomicBool::new(false);
    let index_of = |call_id: &str| call_id.parse::<usize>().ok();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.clamp(1, files.len().max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut vad = match engine.vad() {
                        Ok(v) => v,
                        Err(e) => {
                            // Fail every file this worker would have taken.
                            while let Some(i) = take(&next, files.len()) {
                                errors.lock().unwrap()[i] = Some(e.to_string());
                            }
                            return;
                        }
                    };
                    while let Some(i) = take(&next, files.len()) {
                        let outcome = score_one(
                            engine, &mut vad, &files[i], i, pick, screening, &opened, &never,
                        );
                        if let Err(e) = outcome {
                            errors.lock().unwrap()[i] = Some(e);
                        }
                    }
                })
            })
            .collect();
        let mut ended = 0;
        loop {
            let done = workers.iter().all(|w| w.is_finished());
            if done && ended == opened.load(Ordering::SeqCst) {
                break;
            }
            match engine.events().recv_timeout(Duration::from_millis(20)) {
                Ok(EngineEvent::Ended(summary)) => {
                    ended += 1;
                    if let Some(i) = index_of(&summary.call_id) {
                        on_done(&files[i]);
                        let mut s = *summary;
                        s.call_id = files[i].display().to_string();
                        summaries[i] = Some(s);
                    }
                }
                Ok(_) => {}
                Err(_) => {}
            }
        }
    });
    let errors = errors.into_inner().unwrap();
    files
        .iter()
        .zip(summaries)
        .zip(errors)
        .map(|((path, summary), error)| FileOutcome {
            path: path.clone(),
            result: match (error, summary) {
                (Some(e), _) => Err(e),
                (None, Some(s)) => Ok(s),
                (None, None) => Err("no result (internal error)".into()),
            },
        })
        .collect()
}

fn take(next: &AtomicUsize, len: usize) -> Option<usize> {
    let i = next.fetch_add(1, Ordering::SeqCst);
    (i < len).then_some(i)
}

#[allow(clippy::too_many_arguments)]
fn score_one(
    engine: &Engine,
    vad: &mut crate::detect::SileroVad,
    path: &Path,
    index: usize,
    pick: ChannelPick,
    screening: &Screening,
    opened: &AtomicUsize,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut source = FileSource::open(path).map_err(|e| e.to_string())?;
    let format = source.format();
    let spec = CallSpec {
        id: index.to_string(),
        format,
        channel_class: screening
            .class
            .unwrap_or_else(|| engine.classify(format.sample_rate, source.is_g711())),
        // Recorded audio has no deadline: wait for the detector rather than drop windows.
        when_full: WhenFull::Block,
        pick,
        timeline_limit: FILE_TIMELINE_LIMIT,
        recorded: true,
        allowed_voices: screening.allowed_voices.clone(),
        claimed: screening.claimed.clone(),
    };
    let call = engine.open_call(spec).map_err(|e| e.to_string())?;
    opened.fetch_add(1, Ordering::SeqCst);
    drive(call, vad, &mut source, stop).map_err(|e| e.to_string())
}

/// A voiceprint made from recordings, and what it was made of.
#[derive(Debug, Clone)]
pub struct VoiceprintMade {
    pub voice: Voiceprint,
    pub speech_s: f64,
    pub windows: u64,
}

/// One voice from `files`, run through the engine as calls are (speech gate, windows, detector,
/// speaker encoder): the mean of every window's embedding and the detector's logit profile.
/// Needs a speaker encoder; an unreadable file, or less than `min_speech_s` of speech over all
/// the files, is an error that says so.
pub fn voiceprint(
    engine: &Engine,
    name: &str,
    files: &[PathBuf],
    min_speech_s: f64,
) -> Result<VoiceprintMade, String> {
    let outcomes = score_files(engine, files, ChannelPick::Mix, 2, &|_| {});
    let mut sum = Vec::<f32>::new();
    let (mut windows, mut speech_ms) = (0u64, 0u64);
    let mut logits = Vec::new();
    for outcome in &outcomes {
        let s = outcome
            .result
            .as_ref()
            .map_err(|e| format!("{}: {e}", outcome.path.display()))?;
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
    if windows == 0 {
        return Err("no speaker embedding: is [voice] speaker_model set?".into());
    }
    if speech_s < min_speech_s {
        return Err(format!(
            "{speech_s:.1} s of speech in {} file(s); this voiceprint needs at least {min_speech_s} s",
            files.len()
        ));
    }
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt() + 1e-9;
    let n = logits.len().max(1) as f32;
    let mean = logits.iter().sum::<f32>() / n;
    let var = logits.iter().map(|l| (l - mean).powi(2)).sum::<f32>() / n;
    Ok(VoiceprintMade {
        voice: Voiceprint {
            name: name.to_owned(),
            embedding: sum.iter().map(|x| x / norm).collect(),
            logit_mean: mean,
            logit_std: var.sqrt(),
        },
        speech_s,
        windows,
    })
}
