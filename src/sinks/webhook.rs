//! Webhook delivery: each alert POSTed as JSON (`{"type": "alert", "alert": {...}}`), with
//!
//! - `X-Callguard-Timestamp`: Unix seconds of this attempt;
//! - `X-Callguard-Signature`: `v1=` + hex HMAC-SHA256, keyed with the sink's secret, over
//!   `TIMESTAMP "." BODY`; a receiver recomputes it and refuses a timestamp more than a few
//!   minutes old, so a captured request cannot be replayed later;
//! - `X-Callguard-Delivery`: the alert's id, the same on every retry, for the receiver to drop
//!   a repeat.
//!
//! Any 2xx is delivered; anything else (a refusal, 5xx, a timeout, no connection) is retried.
//! HTTP by ureq (a maintained blocking client with rustls): each sink has its own thread.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Deliver;
use crate::alert::{Acknowledgement, LoggedAlert};
use crate::config::{WebhookSinkConfig, read_secret};

pub struct WebhookSink {
    agent: ureq::Agent,
    url: String,
    secret: String,
}

/// `v1=` + hex HMAC-SHA256 of `timestamp "." body` under `secret`.
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let bytes = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(3 + bytes.len() * 2);
    hex.push_str("v1=");
    for b in bytes {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

impl WebhookSink {
    pub fn new(c: &WebhookSinkConfig) -> Result<Self, String> {
        let secret = read_secret(c.secret_env.as_deref(), c.secret_file.as_deref())?;
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &c.ca {
            let pem =
                std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(format!("{} holds no PEM certificate", ca.display()));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(c.timeout_ms)))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("callguard/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build();
        Ok(Self {
            agent: ureq::Agent::new_with_config(config),
            url: c.url.clone(),
            secret,
        })
    }
}

impl WebhookSink {
    fn post(&mut self, event: &str, delivery: &str, body: &str) -> Result<(), String> {
        let timestamp = crate::alert::now_ms() / 1000;
        let response = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("X-Callguard-Event", event)
            .header("X-Callguard-Delivery", delivery)
            .header("X-Callguard-Timestamp", timestamp.to_string())
            .header(
                "X-Callguard-Signature",
                signature(&self.secret, timestamp, body),
            )
            .send(body)
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {status}"))
        }
    }
}

impl Deliver for WebhookSink {
    fn deliver(&mut self, alert: &LoggedAlert) -> Result<(), String> {
        let body = serde_json::json!({ "type": "alert", "alert": alert }).to_string();
        self.post("alert", &alert.id, &body)
    }

    fn deliver_ack(&mut self, tenant: &str, ack: &Acknowledgement) -> Result<(), String> {
        let body = serde_json::json!({
            "type": "acknowledgement",
            "tenant": tenant,
            "acknowledgement": ack,
        })
        .to_string();
        let delivery = format!("ack_{}_{}", ack.alert_id, ack.at_ms);
        self.post("acknowledgement", &delivery, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Python: hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature("key", 1_700_000_000, "{}"),
            "v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert_ne!(
            signature("key", 1_700_000_000, "{}"),
            signature("key", 1_700_000_001, "{}")
        );
        assert_ne!(
            signature("key", 1_700_000_000, "{}"),
            signature("other", 1_700_000_000, "{}")
        );
    }
}
