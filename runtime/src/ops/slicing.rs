//! Operators that cut tensors apart or join and extend them: `Concat`, `Split`,
//! `Slice`, `Pad`, `Tile`.
//!
//! Index arithmetic is done on the host and the data moved with one candle
//! `index_select` ([`take`]), so every element type works the same way.

use crate::ops::common::{axis_in, for_each_index, full, ints, like, numel, strides, take};
use crate::ops::{Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::Tensor;
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "Concat" => concat,
        "Split" => split,
        "Slice" => slice,
        "Pad" => pad,
        "Tile" => tile,
        _ => return None,
    };
    Some(k)
}

fn concat(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let ts = i.tensors()?;
    let first = ts.first().ok_or_else(|| OpError::new("no inputs"))?;
    let a = axis_in(n.attrs.int("axis", 0)?, first.rank())?;
    let parts: Vec<&candle_core::Tensor> = ts
        .iter()
        .filter(|t| t.shape().get(a) != Some(&0) || ts.len() == 1)
        .map(|t| t.candle())
        .collect();
    for t in &ts {
        if t.rank() != first.rank() || t.elem_type() != first.elem_type() {
            return Err(OpError::new("inputs differ in rank or element type"));
        }
    }
    if parts.is_empty() {
        return Ok(vec![Value::Tensor((*first).clone())]);
    }
    Ok(vec![Value::Tensor(like(
        first,
        candle_core::Tensor::cat(&parts, a)?,
    )?)])
}

fn split(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let a = axis_in(n.attrs.int("axis", 0)?, x.rank())?;
    let dim = x.shape()[a];
    let sizes: Vec<usize> = if let Some(s) = i.opt(1)? {
        ints(s)?.into_iter().map(|v| v.max(0) as usize).collect()
    } else if let Some(s) = n.attrs.ints("split")? {
        s.iter().map(|&v| v.max(0) as usize).collect()
    } else {
        let parts = match n.attrs.opt_int("num_outputs")? {
            Some(p) => usize::try_from(p).unwrap_or(0),
            None => n.outputs,
        };
        if parts == 0 {
            return Err(OpError::new("no outputs to split into"));
        }
        let each = dim.div_ceil(parts);
        (0..parts)
            .map(|k| each.min(dim.saturating_sub(k * each)))
            .collect()
    };
    if sizes.iter().sum::<usize>() != dim {
        return Err(OpError::new(format!(
            "split sizes {sizes:?} do not add up to {dim}"
        )));
    }
    let mut start = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for s in sizes {
        out.push(Value::Tensor(like(
            x,
            x.candle().narrow(a, start, s)?.contiguous()?,
        )?));
        start += s;
    }
    Ok(out)
}

/// Start/end/axes/steps normalised into per-axis index lists.
fn slice_indices(
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<Vec<i64>>,
    steps: Option<Vec<i64>>,
) -> Result<Vec<Vec<usize>>, OpError> {
    let r = shape.len();
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(OpError::new(
            "starts, ends, axes and steps differ in length",
        ));
    }
    let mut per_axis: Vec<Vec<usize>> = shape.iter().map(|&d| (0..d).collect()).collect();
    for k in 0..starts.len() {
        let a = axis_in(axes[k], r)?;
        let d = shape[a] as i64;
        let step = steps[k];
        if step == 0 {
            return Err(OpError::new("slice step 0"));
        }
        let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
        let (s, e) = (norm(starts[k]), norm(ends[k]));
        let mut idx = Vec::new();
        if step > 0 {
            let (s, e) = (s.clamp(0, d), e.clamp(0, d));
            let mut v = s;
            while v < e {
                idx.push(v as usize);
                v += step;
            }
        } else {
            let (s, e) = (s.clamp(0, d - 1), e.clamp(-1, d - 1));
            let mut v = s;
            while v > e {
                idx.push(v as usize);
                v += step;
            }
        }
        per_axis[a] = idx;
    }
    Ok(per_axis)
}

/// Selects `per_axis[d]` along every axis `d` of `x`.
pub(crate) fn select(x: &Tensor, per_axis: &[Vec<usize>]) -> Result<Tensor, OpError> {
    let out_shape: Vec<usize> = per_axis.iter().map(Vec::len).collect();
    let st = strides(x.shape());
    let mut idx = Vec::with_capacity(numel(&out_shape));
    for_each_index(&out_shape, |c| {
        let mut off = 0;
        for (d, &ci) in c.iter().enumerate() {
            off += per_axis[d][ci] * st[d];
        }
        idx.push(off as i64);
    });
    take(x, &out_shape, idx)
}

fn slice(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let per_axis = if n.opset < 10 {
        let starts = n.attrs.ints("starts")?.unwrap_or(&[]).to_vec();
        let ends = n.attrs.ints("ends")?.unwrap_or(&[]).to_vec();
        let axes = n.attrs.ints("axes")?.map(<[i64]>::to_vec);
        slice_indices(x.shape(), &starts, &ends, axes, None)?
    } else {
        let starts = ints(i.tensor(1)?)?;
        let ends = ints(i.tensor(2)?)?;
        let axes = i.opt(3)?.map(ints).transpose()?;
        let steps = i.opt(4)?.map(ints).transpose()?;
        slice_indices(x.shape(), &starts, &ends, axes, steps)?
    };
    Ok(vec![Value::Tensor(select(x, &per_axis)?)])
}

