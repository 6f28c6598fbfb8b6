//! Fan-out of logged alerts to live subscribers. Publishing never waits: each subscriber has a
//! bounded queue, and an alert that does not fit is counted as an overflow for that subscriber
//! alone, which then catches up from the log (see [`Subscription::take_overflow`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::mpsc;

use super::{AlertFilter, LoggedAlert};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HubError {
    #[error("{limit} alert subscribers are connected already")]
    TooMany { limit: usize },
    #[error("{limit} alert subscribers of this tenant are connected already")]
    TooManyForTenant { limit: usize },
    #[error("the server is shutting down")]
    Closed,
}

/// The hub's side of a subscriber; the hub holds the only sender, so closing the hub ends
/// every subscription.
struct Subscriber {
    id: u64,
    tenant: String,
    filter: AlertFilter,
    tx: mpsc::Sender<Arc<LoggedAlert>>,
    overflowed: Arc<AtomicU64>,
}

#[derive(Default)]
struct Subscribers {
    list: Vec<Arc<Subscriber>>,
    next_id: u64,
    closed: bool,
}

/// The subscribers of all tenants.
pub struct AlertHub {
    subs: Arc<Mutex<Subscribers>>,
    limit: usize,
    per_tenant: usize,
    queue: usize,
    published: AtomicU64,
    overflowed: AtomicU64,
}

/// One subscriber's end; dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    filter: AlertFilter,
    overflowed: Arc<AtomicU64>,
    rx: mpsc::Receiver<Arc<LoggedAlert>>,
    subs: Weak<Mutex<Subscribers>>,
}

impl AlertHub {
    /// At most `limit` subscribers, `per_tenant` of one tenant, each with a queue of `queue`
    /// alerts.
    pub fn new(limit: usize, per_tenant: usize, queue: usize) -> Self {
        Self {
            subs: Arc::default(),
            limit,
            per_tenant,
            queue: queue.max(1),
            published: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
        }
    }

    pub fn subscribe(&self, tenant: &str, filter: AlertFilter) -> Result<Subscription, HubError> {
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        if subs.closed {
            return Err(HubError::Closed);
        }
        if subs.list.len() >= self.limit {
            return Err(HubError::TooMany { limit: self.limit });
        }
        if subs.list.iter().filter(|s| s.tenant == tenant).count() >= self.per_tenant {
            return Err(HubError::TooManyForTenant {
                limit: self.per_tenant,
            });
        }
        let (tx, rx) = mpsc::channel(self.queue);
        subs.next_id += 1;
        let id = subs.next_id;
        let overflowed = Arc::new(AtomicU64::new(0));
        subs.list.push(Arc::new(Subscriber {
            id,
            tenant: tenant.to_owned(),
            filter: filter.clone(),
            tx,
            overflowed: overflowed.clone(),
        }));
        Ok(Subscription {
            id,
            filter,
            overflowed,
            rx,
            subs: Arc::downgrade(&self.subs),
        })
    }

    /// Hands a logged alert to every matching subscriber without waiting.
    pub fn publish(&self, alert: Arc<LoggedAlert>) {
        self.published.fetch_add(1, Ordering::Relaxed);
        let subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        for s in &subs.list {
            if s.tenant != alert.tenant || !s.filter.matches(&alert) {
                continue;
            }
            if s.tx.try_send(alert.clone()).is_err() {
                s.overflowed.fetch_add(1, Ordering::Relaxed);
                self.overflowed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Ends every subscription (each sees the end after its queued alerts) and refuses new ones.
    pub fn close(&self) {
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        subs.closed = true;
        subs.list.clear();
    }

    pub fn subscribers(&self) -> usize {
        self.subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .len()
    }

    /// Alerts published, and deliveries that overflowed a subscriber's queue.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.published.load(Ordering::Relaxed),
            self.overflowed.load(Ordering::Relaxed),
        )
    }
}

impl Subscription {
    /// The next live alert, in publication order; `None` once the hub is gone.
    pub async fn recv(&mut self) -> Option<Arc<LoggedAlert>> {
        self.rx.recv().await
    }

