//! `StreamAlerts` in a cluster: the tenant's alerts of every node, read from the stream. The
//! alert's `sequence` is the stream's sequence: one order for the whole cluster, and what
//! `after_sequence` means.
//!
//! The feed reads through an ephemeral consumer (no acknowledgements, in memory) filtered to
//! the tenant, in batches. That consumer lives on one NATS server; when that server dies the
//! fetch fails, and the feed makes a new consumer that starts after the last sequence it
//! handed out, so the subscriber neither misses nor repeats an alert. (The client library's
//! ordered consumer does the same in principle, but was seen not to come back after a server
//! was killed; this loop is small enough to own.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use tokio_stream::StreamExt;

use super::{ClusterError, Inner, subjects};
use crate::alert::{AlertFilter, LoggedAlert};

/// Alerts fetched per request, and how long one request waits for them.
const BATCH: usize = 64;
const FETCH_WAIT: Duration = Duration::from_secs(2);
/// How long the feed keeps trying to get a consumer back before it tells the subscriber.
const GIVE_UP: Duration = Duration::from_secs(30);

pub struct ClusterFeed {
    inner: Arc<Inner>,
    subject: String,
    filter: AlertFilter,
    /// The stream sequence to read from next.
    next: u64,
    consumer: Option<PullConsumer>,
    ready: VecDeque<LoggedAlert>,
}

pub(super) async fn open(
    inner: Arc<Inner>,
    tenant: &str,
    filter: AlertFilter,
    after: Option<u64>,
) -> Result<ClusterFeed, ClusterError> {
    let next = match after {
        Some(n) => n + 1,
        // Only new alerts: from after the stream's last message now.
        None => {
            let mut stream = inner.handles()?.stream.clone();
            let info = stream
                .info()
                .await
                .map_err(|e| ClusterError::Nats(e.to_string()))?;
            info.state.last_sequence + 1
        }
    };
    Ok(ClusterFeed {
        subject: subjects::alerts_of(tenant, filter.call_id.as_deref()),
        inner,
        filter,
        next,
        consumer: None,
        ready: VecDeque::new(),
    })
}

impl ClusterFeed {
    /// The next alert that passes the filter, waiting for it; an error once NATS has been out
    /// of reach for `GIVE_UP`.
    pub async fn next(&mut self) -> Option<Result<LoggedAlert, ClusterError>> {
        let mut failing_since: Option<Instant> = None;
        loop {
            if let Some(a) = self.ready.pop_front() {
                return Some(Ok(a));
            }
            match self.fetch().await {
                Ok(()) => failing_since = None,
                Err(e) => {
                    self.consumer = None;
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > GIVE_UP {
                        return Some(Err(e));
                    }
                    tracing::debug!(error = %e, "Cluster alert feed: making a new consumer.");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// One batch (possibly empty) into `ready`.
    async fn fetch(&mut self) -> Result<(), ClusterError> {
        let nats = |e: &dyn std::fmt::Display| ClusterError::Nats(e.to_string());
        if self.consumer.is_none() {
            let stream = &self.inner.handles()?.stream;
            let consumer = stream
                .create_consumer(pull::Config {
                    filter_subject: self.subject.clone(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: self.next,
                    },
                    ack_policy: AckPolicy::None,
                    inactive_threshold: Duration::from_secs(30),
                    num_replicas: 1,
                    memory_storage: true,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats(&e))?;
            self.consumer = Some(consumer);
        }
        let Some(consumer) = self.consumer.clone() else {
            return Err(ClusterError::Down);
        };
        // The server's expiry ends a fetch; a server that died mid-fetch does not, so the
        // client bounds it too.
        tokio::time::timeout(FETCH_WAIT + Duration::from_secs(3), self.drain(&consumer))
            .await
            .map_err(|_| ClusterError::Nats("no answer to a fetch".into()))?
    }

    async fn drain(&mut self, consumer: &PullConsumer) -> Result<(), ClusterError> {
        let nats = |e: &dyn std::fmt::Display| ClusterError::Nats(e.to_string());
        let mut batch = consumer
            .fetch()
            .max_messages(BATCH)
            .expires(FETCH_WAIT)
            .messages()
            .await
            .map_err(|e| nats(&e))?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| nats(&e))?;
            let sequence = message.info().map_err(|e| nats(&e))?.stream_sequence;
            if sequence < self.next {
                continue;
            }
            self.next = sequence + 1;
            let alert = self
                .inner
                .open(&message.payload, "alerts")
                .and_then(|body| Ok(serde_json::from_str::<LoggedAlert>(&body)?));
            match alert {
                Ok(mut alert) => {
                    alert.sequence = sequence;
                    if self.filter.matches(&alert) {
                        self.ready.push_back(alert);
                    }
                }
                // One unreadable message (another key, a foreign publisher) is skipped, said.
                Err(e) => {
                    tracing::warn!(sequence, error = %e, "Unreadable alert in the stream; skipped.")
                }
            }
        }
        Ok(())
    }
}
