//! A voice that changes mid-call: each scored window's speaker embedding (unit length, from the
//! detector workers' speaker encoder) is compared with the call's reference voice, the mean of
//! its first `reference_windows` speech windows. When the mean of the latest `recent_windows`
//! falls below `change_below` (cosine) for `consecutive` windows in a row, the voice changed;
//! the reference then starts anew from the windows that follow, so a second change is caught
//! too. `train/speaker.py` runs the same rule on genuine and switch calls to choose the
//! threshold.

use crate::config::VoiceConfig;

/// A change: where it was decided and how far the voice had moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoiceChange {
    pub audio_ms: u64,
    pub similarity: f32,
}

/// A voice kept for a tenant, without audio: its mean speaker embedding (unit length) and the
/// detector's logit over its windows (mean and spread). `allowed`: a synthetic voice the tenant
/// runs itself (IVR prompts, greetings, its own assistants; `callguard allow-voice`);
/// `protected`: a person a call may claim to be (`callguard enroll`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Voiceprint {
    pub name: String,
    pub embedding: Vec<f32>,
    pub logit_mean: f32,
    pub logit_std: f32,
}

impl Voiceprint {
    /// Whether a window (unit `embedding`, spoof probability `p`) is this voice: its cosine with
    /// the fingerprint at least `above`, and its detector logit within three spreads (at least
    /// one logit unit) of the fingerprint's, so a clone that merely resembles the voice but
    /// scores otherwise is not excused.
    pub fn matches(&self, embedding: &[f32], p: f32, above: f32) -> bool {
        if embedding.len() != self.embedding.len() {
            return false;
        }
        let cos = cosine_of_sums(embedding, &self.embedding);
        let p = p.clamp(1e-6, 1.0 - 1e-6);
        let logit = (p / (1.0 - p)).ln();
        cos >= above && (logit - self.logit_mean).abs() <= (3.0 * self.logit_std).max(1.0)
    }
}

pub struct VoiceTracker {
    params: VoiceConfig,
    /// Sum of the reference windows' embeddings, and how many.
    reference: Vec<f32>,
    reference_n: usize,
    /// The latest embeddings since the reference began: a ring of `recent_windows` slots of
    /// one embedding each, `recent_n` of them filled, the next written at `recent_at`. Buffers
    /// are sized once, so the per-window path allocates nothing.
    recent: Vec<f32>,
    recent_n: usize,
    recent_at: usize,
    /// Scratch: the sum of the filled slots.
    recent_sum: Vec<f32>,
    below: usize,
}

/// The cosine of two vectors (sums of unit embeddings, or embeddings).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    cosine_of_sums(a, b)
}

fn cosine_of_sums(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b) + 1e-9)
}

impl VoiceTracker {
    pub fn new(params: &VoiceConfig) -> Self {
        Self {
            params: params.clone(),
            reference: Vec::new(),
            reference_n: 0,
            recent: Vec::new(),
            recent_n: 0,
            recent_at: 0,
            recent_sum: Vec::new(),
            below: 0,
        }
    }

    /// The cosine below which the voice counts as another.
    pub fn threshold(&self) -> f32 {
        self.params.change_below
    }

    /// Takes the next window's embedding (ending at `end_ms`); returns a change when one is
    /// decided at this window.
    pub fn add(&mut self, end_ms: u64, embedding: &[f32]) -> Option<VoiceChange> {
        let dim = embedding.len();
        let slots = self.params.recent_windows;
        if self.reference.len() != dim {
            self.reference = vec![0.0; dim];
            self.recent = vec![0.0; dim * slots];
            self.recent_sum = vec![0.0; dim];
            self.recent_n = 0;
            self.recent_at = 0;
        }
        self.recent[self.recent_at * dim..(self.recent_at + 1) * dim].copy_from_slice(embedding);
        self.recent_at = (self.recent_at + 1) % slots;
        self.recent_n = (self.recent_n + 1).min(slots);
        if self.reference_n < self.params.reference_windows {
            for (r, e) in self.reference.iter_mut().zip(embedding) {
                *r += e;
            }
            self.reference_n += 1;
            return None;
        }
        // The filled slots are the latest `recent_n` windows (the ring was emptied at the last
        // change, and is full once it has wrapped).
        self.recent_sum.iter_mut().for_each(|r| *r = 0.0);
        for e in self.recent.chunks_exact(dim).take(self.recent_n) {
            for (r, x) in self.recent_sum.iter_mut().zip(e) {
                *r += x;
            }
        }
        let similarity = cosine_of_sums(&self.recent_sum, &self.reference);
        self.below = if similarity < self.params.change_below {
            self.below + 1
        } else {
            0
        };
        if self.below < self.params.consecutive {
            return None;
        }
        // A new voice: it becomes the reference from the next windows on.
        self.reference_n = 0;
        self.reference.iter_mut().for_each(|r| *r = 0.0);
        self.recent.iter_mut().for_each(|r| *r = 0.0);
        self.recent_n = 0;
        self.recent_at = 0;
        self.below = 0;
        Some(VoiceChange {
            audio_ms: end_ms,
            similarity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice(axis: usize, wobble: f32) -> Vec<f32> {
        let mut v = [0.0f32; 8];
        v[axis] = 1.0;
        v[(axis + 1) % 8] = wobble;
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn a_steady_voice_never_changes_and_a_new_one_does_after_the_reference_and_consecutive_windows()
    {
        let mut t = VoiceTracker::new(&VoiceConfig::default());
        for i in 0..40 {
            let w = voice(0, if i % 2 == 0 { 0.3 } else { -0.3 });
            assert_eq!(t.add(500 * i as u64 + 1000, &w), None, "window {i}");
        }
        // Another speaker from window 40: the recent mean (4 windows) drops below 0.65 once
        // three of them are the new voice (one window below is enough by default).
        let mut changes = Vec::new();
        for i in 40..60 {
            if let Some(c) = t.add(500 * i as u64 + 1000, &voice(3, 0.2)) {
                changes.push((i, c));
            }
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        let (i, c) = changes[0];
        assert!(
            (41..=44).contains(&i),
            "decided {} windows after the switch",
            i - 40
        );
        assert!(c.similarity < 0.65);
        assert_eq!(c.audio_ms, 500 * i as u64 + 1000);
    }

    #[test]
    fn after_a_change_the_new_voice_is_the_reference_and_a_return_is_a_change_again() {
        let params = VoiceConfig {
            reference_windows: 3,
            recent_windows: 2,
            consecutive: 1,
            ..VoiceConfig::default()
        };
        let mut t = VoiceTracker::new(&params);
        let seq: Vec<usize> = [vec![0; 6], vec![4; 10], vec![0; 10]].concat();
        let changes: Vec<usize> = seq
            .iter()
            .enumerate()
            .filter_map(|(i, &axis)| t.add(i as u64 * 500, &voice(axis, 0.1)).map(|_| i))
            .collect();
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(
            changes[0] >= 6 && changes[0] < 9 && changes[1] >= 16,
            "{changes:?}"
        );
    }
}
