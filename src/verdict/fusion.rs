//! Evidence fusion for one call. Window probabilities are averaged in log-odds over the last
//! `smoothing` windows; the call enters `Suspected` after `enter_windows` consecutive fused
//! scores at or above the enter threshold and leaves it after `exit_windows` consecutive scores
//! below the (lower) exit threshold: hysteresis plus debounce, one alert per change.

use std::collections::VecDeque;

use super::{Alert, AlertKind, CallState, WindowScore};

/// Alerts kept per call for its summary (every alert is still published as it happens).
const ALERTS_KEPT: usize = 256;

/// Log-odds are clamped so one over-confident window cannot dominate the average.
const MAX_LOGIT: f32 = 8.0;

#[derive(Debug, Clone)]
pub struct FusionParams {
    pub enter_threshold: f32,
    pub exit_threshold: f32,
    pub smoothing: usize,
    pub enter_windows: usize,
    pub exit_windows: usize,
    /// Most windows kept on the timeline (the oldest are counted and let go).
    pub timeline_limit: usize,
    pub model: String,
}

impl FusionParams {
    pub fn from_config(
        v: &crate::config::VerdictConfig,
        card: &crate::detect::ModelCard,
        timeline_limit: usize,
    ) -> Self {
        Self {
            enter_threshold: v.enter_threshold.unwrap_or(card.threshold.p_spoof),
            exit_threshold: v
                .exit_threshold
                .min(v.enter_threshold.unwrap_or(card.threshold.p_spoof)),
            smoothing: v.smoothing_windows,
            enter_windows: v.enter_windows,
            exit_windows: v.exit_windows,
            timeline_limit,
            model: card.id(),
        }
    }
}

fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln().clamp(-MAX_LOGIT, MAX_LOGIT)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Everything a call has shown so far.
#[derive(Debug)]
pub struct CallEvidence {
    pub call_id: String,
    params: FusionParams,
    recent: VecDeque<WindowScore>,
    logit_sum: f32,
    above: usize,
    below: usize,
    pub state: CallState,
    /// The most recent windows, at most `timeline_limit`.
    pub timeline: VecDeque<WindowScore>,
    /// Older windows scored but no longer on the (capped) timeline.
    pub timeline_dropped: u64,
    pub alerts: Vec<Alert>,
    pub windows_scored: u64,
    pub peak_fused: Option<f32>,
    pub last_fused: Option<f32>,
    pub first_alert_ms: Option<u64>,
    /// Audio time of the first verdict (the first scored window).
    pub first_verdict_ms: Option<u64>,
    escalated: bool,
}

impl CallEvidence {
    pub fn new(call_id: String, params: FusionParams) -> Self {
        Self {
            call_id,
            recent: VecDeque::with_capacity(params.smoothing),
            params,
            logit_sum: 0.0,
            above: 0,
            below: 0,
            state: CallState::Listening,
            timeline: VecDeque::new(),
            timeline_dropped: 0,
            alerts: Vec::new(),
            windows_scored: 0,
            peak_fused: None,
            last_fused: None,
            first_alert_ms: None,
            first_verdict_ms: None,
            escalated: false,
        }
    }

    pub fn params(&self) -> &FusionParams {
        &self.params
    }

    /// Adds the next window (in order); returns its fused score and the alert it caused, if any.
    pub fn add(
        &mut self,
        seq: u64,
        start_ms: u64,
        end_ms: u64,
        p_spoof: f32,
    ) -> (WindowScore, Option<Alert>) {
        let alert = self.fuse(seq, start_ms, end_ms, p_spoof);
        (*self.recent.back().expect("just pushed"), alert)
    }

    fn fuse(&mut self, seq: u64, start_ms: u64, end_ms: u64, p_spoof: f32) -> Option<Alert> {
        let l = logit(p_spoof);
        if self.recent.len() == self.params.smoothing
            && let Some(old) = self.recent.pop_front()
        {
            self.logit_sum -= logit(old.p_spoof);
        }
        self.logit_sum += l;
        let fused = sigmoid(self.logit_sum / (self.recent.len() + 1) as f32);
        let score = WindowScore {
            seq,
            start_ms,
            end_ms,
            p_spoof,
            fused,
        };
        self.recent.push_back(score);
        self.windows_scored += 1;
        self.last_fused = Some(fused);
        self.peak_fused = Some(self.peak_fused.map_or(fused, |p| p.max(fused)));
        self.first_verdict_ms.get_or_insert(end_ms);
        if self.timeline.len() == self.params.timeline_limit {
            self.timeline.pop_front();
            self.timeline_dropped += 1;
        }
        if self.params.timeline_limit > 0 {
            self.timeline.push_back(score);
        }
        if self.state == CallState::Listening {
            self.state = CallState::Genuine;
        }

        let p = &self.params;
        let (kind, threshold) = match self.state {
            CallState::Suspected => {
                self.below = if fused < p.exit_threshold {
                    self.below + 1
                } else {
                    0
                };
                if self.below < p.exit_windows {
                    return None;
                }
                self.state = CallState::Genuine;
                self.below = 0;
                (AlertKind::Cleared, p.exit_threshold)
            }
            _ => {
                self.above = if fused >= p.enter_threshold {
                    self.above + 1
                } else {
                    0
                };
                if self.above < p.enter_windows {
                    return None;
                }
                self.state = CallState::Suspected;
                self.above = 0;
                self.first_alert_ms.get_or_insert(end_ms);
                (AlertKind::SuspectedClone, p.enter_threshold)
            }
        };
        self.escalated = false;
        Some(self.alert(kind, end_ms, fused, threshold))
    }

