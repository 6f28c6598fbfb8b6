//! Social-engineering cues: phrase rules matched in the (already redacted) transcript.
//!
//! A rule has a name, a weight in (0, 1] and phrases. A phrase is a sequence of words matched
//! case-insensitively on word boundaries; a word ending in `*` matches any word it begins
//! ("wir*" matches "wire", "wired", "wiring"). Punctuation and hyphens separate words, so
//! "one-time code" is the phrase `one time code`.
//!
//! A call's *intent* is `1 - prod(1 - weight)` over the distinct rules it matched in the last
//! `cue_window_s` of audio; see [`intent`] and `risk` in `crate::verdict`.

use serde::{Deserialize, Serialize};

use super::Redacted;

/// One rule from config (`[[transcribe.cues]]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CueRule {
    pub name: String,
    pub weight: f32,
    pub phrases: Vec<String>,
}

/// A rule that matched: which phrase, the words as said, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cue {
    pub rule: String,
    pub weight: f32,
    /// The matched words, as they appear in the redacted transcript.
    pub text: String,
    /// Call audio time of the speech segment that said it.
    pub start_ms: u64,
    pub end_ms: u64,
}

/// The shipped rules: what voice-clone fraud against a bank asks for, and how.
pub fn default_rules() -> Vec<CueRule> {
    let rule = |name: &str, weight: f32, phrases: &[&str]| CueRule {
        name: name.into(),
        weight,
        phrases: phrases.iter().map(|p| p.to_string()).collect(),
    };
    vec![
        rule(
            "transfer",
            0.35,
            &[
                "wir*",
                "transfer*",
                "send the money",
                "send money",
                "send the funds",
                "move the money",
                "move money",
                "make a payment",
                "pay the invoice",
            ],
        ),
        rule(
            "payee_change",
            0.35,
            &[
                "new payee",
                "new supplier",
                "new account",
                "different account",
                "change the account",
                "update the account",
                "account details",
                "bank details",
                "beneficiary",
                "routing number",
            ],
        ),
        rule(
            "gift_cards",
            0.5,
            &[
                "gift card*",
                "itunes card*",
                "google play card*",
                "steam card*",
            ],
        ),
        rule(
            "crypto",
            0.5,
            &[
                "bitcoin*",
                "crypto*",
                "ethereum",
                "tether",
                "wallet address",
            ],
        ),
        rule(
            "one_time_code",
            0.5,
            &[
                "verification code*",
                "one time code*",
                "one time password*",
                "security code*",
                "authentication code*",
                "passcode*",
                "otp",
                "code you sent",
                "code we sent",
                "code that you just sent",
                "read me the code",
            ],
        ),
        rule(
            "password_reset",
            0.4,
            &[
                "reset my password",
                "reset the password",
                "password reset",
                "change my password",
                "forgot my password",
                "locked out",
                "reset my pin",
            ],
        ),
        rule(
            "urgency",
            0.25,
            &[
                "urgent*",
                "right now",
                "right away",
                "immediately",
                "as soon as possible",
                "asap",
                "today",
                "hurry",
                "quickly",
                "end of the day",
            ],
        ),
        rule(
            "secrecy",
            0.4,
            &[
                "don't tell",
                "do not tell",
                "not tell anyone",
                "between us",
                "confidential",
                "keep it quiet",
                "keep this quiet",
                "secret",
                "nobody needs to know",
                "don't mention",
                "do not mention",
            ],
        ),
    ]
}

/// Compiled rules.
#[derive(Debug, Clone)]
pub struct CueMatcher {
    rules: Vec<(CueRule, Vec<Vec<Pattern>>)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    Word(String),
    Prefix(String),
}

impl Pattern {
    fn matches(&self, word: &str) -> bool {
        match self {
            Self::Word(w) => w == word,
            Self::Prefix(p) => word.starts_with(p.as_str()),
        }
    }
}

/// Lower-case words and their byte spans in `text`.
fn words(text: &str) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    let is_word = |c: char| c.is_alphanumeric() || c == '\'' || c == '’';
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        match (start, is_word(c) && i < text.len()) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                out.push((text[s..i].to_lowercase().replace('’', "'"), s, i));
                start = None;
            }
            _ => {}
        }
    }
    out
}

