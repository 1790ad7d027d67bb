//! Per-client-address request rate (`rate_limit_per_ip`): a token bucket per address in
//! a table of bounded size.
//!
//! Why per address as well as per key: the web write key is public (it ships in every
//! page), so a per-key limit alone lets one abuser use up the budget of every real web
//! user. The address limit is checked before the body is read, so a client over it
//! costs a header parse; the per-key limit stays as the outer fence.
//!
//! Why bounded: the table is keyed by what clients send from, so an attacker with many
//! addresses (an IPv6 /48 holds 2^80) could otherwise grow it without end. IPv6 is
//! counted per /64 (what one host or LAN usually gets), and beyond
//! `rate_limit_ip_table_size` buckets the oldest one is dropped: that address starts
//! again with a full bucket, which is what it would have after idling anyway. The cost
//! of eviction is leniency towards the evicted, never a refusal of anyone.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The token buckets of client addresses.
pub(super) struct IpLimiter {
    /// Tokens added per second (the configured rate).
    rate: f64,
    /// Bucket size: twice the rate, as for the per-key limit.
    burst: f64,
    /// Most buckets kept.
    capacity: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    buckets: HashMap<IpAddr, Bucket>,
    /// Addresses in the order their buckets were created; the front is dropped first.
    order: VecDeque<IpAddr>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl IpLimiter {
    /// `rate` requests per second per address (burst 2×), at most `capacity` addresses.
    pub(super) fn new(rate: u32, capacity: usize) -> Self {
        Self {
            rate: f64::from(rate),
            burst: 2.0 * f64::from(rate),
            capacity: capacity.max(1),
            table: Mutex::new(Table::default()),
        }
    }

    /// Take one token of `ip`'s bucket at `now`, or say how long until one is there.
    pub(super) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = bucket_key(ip);
        let mut t = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !t.buckets.contains_key(&key) {
            while t.buckets.len() >= self.capacity {
                match t.order.pop_front() {
                    Some(old) => {
                        t.buckets.remove(&old);
                    }
                    None => break,
                }
            }
            t.order.push_back(key);
            t.buckets.insert(
                key,
                Bucket {
                    tokens: self.burst,
                    at: now,
                },
            );
        }
        let Some(b) = t.buckets.get_mut(&key) else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }

    /// Buckets held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().map(|t| t.buckets.len()).unwrap_or(0)
    }
}

/// The bucket an address counts against: IPv4 as it is, IPv6 by its /64.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::from(seg)
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = IpLimiter::new(2, 10);
        let t0 = Instant::now();
        for _ in 0..4 {
            assert!(l.check(ip("203.0.113.1"), t0).is_ok());
        }
        let wait = l.check(ip("203.0.113.1"), t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(
            l.check(ip("203.0.113.2"), t0).is_ok(),
            "another address has its own bucket"
        );
        assert!(l.check(ip("203.0.113.1"), t0 + wait).is_ok());
        assert!(l.check(ip("203.0.113.1"), t0 + wait).is_err());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let l = IpLimiter::new(1, 10);
        let t0 = Instant::now();
        assert!(l.check(ip("2001:db8:1:2::1"), t0).is_ok());
        assert!(l.check(ip("2001:db8:1:2:ffff::9"), t0).is_ok());
        assert!(
            l.check(ip("2001:db8:1:2:abcd::7"), t0).is_err(),
            "same /64, same bucket"
        );
        assert!(l.check(ip("2001:db8:1:3::1"), t0).is_ok());
    }

    #[test]
    fn the_table_stays_within_its_size() {
        let l = IpLimiter::new(1, 100);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let _ = l.check(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(l.len(), 100);
        // The oldest went first: an exhausted early address was dropped and starts full,
        // a recent one is still limited.
        let l = IpLimiter::new(1, 3);
        for _ in 0..2 {
            l.check(ip("198.51.100.1"), t0).unwrap();
            l.check(ip("198.51.100.2"), t0).unwrap();
        }
        assert!(l.check(ip("198.51.100.1"), t0).is_err());
        l.check(ip("198.51.100.3"), t0).unwrap();
        l.check(ip("198.51.100.4"), t0).unwrap(); // drops .1
        assert!(l.check(ip("198.51.100.2"), t0).is_err(), "still held");
        assert!(
            l.check(ip("198.51.100.1"), t0).is_ok(),
            "dropped, so full again"
        );
    }
}
