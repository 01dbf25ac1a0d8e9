//! `MaxUnpool` (opsets 9 to 22): scatters pooled values back to the positions
//! that `MaxPool`'s `Indices` output recorded, zero elsewhere.
//!
//! Indices are flat offsets into the whole unpooled tensor (batch and channel
//! included), as `MaxPool` writes them, whose size the pooling geometry gives; an
//! `output_shape` input enlarges the result with zeros. This module does not
//! check that the indices came from a matching `MaxPool`.

use crate::ops::common::{from_f64, ints, strides};
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::Tensor;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "MaxUnpool" => max_unpool,
        _ => return None,
    };
    Some(k)
}

/// An ints attribute of `k` non-negative values, or `default` repeated.
fn per_axis(n: &NodeInfo, name: &str, k: usize, default: usize) -> Result<Vec<usize>, OpError> {
    match n.attrs.ints(name)? {
        None | Some([]) => Ok(vec![default; k]),
        Some(v) if v.len() == k => v
            .iter()
            .map(|&x| {
                usize::try_from(x)
                    .map_err(|_| OpError::new(format!("MaxUnpool {name} has negative {x}")))
            })
            .collect(),
        Some(v) => Err(OpError::new(format!(
            "MaxUnpool {name} has {} values, expected {k}",
            v.len()
        ))),
    }
}

/// The output shape the pooling geometry implies.
fn default_shape(n: &NodeInfo, x: &Tensor) -> Result<Vec<usize>, OpError> {
    let spatial = &x.shape()[2..];
    let k = spatial.len();
    let kernel = n
        .attrs
        .ints("kernel_shape")?
        .ok_or_else(|| OpError::new("MaxUnpool needs kernel_shape"))?;
    if kernel.len() != k {
        return Err(OpError::new(format!(
            "MaxUnpool kernel_shape has {} values for {k} spatial dims",
            kernel.len()
        )));
    }
    let strides = per_axis(n, "strides", k, 1)?;
    let pads = per_axis(n, "pads", 2 * k, 0)?;
    let mut shape = x.shape()[..2].to_vec();
    for d in 0..k {
        // (in - 1) * stride + kernel - pad_begin - pad_end, in checked i128.
        let size = (spatial[d].saturating_sub(1) as i128) * strides[d] as i128
            + i128::from(kernel[d])
            - pads[d] as i128
            - pads[d + k] as i128;
        let size = usize::try_from(size).map_err(|_| {
            OpError::new(format!(
                "MaxUnpool kernel_shape, strides and pads give spatial dim {d} size {size}"
            ))
        })?;
        shape.push(size);
    }
    Ok(shape)
}

