//! Sound devices screened as calls (a desk phone's line input, one channel of an interface):
//! one thread per device with its own VAD session, reopening the device with backoff when it
//! fails or vanishes. Each reopening is a new call, `<call id>#<n>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Shared;
use super::registry::{CallEntry, CallSource, EndSignal, RegisterError};
use crate::alert::CallMeta;
use crate::audio::capture::{CaptureSource, CaptureSpec};
use crate::audio::{AudioError, AudioSource, ChannelPick};
use crate::pipeline::{CallSpec, EngineError, drive};

/// A device and the call it is screened as.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub tenant: String,
    pub device: String,
    pub call_id: String,
    pub caller_channel: Option<u16>,
    pub metadata: CallMeta,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{0}")]
    Invalid(String),
    #[error("device {device:?}: {source}")]
    Device { device: String, source: AudioError },
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot start the device thread: {0}")]
    Thread(std::io::Error),
}

/// Live device calls keep this many windows on their engine timeline.
const TIMELINE_LIMIT: usize = 2_000;

pub(super) fn start(
    shared: Arc<Shared>,
    spec: DeviceSpec,
    end: Arc<EndSignal>,
    wait_for_device: bool,
) -> Result<JoinHandle<()>, BindError> {
    if !super::stream::valid_call_id(&spec.call_id) || spec.device.trim().is_empty() {
        return Err(BindError::Invalid(format!(
            "device {:?} as call {:?}: the device needs a name and the call id 1-128 letters, digits or -_.:@#",
            spec.device, spec.call_id
        )));
    }
    let c = &shared.config.capture;
    let capture = CaptureSpec {
        device: spec.device.clone(),
        queue_ms: c.queue_ms,
        retry_initial: Duration::from_millis(c.retry_initial_ms),
        retry_max: Duration::from_millis(c.retry_max_ms),
    };
    if shared
        .registry
        .with_id(&spec.tenant, &spec.call_id, |_| ())
        .is_some()
    {
        return Err(RegisterError::AlreadyLive(spec.call_id).into());
    }
    let first = if wait_for_device {
        None
    } else {
        Some(
            CaptureSource::open(&capture).map_err(|source| BindError::Device {
                device: spec.device.clone(),
                source,
            })?,
        )
    };
    let mut vad = shared.with_engine(|e| e.vad())??;
    std::thread::Builder::new()
        .name(format!("device-{}", spec.device))
        .spawn(move || {
            let mut source = first;
            let mut backoff = capture.retry_initial;
            let mut session = 0u32;
            let stop = end.flag().clone();
            let stopping = || stop.load(Ordering::SeqCst) || shared.stopping.load(Ordering::SeqCst);
            while !stopping() {
                let mut src = match source.take().map_or_else(|| CaptureSource::open(&capture), Ok) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(device = %spec.device, error = %e, retry_in_ms = backoff.as_millis() as u64, "Capture device unavailable.");
                        sleep_unless(&stop, backoff);
                        backoff = (backoff * 2).min(capture.retry_max);
                        continue;
                    }
                };
                backoff = capture.retry_initial;
                let id = match session {
                    0 => spec.call_id.clone(),
                    n => format!("{}#{n}", spec.call_id),
                };
                session += 1;
                let result = screen(&shared, &spec, &id, &end, &mut src, &mut vad, &stop);
                let stats = src.stats();
                tracing::info!(
                    device = %spec.device,
                    call_id = %id,
                    overrun_samples = stats.overrun_samples.load(Ordering::Relaxed),
                    device_errors = stats.device_errors.load(Ordering::Relaxed),
                    rebuilds = stats.rebuilds.load(Ordering::Relaxed),
                    "Capture stopped."
                );
                if let Err(e) = result {
                    tracing::warn!(device = %spec.device, error = %e, "Device call ended with an error; reopening.");
                    sleep_unless(&stop, backoff);
                }
            }
        })
        .map_err(BindError::Thread)
}

fn screen(
    shared: &Shared,
    spec: &DeviceSpec,
    id: &str,
    end: &Arc<EndSignal>,
    source: &mut CaptureSource,
    vad: &mut crate::detect::SileroVad,
    stop: &AtomicBool,
) -> Result<(), BindError> {
    let format = source.format();
    // What the engine screens the call as, for the registry entry made after it opens.
    let screened_as = std::cell::Cell::new((crate::verdict::ChannelClass::Wideband, 0.0));
    let allowed = shared.allowed_voices(&spec.tenant);
    let claimed = shared.claimed_identity(&spec.tenant, &spec.metadata);
    let (_, call) = shared.registry.open(
        &spec.tenant,
        id,
        shared.config.server.max_calls_per_tenant,
        || -> Result<_, BindError> {
            let call = shared.with_engine(|e| {
                e.open_call(CallSpec {
                    id: id.to_owned(),
                    format,
                    pick: ChannelPick::from_option(spec.caller_channel),
                    // A sound device delivers PCM: its rate says whether it is narrowband.
                    channel_class: e.classify(format.sample_rate, false),
                    when_full: shared.config.detector.when_full,
                    timeline_limit: TIMELINE_LIMIT,
                    recorded: false,
                    allowed_voices: allowed.clone(),
                    claimed: claimed.clone(),
                })
            })??;
            screened_as.set((call.channel_class(), call.enter_threshold()));
            Ok((call.key(), call))
        },
        || {
            CallEntry::opened(
                &spec.tenant,
                id,
                CallSource::Device,
                screened_as.get(),
                spec.metadata.clone(),
                end.clone(),
            )
        },
    )?;
    drive(call, vad, source, stop)?;
    Ok(())
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
}
