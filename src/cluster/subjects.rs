//! Names in NATS: subjects and keys built from tenants and call ids.
//!
//! A subject token or key may not hold `.`, `*`, `>` or whitespace, and a call id may hold
//! any of them but whitespace (`valid_call_id` allows `.` and `:`). Tokens are therefore
//! escaped: every byte outside `[A-Za-z0-9_-]` becomes `=XX` (its hex), which JetStream keys
//! and subjects accept and which cannot collide with an unescaped token.

/// The stream all alerts of the cluster go to.
pub const STREAM: &str = "CALLGUARD_ALERTS";
/// Live and recently ended calls, one key per tenant and call.
pub const CALLS_BUCKET: &str = "callguard_calls";
/// Each node's heartbeat.
pub const NODES_BUCKET: &str = "callguard_nodes";

/// `s` as one subject token or key part.
pub fn token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Where one alert of `tenant`'s call is published.
pub fn alert(tenant: &str, call_id: &str) -> String {
    format!("callguard.alerts.{}.{}", token(tenant), token(call_id))
}

/// Every alert of `tenant` (or of one of its calls).
pub fn alerts_of(tenant: &str, call_id: Option<&str>) -> String {
    match call_id {
        Some(c) => alert(tenant, c),
        None => format!("callguard.alerts.{}.>", token(tenant)),
    }
}

/// The calls bucket's key of a call.
pub fn call_key(tenant: &str, call_id: &str) -> String {
    format!("{}.{}", token(tenant), token(call_id))
}

/// The subject a node answers `GetCall` requests for its live calls on.
pub fn node_requests(node: &str) -> String {
    format!("callguard.node.{}.call", token(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_escape_what_nats_reserves_and_stay_distinct() {
        assert_eq!(token("bank-a"), "bank-a");
        assert_eq!(token("call.1"), "call=2E1");
        assert_eq!(token("a>b*c d"), "a=3Eb=2Ac=20d");
        assert_ne!(token("a.b"), token("a=2Eb"));
        assert_eq!(alert("t", "c:1"), "callguard.alerts.t.c=3A1");
        assert_eq!(alerts_of("t", None), "callguard.alerts.t.>");
        assert_eq!(call_key("t.x", "c"), "t=2Ex.c");
    }
}
