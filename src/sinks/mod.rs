//! Where alerts leave for a security operations center: webhooks (HTTP POST, HMAC-signed) and
//! syslog (RFC 5424 carrying CEF, over TCP or TLS).
//!
//! ```text
//! AlertLog (committed alerts, strictly increasing sequence)
//!    └─► one delivery thread per sink: read after its cursor ─► deliver ─► advance the cursor
//!                                      (in order; a failure is retried with backoff, never skipped)
//! ```
//!
//! The alert log is the outbox: an alert is committed before anyone hears of it, and each sink
//! keeps its cursor (the last sequence it is done with) in the same SQLite file. A receiver that
//! is down for an hour gets everything, in order, once it is back; a restart of callguard
//! resumes from the cursor. Delivery is at least once: a crash between a receiver's `200` and
//! the cursor's commit sends that one alert again, with the same `X-Callguard-Delivery` id (CEF
//! `externalId`) for the receiver to drop.

pub mod cef;
mod syslog;
mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::alert::{Acknowledgement, AlertLog, LoggedAlert, StoreError, now_ms};
use crate::config::SinksConfig;
use crate::ops::Metrics;

pub use syslog::SyslogSink;
pub use webhook::{WebhookSink, signature};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {name}: {message}")]
    Setup { name: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the delivery thread of sink {0}: {1}")]
    Thread(String, std::io::Error),
}

/// One way out for alerts.
pub trait Deliver: Send {
    /// Sends one alert; `Err` is a reason to retry (receiver down, refused, timed out).
    fn deliver(&mut self, alert: &LoggedAlert) -> Result<(), String>;

    /// Sends a person's acknowledgement of one of `tenant`'s alerts; retried the same way.
    fn deliver_ack(&mut self, tenant: &str, ack: &Acknowledgement) -> Result<(), String>;
}

/// When a sink retries.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

/// A sink as the delivery loop runs it.
pub struct Sink {
    pub name: String,
    /// Tenants whose alerts go out here; empty: all.
    pub tenants: Vec<String>,
    pub backoff: Backoff,
    pub out: Box<dyn Deliver>,
}

