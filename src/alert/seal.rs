//! Transcript text encrypted at rest in the alert log (`[store] encryption_key_file`).
//!
//! What a caller said (an alert's transcript snippet, an ended call's transcript, the cues
//! matched in it) and what an agent wrote (an acknowledgement's note) are sealed field by field
//! before a record is written: every string under those keys becomes `cg1:` and the base64 of a
//! random 96-bit nonce, the ChaCha20-Poly1305 ciphertext and its tag (ring's AEAD, the library
//! rustls already uses here). The rest of a record (ids, times, scores, caller number) stays
//! clear, because replay, retention and call search filter on it. Records written before a key
//! was set are read as they are; a sealed record read without the key, or with another key, is
//! an error that says so, never garbage.
//!
//! The key file holds 32 random bytes as 64 hex characters (`openssl rand -hex 32`).

use std::path::Path;

use base64::Engine;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

/// Keys whose every string is sealed, wherever they appear in a record.
const SEALED: [&str; 4] = ["transcript_snippet", "transcript", "cues", "note"];
const PREFIX: &str = "cg1:";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("store.encryption_key_file {path}: {message}")]
    Key { path: String, message: String },
    #[error("the alert log holds encrypted transcripts and no store.encryption_key_file is set")]
    NoKey,
    #[error(
        "an encrypted transcript in the alert log does not open with this key (another key, or the record was altered)"
    )]
    WrongKey,
    #[error("no randomness for a nonce")]
    Random,
}

/// The key, ready to seal and open.
pub struct Sealer {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// Reads a key file: 64 hex characters (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, SealError> {
        let err = |message: String| SealError::Key {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let hex = text.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(
                "must hold 32 bytes as 64 hex characters (openssl rand -hex 32)".into(),
            ));
        }
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        Self::from_bytes(&bytes).map_err(|e| err(e.to_string()))
    }

    pub fn from_bytes(key: &[u8]) -> Result<Self, SealError> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, key).map_err(|_| SealError::Key {
            path: String::new(),
            message: "not a 32-byte key".into(),
        })?;
        Ok(Self {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        })
    }

    fn seal_str(&self, plain: &str, aad: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)
        ))
    }

    fn open_str(&self, sealed: &str, aad: &str) -> Result<String, SealError> {
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(&sealed[PREFIX.len()..])
            .map_err(|_| SealError::WrongKey)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::WrongKey);
        }
        let (nonce, data) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::WrongKey)?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut data)
            .map_err(|_| SealError::WrongKey)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::WrongKey)
    }
}

/// `body` (a record's JSON) with the transcript fields sealed; as it is without a key. `aad`
/// binds each sealed string to its table, so one cannot be moved to another.
pub fn seal(sealer: Option<&Sealer>, body: String, aad: &str) -> Result<String, SealError> {
    let Some(sealer) = sealer else {
        return Ok(body);
    };
    let Ok(mut value) = serde_json::from_str::<Value>(&body) else {
        return Ok(body);
    };
    walk(&mut value, false, &mut |s| sealer.seal_str(s, aad))?;
    Ok(value.to_string())
}

/// `body` with every sealed string opened.
pub fn open(sealer: Option<&Sealer>, body: String, aad: &str) -> Result<String, SealError> {
    if !body.contains(PREFIX) {
        return Ok(body);
    }
    let Ok(mut value) = serde_json::from_str::<Value>(&body) else {
        return Ok(body);
    };
    walk(&mut value, false, &mut |s| {
        if !s.starts_with(PREFIX) {
            return Ok(s.to_owned());
        }
        sealer.ok_or(SealError::NoKey)?.open_str(s, aad)
    })?;
    Ok(value.to_string())
}

/// Applies `f` to every string under a [`SEALED`] key.
fn walk(
    value: &mut Value,
    inside: bool,
    f: &mut impl FnMut(&str) -> Result<String, SealError>,
) -> Result<(), SealError> {
    match value {
        Value::String(s) if inside => *s = f(s)?,
        Value::Array(items) => {
            for item in items {
                walk(item, inside, f)?;
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                walk(item, inside || SEALED.contains(&key.as_str()), f)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_fields_are_sealed_and_open_only_with_their_key() {
        let a = Sealer::from_bytes(&[7; 32]).unwrap();
        let b = Sealer::from_bytes(&[8; 32]).unwrap();
        let body = serde_json::json!({
            "call_id": "c1",
            "transcript_snippet": "please wire the money",
            "transcript": [{"seq": 0, "text": "my card is [card]", "cues": []}],
            "cues": [{"rule": "urgency", "text": "today"}],
            "metadata": {"ani": "+15550100"},
        })
        .to_string();
        let sealed = seal(Some(&a), body.clone(), "alerts").unwrap();
        for secret in ["wire the money", "my card", "urgency", "today"] {
            assert!(!sealed.contains(secret), "{secret} in {sealed}");
        }
        assert!(sealed.contains("+15550100") && sealed.contains("\"c1\""));
        let opened: Value =
            serde_json::from_str(&open(Some(&a), sealed.clone(), "alerts").unwrap()).unwrap();
        assert_eq!(opened, serde_json::from_str::<Value>(&body).unwrap());
        assert!(matches!(
            open(Some(&b), sealed.clone(), "alerts"),
            Err(SealError::WrongKey)
        ));
        assert!(matches!(
            open(Some(&a), sealed.clone(), "calls"),
            Err(SealError::WrongKey)
        ));
        assert!(matches!(
            open(None, sealed, "alerts"),
            Err(SealError::NoKey)
        ));
        // Records from before the key are read as they are.
        assert_eq!(open(Some(&a), body.clone(), "alerts").unwrap(), body);
        assert_eq!(seal(None, body.clone(), "alerts").unwrap(), body);
    }

    #[test]
    fn key_files_must_hold_64_hex_characters() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.key");
        std::fs::write(&good, format!("{}\n", "ab".repeat(32))).unwrap();
        assert!(Sealer::from_file(&good).is_ok());
        for bad in ["", "abc", &"zz".repeat(32), &"ab".repeat(31)] {
            let p = dir.path().join("bad.key");
            std::fs::write(&p, bad).unwrap();
            let e = Sealer::from_file(&p).unwrap_err().to_string();
            assert!(e.contains("64 hex"), "{e}");
        }
        assert!(Sealer::from_file(&dir.path().join("missing.key")).is_err());
    }
}
