//! The shared view of calls: each node writes its live calls to the calls bucket (at the next
//! heartbeat when their state or alerts change, else every 10 s), writes them again as ended,
//! says it is alive in the nodes bucket, and watches both buckets. When a node falls silent for
//! `node_timeout_ms`, the first node to notice marks it lost and ends its calls (compare-and-set
//! on each entry's revision, so exactly one node does it) from their last shared state, with the
//! end reason `node_lost`.
//!
//! A source that reconnects to another node with the same call id continues the call there:
//! the new node finds the old entry, records where the call came from and the wall-clock gap,
//! and owns the call from then on. If the old node comes back (a partition healed) and finds
//! its call owned by another node, it ends its own copy: one owner per call. (Found ended as
//! lost but not taken over, it writes the call live again.)

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

use super::{Cache, ClusterError, Handles, Inner, NodeBeat, Seen, subjects};
use crate::alert::now_ms;
use crate::guard::{CallRecord, ClusterPlace};

/// What the cluster needs of this node's calls (the guard gives it; see `LocalCalls for
/// GuardCalls` in `mod.rs`).
pub trait LocalCalls: Send + Sync {
    /// Every live call, without windows and transcript.
    fn live(&self) -> Vec<CallRecord>;
    /// One live call in full, for another node's `GetCall`.
    fn live_one(&self, tenant: &str, call_id: &str) -> Option<CallRecord>;
    /// The call's record once it has ended (from the store); `None` until it is written.
    fn ended(&self, tenant: &str, call_id: &str) -> Option<CallRecord>;
    /// Calls of every tenant that ended at or after `since_ms` (from the store), oldest first,
    /// at most `limit`.
    fn ended_since(&self, since_ms: i64, limit: usize) -> Vec<CallRecord>;
    /// Ends a live call (the cluster gave it to another node).
    fn end(&self, tenant: &str, call_id: &str);
}

/// A call this node owns in the bucket, and what it last wrote of it.
pub(super) struct Mine {
    tenant: String,
    call_id: String,
    place: ClusterPlace,
    /// What was last written and when; `None` before the first write.
    last: Option<((u8, u32), Instant)>,
    /// Heartbeats since the call left the registry without an ended record in the store.
    waits: u32,
}

/// What makes a live call's entry worth writing at once: its state and its alert count. The
/// score and counters go out every `REFRESH` (the owner answers `GetCall` with the live record
/// anyway); writing them every heartbeat would send every node every call's entry each second.
fn fingerprint(r: &CallRecord) -> (u8, u32) {
    (r.state as u8, r.alerts)
}

/// How often a live call's entry is rewritten when nothing urgent changed.
const REFRESH: Duration = Duration::from_secs(10);

/// A record as the bucket holds it: no windows or transcript (those stay on the node).
fn brief(mut r: CallRecord, place: ClusterPlace) -> CallRecord {
    r.recent_windows.clear();
    r.transcript.clear();
    r.cluster = Some(place);
    r
}

#[derive(Serialize, Deserialize)]
struct CallQuery {
    tenant: String,
    call_id: String,
}

/// How long a node waits for another node's answer about one of its calls.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Heartbeats a gone call waits for its ended record before its last state is written instead.
const ENDED_WAITS: u32 = 10;
/// Ended calls read from the store per heartbeat (the rest wait for the next one).
const ENDED_BATCH: usize = 256;