    fn alert(&mut self, kind: AlertKind, audio_ms: u64, p_spoof: f32, threshold: f32) -> Alert {
        let alert = Alert {
            call_id: self.call_id.clone(),
            kind,
            audio_ms,
            p_spoof,
            threshold,
            evidence: self.recent.iter().copied().collect(),
            model: self.params.model.clone(),
            risk: p_spoof,
            cues: Vec::new(),
            transcript: Vec::new(),
        };
        self.remember(&alert);
        alert
    }

    fn remember(&mut self, alert: &Alert) {
        if self.alerts.len() == ALERTS_KEPT {
            self.alerts.remove(0);
        }
        self.alerts.push(alert.clone());
    }

    /// Replaces the last alert kept for the summary (after its context was attached).
    pub fn update_last(&mut self, alert: &Alert) {
        if let Some(last) = self.alerts.last_mut() {
            *last = alert.clone();
        }
    }

    /// Whether the current suspicion has been escalated already.
    pub fn escalated(&self) -> bool {
        self.escalated
    }

    /// Marks the current suspicion as escalated (its first alert already carried the risk).
    pub fn mark_escalated(&mut self) {
        self.escalated = true;
    }

    /// An `Escalated` alert at `audio_ms`, once per suspicion: the call must be suspected,
    /// not yet escalated, and the caller's `intent` at or above `escalate_intent` (the alert's
    /// threshold).
    pub fn escalate(&mut self, audio_ms: u64, intent: f32, escalate_intent: f32) -> Option<Alert> {
        if self.state != CallState::Suspected || self.escalated || intent < escalate_intent {
            return None;
        }
        self.escalated = true;
        let p = self.last_fused.unwrap_or(0.0);
        // Detection usually runs ahead of transcription: decided as of the latest window.
        let audio_ms = self
            .recent
            .back()
            .map_or(audio_ms, |w| w.end_ms.max(audio_ms));
        let mut alert = self.alert(AlertKind::Escalated, audio_ms, p, escalate_intent);
        alert.risk = super::risk(p, intent);
        self.update_last(&alert);
        Some(alert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> FusionParams {
        FusionParams {
            enter_threshold: 0.5,
            exit_threshold: 0.3,
            smoothing: 4,
            enter_windows: 2,
            exit_windows: 3,
            timeline_limit: 1000,
            model: "test@0".into(),
        }
    }

    fn feed(e: &mut CallEvidence, ps: &[f32]) -> Vec<Alert> {
        let base = e.windows_scored;
        ps.iter()
            .enumerate()
            .filter_map(|(i, &p)| {
                let seq = base + i as u64;
                e.add(seq, seq * 500, seq * 500 + 1000, p).1
            })
            .collect()
    }

    #[test]
    fn genuine_call_never_alerts() {
        let mut e = CallEvidence::new("c".into(), params());
        assert!(feed(&mut e, &[0.1, 0.2, 0.05, 0.4, 0.1, 0.2]).is_empty());
        assert_eq!(e.state, CallState::Genuine);
    }

    #[test]
    fn a_switch_to_a_clone_alerts_once_after_the_switch() {
        let mut e = CallEvidence::new("c".into(), params());
        let mut ps = vec![0.05; 20];
        ps.extend(vec![0.95; 20]);
        let alerts = feed(&mut e, &ps);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].kind, AlertKind::SuspectedClone);
        // Not before the switch (window 20), and within a few windows of it.
        let at = e.first_alert_ms.unwrap();
        assert!((20 * 500 + 1000..=24 * 500 + 1000).contains(&at), "{at}");
        assert_eq!(alerts[0].evidence.len(), 4);
    }

    #[test]
    fn one_noisy_window_does_not_alert() {
        let mut e = CallEvidence::new("c".into(), params());
        assert!(feed(&mut e, &[0.05, 0.05, 0.05, 0.999, 0.05, 0.05, 0.05]).is_empty());
    }

    #[test]
    fn hysteresis_yields_suspected_then_cleared_without_flapping() {
        let mut e = CallEvidence::new("c".into(), params());
        let mut ps = vec![0.9; 8];
        // Hovering between exit and enter thresholds must not flap.
        ps.extend([0.45, 0.4, 0.45, 0.4, 0.45, 0.4]);
        ps.extend(vec![0.05; 8]);
        let alerts = feed(&mut e, &ps);
        let kinds: Vec<_> = alerts.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, [AlertKind::SuspectedClone, AlertKind::Cleared]);
        assert_eq!(e.state, CallState::Genuine);
    }

    #[test]
    fn timeline_is_capped() {
        let mut p = params();
        p.timeline_limit = 3;
        let mut e = CallEvidence::new("c".into(), p);
        feed(&mut e, &[0.1; 10]);
        assert_eq!(e.timeline.len(), 3);
        assert_eq!(e.timeline_dropped, 7);
        assert_eq!(
            e.timeline.front().unwrap().seq,
            7,
            "the latest windows are kept"
        );
    }
}
