//! Masking of payment-card, account, IBAN and SSN-like numbers in recognised text, before the
//! text is stored, logged or sent anywhere (PCI DSS: a card number never leaves the worker).
//!
//! Numbers are found as *runs*: digits and spoken number words ("four one one one", "double
//! seven", "forty one") joined by spaces, hyphens, dots, commas or slashes. A run is masked as
//! - `[card]`: 13 to 19 digits passing the Luhn check;
//! - `[ssn]`: digits grouped 3-2-4;
//! - `[number]`: any other run of 4 or more digits (account, routing, phone numbers, one-time
//!   codes), except a money amount ("$40,000", "40000 dollars") of at most 9 digits or a lone
//!   year (1900 to 2099); a run of 1 to 3 digits that follows a word like "card", "account",
//!   "PIN", "code" or "CVV" within four words; and every number in a text that is mostly
//!   numbers (digits read out, cut from the rest of a card number by a pause).
//!
//! IBAN-shaped text (two letters, two check digits, 11 to 30 letters and digits, spaces allowed)
//! becomes `[iban]`. Over-masking is the safe side: an agent loses a digit string, never a card.

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

/// Text that has been through [`redact`]; the only way to make one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(transparent)]
pub struct Redacted(String);

impl Redacted {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Joins already-redacted pieces with single spaces.
    pub fn join<'a>(parts: impl IntoIterator<Item = &'a Redacted>) -> Redacted {
        let mut out = String::new();
        for p in parts {
            if !out.is_empty() && !p.0.is_empty() {
                out.push(' ');
            }
            out.push_str(&p.0);
        }
        Redacted(out)
    }
}

/// Text read back (from the alert log) is redacted again on the way in: a stored transcript
/// can never smuggle a number past the mask, whatever wrote it.
impl<'de> serde::Deserialize<'de> for Redacted {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(redact(&text).0)
    }
}

impl std::fmt::Display for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many spans of each kind one text had masked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Masked {
    pub cards: u32,
    pub ibans: u32,
    pub ssns: u32,
    pub numbers: u32,
}

impl Masked {
    pub fn total(&self) -> u32 {
        self.cards + self.ibans + self.ssns + self.numbers
    }

    pub fn add(&mut self, other: Masked) {
        self.cards += other.cards;
        self.ibans += other.ibans;
        self.ssns += other.ssns;
        self.numbers += other.numbers;
    }
}

static IBAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[A-Za-z]{2}[0-9]{2}(?:[ -]?[A-Z0-9]){11,30}\b").expect("valid pattern")
});

/// Words after which even a short number is a secret.
const SECRET_CONTEXT: &[&str] = &[
    "card",
    "account",
    "number",
    "digits",
    "ending",
    "expiry",
    "expiration",
    "routing",
    "sort",
    "pin",
    "code",
    "cvv",
    "cvc",
    "cvv2",
    "passcode",
    "password",
    "security",
    "verification",
    "otp",
];

/// Words that make the number before them a money amount.
const AMOUNT_WORDS: &[&str] = &[
    "dollar", "dollars", "euro", "euros", "pound", "pounds", "bucks", "cents", "usd", "eur", "gbp",
    "grand", "hundred", "thousand", "million", "k", "percent",
];

/// Masks every sensitive number in `text`.
pub fn redact(text: &str) -> (Redacted, Masked) {
    let mut masked = Masked::default();
    let text = IBAN.replace_all(text, |c: &regex::Captures| {
        let digits = c[0].chars().filter(char::is_ascii_digit).count();
        if digits >= 6 {
            masked.ibans += 1;
            "[iban]".to_string()
        } else {
            c[0].to_string()
        }
    });
    let tokens = tokenize(&text);
    let mut runs = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match number_run(&text, &tokens, i) {
            Some(run) => {
                i = run.last + 1;
                runs.push(run);
            }
            None => i += 1,
        }
    }
    // A text that is mostly numbers is someone reading digits out (the rest of a card number
    // cut off by a pause, a code): every number in it is masked, however short.
    let words = tokens
        .iter()
        .filter(|t| matches!(t.kind, TokenKind::Word | TokenKind::Digits))
        .count();
    let number_words: usize = runs
        .iter()
        .map(|r| {
            tokens[r.first..=r.last]
                .iter()
                .filter(|t| matches!(t.kind, TokenKind::Word | TokenKind::Digits))
                .count()
        })
        .sum();
    let mostly_numbers = number_words * 2 > words;
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for run in &runs {
        let kind = classify(&text, &tokens, run).or_else(|| {
            (mostly_numbers && !is_amount(&text, &tokens, run)).then_some(Kind::Number)
        });
        if let Some(kind) = kind {
            let (start, end) = (tokens[run.first].start, tokens[run.last].end);
            out.push_str(&text[copied..start]);
            out.push_str(kind.mask());
            copied = end;
            match kind {
                Kind::Card => masked.cards += 1,
                Kind::Ssn => masked.ssns += 1,
                Kind::Number => masked.numbers += 1,
            }
        }
    }
    out.push_str(&text[copied..]);
    (Redacted(out), masked)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Card,
    Ssn,
    Number,
}

