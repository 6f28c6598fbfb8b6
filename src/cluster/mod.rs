//! Several nodes as one service, on NATS JetStream (`docs/cluster.md`).
//!
//! ```text
//! dispatcher ─► AlertLog (commit) ─► publisher (a sink: cursor in SQLite, in order, retried)
//!                                        └─► JetStream CALLGUARD_ALERTS, Nats-Msg-Id = alert id
//! StreamAlerts (any node) ◄── ordered consumer on callguard.alerts.<tenant>.> (cluster sequence)
//! heartbeat ─► KV callguard_nodes/<node>;  live calls ─► KV callguard_calls/<tenant>.<call>
//! watch of both buckets ─► node-lost check (CAS: one node ends a lost node's calls)
//! GetCall of a call live elsewhere ─► request callguard.node.<owner>.call ─► its CallRecord
//! ```
//!
//! The engine knows nothing of this: the cluster reads the registry and the alert log, and
//! serves what the gRPC face asks. Without `[cluster] nats` none of it runs.

mod calls;
mod deliver;
mod feed;
mod publish;
pub mod subjects;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};

use crate::alert::{Sealer, StoreError};
use crate::config::{ClusterConfig, StoreConfig};
use crate::guard::{CallRecord, Guard};

pub use calls::LocalCalls;
pub use feed::ClusterFeed;
pub use publish::Publisher;

/// The sink name (and SQLite cursor) of the publisher; no configured sink may take it.
pub const PUBLISHER: &str = "nats-jetstream";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster: cannot read the NATS token {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("cluster: cannot start its runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cluster: NATS: {0}")]
    Nats(String),
    #[error("cluster: not connected to NATS (or the stream is not set up yet)")]
    Down,
    #[error("cluster: {0}")]
    Store(#[from] StoreError),
    #[error("cluster: {0}")]
    Seal(#[from] crate::alert::seal::SealError),
    #[error("cluster: {0}")]
    Json(#[from] serde_json::Error),
}

/// A node's heartbeat, as the nodes bucket holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeBeat {
    pub node: String,
    pub started_ms: i64,
    pub heartbeat_ms: i64,
    pub live_calls: usize,
    /// Set by the node that found this one silent (and ended its calls); cleared by its next
    /// heartbeat.
    #[serde(default)]
    pub lost: bool,
}

/// A bucket entry as last seen by the watch, and when (on this node's clock: skew-free).
#[derive(Debug, Clone)]
struct Seen<T> {
    value: T,
    revision: u64,
    at: Instant,
}

/// A bucket as this node last saw it, by key.
type Cache<T> = Mutex<HashMap<String, Seen<T>>>;

/// What the node has set up in JetStream.
struct Handles {
    stream: jetstream::stream::Stream,
    calls: jetstream::kv::Store,
    nodes: jetstream::kv::Store,
}

/// Counters for `/metrics` and `/cluster`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub published: AtomicU64,
    pub calls_written: AtomicU64,
    pub calls_resumed: AtomicU64,
    pub lost_calls_ended: AtomicU64,
    pub nodes_lost: AtomicU64,
    pub remote_lookups: AtomicU64,
}

pub(crate) struct Inner {
    config: ClusterConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    handles: OnceLock<Handles>,
    sealer: Option<Sealer>,
    calls: Cache<CallRecord>,
    nodes: Cache<NodeBeat>,
    /// Calls this node has written to the bucket and not yet written as ended, by key, with
    /// what was last written (to write only changes).
    mine: Mutex<HashMap<String, calls::Mine>>,
    stopping: AtomicBool,
    pub(crate) stats: ClusterStats,
}

/// A node's membership of the cluster: its NATS connection and the tasks that keep the
/// shared state. Dropping it stops them.
pub struct Cluster {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    inner: Arc<Inner>,
}

