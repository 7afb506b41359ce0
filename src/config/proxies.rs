//! `levy.trusted_proxies`: the load balancers in front of levy, whose `X-Forwarded-For`
//! names the client. Without them the client is the connection's peer: a header is the
//! client's to write.

use std::net::IpAddr;

use super::invalid;
use crate::ConfigError;

/// Networks whose connections are load balancers levy trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses `10.0.0.0/8`, `192.168.1.7`, `fd00::/8`.
    pub(super) fn parse(list: &[String]) -> Result<Self, ConfigError> {
        let mut nets = Vec::with_capacity(list.len());
        for (i, text) in list.iter().enumerate() {
            let at = format!("levy.trusted_proxies[{i}]");
            let bad = || {
                invalid(
                    &at,
                    format!("`{text}` is not an address or a network (`10.0.0.0/8`)"),
                )
            };
            let (addr, bits) = match text.trim().split_once('/') {
                Some((addr, bits)) => (addr, Some(bits)),
                None => (text.trim(), None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(bits) => bits
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(bad)?,
                None => max,
            };
            nets.push((addr, bits));
        }
        Ok(TrustedProxies(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0
            .iter()
            .any(|(net, bits)| same_prefix(*net, ip, *bits))
    }

    /// The client behind a connection from `peer` that says `forwarded_for` (the
    /// `X-Forwarded-For` values in order): the peer itself unless it is trusted; else the
    /// nearest address, from the right, that is not a trusted proxy (the leftmost when
    /// all are). An entry that is not an address ends the walk there: the peer's.
    pub fn client(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in forwarded_for.iter().rev().flat_map(|v| v.rsplit(',')) {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                return client;
            };
            client = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        client
    }
}

fn same_prefix(net: IpAddr, ip: IpAddr, bits: u8) -> bool {
    let (a, b, width) = match (net, ip) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    if bits == 0 {
        return true;
    }
    let shift = width - u32::from(bits);
    (a >> shift) == (b >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_nearest_untrusted_hop_behind_a_trusted_peer() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "fd00::1".into()]).expect("ok");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            trusted.client(ip("203.0.113.9"), &["1.2.3.4"]),
            ip("203.0.113.9"),
            "untrusted peer"
        );
        assert_eq!(trusted.client(ip("10.1.2.3"), &["1.2.3.4"]), ip("1.2.3.4"));
        assert_eq!(
            trusted.client(ip("10.1.2.3"), &["6.6.6.6, 1.2.3.4", "10.9.9.9"]),
            ip("1.2.3.4"),
            "a client-written entry left of the real one is not believed"
        );
        assert_eq!(
            trusted.client(ip("10.1.2.3"), &["10.4.4.4"]),
            ip("10.4.4.4")
        );
        assert_eq!(trusted.client(ip("10.1.2.3"), &[]), ip("10.1.2.3"));
        assert_eq!(trusted.client(ip("10.1.2.3"), &["junk"]), ip("10.1.2.3"));
        assert!(trusted.contains(ip("fd00::1")));
        assert!(!trusted.contains(ip("fd00::2")));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
    }
}
