//! Indexing operators: `Gather`, `GatherElements`, `GatherND`, `ScatterElements`
//! (and the deprecated `Scatter`), `ScatterND`, `OneHot`, `NonZero`.
//!
//! Negative indices count from the end of their axis; an index out of range is an
//! error, never a read past the data.

use crate::ops::common::{
    axis_in, for_each_index, from_f64, from_i64, i64_tensor, ints, numel, strides, take,
};
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::Tensor;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "Gather" => gather,
        "GatherElements" => gather_elements,
        "GatherND" => gather_nd,
        "ScatterElements" | "Scatter" => scatter_elements,
        "ScatterND" => scatter_nd,
        "OneHot" => one_hot,
        "NonZero" => non_zero,
        _ => return None,
    };
    Some(k)
}

fn fix(i: i64, dim: usize) -> Result<usize, OpError> {
    let d = dim as i64;
    let v = if i < 0 { i + d } else { i };
    if v < 0 || v >= d {
        return Err(OpError::new(format!(
            "index {i} out of range for axis of {dim}"
        )));
    }
    Ok(v as usize)
}

fn gather(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, idx) = (i.tensor(0)?, i.tensor(1)?);
    let a = axis_in(n.attrs.int("axis", 0)?, x.rank())?;
    let ids = ints(idx)?;
    let dim = x.shape()[a];
    let outer = numel(&x.shape()[..a]);
    let inner = numel(&x.shape()[a + 1..]);
    let mut out_shape = x.shape()[..a].to_vec();
    out_shape.extend(idx.shape());
    out_shape.extend(&x.shape()[a + 1..]);
    let fixed: Vec<usize> = ids.iter().map(|&v| fix(v, dim)).collect::<Result<_, _>>()?;
    let mut flat = Vec::with_capacity(numel(&out_shape));
    for o in 0..outer {
        for &f in &fixed {
            let base = (o * dim + f) * inner;
            flat.extend((base..base + inner).map(|v| v as i64));
        }
    }
    one(take(x, &out_shape, flat)?)
}

fn gather_elements(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, idx) = (i.tensor(0)?, i.tensor(1)?);
    let a = axis_in(n.attrs.int("axis", 0)?, x.rank())?;
    if idx.rank() != x.rank() {
        return Err(OpError::new("indices must have the data's rank"));
    }
    let ids = ints(idx)?;
    let st = strides(x.shape());
    let mut flat = Vec::with_capacity(ids.len());
    let mut k = 0;
    let mut err = None;
    for_each_index(idx.shape(), |c| {
        let mut off = 0;
        for d in 0..c.len() {
            let v = if d == a {
                match fix(ids[k], x.shape()[a]) {
                    Ok(v) => v,
                    Err(e) => {
                        err = Some(e);
                        0
                    }
                }
            } else {
                c[d]
            };
            off += v * st[d];
        }
        flat.push(off as i64);
        k += 1;
    });
    if let Some(e) = err {
        return Err(e);
    }
    one(take(x, idx.shape(), flat)?)
}

fn gather_nd(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, idx) = (i.tensor(0)?, i.tensor(1)?);
    let b = usize::try_from(n.attrs.int("batch_dims", 0)?).unwrap_or(0);
    let q = idx.rank();
    let last = *idx
        .shape()
        .last()
        .ok_or_else(|| OpError::new("indices must have rank >= 1"))?;
    if b + last > x.rank() || b >= q {
        return Err(OpError::new("indices do not fit the data"));
    }
    let ids = ints(idx)?;
    let batch = numel(&x.shape()[..b]);
    let mut out_shape = idx.shape()[..q - 1].to_vec();
    out_shape.extend(&x.shape()[b + last..]);
    let slice = numel(&x.shape()[b + last..]);
    let per_batch_data = numel(&x.shape()[b..]);
    let st = strides(&x.shape()[b..]);
    let tuples = numel(&idx.shape()[..q - 1]);
    let per_batch_tuples = tuples.checked_div(batch).unwrap_or(0);
    let mut flat = Vec::with_capacity(tuples * slice);
    for t in 0..tuples {
        let bi = t.checked_div(per_batch_tuples).unwrap_or(0);
        let mut off = bi * per_batch_data;
        for d in 0..last {
            off += fix(ids[t * last + d], x.shape()[b + d])? * st[d];
        }
        flat.extend((off..off + slice).map(|v| v as i64));
    }
    one(take(x, &out_shape, flat)?)
}

/// Combines an existing value with an update under `reduction`.
fn combine(red: &str, old: f64, new: f64) -> f64 {
    match red {
        "add" => old + new,
        "mul" => old * new,
        "max" => old.max(new),
        "min" => old.min(new),
        _ => new,
    }
}

fn combine_i(red: &str, old: i64, new: i64) -> i64 {
    match red {
        "add" => old.wrapping_add(new),
        "mul" => old.wrapping_mul(new),
        "max" => old.max(new),
        "min" => old.min(new),
        _ => new,
    }
}

/// Applies (offset, update index) pairs to a copy of `x`.
fn scatter_apply(
    x: &Tensor,
    upd: &Tensor,
    pairs: &[(usize, usize)],
    red: &str,
) -> Result<Tensor, OpError> {
    if x.elem_type().is_float() {
        let mut v = x.to_f64_vec()?;
        let u = upd.to_f64_vec()?;
        for &(o, k) in pairs {
            v[o] = combine(red, v[o], u[k]);
        }
        return from_f64(x.elem_type(), x.shape(), v);
    }
    let mut v = x.to_i64_vec()?;
    let u = upd.to_i64_vec()?;
    for &(o, k) in pairs {
        v[o] = combine_i(red, v[o], u[k]);
    }
    from_i64(x.elem_type(), x.shape(), v)
}

