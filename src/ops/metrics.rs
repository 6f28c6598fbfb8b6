//! Prometheus metrics, in the conventions Prometheus documents: base units (seconds), `_total`
//! counters, histograms for latencies.
//!
//! Most numbers already exist as the stages' own atomic counters (the detector pool's, the
//! ingest workers', the hub's, each call's frame counters); [`GuardCollector`] reads them at
//! scrape time, so nothing on the audio path pays for metrics. What no stage counts (latency
//! histograms, alerts by kind, connector errors) lives in [`Metrics`], which the guard owns and
//! the stages bump where the event already happens, never from a per-sample loop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::guard::{CallSource, Guard};

/// A latency histogram in seconds (buckets 100 µs .. about 13 s, doubling).
#[derive(Debug, Clone)]
pub struct SecondsHistogram(Histogram);

impl Default for SecondsHistogram {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(0.000_1, 2.0, 18)))
    }
}

impl SecondsHistogram {
    /// Buckets for call-audio delays (0.25 s .. 64 s, doubling).
    pub fn call_time() -> Self {
        Self(Histogram::new(exponential_buckets(0.25, 2.0, 9)))
    }

    pub fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }

    pub fn observe_secs(&self, secs: f64) {
        self.0.observe(secs);
    }
}

type StaticLabels = [(&'static str, &'static str); 2];
type SinkLabel = [(&'static str, String); 1];

/// What no stage counts by itself.
#[derive(Debug)]
pub struct Metrics {
    /// Call audio from the first speech window to the first clone alert.
    pub first_alert_after_speech: SecondsHistogram,
    /// One alert-log commit.
    pub alert_commit: SecondsHistogram,
    pub alert_commit_failures: Counter,
    /// Alerts waiting for the log to take them.
    pub alerts_pending: AtomicU64,
    alerts: Family<StaticLabels, Counter>,
    connector_errors: Family<StaticLabels, Counter>,
    /// Failed and throttled authentications (gRPC and the supervisor's login share them).
    pub auth: Arc<crate::grpc::auth::FailedAuth>,
    sink_delivered: Family<SinkLabel, Counter>,
    sink_failures: Family<SinkLabel, Counter>,
    sink_pending: Family<SinkLabel, Gauge>,
    /// Totals of calls that have ended; live calls are added at scrape time.
    ended: EndedTotals,
}

#[derive(Debug, Default)]
struct EndedTotals {
    calls: AtomicU64,
    audio_ms: AtomicU64,
    frames_received: AtomicU64,
    frames_rejected: AtomicU64,
    frames_lost: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct EndedSnapshot {
    calls: u64,
    audio_ms: u64,
    frames_received: u64,
    frames_rejected: u64,
    frames_lost: u64,
}

impl EndedTotals {
    fn snapshot(&self) -> EndedSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EndedSnapshot {
            calls: r(&self.calls),
            audio_ms: r(&self.audio_ms),
            frames_received: r(&self.frames_received),
            frames_rejected: r(&self.frames_rejected),
            frames_lost: r(&self.frames_lost),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            first_alert_after_speech: SecondsHistogram::call_time(),
            alert_commit: SecondsHistogram::default(),
            alert_commit_failures: Counter::default(),
            alerts_pending: AtomicU64::new(0),
            alerts: Family::default(),
            connector_errors: Family::default(),
            auth: Arc::default(),
            sink_delivered: Family::default(),
            sink_failures: Family::default(),
            sink_pending: Family::default(),
            ended: EndedTotals::default(),
        }
    }
}

/// One call's totals when it ends.
pub struct EndedCall {
    pub audio_ms: u64,
    pub frames_received: u64,
    pub frames_rejected: u64,
    pub frames_lost: u64,
}

impl Metrics {
    pub fn alert_logged(&self, kind: &'static str, severity: &'static str) {
        self.alerts
            .get_or_create(&[("kind", kind), ("severity", severity)])
            .inc();
    }

    /// A connector refused or lost something: `connector` is `siprec`, `twilio`, `audiohook`
    /// or `audiosocket`; `reason` a short snake_case word (`unauthorized`, `malformed`, ...).
    pub fn connector_error(&self, connector: &'static str, reason: &'static str) {
        self.connector_errors
            .get_or_create(&[("connector", connector), ("reason", reason)])
            .inc();
    }

    pub fn sink_delivered(&self, sink: &str) {
        self.sink_delivered
            .get_or_create(&[("sink", sink.to_owned())])
            .inc();
    }

    pub fn sink_failed(&self, sink: &str) {
        self.sink_failures
            .get_or_create(&[("sink", sink.to_owned())])
            .inc();
    }

    pub fn sink_pending(&self, sink: &str, n: u64) {
        self.sink_pending
            .get_or_create(&[("sink", sink.to_owned())])
            .set(n as i64);
    }

    pub fn call_ended(&self, c: EndedCall) {
        let e = &self.ended;
        e.calls.fetch_add(1, Ordering::Relaxed);
        e.audio_ms.fetch_add(c.audio_ms, Ordering::Relaxed);
        e.frames_received
            .fetch_add(c.frames_received, Ordering::Relaxed);
        e.frames_rejected
            .fetch_add(c.frames_rejected, Ordering::Relaxed);
        e.frames_lost.fetch_add(c.frames_lost, Ordering::Relaxed);
    }
}

/// The daemon's `/metrics` page.
pub struct Exposition {
    registry: Registry,
}

/// OpenMetrics text, which Prometheus reads natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Exposition {
    pub fn new(guard: Arc<Guard>) -> Self {
        let mut registry = Registry::with_prefix("callguard");
        registry.register(
            "build",
            "The running build and detector model.",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("model", guard.model().to_owned()),
            ]),
        );
        registry.register_collector(Box::new(GuardCollector { guard }));
        Self { registry }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Reads the guard's counters at scrape time.
struct GuardCollector {
    guard: Arc<Guard>,
}

impl std::fmt::Debug for GuardCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuardCollector")
    }
}

