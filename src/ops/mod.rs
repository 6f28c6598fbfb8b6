//! The operations face: Prometheus metrics, and the readiness that `/readyz` and the gRPC
//! health service both report.
//!
//! ```text
//! stage counters (atomics), histograms ─► metrics::GuardCollector (read at scrape) ─► /metrics
//! Guard (model, store), cli (listeners) ─► Readiness ─► /readyz, grpc.health.v1.Health
//! ```

pub mod http;
pub mod metrics;
pub mod supervisor;

pub use http::{HttpError, router, serve};
pub use metrics::{EndedCall, Metrics, SecondsHistogram};

use tokio::sync::watch;

/// What the daemon needs before it should be sent calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadyState {
    pub model_loaded: bool,
    pub store_writable: bool,
    pub listeners_bound: bool,
    pub stopping: bool,
}

impl ReadyState {
    /// `Ok` when ready, else why not (a plain sentence for `/readyz`).
    pub fn check(&self) -> Result<(), &'static str> {
        if self.stopping {
            Err("shutting down")
        } else if !self.model_loaded {
            Err("the detector model is not loaded")
        } else if !self.store_writable {
            Err("the alert log refused the last write")
        } else if !self.listeners_bound {
            Err("the listeners are not bound yet")
        } else {
            Ok(())
        }
    }
}

/// One readiness state, watched by the HTTP and gRPC faces.
#[derive(Debug)]
pub struct Readiness {
    tx: watch::Sender<ReadyState>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            tx: watch::Sender::new(ReadyState::default()),
        }
    }
}

impl Readiness {
    pub fn state(&self) -> ReadyState {
        *self.tx.borrow()
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<ReadyState> {
        self.tx.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut ReadyState)) {
        self.tx.send_if_modified(|s| {
            let before = *s;
            f(s);
            *s != before
        });
    }

    pub fn set_model_loaded(&self, v: bool) {
        self.update(|s| s.model_loaded = v);
    }

    /// Called after every alert-log write: its outcome is the cheap writability probe.
    pub fn set_store_writable(&self, v: bool) {
        // Cheap when nothing changes: a read lock, no write, no wake-up.
        if self.tx.borrow().store_writable != v {
            self.update(|s| s.store_writable = v);
        }
    }

    pub fn set_listeners_bound(&self, v: bool) {
        self.update(|s| s.listeners_bound = v);
    }

    pub fn set_stopping(&self) {
        self.update(|s| s.stopping = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_everything_is() {
        let r = Readiness::default();
        assert!(r.state().check().is_err());
        r.set_model_loaded(true);
        r.set_store_writable(true);
        assert_eq!(r.state().check(), Err("the listeners are not bound yet"));
        r.set_listeners_bound(true);
        assert_eq!(r.state().check(), Ok(()));
        r.set_store_writable(false);
        assert_eq!(
            r.state().check(),
            Err("the alert log refused the last write")
        );
        r.set_store_writable(true);
        r.set_stopping();
        assert_eq!(r.state().check(), Err("shutting down"));
    }

    #[test]
    fn subscribers_see_changes_only() {
        let r = Readiness::default();
        let mut rx = r.subscribe();
        rx.mark_unchanged();
        r.set_store_writable(false);
        assert!(!rx.has_changed().unwrap());
        r.set_model_loaded(true);
        assert!(rx.has_changed().unwrap());
    }
}
