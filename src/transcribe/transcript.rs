//! One call's rolling transcript: redacted segments in call order, the cues they raised, and
//! an account of every segment the call produced (transcribed, silent, skipped or failed).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::cues::intent;
use super::{Cue, Redacted, SegmentResult, Skipped, TranscriptSegment};

/// Cues kept per call (the oldest are let go).
const CUES_KEPT: usize = 256;

/// What became of a call's speech segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentCounts {
    pub transcribed: u64,
    pub no_speech: u64,
    /// Skipped because transcription was over its budget (queue full or too late).
    pub skipped: u64,
    pub failed: u64,
    /// Speech whose transcription looped even after the fallback: counted, never shown.
    #[serde(default)]
    pub unintelligible: u64,
}

impl SegmentCounts {
    pub fn total(&self) -> u64 {
        self.transcribed + self.no_speech + self.skipped + self.failed + self.unintelligible
    }
}

#[derive(Debug)]
pub struct CallTranscript {
    limit: usize,
    segments: VecDeque<TranscriptSegment>,
    /// Transcribed segments let go because of `limit`.
    pub dropped: u64,
    pub counts: SegmentCounts,
    cues: VecDeque<Cue>,
}

impl CallTranscript {
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            segments: VecDeque::new(),
            dropped: 0,
            counts: SegmentCounts::default(),
            cues: VecDeque::new(),
        }
    }

    /// Records one segment's result; returns the segment when it has text.
    pub fn add(&mut self, result: SegmentResult) -> Option<&TranscriptSegment> {
        let segment = match result.outcome {
            Ok(segment) => segment,
            Err(why) => {
                match why {
                    Skipped::QueueFull | Skipped::Stale => self.counts.skipped += 1,
                    Skipped::NoSpeech => self.counts.no_speech += 1,
                    Skipped::Failed => self.counts.failed += 1,
                    Skipped::Unintelligible => self.counts.unintelligible += 1,
                }
                return None;
            }
        };
        self.counts.transcribed += 1;
        for cue in &segment.cues {
            if self.cues.len() == CUES_KEPT {
                self.cues.pop_front();
            }
            self.cues.push_back(cue.clone());
        }
        if self.segments.len() == self.limit {
            self.segments.pop_front();
            self.dropped += 1;
        }
        // Workers may finish out of order; keep call order.
        let at = self.segments.partition_point(|s| s.seq < segment.seq);
        self.segments.insert(at, segment);
        self.segments.get(at)
    }

    /// Segments results have been recorded for.
    pub fn accounted(&self) -> u64 {
        self.counts.total()
    }

    pub fn segments(&self) -> impl ExactSizeIterator<Item = &TranscriptSegment> {
        self.segments.iter()
    }

    /// Segments said in the `span_ms` before `until_ms` (a segment counts if it overlaps).
    pub fn snippet(&self, until_ms: u64, span_ms: u64) -> Vec<TranscriptSegment> {
        let said = within(until_ms, span_ms);
        self.segments
            .iter()
            .filter(|s| said(s.start_ms, s.end_ms))
            .cloned()
            .collect()
    }

    /// Cues said in the `window_ms` before `until_ms`.
    pub fn recent_cues(&self, until_ms: u64, window_ms: u64) -> Vec<Cue> {
        let said = within(until_ms, window_ms);
        self.cues
            .iter()
            .filter(|c| said(c.start_ms, c.end_ms))
            .cloned()
            .collect()
    }

    /// The call's intent from its recent cues (see [`super::cues::intent`]).
    pub fn intent(&self, until_ms: u64, window_ms: u64) -> f32 {
        intent(&self.recent_cues(until_ms, window_ms))
    }

    /// Every segment's text, in order.
    pub fn text(&self) -> Redacted {
        Redacted::join(self.segments.iter().map(|s| &s.text))
    }
}

/// Whether speech from `start_ms` to `end_ms` overlaps the `span_ms` before `until_ms`.
fn within(until_ms: u64, span_ms: u64) -> impl Fn(u64, u64) -> bool {
    let from = until_ms.saturating_sub(span_ms);
    move |start_ms, end_ms| end_ms > from && start_ms <= until_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcribe::redact;

    fn seg(seq: u64, start_ms: u64, end_ms: u64, text: &str, cue: Option<&str>) -> SegmentResult {
        SegmentResult {
            call: 1,
            seq,
            outcome: Ok(TranscriptSegment {
                seq,
                start_ms,
                end_ms,
                text: redact(text).0,
                cues: cue
                    .map(|rule| Cue {
                        rule: rule.into(),
                        weight: 0.5,
                        text: text.into(),
                        start_ms,
                        end_ms,
                    })
                    .into_iter()
                    .collect(),
            }),
        }
    }

    #[test]
    fn keeps_call_order_bounds_and_counts() {
        let mut t = CallTranscript::new(2);
        t.add(seg(1, 3000, 4000, "second", None));
        t.add(seg(0, 0, 2000, "first", Some("transfer")));
        t.add(SegmentResult {
            call: 1,
            seq: 2,
            outcome: Err(Skipped::Stale),
        });
        assert_eq!(t.text().as_str(), "first second");
        t.add(seg(3, 9000, 9500, "third", Some("secrecy")));
        assert_eq!(t.text().as_str(), "second third");
        assert_eq!(t.dropped, 1);
        assert_eq!(t.accounted(), 4);
        assert_eq!(t.counts.skipped, 1);
        assert_eq!(t.snippet(9500, 2000).len(), 1);
        assert_eq!(t.snippet(9500, 10_000).len(), 2);
        // Cues outlive the segments they came from; the window selects them.
        assert_eq!(t.recent_cues(9500, 10_000).len(), 2);
        assert!((t.intent(9500, 10_000) - 0.75).abs() < 1e-6);
        assert!((t.intent(9500, 1000) - 0.5).abs() < 1e-6);
    }
}
