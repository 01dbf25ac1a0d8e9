//! A mergeable histogram of non-negative integers over fixed log-spaced buckets.
//!
//! Latencies (in microseconds) and batch sizes are recorded into the same
//! [`BUCKETS`] buckets, whose upper bounds [`upper_bound`] defines once: 1, 2,
//! 3, 4, 5, 7, 9, 12 … each about 1.25 times the one before, up to the first
//! bound past 100 s (121.7 s), plus one overflow bucket. Because every
//! histogram shares the bounds, merging is adding counts: exact, associative
//! and commutative, so an agent's windows, an outbox's compacted windows and
//! a fleet's devices all merge without losing anything but in-bucket position.
//!
//! # Error bound
//! [`Histogram::quantile`] answers the upper bound of the bucket holding the
//! nearest-rank quantile `v` (capped by the largest value recorded). For `v` up
//! to the last finite bound, the answer `a` satisfies
//! `v <= a <= max(ceil(1.25 * v), 1)`: it never under-estimates and
//! over-estimates by at most 25%. Past the last finite bound the answer is the
//! largest value recorded.
//!
//! The encoding lists only non-zero buckets (`{index: count}`), so an idle
//! endpoint costs a few bytes and a busy one at most [`BUCKETS`] entries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Buckets with a finite upper bound.
pub const FINITE_BUCKETS: usize = 80;

/// All buckets: the finite ones and the overflow bucket.
pub const BUCKETS: usize = FINITE_BUCKETS + 1;

/// Smallest value the last finite bucket must reach: 100 s in microseconds.
const SPAN_US: u64 = 100_000_000;

/// The inclusive upper bound of bucket `index`: bucket 0 holds `0..=1`,
/// bucket `i` holds `upper_bound(i - 1) + 1 ..= upper_bound(i)`, and the
/// overflow bucket ([`FINITE_BUCKETS`]) has bound `u64::MAX`.
///
/// Design: integer bounds from the recurrence `b(0) = 1`,
/// `b(i) = max(b(i-1) + 1, ceil(1.25 * b(i-1)))`, so every platform and
/// every peer agrees on them bit for bit (no floating-point `powf`).
pub const fn upper_bound(index: usize) -> u64 {
    if index >= FINITE_BUCKETS {
        return u64::MAX;
    }
    let mut bound = 1u64;
    let mut i = 0;
    while i < index {
        let next = (bound * 5).div_ceil(4);
        bound = if next > bound { next } else { bound + 1 };
        i += 1;
    }
    bound
}

/// The finite bounds, computed once at compile time.
const BOUNDS: [u64; FINITE_BUCKETS] = {
    let mut table = [0u64; FINITE_BUCKETS];
    let mut i = 0;
    while i < FINITE_BUCKETS {
        table[i] = upper_bound(i);
        i += 1;
    }
    table
};

// The finite buckets reach 100 s, and not one bucket further.
const _: () = assert!(BOUNDS[FINITE_BUCKETS - 1] >= SPAN_US);
const _: () = assert!(BOUNDS[FINITE_BUCKETS - 2] < SPAN_US);

/// The bucket that holds `value`.
pub fn bucket_of(value: u64) -> usize {
    BOUNDS.partition_point(|&b| b < value)
}

/// Counts per bucket, their total, the sum and the largest value recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HistogramRepr", into = "HistogramRepr")]
pub struct Histogram {
    /// Values recorded per bucket.
    counts: [u64; BUCKETS],
    /// Values recorded.
    // invariant: the sum of `counts` (saturating).
    count: u64,
    /// Sum of the values recorded (saturating).
    sum: u64,
    /// Largest value recorded; 0 when empty.
    // invariant: in the highest non-empty bucket, or 0 when `count` is 0.
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            counts: [0; BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }

    /// Records one value (microseconds for latencies, items for batch sizes).
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `value` `n` times.
    pub fn record_n(&mut self, value: u64, n: u64) {
        if n == 0 {
            return;
        }
        let b = bucket_of(value);
        self.counts[b] = self.counts[b].saturating_add(n);
        self.count = self.count.saturating_add(n);
        self.sum = self.sum.saturating_add(value.saturating_mul(n));
        self.max = self.max.max(value);
    }

