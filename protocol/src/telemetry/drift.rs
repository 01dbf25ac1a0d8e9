//! Data drift: live feature values counted over the baseline's bins, and the
//! statistics that compare those counts with the baseline.
//!
//! The agent keeps one [`FeatureRecorder`] per feature of a deployment's
//! [`DriftBaseline`](crate::manifest::DriftBaseline): a numeric value lands
//! in the baseline bin that holds it (bin `i` holds `edges[i] <= x <
//! edges[i+1]`, the last bin its top edge too, exactly as the hub's baseline
//! builder counts), or *below* the first edge, or *above* the last; a
//! categorical value lands on its category, or on *other* when the baseline
//! does not name it. Missing values are counted apart. The resulting
//! [`FeatureCounts`] travel in the window and merge by adding, so the hub
//! gets per-window and cumulative drift from the same data.
//!
//! [`FeatureDrift::compute`] compares counts with the baseline over the
//! *present* values: PSI, Jensen–Shannon distance and a KS statistic on the
//! binned CDFs, plus the missing and out-of-range rates. It does not decide
//! what is an alarm: the hub's alert rules do (default PSI > 0.2 for three
//! windows).
//!
//! Sample size matters. PSI over few rows is noisy: with the hub's 10
//! quantile bins and inputs drawn from the baseline distribution itself, PSI
//! exceeds 0.2 in about 45% of 50-row samples, 4% of 100-row samples, and
//! essentially never from 200 rows on (see the false-alarm test). Compare
//! counts merged over at least a few hundred rows (several windows, or the
//! cumulative counts), not a quiet window's handful.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::manifest::{FeatureBaseline, FeatureDistribution};

mod stats;

pub use stats::{compare, FeatureDrift, PSI_EPSILON};

/// The category under which a baseline counts the values it does not list
/// one by one (the hub keeps the most common categories and lumps the rest).
/// Observed values the baseline does not name are compared with it.
pub const OTHER_CATEGORY: &str = "__other__";

/// Drift counts that cannot be computed or merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DriftError {
    /// The baseline of a feature cannot bin values.
    #[error("drift baseline of feature {feature:?} is unusable: {reason}")]
    BadBaseline {
        /// The feature.
        feature: String,
        /// Why.
        reason: &'static str,
    },
    /// Counts do not have the shape of the baseline or of the other counts.
    #[error("drift counts of feature {feature:?} do not match the baseline's bins")]
    ShapeMismatch {
        /// The feature.
        feature: String,
    },
    /// Counts name a feature the baseline does not have.
    #[error("feature {0:?} is not in the drift baseline")]
    UnknownFeature(String),
}

/// One live value of a feature, as the agent extracts it from a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FeatureValue<'a> {
    /// The value is absent (or null).
    Missing,
    /// A number. NaN counts as missing, as it does in the baseline.
    Number(f64),
    /// A string. For a numeric feature it is parsed, and counts as missing
    /// when it is not a finite number; for a categorical one it is the category.
    Text(&'a str),
}

/// Values of one feature counted over the baseline's bins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureCounts {
    /// A numeric feature.
    Numeric {
        /// Values per baseline bin.
        // invariant: as many as the baseline's bins.
        bins: Vec<u64>,
        /// Values below the baseline's first edge.
        below: u64,
        /// Values above the baseline's last edge.
        above: u64,
        /// Missing values.
        missing: u64,
    },
    /// A categorical feature.
    Categorical {
        /// Values per category the baseline names, in the baseline's (sorted)
        /// order, [`OTHER_CATEGORY`] excluded.
        categories: Vec<u64>,
        /// Values of a category the baseline does not name.
        other: u64,
        /// Missing values.
        missing: u64,
    },
}

impl FeatureCounts {
    /// All values counted, missing included.
    pub fn total(&self) -> u64 {
        self.present().saturating_add(self.missing())
    }

    /// Values counted that were present.
    pub fn present(&self) -> u64 {
        match self {
            Self::Numeric {
                bins, below, above, ..
            } => sum(bins).saturating_add(*below).saturating_add(*above),
            Self::Categorical {
                categories, other, ..
            } => sum(categories).saturating_add(*other),
        }
    }

