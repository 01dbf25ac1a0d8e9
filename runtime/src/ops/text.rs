//! Text features: `TfIdfVectorizer` over integer token ids.
//!
//! The n-gram pool is read from the attributes on every call; pools are small next
//! to the inputs. String tokens (`pool_strings`) are not supported: this executor
//! has no string tensors.

use std::collections::HashMap;

use crate::ops::common::from_f64;
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::ElemType;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "TfIdfVectorizer" => tfidf,
        _ => return None,
    };
    Some(k)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Raw counts.
    Tf,
    /// 1 for a present n-gram, times its weight.
    Idf,
    /// Counts times weights.
    TfIdf,
}

/// The pool decoded: each n-gram (as its token ids) to its pool position.
struct Pool {
    grams: HashMap<Vec<i64>, usize>,
    /// Output coordinate of each pool position.
    indexes: Vec<usize>,
    weights: Vec<f64>,
    /// The longest n-gram length the pool has a section for.
    longest: usize,
}

impl Pool {
    fn from_attrs(n: &NodeInfo) -> Result<Self, OpError> {
        if n.attrs.has("pool_strings") {
            return Err(OpError::new(
                "TfIdfVectorizer with pool_strings needs string tensors, which are not supported",
            ));
        }
        let pool = n
            .attrs
            .ints("pool_int64s")?
            .ok_or_else(|| OpError::new("pool_int64s is required"))?;
        let counts = n.attrs.ints("ngram_counts")?.unwrap_or(&[]);
        let indexes: Vec<usize> = n
            .attrs
            .ints("ngram_indexes")?
            .unwrap_or(&[])
            .iter()
            .map(|&v| {
                usize::try_from(v).map_err(|_| OpError::new(format!("negative ngram index {v}")))
            })
            .collect::<Result<_, _>>()?;
        let mut grams = HashMap::new();
        let mut positions = 0;
        // ngram_counts[k] is where the (k + 1)-grams start in the pool (CSR style).
        for (k, &start) in counts.iter().enumerate() {
            let end = counts.get(k + 1).copied().unwrap_or(pool.len() as i64);
            let (start, end) = match (usize::try_from(start), usize::try_from(end)) {
                (Ok(s), Ok(e)) if s <= e && e <= pool.len() => (s, e),
                _ => {
                    return Err(OpError::new(format!(
                        "ngram_counts {counts:?} do not partition a pool of {}",
                        pool.len()
                    )))
                }
            };
            let len = k + 1;
            if (end - start) % len != 0 {
                return Err(OpError::new(format!(
                    "the {len}-gram section of the pool is not a whole number of {len}-grams"
                )));
            }
            for gram in pool[start..end].chunks(len) {
                grams.insert(gram.to_vec(), positions);
                positions += 1;
            }
        }
        if positions != indexes.len() {
            return Err(OpError::new(format!(
                "{positions} n-grams in the pool but {} ngram_indexes",
                indexes.len()
            )));
        }
        let weights = match n.attrs.floats("weights")? {
            Some(w) if !w.is_empty() => {
                if w.len() != indexes.len() {
                    return Err(OpError::new("weights and ngram_indexes differ in length"));
                }
                w.iter().map(|&v| f64::from(v)).collect()
            }
            _ => vec![1.0; indexes.len()],
        };
        Ok(Self {
            grams,
            indexes,
            weights,
            longest: counts.len(),
        })
    }
}

