//! `Unique`: the distinct elements of a tensor, or distinct slices along an axis,
//! with first-occurrence indices, inverse indices and counts.
//!
//! Slices compare lexicographically over their row-major elements, floats as f64
//! (all NaNs equal and greatest) and integers as i64 (`uint64` order-preserved).
//! Values are gathered with [`take`], so every element type keeps its bits.

use std::cmp::Ordering;

use crate::ops::common::{axis_in, i64_tensor, numel, take};
use crate::ops::{Inputs, Kernel, NodeInfo, OpResult};
use crate::tensor::{ElemType, Tensor};
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "Unique" => unique,
        _ => return None,
    };
    Some(k)
}

/// The elements of every slice, in a form with a total order.
enum Keys {
    Float(Vec<f64>),
    Int(Vec<i64>),
}

impl Keys {
    fn of(x: &Tensor) -> candle_core::Result<Self> {
        Ok(match x.elem_type() {
            t if t.is_float() => Self::Float(x.to_f64_vec()?),
            // Flipping the sign bit maps u64 order onto i64 order.
            ElemType::U64 => Self::Int(x.to_i64_vec()?.into_iter().map(|v| v ^ i64::MIN).collect()),
            _ => Self::Int(x.to_i64_vec()?),
        })
    }

    /// Compares slices `a` and `b`, each `inner` runs of `len` apart.
    fn cmp(&self, g: &Geometry, a: usize, b: usize) -> Ordering {
        for o in 0..g.outer {
            for i in 0..g.inner {
                let (p, q) = ((o * g.len + a) * g.inner + i, (o * g.len + b) * g.inner + i);
                let c = match self {
                    Self::Float(v) => v[p]
                        .partial_cmp(&v[q])
                        .unwrap_or_else(|| v[p].is_nan().cmp(&v[q].is_nan())),
                    Self::Int(v) => v[p].cmp(&v[q]),
                };
                if c != Ordering::Equal {
                    return c;
                }
            }
        }
        Ordering::Equal
    }
}

/// The input seen as `outer x len x inner`, with slices along the middle.
struct Geometry {
    outer: usize,
    len: usize,
    inner: usize,
}

fn unique(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let sorted = n.attrs.int("sorted", 1)? != 0;
    let axis = n
        .attrs
        .opt_int("axis")?
        .map(|a| axis_in(a, x.rank()))
        .transpose()?;
    let g = match axis {
        Some(a) => Geometry {
            outer: numel(&x.shape()[..a]),
            len: x.shape()[a],
            inner: numel(&x.shape()[a + 1..]),
        },
        None => Geometry {
            outer: 1,
            len: x.len(),
            inner: 1,
        },
    };
    let keys = Keys::of(x)?;
    // A stable sort keeps equal slices in input order: each group starts with
    // its first occurrence.
    let mut order: Vec<usize> = (0..g.len).collect();
    order.sort_by(|&a, &b| keys.cmp(&g, a, b));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &s in &order {
        match groups.last_mut() {
            Some(grp) if keys.cmp(&g, grp[0], s) == Ordering::Equal => grp.push(s),
            _ => groups.push(vec![s]),
        }
    }
    if !sorted {
        groups.sort_by_key(|grp| grp[0]);
    }
    let firsts: Vec<usize> = groups.iter().map(|grp| grp[0]).collect();
    let mut inverse = vec![0i64; g.len];
    for (u, grp) in groups.iter().enumerate() {
        for &s in grp {
            inverse[s] = u as i64;
        }
    }
    let u = groups.len();
    let mut idx = Vec::with_capacity(g.outer * u * g.inner);
    for o in 0..g.outer {
        for &f in &firsts {
            let base = (o * g.len + f) * g.inner;
            idx.extend((base..base + g.inner).map(|v| v as i64));
        }
    }
    let y_shape = match axis {
        Some(a) => {
            let mut s = x.shape().to_vec();
            s[a] = u;
            s
        }
        None => vec![u],
    };
    let counts = groups.iter().map(|grp| grp.len() as i64).collect();
    Ok(vec![
        Value::Tensor(take(x, &y_shape, idx)?),
        Value::Tensor(i64_tensor(
            &[u],
            firsts.iter().map(|&f| f as i64).collect(),
        )?),
        Value::Tensor(i64_tensor(&[g.len], inverse)?),
        Value::Tensor(i64_tensor(&[u], counts)?),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attrs::{Attr, Attrs};

    fn run(attrs: &[(&str, Attr)], x: Tensor) -> Vec<Vec<i64>> {
        let mut a = Attrs::default();
        for (k, v) in attrs {
            a.set(k, v.clone());
        }
        let n = NodeInfo {
            attrs: a,
            opset: 11,
            outputs: 4,
        };
        let vals = [Value::Tensor(x)];
        let out = unique(
            &n,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        out.iter()
            .map(|v| v.as_tensor().unwrap().to_i64_vec().unwrap())
            .collect()
    }

    #[test]
    fn unique_sorts_by_default() {
        let x = Tensor::from_i64(&[2, 2], vec![1, 3, 2, 3]).unwrap();
        let out = run(&[], x);
        assert_eq!(out[0], vec![1, 2, 3]);
        assert_eq!(out[1], vec![0, 2, 1]);
        assert_eq!(out[2], vec![0, 2, 1, 2]);
        assert_eq!(out[3], vec![1, 1, 2]);
    }

    #[test]
    fn unsorted_unique_keeps_first_occurrence_order() {
        let x = Tensor::from_i64(&[6], vec![2, 1, 1, 3, 4, 3]).unwrap();
        let out = run(&[("sorted", Attr::Int(0))], x);
        assert_eq!(out[0], vec![2, 1, 3, 4]);
        assert_eq!(out[1], vec![0, 1, 3, 4]);
        assert_eq!(out[2], vec![0, 1, 1, 2, 3, 2]);
        assert_eq!(out[3], vec![1, 2, 2, 1]);
    }

    #[test]
    fn unique_along_an_axis_compares_whole_rows() {
        let x = Tensor::from_i64(&[3, 3], vec![1, 0, 0, 1, 0, 0, 2, 3, 4]).unwrap();
        let out = run(&[("axis", Attr::Int(0))], x);
        assert_eq!(out[0], vec![1, 0, 0, 2, 3, 4]);
        assert_eq!(out[2], vec![0, 0, 1]);
        assert_eq!(out[3], vec![2, 1]);
    }

    #[test]
    fn unique_rejects_an_axis_out_of_range() {
        let n = NodeInfo {
            attrs: {
                let mut a = Attrs::default();
                a.set("axis", Attr::Int(2));
                a
            },
            opset: 11,
            outputs: 1,
        };
        let vals = [Value::Tensor(Tensor::from_i64(&[2], vec![1, 2]).unwrap())];
        let i = Inputs {
            values: vals.iter().map(Some).collect(),
        };
        assert!(unique(&n, &i).is_err());
    }
}
