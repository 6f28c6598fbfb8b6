//! Bearer tokens per tenant. The config holds only each token's SHA-256; a request's token is
//! hashed and compared in constant time against every tenant's.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::config::TenantConfig;

/// The authenticated tenant, put in each request's extensions.
#[derive(Debug, Clone)]
pub struct Tenant(pub Arc<str>);

#[derive(Clone)]
pub struct Authenticator {
    tenants: Arc<Vec<(Arc<str>, [u8; 32])>>,
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
        }
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

    /// Interceptor: `authorization: Bearer <token>` or `Unauthenticated`.
    #[allow(clippy::result_large_err)]
    pub fn intercept(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        let tenant = self.tenant(token.trim()).ok_or_else(|| {
            tracing::info!("gRPC request with an unknown token refused.");
            Status::unauthenticated("unknown token")
        })?;
        req.extensions_mut().insert(Tenant(tenant));
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
