//! Committed alerts to JetStream, through the sinks' delivery loop.
//!
//! The local alert log is the outbox (as for webhooks): the loop reads after this sink's
//! cursor, publishes in order, waits for JetStream's acknowledgement (the alert is then stored
//! on a majority of the stream's replicas), and only then moves the cursor. While NATS is
//! down the alerts wait in the log and go out in order when it returns. A crash between the
//! acknowledgement and the cursor's commit publishes the alert again with the same
//! `Nats-Msg-Id` (its id), which JetStream drops within `duplicate_window_s`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::context::Publish as PublishMessage;

use super::{Inner, subjects};
use crate::alert::{Acknowledgement, LoggedAlert};
use crate::sinks::Deliver;

/// How long one publish waits for JetStream's acknowledgement before it is retried.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Publisher {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Handle,
}

impl Publisher {
    pub(super) fn new(inner: Arc<Inner>, runtime: tokio::runtime::Handle) -> Self {
        Self { inner, runtime }
    }
}

impl Deliver for Publisher {
    fn deliver(&mut self, alert: &LoggedAlert) -> Result<(), String> {
        if !self.inner.is_ready() {
            return Err("NATS is not connected (or the stream is not set up yet)".into());
        }
        // The local sequence means nothing to another node: the stream gives the cluster's.
        let mut shared = alert.clone();
        shared.sequence = 0;
        shared.acknowledged = None;
        let body = serde_json::to_string(&shared).map_err(|e| e.to_string())?;
        let body = self.inner.seal(body, "alerts").map_err(|e| e.to_string())?;
        let subject = subjects::alert(&alert.tenant, &alert.call_id);
        let js = self.inner.js.clone();
        let id = alert.id.clone();
        let ack = self.runtime.block_on(async move {
            let pending = js
                .send_publish(
                    subject,
                    PublishMessage::build().payload(body.into()).message_id(id),
                )
                .await
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(ACK_TIMEOUT, pending).await {
                Ok(ack) => ack.map_err(|e| e.to_string()),
                Err(_) => Err("no acknowledgement from JetStream in 5 s".to_owned()),
            }
        })?;
        if !ack.duplicate {
            self.inner.stats.published.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(
            alert = alert.id,
            stream_sequence = ack.sequence,
            duplicate = ack.duplicate,
            "Alert published to the cluster."
        );
        Ok(())
    }

    /// Acknowledgements stay on the node that took them (see `docs/cluster.md`): nothing to send.
    fn deliver_ack(&mut self, _tenant: &str, _ack: &Acknowledgement) -> Result<(), String> {
        Ok(())
    }
}