fn scatter_elements(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, idx, upd) = (i.tensor(0)?, i.tensor(1)?, i.tensor(2)?);
    let a = axis_in(n.attrs.int("axis", 0)?, x.rank())?;
    let red = n.attrs.string("reduction", "none")?.to_owned();
    if idx.shape() != upd.shape() || idx.rank() != x.rank() {
        return Err(OpError::new(
            "indices and updates must agree with the data's rank",
        ));
    }
    let ids = ints(idx)?;
    let st = strides(x.shape());
    let mut pairs = Vec::with_capacity(ids.len());
    let mut k = 0;
    let mut err = None;
    for_each_index(idx.shape(), |c| {
        let mut off = 0;
        for d in 0..c.len() {
            let v = if d == a {
                fix(ids[k], x.shape()[a]).unwrap_or_else(|e| {
                    err = Some(e);
                    0
                })
            } else {
                c[d]
            };
            off += v * st[d];
        }
        pairs.push((off, k));
        k += 1;
    });
    if let Some(e) = err {
        return Err(e);
    }
    one(scatter_apply(x, upd, &pairs, &red)?)
}

fn scatter_nd(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, idx, upd) = (i.tensor(0)?, i.tensor(1)?, i.tensor(2)?);
    let red = n.attrs.string("reduction", "none")?.to_owned();
    let q = idx.rank();
    let last = *idx
        .shape()
        .last()
        .ok_or_else(|| OpError::new("indices must have rank >= 1"))?;
    if last > x.rank() {
        return Err(OpError::new("index tuples longer than the data's rank"));
    }
    let ids = ints(idx)?;
    let st = strides(x.shape());
    let slice = numel(&x.shape()[last..]);
    let tuples = numel(&idx.shape()[..q - 1]);
    if upd.len() != tuples * slice {
        return Err(OpError::new("updates have the wrong size"));
    }
    let mut pairs = Vec::with_capacity(tuples * slice);
    for t in 0..tuples {
        let mut off = 0;
        for d in 0..last {
            off += fix(ids[t * last + d], x.shape()[d])? * st[d];
        }
        for s in 0..slice {
            pairs.push((off + s, t * slice + s));
        }
    }
    one(scatter_apply(x, upd, &pairs, &red)?)
}

fn one_hot(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (idx, depth, values) = (i.tensor(0)?, i.tensor(1)?, i.tensor(2)?);
    let depth = crate::ops::common::scalar_f64(depth)? as i64;
    if depth <= 0 {
        return Err(OpError::new("depth must be positive"));
    }
    let d = depth as usize;
    let vals = values.to_f64_vec()?;
    let (off, on) = match vals[..] {
        [off, on] => (off, on),
        _ => return Err(OpError::new("values must hold [off, on]")),
    };
    let r = idx.rank();
    let a = axis_in(n.attrs.int("axis", -1)?, r + 1)?;
    let ids: Vec<i64> = idx.to_f64_vec()?.into_iter().map(|v| v as i64).collect();
    let outer = numel(&idx.shape()[..a]);
    let inner = numel(&idx.shape()[a..]);
    let mut out = vec![off; outer * d * inner];
    for o in 0..outer {
        for k in 0..inner {
            let mut v = ids[o * inner + k];
            if v < 0 {
                v += depth;
            }
            if (0..depth).contains(&v) {
                out[(o * d + v as usize) * inner + k] = on;
            }
        }
    }
    let mut shape = idx.shape()[..a].to_vec();
    shape.push(d);
    shape.extend(&idx.shape()[a..]);
    one(from_f64(values.elem_type(), &shape, out)?)
}

fn non_zero(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let v = x.to_f64_vec()?;
    let r = x.rank();
    let mut coords: Vec<Vec<i64>> = vec![Vec::new(); r.max(1)];
    let mut k = 0;
    let mut count = 0;
    if r == 0 {
        if v.first().is_some_and(|&v| v != 0.0) {
            coords[0].push(0);
            count = 1;
        }
        return one(i64_tensor(&[1, count], coords.concat())?);
    }
    for_each_index(x.shape(), |c| {
        if v[k] != 0.0 {
            for d in 0..r {
                coords[d].push(c[d] as i64);
            }
            count += 1;
        }
        k += 1;
    });
    one(i64_tensor(&[r, count], coords.concat())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attrs::Attrs;
    use crate::value::Value;

    fn info() -> NodeInfo {
        NodeInfo {
            attrs: Attrs::default(),
            opset: 13,
            outputs: 1,
        }
    }

    #[test]
    fn gather_accepts_negative_indices() {
        let x = Tensor::from_f32(&[3, 2], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let idx = Tensor::from_i64(&[2], vec![-1, 0]).unwrap();
        let vals = [Value::Tensor(x), Value::Tensor(idx)];
        let out = gather(
            &info(),
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        let t = out[0].as_tensor().unwrap();
        assert_eq!(t.shape(), &[2, 2]);
        assert_eq!(t.to_f32_vec().unwrap(), vec![5., 6., 1., 2.]);
    }

    #[test]
    fn gather_index_out_of_range_is_an_error() {
        let x = Tensor::from_f32(&[2], vec![1., 2.]).unwrap();
        let idx = Tensor::from_i64(&[1], vec![2]).unwrap();
        let vals = [Value::Tensor(x), Value::Tensor(idx)];
        assert!(gather(
            &info(),
            &Inputs {
                values: vals.iter().map(Some).collect()
            }
        )
        .is_err());
    }
}
