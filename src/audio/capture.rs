//! Live capture through cpal. The device callback only converts samples into a pre-sized
//! lock-free ring and counts what did not fit; a supervisor thread owns the stream, sorts device
//! errors and rebuilds a lost stream with exponential backoff instead of crashing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{Data, FromSample, Sample, SampleFormat, SizedSample, StreamConfig};
use rtrb::{Consumer, Producer, RingBuffer};

use super::{AudioError, AudioSource, Read, SourceFormat};

/// Counters shared between the callback, the supervisor and the pipeline.
#[derive(Debug, Default)]
pub struct CaptureStats {
    /// Samples the callback could not queue (the pipeline fell behind).
    pub overrun_samples: AtomicU64,
    /// Callbacks that found the ring in use by a stream being rebuilt.
    pub contended_callbacks: AtomicU64,
    /// Errors reported by the device.
    pub device_errors: AtomicU64,
    /// Times the stream was rebuilt after an error.
    pub rebuilds: AtomicU64,
    /// Samples delivered by the device.
    pub captured_samples: AtomicU64,
}

/// How to open a device.
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    /// Device name from `callguard devices`, or "default".
    pub device: String,
    pub queue_ms: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

/// A live device as an [`AudioSource`]; dropping it stops the device.
pub struct CaptureSource {
    format: SourceFormat,
    consumer: Consumer<f32>,
    stop: Arc<AtomicBool>,
    stats: Arc<CaptureStats>,
    supervisor: Option<JoinHandle<()>>,
    poll: Duration,
}

fn find_device(name: &str) -> Result<cpal::Device, AudioError> {
    let host = cpal::default_host();
    if name == "default" {
        return host
            .default_input_device()
            .ok_or_else(|| AudioError::Device("no default input device".into()));
    }
    let devices = host
        .input_devices()
        .map_err(|e| AudioError::Device(e.to_string()))?;
    for device in devices {
        if device.name().is_ok_and(|n| n == name) {
            return Ok(device);
        }
    }
    Err(AudioError::Device(format!(
        "input device {name:?} not found"
    )))
}

/// Converts and queues one callback's samples; never allocates, blocks or logs.
fn queue_samples<T>(input: &[T], channels: usize, ring: &Mutex<Producer<f32>>, stats: &CaptureStats)
where
    T: Sample,
    f32: FromSample<T>,
{
    stats
        .captured_samples
        .fetch_add(input.len() as u64, Ordering::Relaxed);
    let Ok(mut producer) = ring.try_lock() else {
        stats.contended_callbacks.fetch_add(1, Ordering::Relaxed);
        stats
            .overrun_samples
            .fetch_add(input.len() as u64, Ordering::Relaxed);
        return;
    };
    // Whole frames only, so channels never slip.
    let n = producer.slots().min(input.len()) / channels * channels;
    if let Ok(chunk) = producer.write_chunk_uninit(n) {
        chunk.fill_from_iter(input[..n].iter().map(|&s| s.to_sample::<f32>()));
    }
    if n < input.len() {
        stats
            .overrun_samples
            .fetch_add((input.len() - n) as u64, Ordering::Relaxed);
    }
}