/// The running delivery threads.
pub struct Sinks {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Alerts read from the log per round.
const BATCH: usize = 256;
/// How often an idle sink looks for new alerts.
const POLL: Duration = Duration::from_millis(200);

impl Sinks {
    /// The sinks `config` names and `also` (the cluster's publisher), each started on a
    /// thread of its own from its cursor.
    pub fn start(
        config: &SinksConfig,
        also: Vec<Sink>,
        log: Arc<AlertLog>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SinkError> {
        let mut sinks = also;
        sinks.extend(configured(config)?);
        Self::run(sinks, log, metrics)
    }

    /// Runs the given sinks (tests give their own [`Deliver`]).
    pub fn run(
        sinks: Vec<Sink>,
        log: Arc<AlertLog>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SinkError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for sink in sinks {
            let state = log.sink_start(&sink.name)?;
            let acks = log.sink_ack_start(&sink.name)?;
            let (log, metrics, stop) = (log.clone(), metrics.clone(), stop.clone());
            let name = sink.name.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sink-{name}"))
                .spawn(move || deliver_all(sink, (state.sequence, acks), &log, &metrics, &stop))
                .map_err(|e| SinkError::Thread(name, e))?;
            threads.push(thread);
        }
        Ok(Self { stop, threads })
    }

    /// Stops after the attempt in flight; what was not delivered stays for the next start.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The sinks `config` names, ready to run (on a single node from the alert log, in a cluster
/// from the stream).
pub fn configured(config: &SinksConfig) -> Result<Vec<Sink>, SinkError> {
    let mut sinks = Vec::new();
    for w in &config.webhook {
        sinks.push(Sink {
            name: w.name.clone(),
            tenants: w.tenants.clone(),
            backoff: Backoff {
                initial: Duration::from_millis(w.retry_initial_ms),
                max: Duration::from_millis(w.retry_max_ms),
            },
            out: Box::new(WebhookSink::new(w).map_err(|message| SinkError::Setup {
                name: w.name.clone(),
                message,
            })?),
        });
    }
    for s in &config.syslog {
        sinks.push(Sink {
            name: s.name.clone(),
            tenants: s.tenants.clone(),
            backoff: Backoff {
                initial: Duration::from_millis(s.retry_initial_ms),
                max: Duration::from_millis(s.retry_max_ms),
            },
            out: Box::new(SyslogSink::new(s).map_err(|message| SinkError::Setup {
                name: s.name.clone(),
                message,
            })?),
        });
    }
    Ok(sinks)
}

/// Sleeps `d`, waking early when asked to stop; returns whether to go on.
pub fn pause(d: Duration, stop: &AtomicBool) -> bool {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    !stop.load(Ordering::SeqCst)
}

/// Delivers `one` until it is taken, waiting with backoff between attempts; false when asked to
/// stop first.
fn until_taken(
    sink: &mut Sink,
    log: &AlertLog,
    metrics: &Metrics,
    stop: &AtomicBool,
    what: &str,
    mut one: impl FnMut(&mut dyn Deliver) -> Result<(), String>,
) -> bool {
    let name = sink.name.clone();
    let mut wait = sink.backoff.initial;
    loop {
        match one(sink.out.as_mut()) {
            Ok(()) => {
                metrics.sink_delivered(&name);
                return true;
            }
            Err(e) => {
                metrics.sink_failed(&name);
                tracing::warn!(sink = %name, what, error = %e, retry_in_ms = wait.as_millis() as u64, "Not delivered; will retry.");
                if let Err(e) = log.sink_failed(&name, &e, now_ms()) {
                    tracing::warn!(sink = %name, error = %e, "Cannot record a failed delivery.");
                }
                if !pause(wait, stop) {
                    return false;
                }
                wait = (wait * 2).min(sink.backoff.max);
            }
        }
    }
}

/// Delivers the acknowledgements given since `cursor`; returns the new cursor, or `None` when
/// asked to stop.
fn deliver_acks(
    sink: &mut Sink,
    (mut cursor, alerts_done): (u64, u64),
    log: &AlertLog,
    metrics: &Metrics,
    stop: &AtomicBool,
) -> Option<u64> {
    let acks = match log.acks_after(cursor, BATCH) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(sink = %sink.name, error = %e, "Cannot read acknowledgements; will retry.");
            return Some(cursor);
        }
    };
    for (seq, tenant, ack) in acks {
        if !acked_alert_delivered(log, alerts_done, &ack) {
            break;
        }
        if sink.tenants.is_empty() || sink.tenants.contains(&tenant) {
            let what = format!("acknowledgement of {}", ack.alert_id);
            if !until_taken(sink, log, metrics, stop, &what, |out| {
                out.deliver_ack(&tenant, &ack)
            }) {
                return None;
            }
        }
        cursor = seq;
        if let Err(e) = log.sink_ack_advance(&sink.name, cursor) {
            tracing::warn!(sink = %sink.name, error = %e, "Cannot record a delivery.");
        }
    }
    Some(cursor)
}

/// Whether the alert `ack` acknowledges is at or before the sink's alert cursor (or gone).
fn acked_alert_delivered(log: &AlertLog, cursor: u64, ack: &Acknowledgement) -> bool {
    log.alert_sequence(&ack.alert_id)
        .ok()
        .flatten()
        .is_none_or(|seq| seq <= cursor)
}

fn deliver_all(
    mut sink: Sink,
    (mut cursor, mut ack_cursor): (u64, u64),
    log: &AlertLog,
    metrics: &Metrics,
    stop: &AtomicBool,
) {
    let name = sink.name.clone();
    tracing::info!(sink = %name, after_sequence = cursor, "Alert delivery started.");
    while !stop.load(Ordering::SeqCst) {
        // Acknowledgements of alerts already delivered (one of an alert not yet delivered waits
        // until its alert has gone).
        match deliver_acks(&mut sink, (ack_cursor, cursor), log, metrics, stop) {
            Some(c) => ack_cursor = c,
            None => return,
        }
        let batch = match log.all_after(cursor, BATCH) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, "Cannot read the alert log; will retry.");
                if !pause(sink.backoff.max.min(Duration::from_secs(5)), stop) {
                    return;
                }
                continue;
            }
        };
        if batch.is_empty() {
            metrics.sink_pending(&name, 0);
            if !pause(POLL, stop) {
                return;
            }
            continue;
        }
        for alert in &batch {
            if !sink.tenants.is_empty() && !sink.tenants.contains(&alert.tenant) {
                cursor = alert.sequence;
                continue;
            }
            let what = format!("alert {}", alert.sequence);
            if !until_taken(&mut sink, log, metrics, stop, &what, |out| {
                out.deliver(alert)
            }) {
                // Not delivered: the cursor stays before it.
                let _ = log.sink_advance(&name, cursor, 0, now_ms());
                return;
            }
            cursor = alert.sequence;
            // Committed after each delivery, so a restart resends at most the one in flight.
            if let Err(e) = log.sink_advance(&name, cursor, 1, now_ms()) {
                tracing::warn!(sink = %name, error = %e, "Cannot record a delivery.");
            }
        }
        // Alerts of other tenants passed over are done with too.
        if let Err(e) = log.sink_advance(&name, cursor, 0, now_ms()) {
            tracing::warn!(sink = %name, error = %e, "Cannot record the sink's position.");
        }
        let pending = log.count_after(cursor, &sink.tenants).unwrap_or(0);
        metrics.sink_pending(&name, pending);
    }
}

/// A sink's place, for `callguard sinks status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SinkStatus {
    pub kind: &'static str,
    pub target: String,
    #[serde(flatten)]
    pub state: crate::alert::SinkState,
    /// Alerts for it not yet delivered.
    pub pending: u64,
}