    /// Live alerts that did not fit since the last call; non-zero means the subscriber must
    /// catch up from the log.
    pub fn take_overflow(&self) -> u64 {
        self.overflowed.swap(0, Ordering::Relaxed)
    }

    pub fn filter(&self) -> &AlertFilter {
        &self.filter
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(subs) = self.subs.upgrade() {
            let mut subs = subs.lock().unwrap_or_else(|e| e.into_inner());
            subs.list.retain(|s| s.id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{CallMeta, Severity};
    use crate::verdict::AlertKind;

    fn alert(seq: u64, tenant: &str) -> Arc<LoggedAlert> {
        Arc::new(LoggedAlert {
            sequence: seq,
            id: format!("al_{seq}"),
            tenant: tenant.into(),
            call_id: "c".into(),
            kind: AlertKind::SuspectedClone,
            severity: Severity::Warning,
            p_spoof: 0.8,
            threshold: 0.6,
            audio_ms: 0,
            wall_time_ms: 0,
            evidence: vec![],
            model: String::new(),
            transcript_snippet: Default::default(),
            risk: 0.8,
            cues: Vec::new(),
            metadata: CallMeta::default(),
            voice_similarity: None,
            acknowledged: None,
        })
    }

    #[tokio::test]
    async fn a_full_subscriber_overflows_alone_and_others_get_everything() {
        let hub = AlertHub::new(4, 4, 2);
        let mut slow = hub.subscribe("t", AlertFilter::default()).unwrap();
        let mut fast = hub.subscribe("t", AlertFilter::default()).unwrap();
        let mut other_tenant = hub.subscribe("u", AlertFilter::default()).unwrap();
        for seq in 1..=5 {
            hub.publish(alert(seq, "t"));
            assert_eq!(fast.recv().await.unwrap().sequence, seq);
        }
        assert_eq!(slow.take_overflow(), 3);
        assert_eq!(slow.take_overflow(), 0);
        assert_eq!(slow.recv().await.unwrap().sequence, 1);
        assert_eq!(slow.recv().await.unwrap().sequence, 2);
        assert!(other_tenant.rx.try_recv().is_err());
        assert_eq!(hub.counts(), (5, 3));
    }

    #[test]
    fn the_subscriber_limit_holds_and_dropping_frees_a_place() {
        let hub = AlertHub::new(1, 1, 8);
        let first = hub.subscribe("t", AlertFilter::default()).unwrap();
        assert_eq!(
            hub.subscribe("t", AlertFilter::default()).err(),
            Some(HubError::TooMany { limit: 1 })
        );
        drop(first);
        assert_eq!(hub.subscribers(), 0);
        assert!(hub.subscribe("t", AlertFilter::default()).is_ok());
        // One tenant cannot take every place.
        let hub = AlertHub::new(3, 2, 8);
        let _t: Vec<_> = (0..2)
            .map(|_| hub.subscribe("t", AlertFilter::default()).unwrap())
            .collect();
        assert_eq!(
            hub.subscribe("t", AlertFilter::default()).err(),
            Some(HubError::TooManyForTenant { limit: 2 })
        );
        assert!(hub.subscribe("u", AlertFilter::default()).is_ok());
    }

    #[tokio::test]
    async fn closing_the_hub_ends_subscriptions_after_their_queued_alerts() {
        let hub = AlertHub::new(4, 4, 4);
        let mut sub = hub.subscribe("t", AlertFilter::default()).unwrap();
        hub.publish(alert(1, "t"));
        hub.close();
        assert_eq!(sub.recv().await.unwrap().sequence, 1);
        assert!(sub.recv().await.is_none());
        assert_eq!(
            hub.subscribe("t", AlertFilter::default()).err(),
            Some(HubError::Closed)
        );
    }
}