    /// Missing values.
    pub fn missing(&self) -> u64 {
        match self {
            Self::Numeric { missing, .. } | Self::Categorical { missing, .. } => *missing,
        }
    }

    /// Present values outside the baseline's support: below its first edge or
    /// above its last, or of a category it does not name.
    pub fn out_of_range(&self) -> u64 {
        match self {
            Self::Numeric { below, above, .. } => below.saturating_add(*above),
            Self::Categorical { other, .. } => *other,
        }
    }

    /// Number of bins (or named categories).
    pub fn bin_count(&self) -> usize {
        match self {
            Self::Numeric { bins, .. } => bins.len(),
            Self::Categorical { categories, .. } => categories.len(),
        }
    }

    /// Whether `other` counts over the same bins, so that the two can merge.
    pub fn same_shape(&self, other: &FeatureCounts) -> bool {
        match (self, other) {
            (Self::Numeric { bins: a, .. }, Self::Numeric { bins: b, .. }) => a.len() == b.len(),
            (Self::Categorical { categories: a, .. }, Self::Categorical { categories: b, .. }) => {
                a.len() == b.len()
            }
            _ => false,
        }
    }

    /// Adds `other`'s counts; the caller checks [`FeatureCounts::same_shape`]
    /// first. Counts of another shape are left out, and `false` is returned.
    pub fn merge(&mut self, other: &FeatureCounts) -> bool {
        if !self.same_shape(other) {
            return false;
        }
        match (self, other) {
            (
                Self::Numeric {
                    bins,
                    below,
                    above,
                    missing,
                },
                Self::Numeric {
                    bins: ob,
                    below: obe,
                    above: oab,
                    missing: om,
                },
            ) => {
                add_all(bins, ob);
                *below = below.saturating_add(*obe);
                *above = above.saturating_add(*oab);
                *missing = missing.saturating_add(*om);
            }
            (
                Self::Categorical {
                    categories,
                    other,
                    missing,
                },
                Self::Categorical {
                    categories: oc,
                    other: oo,
                    missing: om,
                },
            ) => {
                add_all(categories, oc);
                *other = other.saturating_add(*oo);
                *missing = missing.saturating_add(*om);
            }
            _ => return false,
        }
        true
    }
}

fn sum(v: &[u64]) -> u64 {
    v.iter().fold(0u64, |a, b| a.saturating_add(*b))
}

fn add_all(into: &mut [u64], from: &[u64]) {
    for (a, b) in into.iter_mut().zip(from) {
        *a = a.saturating_add(*b);
    }
}

/// A feature's counts with its name, as a window carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedFeature {
    /// Feature name, as in the baseline.
    pub name: String,
    /// The counts.
    pub counts: FeatureCounts,
}

/// How to bin a feature's values, prepared once from its baseline.
#[derive(Debug, Clone)]
enum Binning {
    Numeric {
        // invariant: finite, ascending, at least two.
        edges: Vec<f64>,
    },
    Categorical {
        // invariant: values are 0..index.len(), in the baseline's key order.
        index: HashMap<String, usize>,
    },
}

/// Counts one feature's live values over its baseline's bins (agent side).
#[derive(Debug, Clone)]
pub struct FeatureRecorder {
    name: String,
    binning: Binning,
    counts: FeatureCounts,
}

impl FeatureRecorder {
    /// A recorder for `baseline`'s bins, with nothing counted yet.
    pub fn new(baseline: &FeatureBaseline) -> Result<Self, DriftError> {
        let bad = |reason| DriftError::BadBaseline {
            feature: baseline.name.clone(),
            reason,
        };
        let (binning, counts) = match &baseline.distribution {
            FeatureDistribution::Numeric { edges, counts } => {
                if edges.len() < 2 || edges.len() != counts.len() + 1 {
                    return Err(bad("numeric baseline needs n + 1 edges for n >= 1 bins"));
                }
                if !edges.iter().all(|e| e.is_finite()) || edges.windows(2).any(|w| w[0] > w[1]) {
                    return Err(bad("numeric baseline edges are not finite and ascending"));
                }
                (
                    Binning::Numeric {
                        edges: edges.clone(),
                    },
                    FeatureCounts::Numeric {
                        bins: vec![0; counts.len()],
                        below: 0,
                        above: 0,
                        missing: 0,
                    },
                )
            }
            FeatureDistribution::Categorical { frequencies } => {
                let index: HashMap<String, usize> = frequencies
                    .keys()
                    .filter(|k| k.as_str() != OTHER_CATEGORY)
                    .enumerate()
                    .map(|(i, k)| (k.clone(), i))
                    .collect();
                let counts = FeatureCounts::Categorical {
                    categories: vec![0; index.len()],
                    other: 0,
                    missing: 0,
                };
                (Binning::Categorical { index }, counts)
            }
        };
        Ok(Self {
            name: baseline.name.clone(),
            binning,
            counts,
        })
    }