fn pad(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let r = x.rank();
    let (pads, value) = if n.opset < 11 {
        let p = n
            .attrs
            .ints("pads")?
            .or(n.attrs.ints("paddings")?)
            .unwrap_or(&[])
            .to_vec();
        (p, f64::from(n.attrs.float("value", 0.0)?))
    } else {
        let p = ints(i.tensor(1)?)?;
        let v = match i.opt(2)? {
            Some(t) if !t.is_empty() => t.to_f64_vec()?[0],
            _ => 0.0,
        };
        (p, v)
    };
    let axes: Vec<usize> = match i.opt(3)? {
        Some(a) => ints(a)?
            .into_iter()
            .map(|a| axis_in(a, r))
            .collect::<Result<_, _>>()?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(OpError::new(format!(
            "pads has {} values for {} axes",
            pads.len(),
            axes.len()
        )));
    }
    let mut before = vec![0i64; r];
    let mut after = vec![0i64; r];
    for (k, &a) in axes.iter().enumerate() {
        before[a] = pads[k];
        after[a] = pads[k + axes.len()];
    }
    let mode = n.attrs.string("mode", "constant")?;
    let in_shape = x.shape();
    let mut out_shape = Vec::with_capacity(r);
    for d in 0..r {
        let s = in_shape[d] as i64 + before[d] + after[d];
        if s < 0 {
            return Err(OpError::new("negative output size"));
        }
        out_shape.push(s as usize);
    }
    let st = strides(in_shape);
    let mut idx = Vec::with_capacity(numel(&out_shape));
    let mut mask = Vec::with_capacity(numel(&out_shape));
    let mut bad = false;
    for_each_index(&out_shape, |c| {
        let mut off = 0usize;
        let mut inside = true;
        for d in 0..r {
            let dim = in_shape[d] as i64;
            let mut v = c[d] as i64 - before[d];
            if v < 0 || v >= dim {
                match mode {
                    "reflect" if dim > 1 => {
                        let period = 2 * (dim - 1);
                        v = v.rem_euclid(period);
                        if v >= dim {
                            v = period - v;
                        }
                    }
                    "edge" | "reflect" => v = v.clamp(0, dim - 1),
                    "wrap" => v = v.rem_euclid(dim.max(1)),
                    _ => {
                        inside = false;
                        v = 0;
                    }
                }
            }
            if dim == 0 {
                inside = false;
                if mode != "constant" {
                    bad = true;
                }
                v = 0;
            }
            off += v as usize * st[d];
        }
        idx.push(if inside { off as i64 } else { 0 });
        mask.push(inside);
    });
    if bad {
        return Err(OpError::new(
            "cannot pad an empty axis except with a constant",
        ));
    }
    let fill = full(x.elem_type(), &out_shape, value)?;
    if x.is_empty() {
        return Ok(vec![Value::Tensor(fill)]);
    }
    let gathered = take(x, &out_shape, idx)?;
    let m = crate::ops::common::bool_tensor(&out_shape, mask)?;
    let out = m.candle().where_cond(gathered.candle(), fill.candle())?;
    Ok(vec![Value::Tensor(like(x, out)?)])
}

fn tile(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let reps = ints(i.tensor(1)?)?;
    if reps.len() != x.rank() || reps.iter().any(|&r| r < 0) {
        return Err(OpError::new(
            "repeats must have one non-negative value per axis",
        ));
    }
    let per_axis: Vec<Vec<usize>> = x
        .shape()
        .iter()
        .zip(&reps)
        .map(|(&d, &r)| (0..d * r as usize).map(|k| k % d.max(1)).collect())
        .collect();
    Ok(vec![Value::Tensor(select(x, &per_axis)?)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attrs::Attrs;

    #[test]
    fn slice_with_negative_step_walks_backwards() {
        let idx = slice_indices(&[5], &[-1], &[i64::MIN], None, Some(vec![-2])).unwrap();
        assert_eq!(idx, vec![vec![4, 2, 0]]);
    }

    #[test]
    fn slice_clamps_ends_past_the_dim() {
        let idx = slice_indices(&[4, 3], &[1], &[1000], Some(vec![0]), None).unwrap();
        assert_eq!(idx[0], vec![1, 2, 3]);
        assert_eq!(idx[1], vec![0, 1, 2]);
    }

    #[test]
    fn split_without_sizes_splits_evenly_across_outputs() {
        let x = Tensor::from_f32(&[6], (0..6).map(|v| v as f32).collect()).unwrap();
        let vals = [Value::Tensor(x)];
        let info = NodeInfo {
            attrs: Attrs::default(),
            opset: 13,
            outputs: 3,
        };
        let out = split(
            &info,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[2].as_tensor().unwrap().to_f32_vec().unwrap(),
            vec![4., 5.]
        );
    }
}
