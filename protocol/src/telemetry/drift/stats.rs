//! The statistics that compare a feature's live counts with its baseline:
//! PSI, Jensen–Shannon distance, a KS statistic on the binned CDFs, and the
//! missing and out-of-range rates (see the parent module for sample sizes).

use serde::{Deserialize, Serialize};

use super::{DriftError, FeatureCounts, ObservedFeature, OTHER_CATEGORY};
use crate::manifest::{DriftBaseline, FeatureBaseline, FeatureDistribution};

/// The share given to an empty bin when computing PSI, on either side: PSI
/// takes `ln(observed / expected)` per bin, which is infinite for an empty
/// bin. With 1e-4, a bin holding 1% of one side and nothing of the other adds
/// about 0.046 to PSI.
pub const PSI_EPSILON: f64 = 1e-4;

/// How far one feature's live values are from its baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    /// Feature name.
    pub name: String,
    /// Population stability index over the present values, with
    /// [`PSI_EPSILON`] for empty bins. Rules of thumb: < 0.1 stable,
    /// 0.1–0.2 moderate, > 0.2 significant drift.
    pub psi: f64,
    /// Jensen–Shannon distance (square root of the divergence, base 2), in
    /// `[0, 1]`.
    pub js: f64,
    /// Numeric features: the largest gap between the observed and baseline
    /// CDFs at the bin edges (the KS statistic on binned data), in `[0, 1]`.
    /// Categorical features have no order, so this is the total variation
    /// distance instead (the largest gap over any set of categories), the
    /// order-free analogue.
    pub ks: f64,
    /// Share of all values counted that were missing.
    pub missing_rate: f64,
    /// Share of the present values outside the baseline's support (see
    /// [`FeatureCounts::out_of_range`]). For a categorical baseline that lumps
    /// rare values under [`OTHER_CATEGORY`], those rare values count here too.
    pub out_of_range_rate: f64,
    /// All values counted, missing included.
    pub count: u64,
}

impl FeatureDrift {
    /// Compares `observed` with `baseline`. With no present value on either
    /// side, PSI, JS and KS are 0 (no evidence of drift); the rates are 0 when
    /// their denominator is.
    pub fn compute(
        baseline: &FeatureBaseline,
        observed: &FeatureCounts,
    ) -> Result<FeatureDrift, DriftError> {
        let mismatch = || DriftError::ShapeMismatch {
            feature: baseline.name.clone(),
        };
        // Both sides as distributions over the same ordered cells.
        let (expected, actual, ordered): (Vec<u64>, Vec<u64>, bool) =
            match (&baseline.distribution, observed) {
                (
                    FeatureDistribution::Numeric { counts, .. },
                    FeatureCounts::Numeric {
                        bins, below, above, ..
                    },
                ) => {
                    if counts.len() != bins.len() {
                        return Err(mismatch());
                    }
                    let expected = std::iter::once(0)
                        .chain(counts.iter().copied())
                        .chain(std::iter::once(0))
                        .collect();
                    let actual = std::iter::once(*below)
                        .chain(bins.iter().copied())
                        .chain(std::iter::once(*above))
                        .collect();
                    (expected, actual, true)
                }
                (
                    FeatureDistribution::Categorical { frequencies },
                    FeatureCounts::Categorical {
                        categories, other, ..
                    },
                ) => {
                    let named = frequencies
                        .iter()
                        .filter(|(k, _)| k.as_str() != OTHER_CATEGORY);
                    if named.clone().count() != categories.len() {
                        return Err(mismatch());
                    }
                    let base_other = frequencies.get(OTHER_CATEGORY).copied().unwrap_or(0);
                    let expected = named
                        .map(|(_, c)| *c)
                        .chain(std::iter::once(base_other))
                        .collect();
                    let actual = categories
                        .iter()
                        .copied()
                        .chain(std::iter::once(*other))
                        .collect();
                    (expected, actual, false)
                }
                _ => return Err(mismatch()),
            };
        let (psi, js, ks) = match (shares(&expected), shares(&actual)) {
            (Some(e), Some(a)) => (
                psi(&e, &a),
                js_distance(&e, &a),
                if ordered {
                    ks_binned(&e, &a)
                } else {
                    total_variation(&e, &a)
                },
            ),
            _ => (0.0, 0.0, 0.0),
        };
        let ratio = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        Ok(FeatureDrift {
            name: baseline.name.clone(),
            psi,
            js,
            ks,
            missing_rate: ratio(observed.missing(), observed.total()),
            out_of_range_rate: ratio(observed.out_of_range(), observed.present()),
            count: observed.total(),
        })
    }
}