    /// The feature's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts one value.
    pub fn record(&mut self, value: FeatureValue<'_>) {
        match (&self.binning, &mut self.counts) {
            (
                Binning::Numeric { edges },
                FeatureCounts::Numeric {
                    bins,
                    below,
                    above,
                    missing,
                },
            ) => {
                let x = match value {
                    FeatureValue::Number(x) => x,
                    FeatureValue::Text(s) => s.trim().parse::<f64>().unwrap_or(f64::NAN),
                    FeatureValue::Missing => f64::NAN,
                };
                let slot = if x.is_nan() {
                    missing
                } else if edges.first().is_some_and(|lo| x < *lo) {
                    below
                } else if edges.last().is_some_and(|hi| x > *hi) {
                    above
                } else {
                    let i = edges
                        .partition_point(|e| *e <= x)
                        .saturating_sub(1)
                        .min(bins.len().saturating_sub(1));
                    match bins.get_mut(i) {
                        Some(b) => b,
                        None => missing,
                    }
                };
                *slot = slot.saturating_add(1);
            }
            (
                Binning::Categorical { index },
                FeatureCounts::Categorical {
                    categories,
                    other,
                    missing,
                },
            ) => {
                let formatted;
                let key = match value {
                    FeatureValue::Text(s) => Some(s),
                    FeatureValue::Number(x) if !x.is_nan() => {
                        formatted = x.to_string();
                        Some(formatted.as_str())
                    }
                    FeatureValue::Number(_) | FeatureValue::Missing => None,
                };
                let slot = match key {
                    None => missing,
                    Some(k) => match index.get(k).and_then(|i| categories.get_mut(*i)) {
                        Some(c) => c,
                        None => other,
                    },
                };
                *slot = slot.saturating_add(1);
            }
            // `new` builds the counts from the binning; the shapes always agree.
            _ => {}
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> &FeatureCounts {
        &self.counts
    }

    /// Hands out the counts so far, for a window, and starts again from zero.
    pub fn take(&mut self) -> ObservedFeature {
        let mut zero = self.counts.clone();
        match &mut zero {
            FeatureCounts::Numeric {
                bins,
                below,
                above,
                missing,
            } => {
                bins.iter_mut().for_each(|b| *b = 0);
                (*below, *above, *missing) = (0, 0, 0);
            }
            FeatureCounts::Categorical {
                categories,
                other,
                missing,
            } => {
                categories.iter_mut().for_each(|c| *c = 0);
                (*other, *missing) = (0, 0);
            }
        }
        ObservedFeature {
            name: self.name.clone(),
            counts: std::mem::replace(&mut self.counts, zero),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    pub(super) fn numeric(name: &str, edges: &[f64], counts: &[u64]) -> FeatureBaseline {
        FeatureBaseline {
            name: name.into(),
            missing_rate: 0.0,
            distribution: FeatureDistribution::Numeric {
                edges: edges.to_vec(),
                counts: counts.to_vec(),
            },
        }
    }

    /// A baseline built the way the hub's registry builds one: quantile edges
    /// over the sorted reference values, duplicates merged, rows per bin.
    pub(super) fn quantile_baseline(values: &[f64], bins: usize) -> FeatureBaseline {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = (0..=bins)
            .map(|q| sorted[((sorted.len() - 1) * q) / bins])
            .collect();
        edges.dedup();
        let mut b = numeric("x", &edges, &vec![0; edges.len() - 1]);
        let mut r = FeatureRecorder::new(&b).unwrap();
        for v in &sorted {
            r.record(FeatureValue::Number(*v));
        }
        let FeatureCounts::Numeric { bins, .. } = r.take().counts else {
            unreachable!()
        };
        b.distribution = FeatureDistribution::Numeric {
            edges,
            counts: bins,
        };
        b
    }

    pub(super) fn observe(
        b: &FeatureBaseline,
        values: impl IntoIterator<Item = f64>,
    ) -> FeatureCounts {
        let mut r = FeatureRecorder::new(b).unwrap();
        for v in values {
            r.record(FeatureValue::Number(v));
        }
        r.take().counts
    }

    #[test]
    fn numeric_values_land_in_the_hub_s_bins() {
        let b = numeric("x", &[0.0, 1.0, 2.5], &[4, 5]);
        let mut r = FeatureRecorder::new(&b).unwrap();
        for v in [
            FeatureValue::Number(-0.1),
            FeatureValue::Number(0.0),
            FeatureValue::Number(0.99),
            FeatureValue::Number(1.0),
            FeatureValue::Number(2.5),
            FeatureValue::Number(2.6),
            FeatureValue::Number(f64::NAN),
            FeatureValue::Number(f64::INFINITY),
            FeatureValue::Text(" 1.5 "),
            FeatureValue::Text("oops"),
            FeatureValue::Missing,
        ] {
            r.record(v);
        }
        assert_eq!(
            r.take().counts,
            FeatureCounts::Numeric {
                bins: vec![2, 3],
                below: 1,
                above: 2,
                missing: 3,
            }
        );
        // Taking resets.
        assert_eq!(r.counts().total(), 0);
    }

    #[test]
    fn categorical_values_land_on_their_category_or_other() {
        let b = FeatureBaseline {
            name: "country".into(),
            missing_rate: 0.0,
            distribution: FeatureDistribution::Categorical {
                frequencies: BTreeMap::from([
                    ("de".to_string(), 5),
                    ("fr".to_string(), 3),
                    ("7".to_string(), 1),
                    (OTHER_CATEGORY.to_string(), 1),
                ]),
            },
        };
        let mut r = FeatureRecorder::new(&b).unwrap();
        for v in [
            FeatureValue::Text("fr"),
            FeatureValue::Text("de"),
            FeatureValue::Text("de"),
            FeatureValue::Text("xx"),
            FeatureValue::Text(OTHER_CATEGORY),
            FeatureValue::Number(7.0),
            FeatureValue::Missing,
        ] {
            r.record(v);
        }
        // Sorted keys without `__other__`: "7", "de", "fr".
        assert_eq!(
            r.take().counts,
            FeatureCounts::Categorical {
                categories: vec![1, 2, 1],
                other: 2,
                missing: 1,
            }
        );
    }

    #[test]
    fn unusable_baselines_are_refused() {
        assert!(FeatureRecorder::new(&numeric("x", &[1.0], &[])).is_err());
        assert!(FeatureRecorder::new(&numeric("x", &[2.0, 1.0], &[1])).is_err());
        assert!(FeatureRecorder::new(&numeric("x", &[0.0, f64::NAN], &[1])).is_err());
        assert!(FeatureRecorder::new(&numeric("x", &[0.0, 1.0], &[1, 2])).is_err());
    }

    #[test]
    fn counts_merge_by_adding_and_refuse_another_shape() {
        let b = numeric("x", &[0.0, 1.0, 2.0], &[1, 1]);
        let mut a = observe(&b, [0.5, 1.5, 3.0]);
        let c = observe(&b, [0.5, -1.0]);
        assert!(a.merge(&c));
        assert_eq!(
            a,
            FeatureCounts::Numeric {
                bins: vec![2, 1],
                below: 1,
                above: 1,
                missing: 0
            }
        );
        let other = observe(&numeric("x", &[0.0, 1.0], &[1]), [0.5]);
        assert!(!a.same_shape(&other));
        assert!(!a.merge(&other));
        assert_eq!(a.total(), 5);
    }
}
