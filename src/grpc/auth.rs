//! Bearer tokens per tenant. The config holds only each token's SHA-256; a request's token is
//! hashed and compared in constant time against every tenant's. Failed attempts are counted per
//! peer address, and a peer that keeps failing is refused for a while without its token being
//! looked at ([`FailedAuth`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::config::TenantConfig;

/// The authenticated tenant, put in each request's extensions.
#[derive(Debug, Clone)]
pub struct Tenant(pub Arc<str>);

#[derive(Clone)]
pub struct Authenticator {
    tenants: Arc<Vec<(Arc<str>, [u8; 32])>>,
    failures: Arc<FailedAuth>,
}

/// Failed authentications per peer address, as a token bucket: a peer may fail
/// [`FailedAuth::BURST`] times at once, and gets one more try every [`FailedAuth::REFILL`]. A peer
/// with no tries left is refused before its token is checked (so guessing is held to that
/// rate), and a warning names it once per episode. Peers behind one NAT share a bucket, so the
/// burst is generous: a client with a wrong token stops long before it matters.
///
/// Memory is bounded: at most [`FailedAuth::PEERS`] addresses are followed; when full, peers
/// whose buckets have refilled are forgotten, and if none has, a new peer is not followed
/// (refusing it for its neighbours' failures would let one attacker lock everyone out).
#[derive(Debug)]
pub struct FailedAuth {
    peers: Mutex<HashMap<IpAddr, Bucket>>,
    /// Requests with a missing, malformed or unknown token.
    pub failed: AtomicU64,
    /// Requests refused because their peer had no tries left.
    pub throttled: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tries: f64,
    at: Instant,
    warned: bool,
}

impl Default for FailedAuth {
    fn default() -> Self {
        Self {
            peers: Mutex::default(),
            failed: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        }
    }
}

impl FailedAuth {
    pub const BURST: f64 = 20.0;
    pub const REFILL: Duration = Duration::from_secs(3);
    pub const PEERS: usize = 4096;

    fn refill(b: &mut Bucket, now: Instant) {
        let gained = now.saturating_duration_since(b.at).as_secs_f64() / Self::REFILL.as_secs_f64();
        b.tries = (b.tries + gained).min(Self::BURST);
        b.at = now;
    }

