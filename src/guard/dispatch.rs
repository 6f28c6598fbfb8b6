//! The dispatcher thread: engine events in order, turned into call state, alerts committed to
//! the log before anyone hears of them, live fan-out, and the record of each ended call.
//!
//! An alert that cannot be committed (disk full, database locked) is kept in a bounded queue
//! and retried every second; it is published once committed, so no subscriber ever sees an
//! alert the log does not have.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::Shared;
use super::registry::{CallRecord, CallUpdate, EndedSummary, RECENT_SEGMENTS};
use crate::alert::{NewAlert, Severity, now_ms};
use crate::pipeline::{CallSummary, EngineEvent};
use crate::transcribe::Redacted;
use crate::verdict::{AlertKind, CallState};

/// Sees every engine event after the guard has handled it.
pub type Observer = Box<dyn FnMut(&EngineEvent) + Send>;

/// Alerts held for a retry while the log cannot take them.
const MAX_PENDING: usize = 10_000;
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);

pub(super) fn run(shared: &Shared, events: Receiver<EngineEvent>, mut observer: Option<Observer>) {
    let mut pending: VecDeque<NewAlert> = VecDeque::new();
    let mut next_prune = Instant::now();
    loop {
        match events.recv_timeout(Duration::from_secs(1)) {
            Ok(event) => {
                handle(shared, &event, &mut pending);
                if let Some(o) = &mut observer {
                    o(&event);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if !pending.is_empty() {
            retry(shared, &mut pending);
        }
        if Instant::now() >= next_prune {
            next_prune = Instant::now() + PRUNE_EVERY;
            prune(shared);
        }
    }
    retry(shared, &mut pending);
    if !pending.is_empty() {
        tracing::error!(
            alerts = pending.len(),
            "Alerts could not be written to the log before shutdown."
        );
    }
}

fn handle(shared: &Shared, event: &EngineEvent, pending: &mut VecDeque<NewAlert>) {
    match event {
        EngineEvent::Window { call, score, .. } => {
            shared.registry.with(*call, |e| {
                let state = match e.state {
                    CallState::Listening => CallState::Genuine,
                    s => s,
                };
                if e.observe(*score, state) {
                    e.tell(CallUpdate::Verdict {
                        state,
                        p_spoof: score.fused,
                        audio_ms: score.end_ms,
                        windows_scored: e.windows_scored,
                    });
                }
                if e.window_updates {
                    e.tell(CallUpdate::Window(*score));
                }
            });
        }
        EngineEvent::Alert { call, alert } => {
            let state = match alert.kind {
                AlertKind::SuspectedClone | AlertKind::Escalated => Some(CallState::Suspected),
                AlertKind::Cleared => Some(CallState::Genuine),
                AlertKind::VoiceChanged | AlertKind::IdentityMismatch => None,
            };
            let critical = shared.config.server.critical_p_spoof;
            let new = shared.registry.with(*call, |e| {
                let state = state.unwrap_or(e.state);
                e.state = state;
                e.alerts += 1;
                if alert.kind == AlertKind::SuspectedClone && e.first_alert_ms.is_none() {
                    e.first_alert_ms = Some(alert.audio_ms);
                    if let Some(speech) = e.first_speech_ms {
                        let delay = alert.audio_ms.saturating_sub(speech);
                        shared
                            .metrics
                            .first_alert_after_speech
                            .observe_secs(delay as f64 / 1000.0);
                    }
                }
                e.tell(CallUpdate::Verdict {
                    state,
                    p_spoof: alert.p_spoof,
                    audio_ms: alert.audio_ms,
                    windows_scored: e.windows_scored,
                });
                NewAlert {
                    tenant: e.tenant.to_string(),
                    call_id: e.call_id.to_string(),
                    kind: alert.kind,
                    severity: Severity::of(alert.kind, alert.risk, critical),
                    p_spoof: alert.p_spoof,
                    threshold: alert.threshold,
                    audio_ms: alert.audio_ms,
                    wall_time_ms: now_ms(),
                    evidence: alert.evidence.clone(),
                    model: alert.model.clone(),
                    transcript_snippet: Redacted::join(alert.transcript.iter().map(|s| &s.text)),
                    risk: alert.risk,
                    cues: alert.cues.clone(),
                    metadata: e.metadata.clone(),
                    voice_similarity: alert.voice_similarity,
                }
            });
            if let Some(new) = new {
                pending.push_back(new);
                retry(shared, pending);
            }
        }
        EngineEvent::Transcript { call, segment, .. } => {
            shared.registry.with(*call, |e| {
                if e.transcript.len() == RECENT_SEGMENTS {
                    e.transcript.pop_front();
                }
                e.transcript.push_back(segment.clone());
                e.tell(CallUpdate::Transcript(segment.clone()));
            });
        }
        EngineEvent::Ended(summary) => ended(shared, summary),
    }
}

/// Commits waiting alerts in order, publishing each; stops at the first failure.
fn retry(shared: &Shared, pending: &mut VecDeque<NewAlert>) {
    let metrics = &shared.metrics;
    while let Some(new) = pending.front() {
        let started = Instant::now();
        let outcome = shared.log.append(new.clone());
        metrics.alert_commit.observe(started.elapsed());
        shared.readiness.set_store_writable(outcome.is_ok());
        match outcome {
            Ok(logged) => {
                pending.pop_front();
                metrics.alert_logged(logged.kind.as_str(), logged.severity.as_str());
                let logged = Arc::new(logged);
                shared.hub.publish(logged.clone());
                shared
                    .registry
                    .with_id(&logged.tenant, &logged.call_id, |e| {
                        e.tell(CallUpdate::Alert(logged.clone()))
                    });
            }
            Err(e) => {
                metrics.alert_commit_failures.inc();
                tracing::error!(error = %e, waiting = pending.len(), "Alert not yet logged; will retry.");
                while pending.len() > MAX_PENDING {
                    if let Some(lost) = pending.pop_front() {
                        tracing::error!(call_id = %lost.call_id, tenant = %lost.tenant, "Alert dropped: the log has refused alerts for too long.");
                    }
                }
                break;
            }
        }
    }
    metrics
        .alerts_pending
        .store(pending.len() as u64, Ordering::Relaxed);
}

fn ended(shared: &Shared, s: &CallSummary) {
    let ended_call = |entry: &super::CallEntry| {
        let frames = &entry.frames;
        shared.metrics.call_ended(crate::ops::EndedCall {
            audio_ms: entry.audio_ms.max(s.audio_ms),
            frames_received: frames.received.load(Ordering::Relaxed),
            frames_rejected: frames.rejected.load(Ordering::Relaxed),
            frames_lost: frames.lost.load(Ordering::Relaxed),
        })
    };
    let Some(mut entry) = shared.registry.remove_and(s.key, ended_call) else {
        return;
    };
    let ended_ms = now_ms();
    let frames = &entry.frames;
    let mut record: CallRecord = entry.record();
    record.ended_wall_time_ms = Some(ended_ms);
    record.summary = Some(EndedSummary {
        verdict: s.verdict,
        p_spoof: s.p_spoof,
        p_spoof_peak: s.p_spoof_peak,
        first_alert_ms: s.first_alert_ms,
        first_verdict_ms: s.first_verdict_ms,
        audio_ms: s.audio_ms,
        speech_ms: s.speech_ms,
        windows: s.windows,
        windows_scored: s.windows_scored,
        windows_dropped: s.windows_dropped,
        windows_failed: s.windows_failed,
        frames_received: frames.received.load(Ordering::Relaxed),
        frames_rejected: frames.rejected.load(Ordering::Relaxed),
        frames_lost: frames.lost.load(Ordering::Relaxed),
        model: s.model.clone(),
        alerts: s.alerts.len() as u32,
        channel_class: Some(s.channel_class),
        enter_threshold: Some(s.enter_threshold),
        segments: s.segments,
        segment_counts: s.segment_counts,
    });
    record.transcript = s.transcript.clone();
    record.audio_ms = record.audio_ms.max(s.audio_ms);
    tracing::info!(
        tenant = %record.tenant,
        call_id = %record.call_id,
        verdict = s.verdict.as_str(),
        p_spoof_peak = s.p_spoof_peak,
        audio_s = s.audio_ms as f64 / 1000.0,
        alerts = s.alerts.len(),
        frames_lost = frames.lost.load(Ordering::Relaxed),
        "Call ended."
    );
    if let Err(e) = shared
        .log
        .put_call(&record.tenant, &record.call_id, ended_ms, &record)
    {
        tracing::error!(call_id = %record.call_id, error = %e, "Call summary not logged.");
    }
    if let Some(tx) = entry.ended.take() {
        let _ = tx.send(record);
    }
}

fn prune(shared: &Shared) {
    let days = shared.config.store.retention_days as i64;
    let cutoff = now_ms() - days * 86_400_000;
    match shared.log.prune(cutoff) {
        Ok((0, 0)) => {}
        Ok((alerts, calls)) => {
            tracing::info!(alerts, calls, days, "Old alerts and calls deleted.")
        }
        Err(e) => tracing::warn!(error = %e, "Retention cleanup failed."),
    }
}
