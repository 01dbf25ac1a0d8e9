//! Selecting and rearranging elements without arithmetic: `Compress`,
//! `ReverseSequence`, `CenterCropPad`.
//!
//! Values are moved, never converted, so every element type works: the kernels
//! compute source indices on the host and gather with [`take`], or narrow and pad
//! with candle.

use crate::ops::common::{axis_in, for_each_index, ints, like, numel, strides, take};
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "Compress" => compress,
        "ReverseSequence" => reverse_sequence,
        "CenterCropPad" => center_crop_pad,
        _ => return None,
    };
    Some(k)
}

/// `Compress`: the slices along `axis` (or elements of the flattened input) whose
/// condition is true. A condition shorter than the axis selects from its prefix.
fn compress(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let cond = i.tensor(1)?;
    if cond.rank() != 1 {
        return Err(OpError::new(format!(
            "condition must be 1-D, got shape {:?}",
            cond.shape()
        )));
    }
    let (shape, axis) = match n.attrs.opt_int("axis")? {
        Some(a) => (x.shape().to_vec(), axis_in(a, x.rank())?),
        None => (vec![x.len()], 0),
    };
    let len = shape[axis];
    let picked: Vec<usize> = ints(cond)?
        .iter()
        .enumerate()
        .filter(|(_, &c)| c != 0)
        .map(|(k, _)| k)
        .collect();
    if let Some(&k) = picked.iter().find(|&&k| k >= len) {
        return Err(OpError::new(format!(
            "condition selects index {k} of an axis of {len}"
        )));
    }
    let outer = numel(&shape[..axis]);
    let inner = numel(&shape[axis + 1..]);
    let mut idx = Vec::with_capacity(outer * picked.len() * inner);
    for o in 0..outer {
        for &k in &picked {
            let base = (o * len + k) * inner;
            idx.extend((base..base + inner).map(|v| v as i64));
        }
    }
    let mut out_shape = shape;
    out_shape[axis] = picked.len();
    one(take(x, &out_shape, idx)?)
}

/// `ReverseSequence`: along `time_axis`, the first `sequence_lens[b]` elements of
/// each batch entry `b` reversed, the rest copied.
fn reverse_sequence(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let lens = ints(i.tensor(1)?)?;
    let batch_axis = n.attrs.int("batch_axis", 1)?;
    let time_axis = n.attrs.int("time_axis", 0)?;
    let (b_ax, t_ax) = match (batch_axis, time_axis) {
        (0, 1) => (0, 1),
        (1, 0) => (1, 0),
        _ => {
            return Err(OpError::new(format!(
                "batch_axis and time_axis must be 0 and 1 in some order, got {batch_axis} and {time_axis}"
            )))
        }
    };
    let shape = x.shape();
    if shape.len() < 2 {
        return Err(OpError::new("ReverseSequence needs an input of rank >= 2"));
    }
    let (batch, time) = (shape[b_ax], shape[t_ax]);
    if lens.len() != batch {
        return Err(OpError::new(format!(
            "sequence_lens has {} values for a batch of {batch}",
            lens.len()
        )));
    }
    if let Some(l) = lens.iter().find(|&&l| l < 0 || l as usize > time) {
        return Err(OpError::new(format!(
            "sequence length {l} outside [0, {time}]"
        )));
    }
    let st = strides(shape);
    let mut idx = Vec::with_capacity(x.len());
    for_each_index(shape, |ix| {
        let len = lens[ix[b_ax]] as usize;
        let t = ix[t_ax];
        let src_t = if t < len { len - 1 - t } else { t };
        let flat: usize = ix
            .iter()
            .zip(&st)
            .enumerate()
            .map(|(d, (&v, &s))| if d == t_ax { src_t * s } else { v * s })
            .sum();
        idx.push(flat as i64);
    });
    one(take(x, shape, idx)?)
}