fn build_stream(
    device: &cpal::Device,
    config: &StreamConfig,
    format: SampleFormat,
    ring: Arc<Mutex<Producer<f32>>>,
    stats: Arc<CaptureStats>,
    failed: Arc<AtomicBool>,
) -> Result<cpal::Stream, AudioError> {
    let channels = config.channels as usize;
    let err_stats = stats.clone();
    let on_error = move |_err: cpal::StreamError| {
        // Both variants end this stream's usefulness: the supervisor rebuilds it.
        err_stats.device_errors.fetch_add(1, Ordering::Relaxed);
        failed.store(true, Ordering::Release);
    };
    fn typed<T>(data: &Data) -> &[T]
    where
        T: SizedSample,
    {
        data.as_slice::<T>().unwrap_or(&[])
    }
    let on_data = move |data: &Data, _: &cpal::InputCallbackInfo| match data.sample_format() {
        SampleFormat::F32 => queue_samples(typed::<f32>(data), channels, &ring, &stats),
        SampleFormat::I16 => queue_samples(typed::<i16>(data), channels, &ring, &stats),
        SampleFormat::I32 => queue_samples(typed::<i32>(data), channels, &ring, &stats),
        SampleFormat::U16 => queue_samples(typed::<u16>(data), channels, &ring, &stats),
        SampleFormat::U8 => queue_samples(typed::<u8>(data), channels, &ring, &stats),
        SampleFormat::I8 => queue_samples(typed::<i8>(data), channels, &ring, &stats),
        SampleFormat::F64 => queue_samples(typed::<f64>(data), channels, &ring, &stats),
        _ => {
            stats
                .overrun_samples
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    };
    let stream = device
        .build_input_stream_raw(config, format, on_data, on_error, None)
        .map_err(|e| AudioError::Device(e.to_string()))?;
    stream
        .play()
        .map_err(|e| AudioError::Device(e.to_string()))?;
    Ok(stream)
}

impl CaptureSource {
    /// Opens the device in its default input configuration and starts capturing.
    pub fn open(spec: &CaptureSpec) -> Result<Self, AudioError> {
        let device = find_device(&spec.device)?;
        let supported = device
            .default_input_config()
            .map_err(|e| AudioError::Device(e.to_string()))?;
        let sample_format = supported.sample_format();
        let config: StreamConfig = supported.config();
        let format = SourceFormat {
            sample_rate: config.sample_rate.0,
            channels: config.channels,
        }
        .validate()?;
        let capacity = (format.sample_rate as usize * format.channels as usize)
            * spec.queue_ms as usize
            / 1000;
        let (producer, consumer) = RingBuffer::new(capacity.max(1024));
        let ring = Arc::new(Mutex::new(producer));
        let stats = Arc::new(CaptureStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = crossbeam_channel::bounded(1);
        let supervisor = {
            let (spec, stop, stats) = (spec.clone(), stop.clone(), stats.clone());
            // cpal streams are not Send: the supervisor thread builds the stream and owns it;
            // its first build result is reported back so a bad device is an error here.
            std::thread::Builder::new()
                .name(format!("capture-{}", spec.device))
                .spawn(move || {
                    supervise(
                        spec,
                        config,
                        sample_format,
                        ring,
                        stats,
                        failed,
                        stop,
                        started_tx,
                    )
                })
                .map_err(|e| AudioError::Device(e.to_string()))?
        };
        started_rx
            .recv()
            .map_err(|_| AudioError::Device("capture thread failed to start".into()))??;
        Ok(Self {
            format,
            consumer,
            stop,
            stats,
            supervisor: Some(supervisor),
            poll: Duration::from_millis(10),
        })
    }

    pub fn stats(&self) -> Arc<CaptureStats> {
        self.stats.clone()
    }

    /// A handle that stops the capture (and ends the source) from another thread.
    pub fn stopper(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }
}

#[allow(clippy::too_many_arguments)]
fn supervise(
    spec: CaptureSpec,
    config: StreamConfig,
    sample_format: SampleFormat,
    ring: Arc<Mutex<Producer<f32>>>,
    stats: Arc<CaptureStats>,
    failed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    started: crossbeam_channel::Sender<Result<(), AudioError>>,
) {
    let open = |failed: &Arc<AtomicBool>| {
        let device = find_device(&spec.device)?;
        build_stream(
            &device,
            &config,
            sample_format,
            ring.clone(),
            stats.clone(),
            failed.clone(),
        )
    };
    let mut stream = match open(&failed) {
        Ok(s) => Some(s),
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let _ = started.send(Ok(()));
    let mut backoff = spec.retry_initial;
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(20));
        if !failed.load(Ordering::Acquire) {
            continue;
        }
        // Drop the broken stream before building another one on the same ring.
        stream = None;
        tracing::warn!(device = %spec.device, retry_in_ms = backoff.as_millis() as u64, "Capture device failed; rebuilding.");
        let deadline = std::time::Instant::now() + backoff;
        while std::time::Instant::now() < deadline && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(20));
        }
        failed.store(false, Ordering::Release);
        match open(&failed) {
            Ok(s) => {
                stats.rebuilds.fetch_add(1, Ordering::Relaxed);
                tracing::info!(device = %spec.device, "Capture device rebuilt.");
                stream = Some(s);
                backoff = spec.retry_initial;
            }
            Err(e) => {
                tracing::warn!(device = %spec.device, error = %e, "Capture device still unavailable.");
                failed.store(true, Ordering::Release);
                backoff = (backoff * 2).min(spec.retry_max);
            }
        }
    }
    drop(stream);
}

impl AudioSource for CaptureSource {
    fn format(&self) -> SourceFormat {
        self.format
    }

    fn read(&mut self, out: &mut Vec<f32>) -> Result<Read, AudioError> {
        out.clear();
        if self.stop.load(Ordering::Acquire) {
            return Ok(Read::End);
        }
        let available = self.consumer.slots();
        if available == 0 {
            std::thread::sleep(self.poll);
            return Ok(Read::Samples);
        }
        if let Ok(chunk) = self.consumer.read_chunk(available) {
            let (a, b) = chunk.as_slices();
            out.extend_from_slice(a);
            out.extend_from_slice(b);
            chunk.commit_all();
        }
        Ok(Read::Samples)
    }
}

impl Drop for CaptureSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.supervisor.take() {
            let _ = h.join();
        }
    }
}

/// One input device as `callguard devices` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    pub host: String,
    pub name: String,
    pub is_default: bool,
    pub default_config: Option<String>,
    pub configs: Vec<String>,
}

/// Every host's input devices and their supported configurations.
pub fn list_devices() -> Vec<DeviceInfo> {
    let mut out = Vec::new();
    for host_id in cpal::available_hosts() {
        let Ok(host) = cpal::host_from_id(host_id) else {
            continue;
        };
        let default_name = host.default_input_device().and_then(|d| d.name().ok());
        let Ok(devices) = host.input_devices() else {
            continue;
        };
        for device in devices {
            let name = device.name().unwrap_or_else(|_| "<unnamed>".into());
            let configs = device
                .supported_input_configs()
                .map(|cs| {
                    cs.map(|c| {
                        format!(
                            "{} ch, {}-{} Hz, {}",
                            c.channels(),
                            c.min_sample_rate().0,
                            c.max_sample_rate().0,
                            c.sample_format()
                        )
                    })
                    .collect()
                })
                .unwrap_or_default();
            let default_config = device.default_input_config().ok().map(|c| {
                format!(
                    "{} ch, {} Hz, {}",
                    c.channels(),
                    c.sample_rate().0,
                    c.sample_format()
                )
            });
            out.push(DeviceInfo {
                host: host_id.name().to_owned(),
                is_default: default_name.as_deref() == Some(name.as_str()),
                name,
                default_config,
                configs,
            });
        }
    }
    out
}
