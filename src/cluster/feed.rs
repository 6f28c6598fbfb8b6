//! `StreamAlerts` in a cluster: the tenant's alerts of every node, read from the stream with an
//! ordered consumer (ephemeral, no acknowledgements; the client library recreates it from the
//! last sequence it delivered if the server it reads from goes away). The alert's `sequence` is
//! the stream's sequence: one order for the whole cluster, and what `after_sequence` means.

use std::sync::Arc;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt;

use super::{ClusterError, Inner, subjects};
use crate::alert::{AlertFilter, LoggedAlert};

pub struct ClusterFeed {
    inner: Arc<Inner>,
    messages: pull::Ordered,
    filter: AlertFilter,
}

pub(super) async fn open(
    inner: Arc<Inner>,
    tenant: &str,
    filter: AlertFilter,
    after: Option<u64>,
) -> Result<ClusterFeed, ClusterError> {
    let handles = inner.handles()?;
    let deliver_policy = match after {
        None => DeliverPolicy::New,
        Some(0) => DeliverPolicy::All,
        Some(n) => DeliverPolicy::ByStartSequence {
            start_sequence: n + 1,
        },
    };
    let nats = |e: &dyn std::fmt::Display| ClusterError::Nats(e.to_string());
    let consumer = handles
        .stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects::alerts_of(tenant, filter.call_id.as_deref()),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?;
    let messages = consumer.messages().await.map_err(|e| nats(&e))?;
    Ok(ClusterFeed {
        inner,
        messages,
        filter,
    })
}

impl ClusterFeed {
    /// The next alert that passes the filter, waiting for it; `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Result<LoggedAlert, ClusterError>> {
        loop {
            let message = match self.messages.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(ClusterError::Nats(e.to_string()))),
            };
            let sequence = match message.info() {
                Ok(info) => info.stream_sequence,
                Err(e) => return Some(Err(ClusterError::Nats(e.to_string()))),
            };
            let alert = self
                .inner
                .open(&message.payload, "alerts")
                .and_then(|body| Ok(serde_json::from_str::<LoggedAlert>(&body)?));
            match alert {
                Ok(mut alert) => {
                    alert.sequence = sequence;
                    if self.filter.matches(&alert) {
                        return Some(Ok(alert));
                    }
                }
                // One unreadable message (another key, a foreign publisher) is skipped, said.
                Err(e) => {
                    tracing::warn!(sequence, error = %e, "Unreadable alert in the stream; skipped.")
                }
            }
        }
    }
}