fn max_unpool(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, idx) = (i.tensor(0)?, i.tensor(1)?);
    if x.rank() < 3 {
        return Err(OpError::new(format!(
            "MaxUnpool needs X of rank >= 3, got {:?}",
            x.shape()
        )));
    }
    if idx.shape() != x.shape() {
        return Err(OpError::new(format!(
            "MaxUnpool indices {:?} do not match X {:?}",
            idx.shape(),
            x.shape()
        )));
    }
    // As in the conformance data: indices address the shape the pooling geometry
    // implies; `output_shape` then places that result at the same coordinates in
    // a larger zero tensor (the extra rows and columns come at the end).
    let pooled = default_shape(n, x)?;
    let shape = match i.opt(2)? {
        Some(t) => {
            let v = ints(t)?;
            if v.len() != x.rank() || v.iter().any(|&d| d < 0) {
                return Err(OpError::new(format!(
                    "MaxUnpool output_shape {v:?} is not a shape of rank {}",
                    x.rank()
                )));
            }
            let s: Vec<usize> = v.iter().map(|&d| d as usize).collect();
            if s[..2] != x.shape()[..2] || s.iter().zip(&pooled).any(|(a, b)| a < b) {
                return Err(OpError::new(format!(
                    "MaxUnpool output_shape {s:?} must keep the batch and channels of X {:?} \
                     and be at least the unpooled shape {pooled:?}",
                    x.shape()
                )));
            }
            s
        }
        None => pooled.clone(),
    };
    let len = pooled
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| OpError::new(format!("MaxUnpool output {pooled:?} is too large")))?;
    let out_len = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| OpError::new(format!("MaxUnpool output_shape {shape:?} is too large")))?;
    let (from, to) = (strides(&pooled), strides(&shape));
    let mut out = vec![0f64; out_len];
    let xv = x.to_f64_vec()?;
    for (v, &p) in xv.iter().zip(&ints(idx)?) {
        let p = usize::try_from(p)
            .ok()
            .filter(|&p| p < len)
            .ok_or_else(|| {
                OpError::new(format!(
                    "MaxUnpool index {p} out of range for the unpooled shape {pooled:?}"
                ))
            })?;
        let at: usize = from
            .iter()
            .zip(&to)
            .zip(&pooled)
            .map(|((&f, &t), &d)| (p / f) % d * t)
            .sum();
        out[at] = *v;
    }
    one(from_f64(x.elem_type(), &shape, out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Attr, Attrs};
    use crate::value::Value;

    fn run(strides: Option<Vec<i64>>, ts: Vec<Tensor>) -> OpResult {
        let mut a = Attrs::default();
        a.set("kernel_shape", Attr::Ints(vec![2, 2]));
        if let Some(s) = strides {
            a.set("strides", Attr::Ints(s));
        }
        let info = NodeInfo {
            attrs: a,
            opset: 22,
            outputs: 1,
        };
        let vals: Vec<Value> = ts.into_iter().map(Value::Tensor).collect();
        max_unpool(
            &info,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
    }

    #[test]
    fn strides_default_to_one() {
        let x = Tensor::from_f32(&[1, 1, 1, 1], vec![7.]).unwrap();
        let i = Tensor::from_i64(&[1, 1, 1, 1], vec![3]).unwrap();
        let y = run(None, vec![x, i]).unwrap();
        let t = y[0].as_tensor().unwrap();
        assert_eq!(t.shape(), &[1, 1, 2, 2]);
        assert_eq!(t.to_f32_vec().unwrap(), vec![0., 0., 0., 7.]);
    }

    #[test]
    fn output_shape_pads_the_unpooled_result() {
        // Index 3 is (1, 1) of the implied 2x2 output, kept at (1, 1) in 3x3.
        let x = Tensor::from_f32(&[1, 1, 1, 1], vec![7.]).unwrap();
        let i = Tensor::from_i64(&[1, 1, 1, 1], vec![3]).unwrap();
        let s = Tensor::from_i64(&[4], vec![1, 1, 3, 3]).unwrap();
        let y = run(Some(vec![2, 2]), vec![x, i, s]).unwrap();
        let t = y[0].as_tensor().unwrap();
        assert_eq!(t.shape(), &[1, 1, 3, 3]);
        assert_eq!(t.to_f32_vec().unwrap()[4], 7.);
    }

    #[test]
    fn an_output_shape_smaller_than_the_geometry_is_rejected() {
        let x = Tensor::from_f32(&[1, 1, 1, 1], vec![7.]).unwrap();
        let i = Tensor::from_i64(&[1, 1, 1, 1], vec![0]).unwrap();
        let s = Tensor::from_i64(&[4], vec![1, 1, 1, 1]).unwrap();
        assert!(run(None, vec![x, i, s]).is_err());
    }

    #[test]
    fn an_index_past_the_output_is_rejected() {
        let x = Tensor::from_f32(&[1, 1, 1, 1], vec![7.]).unwrap();
        let i = Tensor::from_i64(&[1, 1, 1, 1], vec![4]).unwrap();
        let err = run(None, vec![x, i]).unwrap_err();
        assert!(err.message.contains("out of range"), "{err}");
    }
}
