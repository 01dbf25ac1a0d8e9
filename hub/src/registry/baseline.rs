//! The drift baseline: a reference dataset (CSV with a header row) summarised
//! per feature, for agents to compare live inputs against.
//!
//! A column is numeric when every non-missing cell parses as a finite number;
//! it gets up to [`NUMERIC_BINS`] quantile bins (edges from the sorted values,
//! duplicates merged) and the row count per bin. Other columns are categorical:
//! the frequency of each of the [`MAX_CATEGORIES`] most common values, the rest
//! counted under `__other__`. Empty cells, `NA`, `NaN` and `null` are missing.

use std::collections::{BTreeMap, HashMap};

use flotilla_protocol::manifest::{DriftBaseline, FeatureBaseline, FeatureDistribution};

/// Quantile bins per numeric feature.
pub const NUMERIC_BINS: usize = 10;
/// Categories kept per categorical feature.
pub const MAX_CATEGORIES: usize = 64;
/// Largest reference dataset accepted, in bytes: the summary keeps every
/// numeric value while it computes quantiles, so memory is bounded by a few
/// times this.
pub const MAX_DATASET_BYTES: u64 = 256 * 1024 * 1024;
/// Columns accepted.
pub const MAX_COLUMNS: usize = 4096;

/// Why a dataset could not be summarised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BaselineError {
    /// The CSV is malformed.
    #[error("reference dataset: {0}")]
    Csv(String),
    /// It has no header or no rows.
    #[error("reference dataset has no {0}")]
    Empty(&'static str),
    /// It has too many columns.
    #[error("reference dataset has {0} columns; at most {MAX_COLUMNS} are accepted")]
    TooWide(usize),
}

fn is_missing(cell: &str) -> bool {
    matches!(cell.trim(), "" | "NA" | "NaN" | "nan" | "null" | "NULL")
}

/// Summarises a CSV dataset.
pub fn from_csv(data: &[u8]) -> Result<DriftBaseline, BaselineError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(data);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| BaselineError::Csv(e.to_string()))?
        .iter()
        .map(str::to_owned)
        .collect();
    if headers.is_empty() || headers.iter().all(String::is_empty) {
        return Err(BaselineError::Empty("header row"));
    }
    if headers.len() > MAX_COLUMNS {
        return Err(BaselineError::TooWide(headers.len()));
    }
    let n = headers.len();
    let mut numbers: Vec<Option<Vec<f64>>> = vec![Some(Vec::new()); n];
    let mut categories: Vec<HashMap<String, u64>> = vec![HashMap::new(); n];
    let mut missing = vec![0u64; n];
    let mut rows = 0u64;
    for record in reader.records() {
        let record = record.map_err(|e| BaselineError::Csv(e.to_string()))?;
        rows += 1;
        for (i, cell) in record.iter().enumerate() {
            if is_missing(cell) {
                missing[i] += 1;
                continue;
            }
            if let Some(nums) = &mut numbers[i] {
                match cell.trim().parse::<f64>() {
                    Ok(x) if x.is_finite() => nums.push(x),
                    _ => numbers[i] = None,
                }
            }
            // Categories are tracked for every column until it proves numeric;
            // cap the map so a high-cardinality column cannot exhaust memory.
            let cats = &mut categories[i];
            if let Some(c) = cats.get_mut(cell) {
                *c += 1;
            } else if cats.len() < 100_000 {
                cats.insert(cell.to_string(), 1);
            } else {
                *cats.entry("__other__".into()).or_insert(0) += 1;
            }
        }
    }
    if rows == 0 {
        return Err(BaselineError::Empty("rows"));
    }
    let features = headers
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let present = rows - missing[i];
            let distribution = match numbers[i].take() {
                Some(mut nums) if !nums.is_empty() => numeric(&mut nums),
                _ => categorical(std::mem::take(&mut categories[i]), present),
            };
            FeatureBaseline {
                name,
                missing_rate: missing[i] as f64 / rows as f64,
                distribution,
            }
        })
        .collect();
    Ok(DriftBaseline { rows, features })
}

fn numeric(nums: &mut [f64]) -> FeatureDistribution {
    nums.sort_by(|a, b| a.total_cmp(b));
    let mut edges: Vec<f64> = (0..=NUMERIC_BINS)
        .map(|q| nums[((nums.len() - 1) * q) / NUMERIC_BINS])
        .collect();
    edges.dedup();
    if edges.len() == 1 {
        edges.push(edges[0]);
    }
    let mut counts = vec![0u64; edges.len() - 1];
    for x in nums.iter() {
        // Bin i holds edges[i] <= x < edges[i+1]; the last bin includes its top edge.
        let i = edges
            .partition_point(|e| e <= x)
            .saturating_sub(1)
            .min(counts.len() - 1);
        counts[i] += 1;
    }
    FeatureDistribution::Numeric { edges, counts }
}

fn categorical(cats: HashMap<String, u64>, present: u64) -> FeatureDistribution {
    let mut sorted: Vec<(String, u64)> = cats.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut frequencies: BTreeMap<String, u64> =
        sorted.iter().take(MAX_CATEGORIES).cloned().collect();
    let kept: u64 = frequencies.values().sum();
    if kept < present {
        *frequencies.entry("__other__".into()).or_insert(0) += present - kept;
    }
    FeatureDistribution::Categorical { frequencies }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_and_categorical_columns_are_summarised() {
        let mut csv = String::from("amount,country,score\n");
        for i in 0..100 {
            let country = if i % 4 == 0 { "FR" } else { "DE" };
            let score = if i % 10 == 0 {
                String::new()
            } else {
                format!("{}", i as f64 / 100.0)
            };
            csv += &format!("{i},{country},{score}\n");
        }
        let b = from_csv(csv.as_bytes()).unwrap();
        assert_eq!(b.rows, 100);
        let amount = &b.features[0];
        match &amount.distribution {
            FeatureDistribution::Numeric { edges, counts } => {
                assert_eq!(edges.first(), Some(&0.0));
                assert_eq!(edges.last(), Some(&99.0));
                assert_eq!(counts.iter().sum::<u64>(), 100);
                assert_eq!(counts.len() + 1, edges.len());
            }
            other => panic!("{other:?}"),
        }
        match &b.features[1].distribution {
            FeatureDistribution::Categorical { frequencies } => {
                assert_eq!(frequencies["FR"], 25);
                assert_eq!(frequencies["DE"], 75);
            }
            other => panic!("{other:?}"),
        }
        assert!((b.features[2].missing_rate - 0.1).abs() < 1e-9);
    }

    #[test]
    fn a_constant_column_gets_one_bin() {
        let b = from_csv(b"x\n5\n5\n5\n").unwrap();
        assert_eq!(
            b.features[0].distribution,
            FeatureDistribution::Numeric {
                edges: vec![5.0, 5.0],
                counts: vec![3]
            }
        );
    }

    #[test]
    fn malformed_datasets_are_rejected_with_a_reason() {
        assert!(matches!(from_csv(b"a,b\n1\n"), Err(BaselineError::Csv(_))));
        assert!(matches!(
            from_csv(b"a,b\n"),
            Err(BaselineError::Empty("rows"))
        ));
        assert!(from_csv(b"").is_err());
    }
}
