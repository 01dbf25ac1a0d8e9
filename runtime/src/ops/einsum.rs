//! `Einsum`: explicit (`ij,jk->ik`) and implicit (`ij,jk`) equations, with
//! ellipsis, by direct summation over the index space on the host.
//!
//! Design: correctness first; transformer exporters rarely emit Einsum on hot
//! paths, and the common cases could later be rewritten to MatMul at plan time.

use std::collections::BTreeMap;

use crate::ops::common::{expand_to, from_f64, numel, strides};
use crate::ops::{one, Inputs, NodeInfo, OpError, OpResult};

/// Runs the Einsum kernel.
pub(crate) fn einsum(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let eq: String = n
        .attrs
        .string("equation", "")?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let ts = i.tensors()?;
    let first = ts.first().ok_or_else(|| OpError::new("no inputs"))?;
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_owned(), Some(r.to_owned())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ts.len() {
        return Err(OpError::new("equation and inputs disagree in count"));
    }
    // Expand '...' into upper-case letters standing for broadcast dims.
    let mut ell_rank = 0;
    for (t, x) in terms.iter().zip(&ts) {
        if t.contains("...") {
            ell_rank = ell_rank.max(x.rank() + 3 - t.len());
        }
    }
    let ell: String = (0..ell_rank).map(|k| (b'A' + k as u8) as char).collect();
    let mut labels_per: Vec<Vec<char>> = Vec::new();
    let mut sizes: BTreeMap<char, usize> = BTreeMap::new();
    let mut counts: BTreeMap<char, usize> = BTreeMap::new();
    for (t, x) in terms.iter().zip(&ts) {
        let here = if t.contains("...") {
            let r = x.rank() + 3 - t.len();
            t.replace("...", &ell[ell_rank - r..])
        } else {
            (*t).to_owned()
        };
        let ls: Vec<char> = here.chars().collect();
        if ls.len() != x.rank() {
            return Err(OpError::new(format!(
                "term {t:?} does not match rank {}",
                x.rank()
            )));
        }
        for (d, &c) in ls.iter().enumerate() {
            let s = x.shape()[d];
            let e = sizes.entry(c).or_insert(s);
            if *e == 1 {
                *e = s;
            } else if s != 1 && *e != s {
                return Err(OpError::new(format!("label {c} has sizes {e} and {s}")));
            }
            *counts.entry(c).or_default() += 1;
        }
        labels_per.push(ls);
    }
    let out_labels: Vec<char> = match rhs {
        Some(r) => r.replace("...", &ell).chars().collect(),
        None => {
            let mut v: Vec<char> = ell.chars().collect();
            v.extend(
                counts
                    .iter()
                    .filter(|(c, &n)| n == 1 && c.is_ascii_lowercase())
                    .map(|(c, _)| *c),
            );
            v
        }
    };
    let all: Vec<char> = {
        let mut v = out_labels.clone();
        v.extend(sizes.keys().filter(|c| !out_labels.contains(c)));
        v
    };
    let dims: Vec<usize> = all
        .iter()
        .map(|c| {
            sizes
                .get(c)
                .copied()
                .ok_or_else(|| OpError::new(format!("unknown label {c}")))
        })
        .collect::<Result<_, _>>()?;
    // Values of each input broadcast to its own labels' full sizes.
    let mut inputs = Vec::new();
    for (ls, x) in labels_per.iter().zip(&ts) {
        let full: Vec<usize> = ls.iter().map(|c| sizes[c]).collect();
        let v = x.with_data(expand_to(x.candle(), &full)?)?.to_f64_vec()?;
        let st = strides(&full);
        let pos: Vec<usize> = ls
            .iter()
            .map(|c| all.iter().position(|a| a == c).unwrap_or(0))
            .collect();
        inputs.push((v, st, pos));
    }
    let out_dims = &dims[..out_labels.len()];
    let red_dims = &dims[out_labels.len()..];
    let mut out = vec![0f64; numel(out_dims)];
    let mut idx = vec![0usize; dims.len()];
    let red_n = numel(red_dims);
    for (o, slot) in out.iter_mut().enumerate() {
        let mut rem = o;
        for d in (0..out_dims.len()).rev() {
            idx[d] = rem % out_dims[d];
            rem /= out_dims[d];
        }
        let mut acc = 0.0;
        for r in 0..red_n {
            let mut rem = r;
            for d in (0..red_dims.len()).rev() {
                idx[out_dims.len() + d] = rem % red_dims[d];
                rem /= red_dims[d];
            }
            let mut prod = 1.0;
            for (v, st, pos) in &inputs {
                let off: usize = pos.iter().zip(st).map(|(&p, &s)| idx[p] * s).sum();
                prod *= v[off];
            }
            acc += prod;
        }
        *slot = acc;
    }
    one(from_f64(first.elem_type(), out_dims, out)?)
}
