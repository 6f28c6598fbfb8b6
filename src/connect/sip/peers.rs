//! Which SRCs may record, and whose calls theirs are: `[[siprec.peers]]` by source address
//! (the gate: anyone else gets 403) and, where one SBC serves several tenants, by the SIP
//! identity its requests carry (the host of their `From` URI).

use std::net::IpAddr;
use std::sync::Arc;

use super::metadata::host_of;
use crate::config::SiprecPeerConfig;

struct Peer {
    nets: Vec<ipnet::IpNet>,
    /// `From` hosts (and the hosts below them) this peer's requests carry; empty: any.
    domains: Vec<String>,
    tenant: Arc<str>,
}

pub struct Peers(Vec<Peer>);

impl Peers {
    /// From validated config (`SiprecConfig::validate` reports unparsable addresses); an
    /// address that does not parse is an error naming it.
    pub fn new(config: &[SiprecPeerConfig]) -> Result<Self, String> {
        let mut out = Vec::new();
        for p in config {
            let mut nets = Vec::new();
            for a in &p.addresses {
                nets.push(
                    a.parse::<ipnet::IpNet>()
                        .or_else(|_| a.parse::<IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| format!("siprec peer address {a:?}"))?,
                );
            }
            out.push(Peer {
                nets,
                domains: p.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
                tenant: Arc::from(p.tenant.as_str()),
            });
        }
        Ok(Self(out))
    }

    /// The tenant of a request from `ip` whose `From` header is `from`: among the peers whose
    /// addresses hold `ip`, the first whose domains hold the `From` host, else the first with no
    /// domains; `None` (403) when neither.
    pub fn tenant(&self, ip: IpAddr, from: &str) -> Option<Arc<str>> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let host = host_of(from);
        let at_address = || {
            self.0
                .iter()
                .filter(move |p| p.nets.iter().any(|n| n.contains(&ip)))
        };
        at_address()
            .find(|p| {
                !host.is_empty()
                    && p.domains
                        .iter()
                        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
            })
            .or_else(|| at_address().find(|p| p.domains.is_empty()))
            .map(|p| p.tenant.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(tenant: &str, addresses: &[&str], domains: &[&str]) -> SiprecPeerConfig {
        SiprecPeerConfig {
            tenant: tenant.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn one_sbc_serves_several_tenants_by_sip_identity() {
        let peers = Peers::new(&[
            peer("bank-a", &["10.0.0.0/24"], &["a.bank.example"]),
            peer("bank-b", &["10.0.0.0/24"], &["b.bank.example"]),
            peer("shared", &["10.0.0.0/24"], &[]),
            peer("branch", &["192.0.2.7"], &["branch.example"]),
        ])
        .unwrap();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let t = |ip: IpAddr, from: &str| peers.tenant(ip, from).map(|t| t.to_string());
        assert_eq!(
            t(ip, "<sip:sbc@a.bank.example>;tag=1").as_deref(),
            Some("bank-a")
        );
        assert_eq!(
            t(
                ip,
                "\"SBC\" <sip:rec@edge.b.bank.example:5061;transport=tls>;tag=9"
            )
            .as_deref(),
            Some("bank-b")
        );
        // Any other identity at that address: the peer without domains.
        assert_eq!(t(ip, "<sip:sbc@10.0.0.9>;tag=1").as_deref(), Some("shared"));
        // The address is the gate: a matching identity from elsewhere is refused.
        assert_eq!(
            t("10.9.9.9".parse().unwrap(), "<sip:sbc@a.bank.example>"),
            None
        );
        // A peer with domains only takes those.
        let branch: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            t(branch, "<sip:x@branch.example>").as_deref(),
            Some("branch")
        );
        assert_eq!(t(branch, "<sip:x@other.example>"), None);
        // IPv4-mapped IPv6 is the IPv4 address.
        assert_eq!(
            t("::ffff:10.0.0.9".parse().unwrap(), "<sip:x@a.bank.example>").as_deref(),
            Some("bank-a")
        );
        assert!(Peers::new(&[peer("x", &["not-an-ip"], &[])]).is_err());
    }
}