    /// Adds `other`'s values to this one. Exact, associative and commutative
    /// (up to `u64` saturation, which takes 584,000 years of microseconds).
    pub fn merge(&mut self, other: &Histogram) {
        for (c, o) in self.counts.iter_mut().zip(other.counts.iter()) {
            *c = c.saturating_add(*o);
        }
        self.count = self.count.saturating_add(other.count);
        self.sum = self.sum.saturating_add(other.sum);
        self.max = self.max.max(other.max);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sum of the values recorded.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Largest value recorded; `None` when empty.
    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// Mean of the values recorded; `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The `q`-quantile (`q` in `[0, 1]`, clamped) within the bound in the
    /// module documentation: the upper bound of the bucket holding the
    /// nearest-rank quantile, capped by the largest value recorded. `None`
    /// when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // Nearest rank: the smallest value with at least q·count values at or
        // below it; rank 1 for q = 0.
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(*c);
            if seen >= rank {
                return Some(upper_bound(i).min(self.max));
            }
        }
        Some(self.max)
    }

    /// Non-empty buckets as `(index, count)`, in ascending order.
    pub fn buckets(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i, *c))
    }
}

/// The encoded form: only non-zero buckets; the count is their sum.
#[derive(Serialize, Deserialize)]
struct HistogramRepr {
    sum: u64,
    max: u64,
    buckets: BTreeMap<u8, u64>,
}

impl From<Histogram> for HistogramRepr {
    fn from(h: Histogram) -> Self {
        Self {
            sum: h.sum,
            max: h.max,
            // BUCKETS < 256, so every index fits a u8.
            buckets: h.buckets().map(|(i, c)| (i as u8, c)).collect(),
        }
    }
}

impl TryFrom<HistogramRepr> for Histogram {
    type Error = String;

    fn try_from(r: HistogramRepr) -> Result<Self, String> {
        let mut h = Histogram::new();
        let mut highest = None;
        for (i, c) in r.buckets {
            let i = usize::from(i);
            if i >= BUCKETS {
                return Err(format!("histogram bucket {i} does not exist"));
            }
            if c == 0 {
                return Err(format!("histogram bucket {i} is listed empty"));
            }
            h.counts[i] = c;
            h.count = h
                .count
                .checked_add(c)
                .ok_or("histogram count overflows u64")?;
            highest = Some(i);
        }
        let max_ok = match highest {
            None => r.max == 0 && r.sum == 0,
            Some(i) => bucket_of(r.max) == i,
        };
        if !max_ok {
            return Err(format!(
                "histogram max {} is not in its highest bucket",
                r.max
            ));
        }
        h.sum = r.sum;
        h.max = r.max;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::testutil::SplitMix;
    use proptest::prelude::*;

    fn of(values: &[u64]) -> Histogram {
        let mut h = Histogram::new();
        for v in values {
            h.record(*v);
        }
        h
    }

    fn merged(a: &Histogram, b: &Histogram) -> Histogram {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    fn round_trip(h: &Histogram) -> Result<Histogram, String> {
        let mut out = Vec::new();
        ciborium::into_writer(h, &mut out).map_err(|e| e.to_string())?;
        ciborium::from_reader(&out[..]).map_err(|e| e.to_string())
    }

    #[test]
    fn bounds_start_at_one_microsecond_and_grow_by_at_most_a_quarter() {
        assert_eq!(&BOUNDS[..8], &[1, 2, 3, 4, 5, 7, 9, 12]);
        for w in BOUNDS.windows(2) {
            assert!(w[1] > w[0]);
            assert!(w[1] <= (w[0] * 5).div_ceil(4).max(w[0] + 1));
        }
        assert_eq!(upper_bound(FINITE_BUCKETS), u64::MAX);
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(6), 5);
        assert_eq!(bucket_of(u64::MAX), FINITE_BUCKETS);
    }

    #[test]
    fn an_empty_histogram_has_no_quantiles() {
        let h = Histogram::new();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.max(), None);
        assert_eq!(h.mean(), None);
        assert_eq!(round_trip(&h), Ok(h));
    }