/// Sets the cluster up (retrying until NATS answers), then keeps the shared state until stopped.
pub(super) async fn run(inner: Arc<Inner>, local: Arc<dyn LocalCalls>) {
    let handles = loop {
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        match setup(&inner).await {
            Ok(h) => break h,
            Err(e) => {
                tracing::warn!(error = %e, "Cluster not set up yet; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let (calls, nodes) = (handles.calls.clone(), handles.nodes.clone());
    let _ = inner.handles.set(handles);
    tracing::info!(
        node = inner.config.node,
        "Cluster stream and buckets ready."
    );
    tokio::spawn(watch(inner.clone(), calls, |i| &i.calls));
    tokio::spawn(watch(inner.clone(), nodes, |i| &i.nodes));
    tokio::spawn(answer(inner.clone(), local.clone()));
    let started_ms = now_ms();
    // Calls that ended at or after this are checked against the bucket (see `beat`).
    let mut ended_since = started_ms;
    let mut tick = tokio::time::interval(Duration::from_millis(inner.config.heartbeat_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !inner.stopping.load(Ordering::SeqCst) {
        tick.tick().await;
        if let Err(e) = beat(&inner, local.as_ref(), started_ms, &mut ended_since).await {
            tracing::debug!(error = %e, "Cluster heartbeat failed; next one retries.");
        }
    }
}

async fn setup(inner: &Inner) -> Result<Handles, ClusterError> {
    let c = &inner.config;
    let nats = |e: &dyn std::fmt::Display| ClusterError::Nats(e.to_string());
    let stream = inner
        .js
        .get_or_create_stream(jetstream::stream::Config {
            name: subjects::STREAM.into(),
            subjects: vec!["callguard.alerts.>".into()],
            num_replicas: c.replicas,
            duplicate_window: Duration::from_secs(c.duplicate_window_s),
            max_age: Duration::from_secs(c.retention_days * 86_400),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?;
    let bucket = |name: &'static str, max_age: Duration| async move {
        match inner.js.get_key_value(name).await {
            Ok(store) => Ok(store),
            Err(_) => inner
                .js
                .create_key_value(kv::Config {
                    bucket: name.into(),
                    history: 1,
                    num_replicas: c.replicas,
                    max_age,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats(&e)),
        }
    };
    let calls = bucket(
        subjects::CALLS_BUCKET,
        Duration::from_secs(c.call_history_hours * 3600),
    )
    .await?;
    let nodes = bucket(subjects::NODES_BUCKET, Duration::from_secs(7 * 86_400)).await?;
    Ok(Handles {
        stream,
        calls,
        nodes,
    })
}

/// Keeps a cache of one bucket: every key's last value, then each change (re-watching, from
/// the last values again, after an error).
async fn watch<T: serde::de::DeserializeOwned>(
    inner: Arc<Inner>,
    store: kv::Store,
    cache: fn(&Inner) -> &Cache<T>,
) {
    while !inner.stopping.load(Ordering::SeqCst) {
        let mut entries = match store.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "Cannot watch a cluster bucket; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(entry) = entries.next().await {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(error = %e, "Cluster bucket watch broke; watching again.");
                    break;
                }
            };
            let value = match entry.operation {
                kv::Operation::Put => match inner
                    .open(&entry.value, "calls")
                    .and_then(|body| Ok(serde_json::from_str::<T>(&body)?))
                {
                    Ok(value) => Some(value),
                    Err(e) => {
                        tracing::warn!(key = entry.key, error = %e, "Unreadable cluster entry.");
                        continue;
                    }
                },
                kv::Operation::Delete | kv::Operation::Purge => None,
            };
            let mut map = cache(&inner).lock().unwrap_or_else(|e| e.into_inner());
            match value {
                Some(value) => {
                    let seen = Seen {
                        value,
                        revision: entry.revision,
                        at: Instant::now(),
                    };
                    map.insert(entry.key, seen);
                }
                None => {
                    map.remove(&entry.key);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Answers other nodes' questions about this node's live calls.
async fn answer(inner: Arc<Inner>, local: Arc<dyn LocalCalls>) {
    while !inner.stopping.load(Ordering::SeqCst) {
        let mut requests = match inner
            .client
            .subscribe(subjects::node_requests(&inner.config.node))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "Cannot subscribe to call requests; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = requests.next().await {
            let Some(reply) = message.reply else { continue };
            let answer = serde_json::from_slice::<CallQuery>(&message.payload)
                .ok()
                .and_then(|q| local.live_one(&q.tenant, &q.call_id))
                .map(|mut r| {
                    r.cluster = Some(inner.place_of(&r.tenant, &r.call_id));
                    r
                })
                .map(|r| serde_json::to_string(&r).map_err(ClusterError::from))
                .transpose()
                .and_then(|body| body.map(|b| inner.seal(b, "calls")).transpose());
            let body = match answer {
                Ok(Some(b)) => b,
                Ok(None) => Vec::new(),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot answer a call request.");
                    Vec::new()
                }
            };
            if let Err(e) = inner.client.publish(reply, body.into()).await {
                tracing::debug!(error = %e, "Cannot answer a call request.");
            }
        }
    }
}

/// One heartbeat: say this node is alive, write what changed of its calls, and end the calls
/// of nodes that fell silent. `ended_since` is how far the store's ended calls were checked.
async fn beat(
    inner: &Inner,
    local: &dyn LocalCalls,
    started_ms: i64,
    ended_since: &mut i64,
) -> Result<(), ClusterError> {
    let me = inner.config.node.clone();
    let live = local.live();
    // Every new call is noted first, connected or not, so one seen live while NATS is away is
    // still written (as ended) once it is back; one never seen live is the store pass's below.
    for record in &live {
        let key = subjects::call_key(&record.tenant, &record.call_id);
        if inner.is_mine(&key) {
            continue;
        }
        let cached = inner.cached_call(&key);
        let place = inner.take_over(record, cached.as_ref());
        inner.mine.lock().unwrap_or_else(|e| e.into_inner()).insert(
            key,
            Mine {
                tenant: record.tenant.clone(),
                call_id: record.call_id.clone(),
                place,
                last: None,
                waits: 0,
            },
        );
    }
    let h = inner.handles()?;
    let nats = |e: &dyn std::fmt::Display| ClusterError::Nats(e.to_string());
    let beat = NodeBeat {
        node: me.clone(),
        started_ms,
        heartbeat_ms: now_ms(),
        live_calls: live.len(),
        lost: false,
    };
    h.nodes
        .put(
            &me,
            inner.seal(serde_json::to_string(&beat)?, "calls")?.into(),
        )
        .await
        .map_err(|e| nats(&e))?;

    // Live calls: what changed since the last write.
    let mut seen_keys = std::collections::HashSet::with_capacity(live.len());
    for record in live {
        let key = subjects::call_key(&record.tenant, &record.call_id);
        seen_keys.insert(key.clone());
        let Some((place, last)) = inner
            .mine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .map(|m| (m.place.clone(), m.last))
        else {
            continue;
        };
        let cached_place = inner
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .and_then(|s| s.value.cluster.clone());
        // Another node took the call over while this node was cut off: one owner per call,
        // so this copy ends. (Ended as lost but not taken over: this node is back in time,
        // and its write below corrects the entry.)
        if last.is_some()
            && let Some(other) = &cached_place
            && other.node != me
        {
            tracing::warn!(
                call_id = record.call_id,
                owner = other.node,
                "The cluster gave this call to another node; ending it here."
            );
            inner
                .mine
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            local.end(&record.tenant, &record.call_id);
            continue;
        }
        let ended_as_lost = cached_place.is_some_and(|p| p.end_reason.is_some());
        let now = fingerprint(&record);
        if last.is_some_and(|(f, at)| f == now && at.elapsed() < REFRESH) && !ended_as_lost {
            continue;
        }
        let body = inner.seal(serde_json::to_string(&brief(record, place))?, "calls")?;
        h.calls.put(&key, body.into()).await.map_err(|e| nats(&e))?;
        inner.stats.calls_written.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = inner
            .mine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&key)
        {
            m.last = Some((now, Instant::now()));
        }
    }

    // Calls that began and ended between two heartbeats were never seen live (a short call, or
    // any call while NATS is away, when each heartbeat waits on it): their ended records come
    // from the store. Those still in `mine` are the loop below's; a call another node has live
    // (given to it while this node was cut off) is left to that node.
    for record in local.ended_since(*ended_since, ENDED_BATCH) {
        let ended_ms = record.ended_wall_time_ms.unwrap_or(*ended_since);
        let key = subjects::call_key(&record.tenant, &record.call_id);
        let noted = inner.is_mine(&key);
        let cached = inner.cached_call(&key);
        let written = cached.as_ref().is_some_and(|c| {
            c.ended_wall_time_ms.is_some_and(|t| t >= ended_ms)
                || (c.ended_wall_time_ms.is_none()
                    && c.cluster.as_ref().is_some_and(|p| p.node != me))
        });
        if !noted && !written {
            let place = inner.take_over(&record, cached.as_ref());
            let body = inner.seal(serde_json::to_string(&brief(record, place))?, "calls")?;
            h.calls.put(&key, body.into()).await.map_err(|e| nats(&e))?;
            inner.stats.calls_written.fetch_add(1, Ordering::Relaxed);
        }
        *ended_since = ended_ms;
    }

    // Calls that left the registry: written once more, as ended.
    let gone: Vec<String> = inner
        .mine
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .filter(|k| !seen_keys.contains(*k))
        .cloned()
        .collect();
    for key in gone {
        let Some((tenant, call_id, place, waits)) = inner
            .mine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&key)
            .map(|m| {
                m.waits += 1;
                (
                    m.tenant.clone(),
                    m.call_id.clone(),
                    m.place.clone(),
                    m.waits,
                )
            })
        else {
            continue;
        };
        let ended = local.ended(&tenant, &call_id).or_else(|| {
            (waits >= ENDED_WAITS)
                .then(|| inner.cached_call(&key))
                .flatten()
                .map(|mut r| {
                    r.ended_wall_time_ms = Some(now_ms());
                    r
                })
        });
        let Some(ended) = ended else { continue };
        let owner = inner
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .and_then(|s| s.value.cluster.as_ref().map(|c| c.node.clone()));
        if owner.as_deref().is_none_or(|o| o == me) {
            let body = inner.seal(serde_json::to_string(&brief(ended, place))?, "calls")?;
            h.calls.put(&key, body.into()).await.map_err(|e| nats(&e))?;
            inner.stats.calls_written.fetch_add(1, Ordering::Relaxed);
        }
        inner
            .mine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    end_lost_nodes(inner, h).await;
    Ok(())
}

/// Marks every node silent for `node_timeout_ms` lost, then ends its calls; each write is a
/// compare-and-set, so when several nodes notice at once one wins and the others find the
/// entry changed. A node that was only slow (a NATS failover) finds its calls ended as lost at
/// its next heartbeat and writes them live again.
async fn end_lost_nodes(inner: &Inner, h: &Handles) {
    let timeout = Duration::from_millis(inner.config.node_timeout_ms);
    let silent: Vec<(String, NodeBeat, u64)> = inner
        .nodes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, s)| {
            s.value.node != inner.config.node && !s.value.lost && s.at.elapsed() >= timeout
        })
        .map(|(k, s)| (k.clone(), s.value.clone(), s.revision))
        .collect();
    for (key, beat, revision) in silent {
        // Claim the node first: if its heartbeat came meanwhile, or another node claimed it,
        // the compare-and-set fails and its calls are left alone.
        let lost = NodeBeat {
            lost: true,
            ..beat.clone()
        };
        let Ok(body) = serde_json::to_string(&lost)
            .map_err(ClusterError::from)
            .and_then(|b| inner.seal(b, "calls"))
        else {
            continue;
        };
        if h.nodes.update(&key, body.into(), revision).await.is_err() {
            continue;
        }
        inner.stats.nodes_lost.fetch_add(1, Ordering::Relaxed);
        let calls: Vec<(String, CallRecord, u64)> = inner
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, s)| {
                s.value.ended_wall_time_ms.is_none()
                    && s.value
                        .cluster
                        .as_ref()
                        .is_some_and(|c| c.node == beat.node)
            })
            .map(|(k, s)| (k.clone(), s.value.clone(), s.revision))
            .collect();
        let mut ended = 0;
        for (call_key, mut record, rev) in calls {
            record.ended_wall_time_ms = Some(beat.heartbeat_ms);
            if let Some(place) = record.cluster.as_mut() {
                place.end_reason = Some("node_lost".into());
            }
            let Ok(body) = serde_json::to_string(&record)
                .map_err(ClusterError::from)
                .and_then(|b| inner.seal(b, "calls"))
            else {
                continue;
            };
            // A call its source already continued on another node has a new revision: skipped.
            if h.calls.update(&call_key, body.into(), rev).await.is_ok() {
                ended += 1;
                inner.stats.lost_calls_ended.fetch_add(1, Ordering::Relaxed);
            }
        }
        tracing::warn!(
            node = beat.node,
            calls_ended = ended,
            "Cluster node lost: no heartbeat; its calls were ended."
        );
    }
}

/// A call as the cluster knows it, asking its owner when it is live on another node.
pub(super) async fn get(
    inner: &Inner,
    tenant: &str,
    call_id: &str,
) -> Result<Option<CallRecord>, ClusterError> {
    let key = subjects::call_key(tenant, call_id);
    let Some(record) = inner
        .calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .map(|s| s.value.clone())
    else {
        return Ok(None);
    };
    let owner = record
        .cluster
        .as_ref()
        .map(|c| c.node.clone())
        .unwrap_or_default();
    if record.ended_wall_time_ms.is_some()
        || owner == inner.config.node
        || !inner.node_alive(&owner)
    {
        return Ok(Some(record));
    }
    inner.stats.remote_lookups.fetch_add(1, Ordering::Relaxed);
    let query = serde_json::to_vec(&CallQuery {
        tenant: tenant.into(),
        call_id: call_id.into(),
    })?;
    let asked = tokio::time::timeout(
        ASK_TIMEOUT,
        inner
            .client
            .request(subjects::node_requests(&owner), query.into()),
    )
    .await;
    match asked {
        Ok(Ok(reply)) if !reply.payload.is_empty() => {
            let body = inner.open(&reply.payload, "calls")?;
            Ok(Some(serde_json::from_str(&body)?))
        }
        // The owner no longer has it live (it just ended) or did not answer: the shared state.
        Ok(Ok(_)) => Ok(Some(record)),
        Ok(Err(e)) => {
            tracing::debug!(owner, error = %e, "The owner did not answer; its shared state serves.");
            Ok(Some(record))
        }
        Err(_) => Ok(Some(record)),
    }
}

impl Inner {
    /// The bucket's entry for `key`, as this node last heard it.
    fn cached_call(&self, key: &str) -> Option<CallRecord> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map(|s| s.value.clone())
    }

    /// Whether this node has noted the call `key` as its own.
    fn is_mine(&self, key: &str) -> bool {
        self.mine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
    }

    /// The place of a call that has just appeared in this node's registry: continued from the
    /// entry another node left (lost, or its source gone), or new.
    fn take_over(&self, record: &CallRecord, previous: Option<&CallRecord>) -> ClusterPlace {
        let me = &self.config.node;
        let mut place = ClusterPlace {
            node: me.clone(),
            ..Default::default()
        };
        if let Some(prev) = previous.and_then(|p| p.cluster.as_ref().map(|c| (p, c)))
            && prev.1.node != *me
        {
            let (prev, prev_place) = prev;
            let last_heard = prev.ended_wall_time_ms.unwrap_or_else(|| {
                self.nodes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&prev_place.node)
                    .map_or(record.started_wall_time_ms, |n| n.value.heartbeat_ms)
            });
            place.resumed_from_node = Some(prev_place.node.clone());
            place.resume_gap_ms = (record.started_wall_time_ms - last_heard).max(0) as u64;
            self.stats.calls_resumed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                call_id = record.call_id,
                from = prev_place.node,
                gap_ms = place.resume_gap_ms,
                "Call continued on this node."
            );
        }
        place
    }

    pub(super) fn place_of(&self, tenant: &str, call_id: &str) -> ClusterPlace {
        let key = subjects::call_key(tenant, call_id);
        self.mine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .map(|m| m.place.clone())
            .unwrap_or_else(|| ClusterPlace {
                node: self.config.node.clone(),
                ..Default::default()
            })
    }

    pub(super) fn remote_calls(&self, tenant: &str) -> Vec<CallRecord> {
        let prefix = format!("{}.", subjects::token(tenant));
        let mut calls: Vec<CallRecord> = self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(k, s)| {
                k.starts_with(&prefix)
                    && s.value.tenant == tenant
                    && s.value.ended_wall_time_ms.is_none()
                    && s.value
                        .cluster
                        .as_ref()
                        .is_some_and(|c| c.node != self.config.node)
            })
            .map(|(_, s)| s.value.clone())
            .collect();
        calls.sort_by(|a, b| {
            (a.started_wall_time_ms, &a.call_id).cmp(&(b.started_wall_time_ms, &b.call_id))
        });
        calls
    }
}