fn tfidf(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    if !matches!(x.elem_type(), ElemType::I32 | ElemType::I64) {
        return Err(OpError::new(format!(
            "TfIdfVectorizer needs int32 or int64 tokens, got {}",
            x.elem_type()
        )));
    }
    let mode = match n.attrs.string("mode", "")? {
        "TF" => Mode::Tf,
        "IDF" => Mode::Idf,
        "TFIDF" => Mode::TfIdf,
        m => {
            return Err(OpError::new(format!(
                "mode must be TF, IDF or TFIDF, got {m:?}"
            )))
        }
    };
    let min_len = n.attrs.int("min_gram_length", 0)?;
    let max_len = n.attrs.int("max_gram_length", 0)?;
    let max_skip = n.attrs.int("max_skip_count", 0)?;
    if min_len < 1 || max_len < min_len || max_skip < 0 {
        return Err(OpError::new(format!(
            "need 1 <= min_gram_length <= max_gram_length and max_skip_count >= 0, got {min_len}, {max_len}, {max_skip}"
        )));
    }
    let (min_len, max_len, max_skip) = (min_len as usize, max_len as usize, max_skip as usize);
    let pool = Pool::from_attrs(n)?;
    let width = pool.indexes.iter().max().map_or(0, |m| m + 1);
    let (rows, cols, out_shape) = match *x.shape() {
        [c] => (1, c, vec![width]),
        [r, c] => (r, c, vec![r, width]),
        ref s => {
            return Err(OpError::new(format!(
                "TfIdfVectorizer input must be 1-D or 2-D, got {s:?}"
            )))
        }
    };
    // Grams longer than the pool's longest, or skips past the row, match nothing.
    let max_len = max_len.min(pool.longest);
    let max_skip = max_skip.min(cols);
    let tokens = x.to_i64_vec()?;
    let mut out = vec![0.0; rows * width];
    let mut gram = Vec::with_capacity(max_len);
    for r in 0..rows {
        let row = &tokens[r * cols..(r + 1) * cols];
        let mut counts = vec![0u64; pool.indexes.len()];
        for len in min_len..=max_len {
            // A 1-gram is the same whatever the skip: count it once.
            let skips = if len == 1 { 0 } else { max_skip };
            for skip in 0..=skips {
                let stride = skip + 1;
                let span = (len - 1).saturating_mul(stride);
                for start in 0..cols.saturating_sub(span) {
                    gram.clear();
                    gram.extend((0..len).map(|k| row[start + k * stride]));
                    if let Some(&p) = pool.grams.get(&gram) {
                        counts[p] += 1;
                    }
                }
            }
        }
        for (p, &c) in counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let v = match mode {
                Mode::Tf => c as f64,
                Mode::Idf => pool.weights[p],
                Mode::TfIdf => c as f64 * pool.weights[p],
            };
            out[r * width + pool.indexes[p]] = v;
        }
    }
    one(from_f64(ElemType::F32, &out_shape, out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attrs::{Attr, Attrs};
    use crate::tensor::Tensor;
    use crate::value::Value;

    fn info(mode: &str, min: i64, max: i64, skip: i64) -> NodeInfo {
        let mut a = Attrs::default();
        a.set("mode", Attr::String(mode.into()));
        a.set("min_gram_length", Attr::Int(min));
        a.set("max_gram_length", Attr::Int(max));
        a.set("max_skip_count", Attr::Int(skip));
        a.set("ngram_counts", Attr::Ints(vec![0, 4]));
        a.set("ngram_indexes", Attr::Ints((0..7).collect()));
        a.set(
            "pool_int64s",
            Attr::Ints(vec![2, 3, 5, 4, 5, 6, 7, 8, 6, 7]),
        );
        NodeInfo {
            attrs: a,
            opset: 9,
            outputs: 1,
        }
    }

    fn run(n: &NodeInfo, x: Tensor) -> Result<Tensor, OpError> {
        let vals = [Value::Tensor(x)];
        let out = tfidf(
            n,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )?;
        Ok(out[0].as_tensor().unwrap().clone())
    }

    fn tokens(shape: &[usize], v: Vec<i64>) -> Tensor {
        Tensor::from_i64_as(ElemType::I32, shape, v).unwrap()
    }

    #[test]
    fn bigrams_without_skips_are_adjacent_pairs() {
        let x = tokens(&[12], vec![1, 1, 3, 3, 3, 7, 8, 6, 7, 5, 6, 8]);
        let t = run(&info("TF", 2, 2, 0), x).unwrap();
        assert_eq!(t.to_f32_vec().unwrap(), vec![0., 0., 0., 0., 1., 1., 1.]);
    }

    #[test]
    fn skips_reach_further_and_unigrams_count_once_per_row() {
        let x = tokens(&[2, 6], vec![1, 1, 3, 3, 3, 7, 8, 6, 7, 5, 6, 8]);
        let t = run(&info("TF", 1, 2, 5), x).unwrap();
        assert_eq!(t.shape(), &[2, 7]);
        let want = [0., 3., 0., 0., 0., 0., 0., 0., 0., 1., 0., 1., 1., 1.];
        assert_eq!(t.to_f32_vec().unwrap(), want);
    }

    #[test]
    fn idf_mode_caps_counts_at_one() {
        let x = tokens(&[6], vec![3, 3, 3, 2, 9, 9]);
        let t = run(&info("IDF", 1, 1, 0), x).unwrap();
        assert_eq!(&t.to_f32_vec().unwrap()[..2], &[1., 1.]);
    }

    #[test]
    fn an_unknown_mode_is_rejected() {
        let x = tokens(&[2], vec![1, 2]);
        assert!(run(&info("BM25", 1, 1, 0), x).is_err());
    }

    #[test]
    fn float_tokens_are_rejected() {
        let x = Tensor::from_f32(&[2], vec![1., 2.]).unwrap();
        assert!(run(&info("TF", 1, 1, 0), x).is_err());
    }
}