/// `CenterCropPad`: each listed axis cropped to a centred window (start rounded
/// down) or zero-padded around the input (the odd pixel going right).
fn center_crop_pad(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let sizes = ints(i.tensor(1)?)?;
    let r = x.rank();
    let axes: Vec<usize> = match n.attrs.ints("axes")? {
        Some(a) => a.iter().map(|&a| axis_in(a, r)).collect::<Result<_, _>>()?,
        None => (0..r).collect(),
    };
    if sizes.len() != axes.len() {
        return Err(OpError::new(format!(
            "shape has {} values for {} axes",
            sizes.len(),
            axes.len()
        )));
    }
    let mut t = x.candle().clone();
    for (&axis, &size) in axes.iter().zip(&sizes) {
        let want = usize::try_from(size)
            .map_err(|_| OpError::new(format!("target size {size} is negative")))?;
        let have = t.dims()[axis];
        if have > want {
            t = t.narrow(axis, (have - want) / 2, want)?;
        } else if have < want {
            let total = want - have;
            t = t.pad_with_zeros(axis, total / 2, total - total / 2)?;
        }
    }
    one(like(x, t)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attrs::Attr;
    use crate::tensor::Tensor;
    use crate::value::Value;

    fn info(attrs: &[(&str, Attr)]) -> NodeInfo {
        crate::ops::testing::info_with(18, 1, attrs)
    }

    use crate::ops::testing::run;

    fn grid() -> Value {
        Value::Tensor(Tensor::from_f32(&[3, 2], vec![1., 2., 3., 4., 5., 6.]).unwrap())
    }

    fn bools(v: Vec<bool>) -> Value {
        Value::Tensor(Tensor::from_bools(&[v.len()], v).unwrap())
    }

    #[test]
    fn compress_without_axis_selects_from_the_flattened_input() {
        let t = run(
            compress,
            &info(&[]),
            &[grid(), bools(vec![false, true, false, false, true])],
        )
        .unwrap();
        assert_eq!(t.shape(), &[2]);
        assert_eq!(t.to_f32_vec().unwrap(), vec![2., 5.]);
    }

    #[test]
    fn compress_along_an_axis_keeps_whole_slices() {
        let n = info(&[("axis", Attr::Int(-1))]);
        let t = run(compress, &n, &[grid(), bools(vec![false, true])]).unwrap();
        assert_eq!(t.shape(), &[3, 1]);
        assert_eq!(t.to_f32_vec().unwrap(), vec![2., 4., 6.]);
    }

    #[test]
    fn compress_rejects_a_selection_past_the_axis() {
        let n = info(&[("axis", Attr::Int(1))]);
        assert!(run(compress, &n, &[grid(), bools(vec![false, false, true])]).is_err());
    }

    #[test]
    fn reverse_sequence_follows_the_spec_example() {
        let x = Tensor::from_f32(&[4, 4], (0..16).map(|v| v as f32).collect()).unwrap();
        let lens = Tensor::from_i64(&[4], vec![1, 2, 3, 4]).unwrap();
        let n = info(&[("batch_axis", Attr::Int(0)), ("time_axis", Attr::Int(1))]);
        let t = run(
            reverse_sequence,
            &n,
            &[Value::Tensor(x), Value::Tensor(lens)],
        )
        .unwrap();
        let want = [
            0., 1., 2., 3., 5., 4., 6., 7., 10., 9., 8., 11., 15., 14., 13., 12.,
        ];
        assert_eq!(t.to_f32_vec().unwrap(), want);
    }

    #[test]
    fn reverse_sequence_rejects_a_length_past_the_time_axis() {
        let x = Tensor::from_f32(&[2, 2], vec![0.; 4]).unwrap();
        let lens = Tensor::from_i64(&[2], vec![3, 1]).unwrap();
        let out = run(
            reverse_sequence,
            &info(&[]),
            &[Value::Tensor(x), Value::Tensor(lens)],
        );
        assert!(out.is_err());
    }

    #[test]
    fn center_crop_pad_crops_down_and_pads_right_first() {
        let x = Tensor::from_f32(&[3, 1], vec![1., 2., 3.]).unwrap();
        let shape = Tensor::from_i64(&[2], vec![2, 4]).unwrap();
        let t = run(
            center_crop_pad,
            &info(&[]),
            &[Value::Tensor(x), Value::Tensor(shape)],
        )
        .unwrap();
        assert_eq!(t.shape(), &[2, 4]);
        // Rows 0..2 kept (start rounded down); the single column padded 1 left, 2 right.
        assert_eq!(
            t.to_f32_vec().unwrap(),
            vec![0., 1., 0., 0., 0., 2., 0., 0.]
        );
    }

    #[test]
    fn center_crop_pad_needs_one_size_per_axis() {
        let shape = Tensor::from_i64(&[1], vec![2]).unwrap();
        assert!(run(center_crop_pad, &info(&[]), &[grid(), Value::Tensor(shape)]).is_err());
    }
}
