//! Evidence fusion for one call. Window probabilities are averaged in log-odds over the last
//! `smoothing` windows; the call enters `Suspected` after `enter_windows` consecutive fused
//! scores at or above the enter threshold and leaves it after `exit_windows` consecutive scores
//! below the (lower) exit threshold: hysteresis plus debounce, one alert per change.

use std::collections::VecDeque;

use super::{Alert, AlertKind, CallState, ChannelClass, WindowScore};

/// Alerts kept per call for its summary (every alert is still published as it happens).
const ALERTS_KEPT: usize = 256;

/// Log-odds are clamped so one over-confident window cannot dominate the average.
const MAX_LOGIT: f32 = 8.0;

/// One call's fusion parameters: the call's channel class picks its enter threshold.
#[derive(Debug, Clone)]
pub struct FusionParams {
    pub channel_class: ChannelClass,
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
    /// The parameters of a call of `class` (see [`super::enter_threshold`] for which threshold
    /// wins); the exit threshold is at most the class's enter threshold.
    pub fn from_config(
        v: &crate::config::VerdictConfig,
        card: &crate::detect::ModelCard,
        class: ChannelClass,
        timeline_limit: usize,
    ) -> Self {
        let enter = super::enter_threshold(v, card, class).p_spoof;
        Self {
            channel_class: class,
            enter_threshold: enter,
            exit_threshold: v.exit_threshold.min(enter),
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

/// The fused score: the mean of the clamped log-odds of the last `smoothing` windows, as a
/// probability. [`CallEvidence`] and [`alert_peak`] both use it, so they agree to the bit.
#[derive(Debug, Clone)]
struct LogOddsMean {
    smoothing: usize,
    logits: VecDeque<f32>,
    sum: f32,
}

impl LogOddsMean {
    fn new(smoothing: usize) -> Self {
        let smoothing = smoothing.max(1);
        Self {
            smoothing,
            logits: VecDeque::with_capacity(smoothing),
            sum: 0.0,
        }
    }

    /// Adds the next window's probability; returns the fused probability after it.
    fn push(&mut self, p_spoof: f32) -> f32 {
        let l = logit(p_spoof);
        if self.logits.len() == self.smoothing
            && let Some(old) = self.logits.pop_front()
        {
            self.sum -= old;
        }
        self.sum += l;
        self.logits.push_back(l);
        sigmoid(self.sum / self.logits.len() as f32)
    }
}

/// The highest enter threshold at which the daemon's rule would have alerted on a call whose
/// windows scored `p_spoof` (in order): the best, over every run of `enter_windows` consecutive
/// fused scores, of the run's lowest score. `alert_peak(..) >= t` exactly when a call screened
/// at enter threshold `t` raises a suspected-clone alert; a call with fewer fused scores than
/// `enter_windows` never alerts (0).
pub fn alert_peak(
    p_spoof: impl IntoIterator<Item = f32>,
    smoothing: usize,
    enter_windows: usize,
) -> f32 {
    let enter = enter_windows.max(1);
    let mut mean = LogOddsMean::new(smoothing);
    // Indices and scores of the last `enter` fused scores, scores increasing: the front is
    // the run's minimum.
    let mut run: VecDeque<(usize, f32)> = VecDeque::with_capacity(enter);
    let mut peak = 0.0f32;
    for (i, p) in p_spoof.into_iter().enumerate() {
        let fused = mean.push(p);
        // A NaN never reaches a threshold (`>=` is false), like a score below every one.
        let f = if fused.is_nan() {
            f32::NEG_INFINITY
        } else {
            fused
        };
        while run.back().is_some_and(|&(_, g)| g >= f) {
            run.pop_back();
        }
        run.push_back((i, f));
        if run.front().is_some_and(|&(j, _)| j + enter <= i) {
            run.pop_front();
        }
        if i + 1 >= enter {
            peak = peak.max(run.front().expect("just pushed").1);
        }
    }
    peak
}

/// Everything a call has shown so far.
#[derive(Debug)]
pub struct CallEvidence {
    pub call_id: String,
    params: FusionParams,
    recent: VecDeque<WindowScore>,
    mean: LogOddsMean,
    above: usize,
    below: usize,
    pub state: CallState,
    /// The most recent windows, at most `timeline_limit`.
    pub timeline: VecDeque<WindowScore>,
    /// Older windows scored but no longer on the (capped) timeline.
    pub timeline_dropped: u64,
    pub alerts: Vec<Alert>,
    pub windows_scored: u64,
    /// Windows in an allowed synthetic voice, set aside (`add_allowed`).
    pub windows_allowed: u64,
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
            mean: LogOddsMean::new(params.smoothing),
            params,
            above: 0,
            below: 0,
            state: CallState::Listening,
            timeline: VecDeque::new(),
            timeline_dropped: 0,
            alerts: Vec::new(),
            windows_scored: 0,
            windows_allowed: 0,
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

    /// A window whose voice is an allowed synthetic voice: on the timeline, marked, with the
    /// call's fused probability unchanged; not evidence, so no state change and no alert.
    pub fn add_allowed(
        &mut self,
        seq: u64,
        start_ms: u64,
        end_ms: u64,
        p_spoof: f32,
    ) -> WindowScore {
        let score = WindowScore {
            seq,
            start_ms,
            end_ms,
            p_spoof,
            fused: self.last_fused.unwrap_or(0.0),
            allowed_voice: true,
        };
        self.windows_allowed += 1;
        if self.timeline.len() == self.params.timeline_limit {
            self.timeline.pop_front();
            self.timeline_dropped += 1;
        }
        if self.params.timeline_limit > 0 {
            self.timeline.push_back(score);
        }
        score
    }

    fn fuse(&mut self, seq: u64, start_ms: u64, end_ms: u64, p_spoof: f32) -> Option<Alert> {
        let fused = self.mean.push(p_spoof);
        if self.recent.len() == self.params.smoothing.max(1) {
            self.recent.pop_front();
        }
        let score = WindowScore {
            seq,
            start_ms,
            end_ms,
            p_spoof,
            fused,
            allowed_voice: false,
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
            voice_similarity: None,
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

    /// A `VoiceChanged` alert at `audio_ms`: the recent voice's cosine `similarity` with the
    /// reference fell below `threshold`. The call's state stays; the risk is the clone score
    /// raised as by a strong cue (`risk(p, 1)`), since a voice that changes is what a takeover
    /// sounds like.
    pub fn voice_changed(&mut self, audio_ms: u64, similarity: f32, threshold: f32) -> Alert {
        let p = self.last_fused.unwrap_or(0.0);
        let mut alert = self.alert(AlertKind::VoiceChanged, audio_ms, p, threshold);
        alert.voice_similarity = Some(similarity);
        alert.risk = super::risk(p, 1.0);
        self.update_last(&alert);
        alert
    }

    /// Call time where the latest fused window ended.
    pub fn last_window_end(&self) -> Option<u64> {
        self.recent.back().map(|w| w.end_ms)
    }

    /// An `IdentityMismatch` alert at `audio_ms`: the call's voice has cosine `similarity` with
    /// the claimed person's voiceprint, below `threshold`. The state stays; the risk is 1.
    pub fn identity_mismatch(&mut self, audio_ms: u64, similarity: f32, threshold: f32) -> Alert {
        let p = self.last_fused.unwrap_or(0.0);
        let mut alert = self.alert(AlertKind::IdentityMismatch, audio_ms, p, threshold);
        alert.voice_similarity = Some(similarity);
        alert.risk = 1.0;
        self.update_last(&alert);
        alert
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
            channel_class: ChannelClass::Wideband,
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

    #[test]
    fn alert_peak_of_a_call_shorter_than_the_run_is_zero() {
        assert_eq!(alert_peak([0.99], 4, 2), 0.0);
        assert_eq!(alert_peak([], 4, 2), 0.0);
    }

    #[test]
    fn alert_peak_is_the_best_runs_lowest_fused_score() {
        // No smoothing: each fused score is its window's probability.
        let peak = alert_peak([0.2, 0.9, 0.8, 0.3, 0.7, 0.95], 1, 2);
        assert!((peak - 0.8).abs() < 1e-5, "{peak}");
        let one = alert_peak([0.2, 0.9, 0.8, 0.3, 0.7, 0.95], 1, 1);
        assert!((one - 0.95).abs() < 1e-5, "{one}");
    }

    fn alerts_at(ps: &[f32], smoothing: usize, enter: usize, threshold: f32) -> bool {
        let mut e = CallEvidence::new(
            "p".into(),
            FusionParams {
                enter_threshold: threshold,
                exit_threshold: threshold.min(0.3),
                smoothing,
                enter_windows: enter,
                ..params()
            },
        );
        feed(&mut e, ps)
            .iter()
            .any(|a| a.kind == AlertKind::SuspectedClone)
    }

    proptest::proptest! {
        /// `alert_peak >= t` exactly when the daemon's rule, at enter threshold `t`, raises a
        /// suspected-clone alert: for random thresholds and at the peak itself (it alerts) and
        /// the next float above it (it does not).
        #[test]
        fn alert_peak_agrees_with_call_evidence(
            ps in proptest::collection::vec(
                proptest::prop_oneof![0.0f32..=1.0, proptest::strategy::Just(0.0f32), proptest::strategy::Just(1.0f32), 0.4f32..0.9],
                0..60,
            ),
            smoothing in 1usize..8,
            enter in 1usize..5,
            threshold in 0.001f32..0.999,
        ) {
            let peak = alert_peak(ps.iter().copied(), smoothing, enter);
            proptest::prop_assert!((0.0..1.0).contains(&peak));
            proptest::prop_assert_eq!(peak >= threshold, alerts_at(&ps, smoothing, enter, threshold));
            if peak > 0.0 {
                proptest::prop_assert!(alerts_at(&ps, smoothing, enter, peak));
                proptest::prop_assert!(!alerts_at(&ps, smoothing, enter, peak.next_up()));
            }
        }
    }
}