impl Kind {
    fn mask(self) -> &'static str {
        match self {
            Self::Card => "[card]",
            Self::Ssn => "[ssn]",
            Self::Number => "[number]",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TokenKind {
    Digits,
    Word,
    /// Whitespace, hyphen, dot, comma or slash: may join the parts of one number.
    Joiner,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: TokenKind,
    start: usize,
    end: usize,
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens: Vec<Token> = Vec::new();
    for (i, c) in text.char_indices() {
        let kind = if c.is_ascii_digit() {
            TokenKind::Digits
        } else if c.is_alphabetic() || c == '\'' {
            TokenKind::Word
        } else if c.is_whitespace() || matches!(c, '-' | '.' | ',' | '/') {
            TokenKind::Joiner
        } else {
            TokenKind::Other
        };
        let end = i + c.len_utf8();
        match tokens.last_mut() {
            Some(t) if t.kind == kind && kind != TokenKind::Other => t.end = end,
            _ => tokens.push(Token {
                kind,
                start: i,
                end,
            }),
        }
    }
    tokens
}

/// The digits a number word stands for, and whether it can only continue a run ("oh").
fn word_digits(word: &str) -> Option<(&'static str, bool)> {
    const UNITS: [&str; 10] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    const TEENS: [&str; 10] = [
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TEEN_DIGITS: [&str; 10] = ["10", "11", "12", "13", "14", "15", "16", "17", "18", "19"];
    const TENS: [&str; 8] = [
        "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    const TENS_DIGITS: [&str; 8] = ["2", "3", "4", "5", "6", "7", "8", "9"];
    let w = word.to_ascii_lowercase();
    if let Some(i) = UNITS.iter().position(|u| *u == w) {
        return Some((DIGITS[i], false));
    }
    if let Some(i) = TEENS.iter().position(|u| *u == w) {
        return Some((TEEN_DIGITS[i], false));
    }
    if let Some(i) = TENS.iter().position(|u| *u == w) {
        // "forty" alone is 40, "forty one" is 41: the unit fills the second digit.
        return Some((TENS_DIGITS[i], false));
    }
    match w.as_str() {
        "oh" | "o" => Some(("0", true)),
        "double" | "triple" => Some(("", true)),
        _ => None,
    }
}

fn is_tens(word: &str) -> bool {
    matches!(
        word.to_ascii_lowercase().as_str(),
        "twenty" | "thirty" | "forty" | "fifty" | "sixty" | "seventy" | "eighty" | "ninety"
    )
}

/// A run of number tokens: token indices and the digits it spells.
#[derive(Debug)]
struct Run {
    first: usize,
    last: usize,
    digits: String,
    /// Digit count of each part, for the SSN 3-2-4 shape.
    groups: Vec<usize>,
    /// Parts joined by a comma with no space, in groups of three: "40,000".
    comma_grouped: bool,
}

/// The run of number tokens that starts at token `start`, if one does.
fn number_run(text: &str, tokens: &[Token], start: usize) -> Option<Run> {
    let word = |t: &Token| &text[t.start..t.end];
    let first = &tokens[start];
    match first.kind {
        TokenKind::Digits => {}
        TokenKind::Word => match word_digits(word(first)) {
            Some((_, false)) => {}
            _ => return None,
        },
        _ => return None,
    }
    let mut run = Run {
        first: start,
        last: start,
        digits: String::new(),
        groups: Vec::new(),
        comma_grouped: true,
    };
    let mut repeat = 1;
    let mut pending_tens = false;
    let mut i = start;
    while i < tokens.len() {
        let t = &tokens[i];
        match t.kind {
            TokenKind::Digits => {
                let d = word(t);
                if i > start {
                    let joiner = word(&tokens[i - 1]);
                    if joiner != "," || d.len() != 3 {
                        run.comma_grouped = false;
                    }
                }
                run.digits.push_str(d);
                run.groups.push(d.len());
                pending_tens = false;
            }
            TokenKind::Word => {
                let w = word(t);
                let Some((digits, _)) = word_digits(w) else {
                    break;
                };
                run.comma_grouped = false;
                match w.to_ascii_lowercase().as_str() {
                    "double" => repeat = 2,
                    "triple" => repeat = 3,
                    _ => {
                        let single = digits.len() == 1 && !is_tens(w);
                        if pending_tens && single && digits != "0" {
                            // "forty one": replace the 0 of forty with the unit.
                            run.digits.pop();
                            run.digits.push_str(digits);
                        } else {
                            for _ in 0..repeat {
                                run.digits.push_str(digits);
                            }
                            if is_tens(w) {
                                run.digits.push('0');
                            }
                            run.groups
                                .push(digits.len() * repeat + usize::from(is_tens(w)));
                        }
                        repeat = 1;
                        pending_tens = is_tens(w);
                    }
                }
            }
            TokenKind::Joiner => {
                // A joiner continues the run only when another number part follows.
                i += 1;
                continue;
            }
            TokenKind::Other => break,
        }
        run.last = i;
        i += 1;
    }
    if run.groups.len() < 2 {
        run.comma_grouped = false;
    }
    (!run.digits.is_empty()).then_some(run)
}

fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 { dd - 9 } else { dd }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A money amount of at most 9 digits: "$40,000", "40,000", "25000 dollars".
fn is_amount(text: &str, tokens: &[Token], run: &Run) -> bool {
    let word = |t: &Token| text[t.start..t.end].to_ascii_lowercase();
    let currency_before = text[..tokens[run.first].start]
        .trim_end()
        .ends_with(['$', '£', '€']);
    let amount_after = tokens[run.last + 1..]
        .iter()
        .find(|t| t.kind == TokenKind::Word)
        .is_some_and(|t| {
            let between = &text[tokens[run.last].end..t.start];
            between.trim().is_empty() && AMOUNT_WORDS.contains(&word(t).as_str())
        });
    run.digits.len() <= 9 && (currency_before || amount_after || run.comma_grouped)
}

/// What a run is, or `None` to keep it.
fn classify(text: &str, tokens: &[Token], run: &Run) -> Option<Kind> {
    let n = run.digits.len();
    if (13..=19).contains(&n) && luhn(&run.digits) {
        return Some(Kind::Card);
    }
    if run.groups == [3, 2, 4] {
        return Some(Kind::Ssn);
    }
    let word = |t: &Token| text[t.start..t.end].to_ascii_lowercase();
    let before: Vec<String> = tokens[..run.first]
        .iter()
        .rev()
        .filter(|t| t.kind == TokenKind::Word)
        .take(4)
        .map(word)
        .collect();
    if before.iter().any(|w| SECRET_CONTEXT.contains(&w.as_str())) {
        return Some(Kind::Number);
    }
    if n < 4 {
        return None;
    }
    if is_amount(text, tokens, run) {
        return None;
    }
    let year = n == 4
        && run.groups.len() == 1
        && run
            .digits
            .parse::<u32>()
            .is_ok_and(|y| (1900..=2099).contains(&y));
    if year {
        return None;
    }
    Some(Kind::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str) -> String {
        redact(text).0.0
    }

    #[test]
    fn card_numbers_in_digits_and_words() {
        assert_eq!(r("my card is 4111 1111 1111 1111."), "my card is [card].");
        assert_eq!(r("It's 4111-1111-1111-1111, expiry"), "It's [card], expiry");
        assert_eq!(r("5500000000000004"), "[card]");
        assert_eq!(
            r("four one one one one one one one one one one one one one one one thanks"),
            "[card] thanks"
        );
        assert_eq!(
            r("Card number 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1."),
            "Card number [card]."
        );
        assert_eq!(
            r("forty one eleven double one eleven eleven eleven eleven eleven"),
            "[card]"
        );
    }

    #[test]
    fn other_numbers() {
        assert_eq!(r("SSN 078-05-1120 ok"), "SSN [ssn] ok");
        assert_eq!(r("account 12345678 please"), "account [number] please");
        // Not Luhn-valid, still a long number.
        assert_eq!(r("4111 1111 1111 1112"), "[number]");
        assert_eq!(r("the code is 482913"), "the code is [number]");
        assert_eq!(r("my PIN is 12"), "my PIN is [number]");
        assert_eq!(r("the CVV is one two three"), "the CVV is [number]");
        assert_eq!(
            r("IBAN GB82 WEST 1234 5698 7654 32 today"),
            "IBAN [iban] today"
        );
        assert_eq!(r("DE89370400440532013000"), "[iban]");
        // The end of a card number cut off by a pause, read out alone.
        assert_eq!(r("0.51"), "[number]");
        assert_eq!(r("5 5, 4 4."), "[number].");
        assert_eq!(r("card ending in 12"), "card ending in [number]");
    }

    #[test]
    fn amounts_years_and_small_numbers_stay() {
        for keep in [
            "wire $40,000 today",
            "wire 40,000 to them",
            "send 25000 dollars",
            "forty thousand dollars",
            "in 2024 we",
            "press 1 now",
            "I have two kids and 3 dogs",
            "one of the best",
            "Press 1.",
            "$40,000.",
        ] {
            assert_eq!(r(keep), keep);
        }
        let (_, m) = redact("card 4111 1111 1111 1111 and account 99887766");
        assert_eq!(
            m,
            Masked {
                cards: 1,
                numbers: 1,
                ..Masked::default()
            }
        );
    }

    #[test]
    fn luhn_check() {
        assert!(luhn("4111111111111111"));
        assert!(luhn("79927398713"));
        assert!(!luhn("4111111111111112"));
    }

    /// A Luhn-valid card number of `len` digits from `seed` digits.
    fn card(seed: &[u8], len: usize) -> String {
        let mut d: Vec<u8> = seed.iter().take(len - 1).map(|v| v % 10).collect();
        d.resize(len - 1, 7);
        // Issuer numbers start with 2 to 6 (Mastercard, Visa, Amex, Discover...).
        d[0] = 2 + d[0] % 5;
        let body: String = d.iter().map(|v| char::from(b'0' + v)).collect();
        let check = (0..10u8)
            .find(|c| luhn(&format!("{body}{c}")))
            .expect("one check digit fits");
        format!("{body}{check}")
    }

    fn spoken(digits: &str, style: u8) -> String {
        const WORDS: [&str; 10] = [
            "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
        ];
        let parts: Vec<String> = digits
            .chars()
            .map(|c| c.to_digit(10).expect("digit") as usize)
            .map(|d| match style % 3 {
                0 => WORDS[d].to_string(),
                1 => d.to_string(),
                _ if d == 0 => "oh".to_string(),
                _ => WORDS[d].to_string(),
            })
            .collect();
        parts.join(if style.is_multiple_of(2) { " " } else { ", " })
    }

    proptest::proptest! {
        #[test]
        fn no_card_digits_survive(
            seed in proptest::collection::vec(0u8..10, 18),
            len in 13usize..=19,
            group in 1usize..=6,
            sep in 0usize..4,
            style in 0u8..6,
            spell in proptest::bool::ANY,
            // Context letters that cannot spell a number word.
            before in "[a-d ]{0,20}",
            after in "[a-d ]{0,20}",
        ) {
            let number = card(&seed, len);
            let written = if spell {
                spoken(&number, style)
            } else {
                let chunks: Vec<&str> = number
                    .as_bytes()
                    .chunks(group)
                    .map(|c| std::str::from_utf8(c).expect("ascii"))
                    .collect();
                chunks.join([" ", "-", ", ", ""][sep])
            };
            let input = format!("{before} {written} {after}");
            let (out, masked) = redact(&input);
            let digits: String = out.as_str().chars().filter(char::is_ascii_digit).collect();
            proptest::prop_assert!(digits.is_empty(), "{input:?} -> {out:?}");
            proptest::prop_assert!(masked.total() >= 1);
            let words = ["zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];
            proptest::prop_assert!(
                !out.as_str().split(|c: char| !c.is_alphabetic()).any(|w| words.contains(&w)),
                "{input:?} -> {out:?}"
            );
        }
    }
}
