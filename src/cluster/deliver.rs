//! Webhooks and syslog in a cluster: once per cluster, in the cluster's order, from the stream.
//!
//! Each configured sink is one durable JetStream consumer (`sink-<name>`) shared by every node,
//! with at most one alert in flight (`max_ack_pending = 1`): whichever node fetches it delivers
//! it, acknowledges it after the receiver took it, and the next alert follows. A node that dies
//! mid-delivery leaves its alert unacknowledged; after `ACK_WAIT` another node's fetch gets it
//! (at least once, with the same delivery id, as on a single node). A delivery being retried
//! tells JetStream it is still in progress, so no other node starts the same alert meanwhile.
//!
//! Acknowledgements by supervisors stay with the node that took them (see `docs/cluster.md`);
//! `callguard sinks status` shows a single node's cursors, not the consumer's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use tokio_stream::StreamExt;

use super::{Inner, subjects};
use crate::alert::LoggedAlert;
use crate::ops::Metrics;
use crate::sinks::Sink;

/// How long an alert fetched by a node stays its own without news before another node may
/// take it.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// Runs one sink on this node until `stop`: fetch, deliver (retrying with the sink's backoff),
/// acknowledge.
pub(super) fn run(
    inner: Arc<Inner>,
    runtime: tokio::runtime::Handle,
    mut sink: Sink,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) {
    let name = sink.name.clone();
    let durable = format!("sink-{}", subjects::token(&name));
    tracing::info!(sink = %name, consumer = durable, "Cluster alert delivery started.");
    while !stop.load(Ordering::SeqCst) {
        let consumer = runtime.block_on(async {
            let handles = inner.handles()?;
            handles
                .stream
                .get_or_create_consumer(
                    &durable,
                    pull::Config {
                        durable_name: Some(durable.clone()),
                        filter_subject: "callguard.alerts.>".into(),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: ACK_WAIT,
                        max_ack_pending: 1,
                        // A sink added to a running cluster starts with the alerts after it.
                        deliver_policy: DeliverPolicy::New,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| super::ClusterError::Nats(e.to_string()))
        });
        let consumer = match consumer {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(sink = %name, error = %e, "Cluster sink not ready; retrying.");
                if !crate::sinks::pause(Duration::from_secs(1), &stop) {
                    return;
                }
                continue;
            }
        };
        while !stop.load(Ordering::SeqCst) {
            let message = runtime.block_on(async {
                let fetch = async {
                    let mut batch = consumer
                        .fetch()
                        .max_messages(1)
                        .expires(Duration::from_secs(1))
                        .messages()
                        .await
                        .map_err(|e| e.to_string())?;
                    batch.next().await.transpose().map_err(|e| e.to_string())
                };
                // A server that died mid-fetch never expires it: bounded here too.
                tokio::time::timeout(Duration::from_secs(4), fetch)
                    .await
                    .unwrap_or_else(|_| Err("no answer to a fetch".into()))
            });
            let message = match message {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(sink = %name, error = %e, "Cluster sink fetch failed; fetching again.");
                    if !crate::sinks::pause(Duration::from_secs(1), &stop) {
                        return;
                    }
                    break;
                }
            };
            let alert = inner
                .open(&message.payload, "alerts")
                .and_then(|b| Ok(serde_json::from_str::<LoggedAlert>(&b)?));
            let mut alert = match alert {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(sink = %name, error = %e, "Unreadable alert in the stream; passed over.");
                    let _ = runtime.block_on(message.ack());
                    continue;
                }
            };
            if let Ok(info) = message.info() {
                alert.sequence = info.stream_sequence;
            }
            if sink.tenants.is_empty() || sink.tenants.contains(&alert.tenant) {
                let mut wait = sink.backoff.initial;
                loop {
                    match sink.out.deliver(&alert) {
                        Ok(()) => {
                            metrics.sink_delivered(&name);
                            break;
                        }
                        Err(e) => {
                            metrics.sink_failed(&name);
                            tracing::warn!(sink = %name, alert = alert.id, error = %e, retry_in_ms = wait.as_millis() as u64, "Not delivered; will retry.");
                            // Still this node's: no other node starts it meanwhile.
                            let _ = runtime.block_on(message.ack_with(AckKind::Progress));
                            if !crate::sinks::pause(wait, &stop) {
                                return;
                            }
                            wait = (wait * 2).min(sink.backoff.max);
                        }
                    }
                }
            }
            if let Err(e) = runtime.block_on(message.double_ack()) {
                // Delivered, not acknowledged: it may be delivered again (same delivery id).
                tracing::warn!(sink = %name, alert = alert.id, error = %e, "Delivered; JetStream did not take the acknowledgement.");
            }
        }
    }
}