impl Cluster {
    /// Connects (retrying in the background while no server answers: the node screens
    /// meanwhile), sets up the stream and buckets once it can, and starts the heartbeat and
    /// the watches over `registry` and `log`.
    pub fn start(
        config: &ClusterConfig,
        store: &StoreConfig,
        local: Arc<dyn LocalCalls>,
    ) -> Result<Self, ClusterError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cluster")
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let sealer = store
            .encryption_key_file
            .as_deref()
            .map(Sealer::from_file)
            .transpose()?;
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("callguard-{}", config.node))
            .retry_on_initial_connect()
            // The listed order: a node's own (nearest) server first.
            .retain_servers_order()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            // A server that stops answering (a cut link sends no reset) is noticed in seconds.
            .ping_interval(Duration::from_secs(2))
            .event_callback(|event| async move {
                tracing::info!(%event, "NATS connection event.");
            });
        if let Some(path) = &config.token_file {
            let token = std::fs::read_to_string(path).map_err(|source| ClusterError::Token {
                path: path.display().to_string(),
                source,
            })?;
            options = options.token(token.trim().to_owned());
        }
        let urls = config
            .nats
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClusterError::Nats(e.to_string()))?;
        let client = runtime
            .block_on(options.connect(urls))
            .map_err(|e| ClusterError::Nats(e.to_string()))?;
        let _in_runtime = runtime.enter();
        let js = jetstream::new(client.clone());
        let inner = Arc::new(Inner {
            config: config.clone(),
            client,
            js,
            handles: OnceLock::new(),
            sealer,
            calls: Mutex::default(),
            nodes: Mutex::default(),
            mine: Mutex::default(),
            stopping: AtomicBool::new(false),
            stats: ClusterStats::default(),
        });
        runtime.spawn(calls::run(inner.clone(), local));
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            inner,
        })
    }

    pub fn node(&self) -> &str {
        &self.inner.config.node
    }

    /// Connected to NATS with the stream and buckets set up.
    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    pub fn stats(&self) -> &ClusterStats {
        &self.inner.stats
    }

    /// The publisher: a sink (run by `crate::sinks`) that moves committed alerts to JetStream.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.inner.clone(), self.handle.clone())
    }

    /// Runs `sinks` (webhooks, syslog) from the stream: each alert delivered once by one node
    /// of the cluster, in the cluster's order (`deliver.rs`).
    pub fn start_sinks(
        &self,
        sinks: Vec<crate::sinks::Sink>,
        metrics: Arc<crate::ops::Metrics>,
    ) -> Result<ClusterSinks, crate::sinks::SinkError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for sink in sinks {
            let name = sink.name.clone();
            let (inner, handle, metrics, stop) = (
                self.inner.clone(),
                self.handle.clone(),
                metrics.clone(),
                stop.clone(),
            );
            let thread = std::thread::Builder::new()
                .name(format!("csink-{name}"))
                .spawn(move || deliver::run(inner, handle, sink, metrics, stop))
                .map_err(|e| crate::sinks::SinkError::Thread(name, e))?;
            threads.push(thread);
        }
        Ok(ClusterSinks { stop, threads })
    }

    /// The tenant's alerts of the whole cluster after the cluster sequence `after` (only new
    /// ones when `None`), in the stream's order.
    pub async fn alerts(
        &self,
        tenant: &str,
        filter: crate::alert::AlertFilter,
        after: Option<u64>,
    ) -> Result<ClusterFeed, ClusterError> {
        feed::open(self.inner.clone(), tenant, filter, after).await
    }

    /// The tenant's calls live on other nodes, from the shared bucket.
    pub fn remote_calls(&self, tenant: &str) -> Vec<CallRecord> {
        self.inner.remote_calls(tenant)
    }

    /// A call as the cluster knows it: live on another node (asked of that node), or ended
    /// somewhere in the cluster; `None` if the bucket has no such call.
    pub async fn get_call(
        &self,
        tenant: &str,
        call_id: &str,
    ) -> Result<Option<CallRecord>, ClusterError> {
        calls::get(&self.inner, tenant, call_id).await
    }

    /// This node's place in the cluster for one of its live calls (node, and where the call
    /// came from if its source continued it here).
    pub fn place_of(&self, tenant: &str, call_id: &str) -> crate::guard::ClusterPlace {
        self.inner.place_of(tenant, call_id)
    }

    /// What `/cluster` shows: this node, its connection, the nodes it sees and its counters.
    pub fn status(&self) -> serde_json::Value {
        self.inner.status()
    }

    /// Stops the tasks; the last heartbeat stays in the bucket (others find the node gone
    /// after `node_timeout_ms` unless it comes back).
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(rt) = runtime {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The sinks' delivery threads in a cluster.
pub struct ClusterSinks {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ClusterSinks {
    /// Stops after the attempt in flight; an alert fetched and not delivered goes to another
    /// node (or to this one's next start) after the consumer's ack wait.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ClusterSinks {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The guard's calls as the cluster reads them. Weak: the guard holds the cluster (for its
/// gRPC face), and the cluster must not keep the guard alive.
pub struct GuardCalls(pub std::sync::Weak<Guard>);

impl LocalCalls for GuardCalls {
    fn live(&self) -> Vec<CallRecord> {
        self.0
            .upgrade()
            .map(|g| g.registry().all_brief())
            .unwrap_or_default()
    }

    fn live_one(&self, tenant: &str, call_id: &str) -> Option<CallRecord> {
        self.0
            .upgrade()?
            .registry()
            .with_id(tenant, call_id, |e| e.record())
    }

    fn ended(&self, tenant: &str, call_id: &str) -> Option<CallRecord> {
        let guard = self.0.upgrade()?;
        match guard.log().get_call(tenant, call_id) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(call_id, error = %e, "Cannot read an ended call for the cluster.");
                None
            }
        }
    }

    fn ended_since(&self, since_ms: i64, limit: usize) -> Vec<CallRecord> {
        let Some(guard) = self.0.upgrade() else {
            return Vec::new();
        };
        guard
            .log()
            .calls_ended_since(since_ms, limit)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "Cannot read ended calls for the cluster.");
                Vec::new()
            })
    }

    fn end(&self, tenant: &str, call_id: &str) {
        if let Some(g) = self.0.upgrade() {
            g.end_call(tenant, call_id);
        }
    }
}

