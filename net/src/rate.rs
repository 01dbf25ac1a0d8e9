//! Bandwidth limits: a token bucket that may go into debt.
//!
//! The hub sends chunks through two buckets, the connection's and the global
//! one, so one agent cannot take the whole uplink and the fleet together cannot
//! exceed what the operator allowed. A send of `n` bytes takes `n` tokens at
//! once and, if that leaves the bucket below zero, waits until the debt is
//! repaid: large chunks are never starved by small ones, and the long-run rate
//! never exceeds the limit.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A byte-rate limit. Rate 0 means unlimited.
#[derive(Debug)]
pub struct Bandwidth {
    bytes_per_sec: u64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Burst allowance, as a fraction of a second of the rate.
const BURST_SECS: f64 = 0.1;

impl Bandwidth {
    /// A limit of `bytes_per_sec` (0: unlimited).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec,
            state: Mutex::new(Bucket {
                tokens: bytes_per_sec as f64 * BURST_SECS,
                last: Instant::now(),
            }),
        }
    }

    /// The configured rate (0: unlimited).
    pub fn rate(&self) -> u64 {
        self.bytes_per_sec
    }

    /// How long a sender of `n` bytes must wait now; the bytes are accounted
    /// for at once.
    pub fn reserve(&self, n: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let rate = self.bytes_per_sec as f64;
        let mut b = match self.state.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.last = now;
        b.tokens = (b.tokens + elapsed * rate).min(rate * BURST_SECS);
        b.tokens -= n as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / rate)
        }
    }

    /// Waits until `n` bytes may be sent.
    pub async fn acquire(&self, n: u64) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits_and_a_limit_paces_bytes() {
        assert_eq!(Bandwidth::new(0).reserve(u64::MAX), Duration::ZERO);
        let b = Bandwidth::new(1_000_000);
        // The burst allowance is 100 kB; 1.1 MB more is 1.1 s of debt.
        assert_eq!(b.reserve(100_000), Duration::ZERO);
        let wait = b.reserve(1_100_000);
        assert!(
            wait > Duration::from_millis(1_000) && wait <= Duration::from_millis(1_101),
            "{wait:?}"
        );
    }

    #[tokio::test]
    async fn acquire_holds_the_long_run_rate() {
        let b = Bandwidth::new(2_000_000);
        let start = Instant::now();
        for _ in 0..10 {
            b.acquire(100_000).await;
        }
        // 1 MB at 2 MB/s, minus the 200 kB burst: at least ~0.4 s.
        assert!(
            start.elapsed() >= Duration::from_millis(350),
            "{:?}",
            start.elapsed()
        );
    }
}
