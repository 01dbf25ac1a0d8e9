//! Reconnect backoff: exponential with full jitter (AWS architecture blog,
//! "Exponential Backoff And Jitter"), so that a fleet that lost its hub does
//! not come back in one synchronised wave.

use std::time::Duration;

/// Exponential backoff with full jitter between `base` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays start near `base` and grow to at most `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The delay before the next attempt: uniform in `[cap/2, cap]` where
    /// `cap = min(max, base * 2^attempt)` (half jitter keeps a floor so a
    /// flood of failures never spins).
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let cap = self.base.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = cap / 2;
        let span = cap.saturating_sub(half).as_millis() as u64;
        half + Duration::from_millis(random_u64() % span.max(1))
    }

    /// A connection succeeded: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    // A failing system RNG only costs the jitter.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_under_the_cap_and_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(2)));
        assert!(
            d[11] >= Duration::from_secs(1),
            "late delays sit near the cap"
        );
        let mut again = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let other: Vec<Duration> = (0..12).map(|_| again.next_delay()).collect();
        assert_ne!(d, other, "two agents do not back off in lockstep");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