    #[test]
    fn overflowing_values_report_the_largest_recorded() {
        let h = of(&[10, 500_000_000]);
        assert_eq!(h.quantile(1.0), Some(500_000_000));
        // 10 sits in the bucket 10..=12.
        assert_eq!(h.quantile(0.0), Some(12));
        assert_eq!(h.quantile(0.5), Some(12));
        assert_eq!(
            of(&[10]).quantile(0.5),
            Some(10),
            "capped by the largest value"
        );
    }

    #[test]
    fn only_non_zero_buckets_are_encoded() {
        let h = of(&[3, 3, 1000]);
        let mut out = Vec::new();
        ciborium::into_writer(&h, &mut out).unwrap();
        // Map of 3 keys, two of them small integers, and a 2-entry bucket map.
        assert!(out.len() < 32, "{} bytes", out.len());
        assert_eq!(round_trip(&h), Ok(h));
    }

    #[test]
    fn inconsistent_encodings_are_rejected() {
        let bad = |sum: u64, max: u64, buckets: &[(u8, u64)]| {
            let r = HistogramRepr {
                sum,
                max,
                buckets: buckets.iter().copied().collect(),
            };
            let mut out = Vec::new();
            ciborium::into_writer(&r, &mut out).unwrap();
            ciborium::from_reader::<Histogram, _>(&out[..]).is_err()
        };
        assert!(bad(0, 0, &[(BUCKETS as u8, 1)]), "bucket out of range");
        assert!(bad(0, 0, &[(3, 0)]), "empty bucket listed");
        assert!(bad(5, 1000, &[(3, 1)]), "max outside the top bucket");
        assert!(bad(5, 0, &[]), "sum without values");
        assert!(bad(0, 2, &[(0, u64::MAX), (1, 1)]), "count overflow");
        assert!(!bad(4, 4, &[(3, 1)]));
    }

    #[test]
    fn quantiles_of_log_normal_latencies_stay_within_the_bucket_error() {
        let mut rng = SplitMix(7);
        for trial in 0..20 {
            // Latencies around 2 ms with a heavy tail, in microseconds.
            let mut values: Vec<u64> = (0..5_000)
                .map(|_| (7.6 + 1.2 * rng.normal()).exp() as u64)
                .collect();
            let h = of(&values);
            values.sort_unstable();
            for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
                let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
                let exact = values[rank - 1];
                let got = h.quantile(q).unwrap();
                assert!(
                    exact <= got && got <= (exact * 5).div_ceil(4).max(1),
                    "trial {trial} q {q}: exact {exact}, got {got}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn merge_is_associative_and_commutative(
            a in proptest::collection::vec(0u64..300_000_000, 0..50),
            b in proptest::collection::vec(0u64..300_000_000, 0..50),
            c in proptest::collection::vec(0u64..300_000_000, 0..50),
        ) {
            let (ha, hb, hc) = (of(&a), of(&b), of(&c));
            prop_assert_eq!(merged(&ha, &hb), merged(&hb, &ha));
            prop_assert_eq!(merged(&merged(&ha, &hb), &hc), merged(&ha, &merged(&hb, &hc)));
            let all: Vec<u64> = a.iter().chain(&b).chain(&c).copied().collect();
            prop_assert_eq!(merged(&merged(&ha, &hb), &hc), of(&all));
        }

        #[test]
        fn quantiles_bound_the_exact_nearest_rank_quantile(
            mut values in proptest::collection::vec(0u64..=BOUNDS[FINITE_BUCKETS - 1], 1..200),
            q in 0.0f64..=1.0,
        ) {
            let h = of(&values);
            values.sort_unstable();
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            let exact = values[rank - 1];
            let got = h.quantile(q).unwrap();
            prop_assert!(exact <= got && got <= (exact * 5).div_ceil(4).max(1), "exact {} got {}", exact, got);
        }

        #[test]
        fn cbor_round_trip_is_exact(values in proptest::collection::vec(any::<u64>(), 0..100)) {
            let h = of(&values);
            prop_assert_eq!(round_trip(&h), Ok(h));
        }
    }
}