fn source_name(s: CallSource) -> &'static str {
    match s {
        CallSource::Stream => "stream",
        CallSource::Device => "device",
        CallSource::Twilio => "twilio",
        CallSource::AudioSocket => "audiosocket",
        CallSource::AudioHook => "audiohook",
        CallSource::Siprec => "siprec",
    }
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: impl prometheus_client::encoding::EncodeCounterValue + Copy,
) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, unit, c.metric_type())?)
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: impl prometheus_client::encoding::EncodeGaugeValue + Copy,
) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &SecondsHistogram,
) -> std::fmt::Result {
    h.0.encode(e.encode_descriptor(name, help, Some(&Unit::Seconds), h.0.metric_type())?)
}

impl Collector for GuardCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let g = &self.guard;
        let m = g.metrics();
        let relaxed = |a: &AtomicU64| a.load(Ordering::Relaxed);

        // Calls: live by source and tenant, and totals including the live ones.
        let (census, ended) = g.registry().census(|| m.ended.snapshot());
        let mut live: BTreeMap<(&'static str, Arc<str>), u64> = BTreeMap::new();
        let (mut audio_ms, mut received, mut rejected, mut lost) = (0, 0, 0, 0);
        for c in &census {
            *live
                .entry((source_name(c.source), c.tenant.clone()))
                .or_default() += 1;
            audio_ms += c.audio_ms;
            received += c.frames_received;
            rejected += c.frames_rejected;
            lost += c.frames_lost;
        }
        {
            let mut calls = e.encode_descriptor(
                "calls_live",
                "Calls being screened now.",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for ((source, tenant), n) in &live {
                let labels = [("source", *source), ("tenant", tenant.as_ref())];
                ConstGauge::new(*n).encode(calls.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut e,
            "calls_ended",
            "Calls that have ended.",
            None,
            ended.calls,
        )?;
        counter(
            &mut e,
            "audio",
            "Caller audio received.",
            Some(&Unit::Seconds),
            (ended.audio_ms + audio_ms) as f64 / 1000.0,
        )?;
        counter(
            &mut e,
            "frames_received",
            "Audio frames received from streamed calls and connectors.",
            None,
            ended.frames_received + received,
        )?;
        counter(
            &mut e,
            "frames_rejected",
            "Audio frames refused (malformed, out of order).",
            None,
            ended.frames_rejected + rejected,
        )?;
        counter(
            &mut e,
            "frames_lost",
            "Audio frames lost (sequence gaps, packets lost, full queues).",
            None,
            ended.frames_lost + lost,
        )?;

        // Ingest (speech gating).
        if let Some(s) = g.ingest_stats() {
            counter(
                &mut e,
                "ingest_chunks_lost",
                "Audio chunks dropped because an ingest queue was full.",
                None,
                relaxed(&s.chunks_lost),
            )?;
            counter(
                &mut e,
                "ingest_chunks_failed",
                "Audio chunks the pipeline could not process.",
                None,
                relaxed(&s.chunks_failed),
            )?;
            histogram(
                &mut e,
                "vad_run",
                "One speech-detection run over a batch of calls' frames.",
                &s.vad_run,
            )?;
        }

        // Detection.
        g.with_engine(|engine| -> std::fmt::Result {
            gauge(
                &mut e,
                "detector_queue_windows",
                "Windows waiting for a detector worker.",
                engine.queue_depth() as u64,
            )?;
            if let Some(p) = engine.pool_stats() {
                counter(
                    &mut e,
                    "windows_scored",
                    "Windows the detector scored.",
                    None,
                    relaxed(&p.windows_scored),
                )?;
                counter(
                    &mut e,
                    "windows_cleared_first_stage",
                    "Windows the detector cascade's first stage cleared (the full model did not run).",
                    None,
                    relaxed(&p.windows_cleared_first_stage),
                )?;
                counter(
                    &mut e,
                    "windows_dropped",
                    "Windows dropped because the detector queue was full (intentional).",
                    None,
                    relaxed(&p.windows_dropped_full),
                )?;
                counter(
                    &mut e,
                    "windows_failed",
                    "Windows the detector failed on.",
                    None,
                    relaxed(&p.windows_failed),
                )?;
                histogram(
                    &mut e,
                    "detector_window",
                    "Detector inference time per window.",
                    &p.window_time,
                )?;
            }
            // Exported at zero when transcription is off, so dashboards always find them.
            let t = engine.transcribe_stats();
            let read = |f: fn(&crate::transcribe::TranscribeStats) -> u64| t.map_or(0, f);
            counter(
                &mut e,
                "transcribe_segments",
                "Speech segments transcribed.",
                None,
                read(|t| t.segments_transcribed.load(Ordering::Relaxed)),
            )?;
            counter(
                &mut e,
                "transcribe_segments_skipped",
                "Speech segments not transcribed because transcription was behind.",
                None,
                read(|t| t.skipped()),
            )?;
            counter(
                &mut e,
                "transcribe_segments_failed",
                "Speech segments transcription failed on.",
                None,
                read(|t| t.segments_failed.load(Ordering::Relaxed)),
            )?;
            counter(
                &mut e,
                "transcribe_segments_unintelligible",
                "Speech segments whose transcription looped even after the fallback (no text shown).",
                None,
                read(|t| t.segments_unintelligible.load(Ordering::Relaxed)),
            )?;
            Ok(())
        })
        .transpose()?;

        // Alerts.
        m.alerts.encode(e.encode_descriptor(
            "alerts",
            "Alerts committed to the alert log, by kind and severity.",
            None,
            m.alerts.metric_type(),
        )?)?;
        histogram(
            &mut e,
            "first_alert_after_speech",
            "Call audio from the first scored speech to a call's first clone alert.",
            &m.first_alert_after_speech,
        )?;
        histogram(
            &mut e,
            "alert_commit",
            "One alert-log commit.",
            &m.alert_commit,
        )?;
        m.alert_commit_failures.encode(e.encode_descriptor(
            "alert_commit_failures",
            "Alert-log commits that failed (the alert is kept and retried).",
            None,
            m.alert_commit_failures.metric_type(),
        )?)?;
        gauge(
            &mut e,
            "alerts_pending",
            "Alerts waiting for the alert log to take them.",
            relaxed(&m.alerts_pending),
        )?;
        let (published, overflowed) = g.hub().counts();
        counter(
            &mut e,
            "alerts_published",
            "Alerts handed to live subscribers.",
            None,
            published,
        )?;
        counter(
            &mut e,
            "subscriber_overflows",
            "Live deliveries that did not fit a slow subscriber's queue (it catches up from the log).",
            None,
            overflowed,
        )?;
        gauge(
            &mut e,
            "subscribers",
            "Live StreamAlerts subscribers.",
            g.hub().subscribers() as u64,
        )?;

        // Delivery to the SOC.
        for (family, name, help) in [
            (
                &m.sink_delivered,
                "sink_delivered",
                "Alerts a sink delivered.",
            ),
            (
                &m.sink_failures,
                "sink_failures",
                "Failed delivery attempts (each is retried).",
            ),
        ] {
            family.encode(e.encode_descriptor(name, help, None, family.metric_type())?)?;
        }
        m.sink_pending.encode(e.encode_descriptor(
            "sink_pending_alerts",
            "Alerts waiting for a sink (its receiver down or slow).",
            None,
            m.sink_pending.metric_type(),
        )?)?;

        // Connectors and readiness.
        m.connector_errors.encode(e.encode_descriptor(
            "connector_errors",
            "Sessions or messages a connector refused or lost, by connector and reason.",
            None,
            m.connector_errors.metric_type(),
        )?)?;
        counter(
            &mut e,
            "auth_failures",
            "Requests and logins with a missing or unknown token (gRPC, supervisor).",
            None,
            m.auth.failed.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "auth_throttled",
            "Requests and logins refused unread: their peer had failed too often lately.",
            None,
            m.auth.throttled.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut e,
            "ready",
            "1 when /readyz reports ready.",
            u64::from(g.readiness().state().check().is_ok()),
        )?;
        Ok(())
    }
}