impl CueMatcher {
    pub fn new(rules: &[CueRule]) -> Self {
        let rules = rules
            .iter()
            .map(|r| {
                let phrases = r
                    .phrases
                    .iter()
                    .map(|p| {
                        words(p)
                            .into_iter()
                            .map(|(w, s, e)| {
                                if p[e..].starts_with('*') || p[s..e].ends_with('*') {
                                    Pattern::Prefix(w)
                                } else {
                                    Pattern::Word(w)
                                }
                            })
                            .collect()
                    })
                    .filter(|p: &Vec<Pattern>| !p.is_empty())
                    .collect();
                (r.clone(), phrases)
            })
            .collect();
        Self { rules }
    }

    /// Each rule's first match in `text`, said between `start_ms` and `end_ms`.
    pub fn find(&self, text: &Redacted, start_ms: u64, end_ms: u64) -> Vec<Cue> {
        let text = text.as_str();
        let words = words(text);
        let mut out = Vec::new();
        for (rule, phrases) in &self.rules {
            let hit = phrases.iter().find_map(|phrase| {
                words.windows(phrase.len()).find_map(|w| {
                    w.iter()
                        .zip(phrase)
                        .all(|((word, _, _), p)| p.matches(word))
                        .then(|| (w[0].1, w[phrase.len() - 1].2))
                })
            });
            if let Some((s, e)) = hit {
                out.push(Cue {
                    rule: rule.name.clone(),
                    weight: rule.weight,
                    text: text[s..e].to_string(),
                    start_ms,
                    end_ms,
                });
            }
        }
        out
    }
}

/// `1 - prod(1 - weight)` over the distinct rules among `cues`: 0 with none, near 1 with many.
pub fn intent<'a>(cues: impl IntoIterator<Item = &'a Cue>) -> f32 {
    let mut seen: Vec<(&str, f32)> = Vec::new();
    for c in cues {
        match seen.iter_mut().find(|(r, _)| *r == c.rule) {
            Some((_, w)) => *w = w.max(c.weight),
            None => seen.push((&c.rule, c.weight)),
        }
    }
    1.0 - seen
        .iter()
        .map(|(_, w)| 1.0 - w.clamp(0.0, 1.0))
        .product::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcribe::redact;

    fn rules(text: &str) -> Vec<String> {
        let m = CueMatcher::new(&default_rules());
        m.find(&redact(text).0, 0, 1000)
            .into_iter()
            .map(|c| c.rule)
            .collect()
    }

    #[test]
    fn a_fraudulent_request_raises_its_cues() {
        assert_eq!(
            rules("Please wire the money today, and don't tell anyone."),
            ["transfer", "urgency", "secrecy"]
        );
        assert_eq!(
            rules("Can you read me the one-time code you just sent? I'm locked out."),
            ["one_time_code", "password_reset"]
        );
        assert_eq!(
            rules("Buy Google Play cards and send me the numbers"),
            ["gift_cards"]
        );
        assert!(rules("I would like to check my balance, please.").is_empty());
        // "wir*" is a prefix of words, not of their middles.
        assert!(rules("the rewiring of the kitchen").is_empty());
    }

    #[test]
    fn matched_text_keeps_its_case_and_intent_counts_each_rule_once() {
        let m = CueMatcher::new(&default_rules());
        let cues = m.find(
            &redact("WIRE it. Wire it again. Do NOT tell anyone").0,
            5,
            9,
        );
        assert_eq!(cues[0].text, "WIRE");
        assert_eq!(cues[1].text, "Do NOT tell");
        assert_eq!((cues[0].start_ms, cues[0].end_ms), (5, 9));
        let once = intent(&cues);
        let twice = intent(cues.iter().chain(&cues));
        assert!((once - (1.0 - 0.65 * 0.6)).abs() < 1e-6, "{once}");
        assert_eq!(once, twice);
        assert_eq!(intent(&[]), 0.0);
    }
}