impl Inner {
    fn is_ready(&self) -> bool {
        self.handles.get().is_some()
            && self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn handles(&self) -> Result<&Handles, ClusterError> {
        match self.handles.get() {
            Some(h) if self.is_ready() => Ok(h),
            _ => Err(ClusterError::Down),
        }
    }

    fn seal(&self, body: String, aad: &str) -> Result<Vec<u8>, ClusterError> {
        Ok(crate::alert::seal::seal(self.sealer.as_ref(), body, aad)?.into_bytes())
    }

    fn open(&self, bytes: &[u8], aad: &str) -> Result<String, ClusterError> {
        let text = String::from_utf8_lossy(bytes).into_owned();
        Ok(crate::alert::seal::open(self.sealer.as_ref(), text, aad)?)
    }

    fn node_alive(&self, node: &str) -> bool {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        node == self.config.node || nodes.get(node).is_some_and(|n| self.alive(n))
    }

    /// Heard from within `node_timeout_ms` and not found lost (the caller holds the lock).
    fn alive(&self, n: &Seen<NodeBeat>) -> bool {
        n.value.node == self.config.node
            || (!n.value.lost
                && n.at.elapsed() < Duration::from_millis(self.config.node_timeout_ms))
    }

    fn status(&self) -> serde_json::Value {
        let now = Instant::now();
        let nodes: Vec<_> = {
            let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<_> = nodes
                .values()
                .map(|n| {
                    serde_json::json!({
                        "node": n.value.node,
                        "alive": self.alive(n),
                        "lost": n.value.lost,
                        "live_calls": n.value.live_calls,
                        "heard_ms_ago": now.duration_since(n.at).as_millis() as u64,
                    })
                })
                .collect();
            v.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
            v
        };
        let s = &self.stats;
        serde_json::json!({
            "node": self.config.node,
            "ready": self.is_ready(),
            "connection": format!("{:?}", self.client.connection_state()),
            "nodes": nodes,
            "published": s.published.load(Ordering::Relaxed),
            "calls_written": s.calls_written.load(Ordering::Relaxed),
            "calls_resumed": s.calls_resumed.load(Ordering::Relaxed),
            "lost_calls_ended": s.lost_calls_ended.load(Ordering::Relaxed),
            "nodes_lost": s.nodes_lost.load(Ordering::Relaxed),
            "remote_lookups": s.remote_lookups.load(Ordering::Relaxed),
        })
    }
}
