//! The client's address: the socket peer, or — when the peer is one of our proxies — the
//! address the proxies recorded in `trusted_proxy_header`.
//!
//! Why right-most: every proxy appends the address it received the request from, so the
//! header reads `client-written..., what-our-first-proxy-saw, ..., what-our-last-saw`.
//! Everything left of the first address a trusted proxy recorded is whatever the client
//! chose to write, so taking the left-most entry lets any client pick its own address
//! (and with it its rate-limit bucket). We walk from the right, skipping our own
//! proxies, and stop at the first address that is not one of them. The header is only
//! read at all when the socket peer is a trusted proxy: a client talking to the
//! collector directly could otherwise write anything there.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use touchstream_core::config::CollectorConfig;

/// How the client address of a request is found (README "Client IP").
pub(super) struct ClientAddr {
    /// `trusted_proxy_header`, when configured and a valid header name.
    header: Option<HeaderName>,
    /// `trusted_proxies`, parsed.
    trusted: Vec<IpNet>,
}

impl ClientAddr {
    /// From the collector config (validated at load: the CIDRs parse, and a header comes
    /// with at least one trusted proxy).
    pub(super) fn new(cfg: &CollectorConfig) -> Self {
        Self {
            header: cfg
                .trusted_proxy_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.trim().as_bytes()).ok()),
            trusted: cfg.trusted_proxy_nets().unwrap_or_default(),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The client's address for a request from `peer` with `headers`.
    pub(super) fn resolve(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        let peer = peer.to_canonical();
        let Some(name) = &self.header else {
            return peer;
        };
        if !self.is_trusted(peer) {
            return peer;
        }
        // Each proxy may add its own header line or append to the last: read the lines in
        // order, each line's entries left to right, then walk the whole list from the right.
        let mut client = peer;
        for value in headers.get_all(name).iter().rev() {
            let Ok(text) = value.to_str() else {
                return client;
            };
            for entry in text.split(',').rev() {
                match parse_entry(entry) {
                    Some(ip) if self.is_trusted(ip) => client = ip,
                    Some(ip) => return ip,
                    // Not an address (`unknown`, garbage): nothing left of it can be
                    // trusted; the nearest address a trusted proxy vouched for is the
                    // best we know.
                    None => return client,
                }
            }
        }
        client
    }
}

/// One header entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    e.parse::<IpAddr>()
        .or_else(|_| e.parse::<SocketAddr>().map(|s| s.ip()))
        .or_else(|_| e.trim_start_matches('[').trim_end_matches(']').parse())
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(header: Option<&str>, trusted: &[&str]) -> ClientAddr {
        let cfg = CollectorConfig {
            trusted_proxy_header: header.map(String::from),
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            ..CollectorConfig::default()
        };
        ClientAddr::new(&cfg)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_header_is_read_only_from_a_trusted_peer() {
        let a = addr(Some("x-forwarded-for"), &["10.0.0.0/8"]);
        let h = xff(&["203.0.113.9"]);
        assert_eq!(a.resolve(&h, ip("10.1.1.1")), ip("203.0.113.9"));
        assert_eq!(
            a.resolve(&h, ip("198.51.100.4")),
            ip("198.51.100.4"),
            "a direct client cannot name its own address"
        );
        let none = addr(None, &["10.0.0.0/8"]);
        assert_eq!(none.resolve(&h, ip("10.1.1.1")), ip("10.1.1.1"));
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        let a = addr(Some("x-forwarded-for"), &["10.0.0.0/8", "192.168.7.7"]);
        // The client wrote 1.1.1.1 itself; our proxies recorded 203.0.113.7 and 10.2.3.4.
        let h = xff(&["1.1.1.1, 203.0.113.7, 10.2.3.4"]);
        assert_eq!(a.resolve(&h, ip("192.168.7.7")), ip("203.0.113.7"));
        // The same over several header lines, with ports and IPv6.
        let h = xff(&["1.1.1.1", "[2001:db8::5]:4711, 10.2.3.4:80"]);
        assert_eq!(a.resolve(&h, ip("10.0.0.1")), ip("2001:db8::5"));
        // Only proxies in the header: the left-most of them.
        let h = xff(&["10.9.9.9, 10.2.3.4"]);
        assert_eq!(a.resolve(&h, ip("10.0.0.1")), ip("10.9.9.9"));
        // Garbage stops the walk at the nearest vouched-for address.
        let h = xff(&["203.0.113.7, unknown, 10.2.3.4"]);
        assert_eq!(a.resolve(&h, ip("10.0.0.1")), ip("10.2.3.4"));
        // No header at all: the peer.
        assert_eq!(a.resolve(&HeaderMap::new(), ip("10.0.0.1")), ip("10.0.0.1"));
        // IPv4-mapped IPv6 peers match IPv4 CIDRs.
        let h = xff(&["203.0.113.8"]);
        assert_eq!(a.resolve(&h, ip("::ffff:10.0.0.1")), ip("203.0.113.8"));
    }
}