/// Every configured sink's state in the alert log (without starting anything).
pub fn status(config: &SinksConfig, log: &AlertLog) -> Result<Vec<SinkStatus>, StoreError> {
    let mut out = Vec::new();
    let named = config
        .webhook
        .iter()
        .map(|w| ("webhook", w.name.as_str(), w.url.clone(), &w.tenants))
        .chain(
            config
                .syslog
                .iter()
                .map(|s| ("syslog", s.name.as_str(), s.address.clone(), &s.tenants)),
        );
    for (kind, name, target, tenants) in named {
        let state = match log.sink_state(name)? {
            Some(s) => s,
            // Not started yet: it will begin after the newest alert.
            None => crate::alert::SinkState {
                name: name.to_owned(),
                sequence: log.last_sequence()?,
                delivered: 0,
                failures: 0,
                last_error: None,
                last_attempt_ms: None,
                last_delivered_ms: None,
            },
        };
        let pending = log.count_after(state.sequence, tenants)?;
        out.push(SinkStatus {
            kind,
            target,
            state,
            pending,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{CallMeta, NewAlert, Severity};
    use crate::transcribe::Redacted;
    use crate::verdict::AlertKind;
    use std::sync::Mutex;

    fn alert(tenant: &str, n: u32) -> NewAlert {
        NewAlert {
            tenant: tenant.into(),
            call_id: format!("call-{n}"),
            kind: AlertKind::SuspectedClone,
            severity: Severity::Warning,
            p_spoof: 0.9,
            threshold: 0.6,
            audio_ms: 1_000 + n as u64,
            wall_time_ms: 1_700_000_000_000 + n as i64,
            evidence: Vec::new(),
            model: "m@1".into(),
            transcript_snippet: Redacted::default(),
            risk: 0.9,
            cues: Vec::new(),
            metadata: CallMeta::default(),
            voice_similarity: None,
        }
    }

    /// Fails the first `fail` attempts, then takes everything; records what it took.
    struct Flaky {
        fail: usize,
        took: Arc<Mutex<Vec<u64>>>,
    }

    impl Deliver for Flaky {
        fn deliver(&mut self, a: &LoggedAlert) -> Result<(), String> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err("receiver down".into());
            }
            self.took.lock().unwrap().push(a.sequence);
            Ok(())
        }

        fn deliver_ack(&mut self, _tenant: &str, a: &Acknowledgement) -> Result<(), String> {
            // Recorded as the negated time, to tell it from an alert's sequence.
            self.took.lock().unwrap().push(u64::MAX - a.at_ms as u64);
            Ok(())
        }
    }

    fn wait_for(took: &Mutex<Vec<u64>>, n: usize) {
        for _ in 0..400 {
            if took.lock().unwrap().len() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("delivered {:?}, wanted {n}", took.lock().unwrap());
    }

    #[test]
    fn a_sink_delivers_in_order_through_failures_and_resumes_from_its_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AlertLog::open(&dir.path().join("a.db")).unwrap());
        let metrics = Arc::new(Metrics::default());
        // An alert from before the sink existed is not sent: it starts after the newest.
        log.append(alert("bank-a", 0)).unwrap();
        let took = Arc::new(Mutex::new(Vec::new()));
        let sink = |fail| Sink {
            name: "soc".into(),
            tenants: vec!["bank-a".into()],
            backoff: Backoff {
                initial: Duration::from_millis(5),
                max: Duration::from_millis(20),
            },
            out: Box::new(Flaky {
                fail,
                took: took.clone(),
            }),
        };
        let mut sinks = Sinks::run(vec![sink(3)], log.clone(), metrics.clone()).unwrap();
        let mut want = Vec::new();
        for n in 1..=5 {
            want.push(log.append(alert("bank-a", n)).unwrap().sequence);
            // Another tenant's alert is passed over.
            log.append(alert("bank-b", n)).unwrap();
        }
        wait_for(&took, 5);
        sinks.shutdown();
        assert_eq!(*took.lock().unwrap(), want, "in order, each once");
        let state = log.sink_state("soc").unwrap().unwrap();
        assert_eq!(state.delivered, 5);
        assert_eq!(state.failures, 3);
        assert_eq!(state.last_error, None);
        assert_eq!(state.sequence, log.last_sequence().unwrap());

        // Stopped, then alerts arrive; a new start (a restart of the daemon) sends them.
        for n in 6..=7 {
            want.push(log.append(alert("bank-a", n)).unwrap().sequence);
        }
        let cfg = SinksConfig::default();
        assert!(status(&cfg, &log).unwrap().is_empty());
        assert_eq!(
            log.count_after(state.sequence, &["bank-a".into()]).unwrap(),
            2
        );
        let mut sinks = Sinks::run(vec![sink(0)], log.clone(), metrics).unwrap();
        wait_for(&took, 7);
        // An acknowledgement goes out after its alert; another tenant's does not.
        let first = log.all_after(0, 100).unwrap()[1].clone();
        assert_eq!(first.tenant, "bank-a");
        log.acknowledge("bank-a", &first.id, "sup", "checked", 1_234)
            .unwrap()
            .unwrap();
        let other = log.all_after(0, 100).unwrap()[2].clone();
        log.acknowledge("bank-b", &other.id, "sup", "", 99)
            .unwrap()
            .unwrap();
        want.push(u64::MAX - 1_234);
        wait_for(&took, 8);
        std::thread::sleep(Duration::from_millis(300));
        sinks.shutdown();
        assert_eq!(*took.lock().unwrap(), want);
    }
}
