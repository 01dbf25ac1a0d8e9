//! [`FailedAttempts`]: a per-address budget of refused enrolments.
//!
//! Enrolment tokens are 256-bit random, so guessing one is hopeless; the
//! budget only keeps one address from making the hub check tokens and parse
//! CSRs as fast as it can send them. Only *refused* attempts spend it, so a
//! site enrolling a thousand devices from behind one NAT is never slowed:
//! each address may fail [`BURST`] times, then once per [`REFILL`]. An address
//! out of budget is refused before its token is looked at, with a one-line
//! reason saying when to retry.
//!
//! IPv6 addresses count by their /64.
//!
//! Memory: one entry per address with refusals not yet forgiven, at most
//! [`MAX_ADDRESSES`]; past that, the oldest-forgiven entries go first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Refused attempts an address may make back to back.
pub(super) const BURST: f64 = 10.0;
/// One more attempt is allowed after each interval of this length.
pub(super) const REFILL: Duration = Duration::from_secs(6);
/// Most addresses tracked at once.
pub(super) const MAX_ADDRESSES: usize = 100_000;

/// Remaining refusals per address (a token bucket each).
#[derive(Debug, Default)]
pub(super) struct FailedAttempts {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        (self.tokens + gained).min(BURST)
    }
}

/// The key an address is budgeted under: IPv4 addresses alone, IPv6 by
/// their /64 (one host usually holds a whole /64, so per-address budgets
/// would be free to multiply).
fn key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
        },
    }
}

impl FailedAttempts {
    /// `Err(wait)` when `addr` has no refusals left: it may try again after
    /// `wait`.
    pub(super) fn check(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let addr = key(addr);
        let map = self.lock();
        match map.get(&addr) {
            Some(b) => {
                let tokens = b.refilled(now);
                if tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(REFILL.mul_f64(1.0 - tokens))
                }
            }
            None => Ok(()),
        }
    }

    /// Spends one refusal of `addr`'s budget.
    pub(super) fn refused(&self, addr: IpAddr, now: Instant) {
        let addr = key(addr);
        let mut map = self.lock();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&addr) {
            map.retain(|_, b| b.refilled(now) < BURST);
            if map.len() >= MAX_ADDRESSES {
                // Every tracked address is still in debt; forget the one
                // closest to being forgiven.
                if let Some(k) = map
                    .iter()
                    .max_by(|a, b| a.1.refilled(now).total_cmp(&b.1.refilled(now)))
                    .map(|(k, _)| *k)
                {
                    map.remove(&k);
                }
            }
        }
        let tokens = map.get(&addr).map_or(BURST, |b| b.refilled(now));
        map.insert(
            addr,
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                at: now,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Bucket>> {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn an_address_may_fail_a_burst_then_one_per_interval() {
        let a = FailedAttempts::default();
        let t0 = Instant::now();
        for _ in 0..BURST as usize {
            assert!(a.check(ip(1), t0).is_ok());
            a.refused(ip(1), t0);
        }
        let wait = a.check(ip(1), t0).unwrap_err();
        assert!(wait <= REFILL && wait > REFILL / 2, "{wait:?}");
        // Another address is not affected.
        assert!(a.check(ip(2), t0).is_ok());
        // One interval later, one more attempt.
        let t1 = t0 + REFILL;
        assert!(a.check(ip(1), t1).is_ok());
        a.refused(ip(1), t1);
        assert!(a.check(ip(1), t1).is_err());
    }

    #[test]
    fn ipv6_addresses_share_the_budget_of_their_slash_64() {
        let a = FailedAttempts::default();
        let t0 = Instant::now();
        for i in 0..BURST as u16 {
            let addr = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, i]);
            a.refused(addr, t0);
        }
        let other_host = IpAddr::from([0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 7]);
        assert!(a.check(other_host, t0).is_err());
        let other_net = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert!(a.check(other_net, t0).is_ok());
    }

    #[test]
    fn successes_cost_nothing() {
        let a = FailedAttempts::default();
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(a.check(ip(3), t0).is_ok());
        }
        assert_eq!(a.tracked(), 0);
    }

    #[test]
    fn the_table_is_bounded() {
        let a = FailedAttempts::default();
        let t0 = Instant::now();
        // Fill with forgiven entries (one refusal long ago), then new ones.
        for i in 0..MAX_ADDRESSES as u32 {
            a.refused(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(a.tracked(), MAX_ADDRESSES);
        let later = t0 + REFILL * 2;
        a.refused(ip(9), later);
        assert!(a.tracked() <= MAX_ADDRESSES);
        assert!(a.check(ip(9), later).is_ok(), "9 refusals left");
    }
}
