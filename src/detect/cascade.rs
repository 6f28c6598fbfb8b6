//! The detector as a cascade: a cheap first stage scores every window, and only the windows it
//! cannot clear go on to the full model, plus every `sample_every`-th window of each call so a
//! clone the first stage misses is still looked at. A window's score is the full model's where
//! it ran and the first stage's otherwise; both are calibrated spoof probabilities, so the
//! verdict reads them alike. Without a cascade in the sidecar every window gets the full model.
//!
//! `train/cascade.py` replays exactly this on the leave-one-family-out window logits.

use super::{DetectError, Detector, ModelCard};

/// Which model gave a window its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The first stage cleared the window.
    First,
    /// The full model scored it.
    Full,
}

/// One window's score and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StagedScore {
    pub p_spoof: f32,
    pub stage: Stage,
}

struct FirstStage {
    detector: Detector,
    escalate_p: f32,
    sample_every: u64,
}

/// The scoring of one detector worker: its full model's session and, with a cascade, its first
/// stage's. Scratch buffers are kept between batches.
pub struct Scorer {
    full: Detector,
    first: Option<FirstStage>,
    first_scores: Vec<f32>,
    escalated: Vec<usize>,
    full_scores: Vec<f32>,
}

impl Scorer {
    /// Opens the model of `card` and, when the card carries a first stage, that one too.
    pub fn new(card: &ModelCard, intra_threads: usize) -> Result<Self, DetectError> {
        let first = match (&card.cascade, &card.first_stage) {
            (Some(cascade), Some(first)) => Some(FirstStage {
                detector: Detector::new(first, intra_threads)?,
                escalate_p: cascade.escalate_p(),
                sample_every: cascade.sample_every,
            }),
            _ => None,
        };
        Ok(Self {
            full: Detector::new(card, intra_threads)?,
            first,
            first_scores: Vec::new(),
            escalated: Vec::new(),
            full_scores: Vec::new(),
        })
    }

    /// Whether a first stage is in front of the full model.
    pub fn is_cascade(&self) -> bool {
        self.first.is_some()
    }

    /// Scores `windows` (each with its position in its call), one [`StagedScore`] per window
    /// into `out`, in order.
    pub fn score<'w>(
        &mut self,
        windows: impl ExactSizeIterator<Item = (u64, &'w [f32])> + Clone,
        out: &mut Vec<StagedScore>,
    ) -> Result<(), DetectError> {
        out.clear();
        let Some(first) = &mut self.first else {
            self.full
                .score(windows.map(|(_, w)| w), &mut self.full_scores)?;
            out.extend(self.full_scores.iter().map(|&p| StagedScore {
                p_spoof: p,
                stage: Stage::Full,
            }));
            return Ok(());
        };
        first
            .detector
            .score(windows.clone().map(|(_, w)| w), &mut self.first_scores)?;
        self.escalated.clear();
        for (i, ((seq, _), &p)) in windows.clone().zip(&self.first_scores).enumerate() {
            let sampled = first.sample_every > 0 && seq % first.sample_every == 0;
            if p >= first.escalate_p || sampled {
                self.escalated.push(i);
            }
        }
        out.extend(self.first_scores.iter().map(|&p| StagedScore {
            p_spoof: p,
            stage: Stage::First,
        }));
        if self.escalated.is_empty() {
            return Ok(());
        }
        let escalated = &self.escalated;
        let picked = windows
            .enumerate()
            .filter(|(i, _)| escalated.binary_search(i).is_ok())
            .map(|(_, (_, w))| w);
        self.full
            .score(Picked::new(picked, escalated.len()), &mut self.full_scores)?;
        for (&i, &p) in self.escalated.iter().zip(&self.full_scores) {
            out[i] = StagedScore {
                p_spoof: p,
                stage: Stage::Full,
            };
        }
        Ok(())
    }
}

/// An iterator of known length over the escalated windows (the full model wants to know how many
/// windows a batch holds before it copies them).
struct Picked<I> {
    inner: I,
    left: usize,
}

impl<I> Picked<I> {
    fn new(inner: I, len: usize) -> Self {
        Self { inner, left: len }
    }
}

impl<I: Iterator> Iterator for Picked<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next()?;
        self.left = self.left.saturating_sub(1);
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<I: Iterator> ExactSizeIterator for Picked<I> {}