    /// Whether `peer` has no tries left at `now` (then the request is refused unread).
    pub fn throttled_at(&self, peer: IpAddr, now: Instant) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(b) = peers.get_mut(&peer) else {
            return false;
        };
        Self::refill(b, now);
        if b.tries >= 1.0 {
            b.warned = false;
            return false;
        }
        self.throttled.fetch_add(1, Ordering::Relaxed);
        if !b.warned {
            b.warned = true;
            tracing::warn!(%peer, "Authentication failing repeatedly: this peer is refused for a while.");
        }
        true
    }

    /// Records a failed attempt by `peer` at `now`.
    pub fn failed_at(&self, peer: IpAddr, now: Instant) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if !peers.contains_key(&peer) && peers.len() >= Self::PEERS {
            peers.retain(|_, b| {
                Self::refill(b, now);
                b.tries < Self::BURST
            });
            if peers.len() >= Self::PEERS {
                return;
            }
        }
        let b = peers.entry(peer).or_insert(Bucket {
            tries: Self::BURST,
            at: now,
            warned: false,
        });
        Self::refill(b, now);
        b.tries = (b.tries - 1.0).max(0.0);
    }

    /// Addresses followed now.
    pub fn peers(&self) -> usize {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Lowercase hex SHA-256 of a token, as the config stores it.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether two secrets (or their digests) are equal, in time that does not depend on where they
/// differ; a length difference shows, the contents do not.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    /// Tenants whose hash is not valid hex are skipped (config validation reports them).
    pub fn new(tenants: &[TenantConfig]) -> Self {
        Self {
            tenants: Arc::new(
                tenants
                    .iter()
                    .filter_map(|t| Some((t.name.as_str().into(), unhex(&t.token_sha256)?)))
                    .collect(),
            ),
            failures: Arc::default(),
        }
    }

    /// This authenticator with its failed attempts counted in `failures` (shared with others,
    /// so a peer's failures count wherever it fails).
    pub fn counting_in(mut self, failures: Arc<FailedAuth>) -> Self {
        self.failures = failures;
        self
    }

    /// The tenant of `token` presented by `peer` (if known): `Err` says why not, and a peer
    /// that keeps failing is refused without its token being checked.
    pub fn check(&self, token: Option<&str>, peer: Option<IpAddr>) -> Result<Arc<str>, Refusal> {
        let now = Instant::now();
        if let Some(p) = peer
            && self.failures.throttled_at(p, now)
        {
            return Err(Refusal::Throttled);
        }
        let found = token.and_then(|t| self.tenant(t.trim()));
        found.ok_or_else(|| {
            match peer {
                Some(p) => self.failures.failed_at(p, now),
                None => {
                    self.failures.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Refusal::Unknown
        })
    }

    /// The tenant a token belongs to.
    pub fn tenant(&self, token: &str) -> Option<Arc<str>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, hash) in self.tenants.iter() {
            if same(hash, &digest) {
                found = Some(name.clone());
            }
        }
        found
    }

    /// Interceptor: `authorization: Bearer <token>`, else `Unauthenticated`; a peer that keeps
    /// failing gets `ResourceExhausted` until it has waited.
    #[allow(clippy::result_large_err)]
    pub fn intercept(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let peer = req.remote_addr().map(|a| a.ip());
        let header = req.metadata().get("authorization");
        let token = header
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        match self.check(token, peer) {
            Ok(tenant) => {
                req.extensions_mut().insert(Tenant(tenant));
                Ok(req)
            }
            Err(Refusal::Throttled) => Err(Status::resource_exhausted(
                "too many failed authentications from this address: wait, then retry with a valid token",
            )),
            Err(Refusal::Unknown) => {
                let peer = peer.map(|p| p.to_string()).unwrap_or_default();
                tracing::info!(%peer, "gRPC request with a missing or unknown token refused.");
                Err(Status::unauthenticated(match (header, token) {
                    (None, _) => "missing authorization: Bearer <token>",
                    (Some(_), None) => "authorization must be `Bearer <token>`",
                    (Some(_), Some(_)) => "unknown token",
                }))
            }
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Missing, malformed or no tenant's.
    Unknown,
    /// Its peer has failed too often lately; the token was not checked.
    Throttled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_keeps_failing_is_refused_until_it_has_waited() {
        let f = FailedAuth::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..FailedAuth::BURST as usize {
            assert!(!f.throttled_at(a, t0));
            f.failed_at(a, t0);
        }
        assert!(f.throttled_at(a, t0));
        assert!(f.throttled_at(a, t0 + FailedAuth::REFILL / 2));
        assert!(!f.throttled_at(b, t0), "another peer is not held back");
        assert!(
            !f.throttled_at(a, t0 + FailedAuth::REFILL),
            "one more try after REFILL"
        );
        f.failed_at(a, t0 + FailedAuth::REFILL);
        assert!(f.throttled_at(a, t0 + FailedAuth::REFILL));
        assert_eq!(
            f.failed.load(Ordering::Relaxed),
            FailedAuth::BURST as u64 + 1
        );
        assert_eq!(f.throttled.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_peers_followed_are_bounded() {
        let f = FailedAuth::default();
        let t0 = Instant::now();
        for i in 0..(FailedAuth::PEERS as u32 + 100) {
            f.failed_at(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(f.peers(), FailedAuth::PEERS);
        // Once the old peers' buckets have refilled, they make room for new ones.
        let later = t0 + FailedAuth::REFILL * 2;
        f.failed_at("198.51.100.7".parse().unwrap(), later);
        assert_eq!(f.peers(), 1);
    }

    #[test]
    fn a_throttled_peer_is_refused_even_with_a_valid_token() {
        let tenants = [TenantConfig {
            name: "a".into(),
            token_sha256: token_sha256("secret-a"),
        }];
        let auth = Authenticator::new(&tenants);
        let peer = Some("203.0.113.9".parse().unwrap());
        assert_eq!(auth.check(Some("secret-a"), peer).as_deref(), Ok("a"));
        for _ in 0..FailedAuth::BURST as usize {
            assert_eq!(auth.check(Some("guess"), peer), Err(Refusal::Unknown));
        }
        assert_eq!(auth.check(Some("secret-a"), peer), Err(Refusal::Throttled));
        assert_eq!(auth.check(Some("secret-a"), None).as_deref(), Ok("a"));
    }

    #[test]
    fn tokens_map_to_their_tenant_only() {
        let tenants = [
            TenantConfig {
                name: "a".into(),
                token_sha256: token_sha256("secret-a"),
            },
            TenantConfig {
                name: "b".into(),
                token_sha256: token_sha256("secret-b"),
            },
        ];
        let auth = Authenticator::new(&tenants);
        assert_eq!(auth.tenant("secret-a").as_deref(), Some("a"));
        assert_eq!(auth.tenant("secret-b").as_deref(), Some("b"));
        assert_eq!(auth.tenant("secret-c"), None);
        assert_eq!(auth.tenant(""), None);
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("authorization", "Bearer secret-b".parse().unwrap());
        let req = auth.intercept(req).unwrap();
        assert_eq!(&*req.extensions().get::<Tenant>().unwrap().0, "b");
        let mut wrong = Request::new(());
        wrong
            .metadata_mut()
            .insert("authorization", "Basic secret-b".parse().unwrap());
        assert_eq!(
            auth.intercept(wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.intercept(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