/// Compares every observed feature with its baseline. Fails on a feature the
/// baseline lacks or counts of the wrong shape.
pub fn compare(
    baseline: &DriftBaseline,
    observed: &[ObservedFeature],
) -> Result<Vec<FeatureDrift>, DriftError> {
    observed
        .iter()
        .map(|o| {
            let b = baseline
                .features
                .iter()
                .find(|f| f.name == o.name)
                .ok_or_else(|| DriftError::UnknownFeature(o.name.clone()))?;
            FeatureDrift::compute(b, &o.counts)
        })
        .collect()
}

/// Counts as shares of their total; `None` when the total is 0.
fn shares(counts: &[u64]) -> Option<Vec<f64>> {
    let total: f64 = counts.iter().map(|c| *c as f64).sum();
    (total > 0.0).then(|| counts.iter().map(|c| *c as f64 / total).collect())
}

/// PSI = Σ (a − e) · ln(a / e), each share floored at [`PSI_EPSILON`].
fn psi(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(e, a)| {
            let (e, a) = (e.max(PSI_EPSILON), a.max(PSI_EPSILON));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// sqrt(JSD) with JSD = ½ KL(p‖m) + ½ KL(q‖m), m = (p + q) / 2, base 2.
fn js_distance(p: &[f64], q: &[f64]) -> f64 {
    let kl_to_mid = |x: f64, m: f64| if x > 0.0 { x * (x / m).log2() } else { 0.0 };
    let jsd: f64 = p
        .iter()
        .zip(q)
        .map(|(p, q)| {
            let m = (p + q) / 2.0;
            0.5 * kl_to_mid(*p, m) + 0.5 * kl_to_mid(*q, m)
        })
        .sum();
    jsd.clamp(0.0, 1.0).sqrt()
}

/// max over cell boundaries of |CDF_p − CDF_q|.
fn ks_binned(p: &[f64], q: &[f64]) -> f64 {
    let (mut cp, mut cq, mut worst) = (0.0f64, 0.0f64, 0.0f64);
    for (a, b) in p.iter().zip(q) {
        cp += a;
        cq += b;
        worst = worst.max((cp - cq).abs());
    }
    worst.min(1.0)
}

/// ½ Σ |p − q|.
fn total_variation(p: &[f64], q: &[f64]) -> f64 {
    (0.5 * p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum::<f64>()).min(1.0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::tests::{numeric, observe, quantile_baseline};
    use super::*;
    use crate::telemetry::testutil::SplitMix;

    #[test]
    fn an_identical_distribution_shows_no_drift() {
        let b = numeric("x", &[0.0, 1.0, 2.0, 3.0], &[10, 20, 30]);
        let o = FeatureCounts::Numeric {
            bins: vec![100, 200, 300],
            below: 0,
            above: 0,
            missing: 0,
        };
        let d = FeatureDrift::compute(&b, &o).unwrap();
        assert!(d.psi.abs() < 1e-12, "{d:?}");
        assert!(d.js.abs() < 1e-6, "{d:?}");
        assert!(d.ks.abs() < 1e-12, "{d:?}");
        assert_eq!(
            (d.missing_rate, d.out_of_range_rate, d.count),
            (0.0, 0.0, 600)
        );
    }

    #[test]
    fn a_hand_computed_example_matches() {
        // Baseline 50/50 over two bins; observed 25/75, plus one missing and
        // nothing out of range.
        // PSI = (.25-.5)·ln(.25/.5) + (.75-.5)·ln(.75/.5) = 0.173287 + 0.101366
        //     = 0.274653 (the empty below/above cells add (ε-ε)·ln 1 = 0).
        // JS: m = (.375, .625); KL(p‖m) = .25·log2(.25/.375) + .75·log2(.75/.625)
        //     = 0.051035; KL(q‖m) = .5·log2(.5/.375) + .5·log2(.5/.625) = 0.046555;
        //     JSD = 0.048795, distance = 0.220896.
        // KS: CDFs after bin 0 are .25 and .5: 0.25.
        let b = numeric("x", &[0.0, 1.0, 2.0], &[50, 50]);
        let o = FeatureCounts::Numeric {
            bins: vec![25, 75],
            below: 0,
            above: 0,
            missing: 1,
        };
        let d = FeatureDrift::compute(&b, &o).unwrap();
        assert!((d.psi - 0.274_653).abs() < 1e-6, "{d:?}");
        assert!((d.js - 0.220_896).abs() < 1e-6, "{d:?}");
        assert!((d.ks - 0.25).abs() < 1e-12, "{d:?}");
        assert!((d.missing_rate - 1.0 / 101.0).abs() < 1e-12);
        assert_eq!(d.count, 101);
    }

    #[test]
    fn out_of_range_values_count_as_drift_and_as_a_rate() {
        let b = numeric("x", &[0.0, 1.0, 2.0], &[50, 50]);
        let o = FeatureCounts::Numeric {
            bins: vec![40, 40],
            below: 0,
            above: 20,
            missing: 0,
        };
        let d = FeatureDrift::compute(&b, &o).unwrap();
        assert!((d.out_of_range_rate - 0.2).abs() < 1e-12);
        assert!(d.psi > 0.2 && d.ks > 0.19 && d.js > 0.2, "{d:?}");
    }

    #[test]
    fn categorical_drift_uses_total_variation_for_ks() {
        let b = FeatureBaseline {
            name: "c".into(),
            missing_rate: 0.0,
            distribution: FeatureDistribution::Categorical {
                frequencies: BTreeMap::from([("a".to_string(), 50), ("b".to_string(), 50)]),
            },
        };
        let o = FeatureCounts::Categorical {
            categories: vec![50, 30],
            other: 20,
            missing: 0,
        };
        let d = FeatureDrift::compute(&b, &o).unwrap();
        assert!((d.ks - 0.2).abs() < 1e-12, "{d:?}");
        assert!((d.out_of_range_rate - 0.2).abs() < 1e-12);
        assert!(d.psi > 0.2, "{d:?}");
        let wrong = FeatureCounts::Categorical {
            categories: vec![1],
            other: 0,
            missing: 0,
        };
        assert!(FeatureDrift::compute(&b, &wrong).is_err());
    }

    #[test]
    fn no_present_values_mean_no_evidence_of_drift() {
        let b = numeric("x", &[0.0, 1.0], &[5]);
        let o = FeatureCounts::Numeric {
            bins: vec![0],
            below: 0,
            above: 0,
            missing: 7,
        };
        let d = FeatureDrift::compute(&b, &o).unwrap();
        assert_eq!((d.psi, d.js, d.ks, d.missing_rate), (0.0, 0.0, 0.0, 1.0));
    }

    #[test]
    fn compare_refuses_a_feature_the_baseline_lacks() {
        let baseline = DriftBaseline {
            rows: 2,
            features: vec![numeric("x", &[0.0, 1.0], &[2])],
        };
        let ok = ObservedFeature {
            name: "x".into(),
            counts: observe(&baseline.features[0], [0.5]),
        };
        assert_eq!(
            compare(&baseline, std::slice::from_ref(&ok)).unwrap().len(),
            1
        );
        let unknown = ObservedFeature {
            name: "y".into(),
            ..ok
        };
        assert_eq!(
            compare(&baseline, &[unknown]),
            Err(DriftError::UnknownFeature("y".into()))
        );
    }

    #[test]
    fn a_shifted_distribution_shows_drift() {
        let mut rng = SplitMix(11);
        let reference: Vec<f64> = (0..10_000).map(|_| rng.normal()).collect();
        let b = quantile_baseline(&reference, 10);
        let shifted = observe(&b, (0..1_000).map(|_| rng.normal() + 1.0));
        let d = FeatureDrift::compute(&b, &shifted).unwrap();
        assert!(d.psi > 0.2, "{d:?}");
        assert!(d.ks > 0.3 && d.js > 0.2, "{d:?}");
    }

    /// Measures the false-alarm rate of the default rule's threshold: samples
    /// of 200 and 1,000 rows drawn from the same distribution as a 10,000-row
    /// reference, over 10 quantile bins. PSI then behaves like χ²(9)/n (mean
    /// about 0.01 at 1,000 rows), so PSI > 0.2 should essentially never happen.
    #[test]
    fn samples_from_the_baseline_distribution_rarely_exceed_psi_0_2() {
        let mut rng = SplitMix(2024);
        let reference: Vec<f64> = (0..10_000).map(|_| rng.normal()).collect();
        let b = quantile_baseline(&reference, 10);
        let trials = 200;
        for rows in [200, 1_000] {
            let mut alarms = 0;
            let mut worst = 0.0f64;
            for _ in 0..trials {
                let window = observe(&b, (0..rows).map(|_| rng.normal()));
                let d = FeatureDrift::compute(&b, &window).unwrap();
                worst = worst.max(d.psi);
                if d.psi > 0.2 {
                    alarms += 1;
                }
            }
            let rate = alarms as f64 / trials as f64;
            eprintln!(
                "{rows} rows: false alarms {alarms}/{trials} ({rate:.3}), worst PSI {worst:.4}"
            );
            assert!(
                rate <= 0.01,
                "{rows} rows: false-alarm rate {rate}, worst PSI {worst}"
            );
        }
    }
}
