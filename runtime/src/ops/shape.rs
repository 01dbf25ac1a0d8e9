//! Operators that change a tensor's shape or axis order without computing:
//! `Reshape`, `Flatten`, `Squeeze`, `Unsqueeze`, `Transpose`, `Expand`, `Shape`,
//! `Size`, `Identity`, `DepthToSpace`, `SpaceToDepth`.
//!
//! Slicing and joining live in `slicing`; constant makers in `constant`.

use crate::ops::common::{axis_in, broadcast_shape, expand_to, i64_tensor, ints, like, numel};
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::Tensor;
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "Reshape" => reshape,
        "Flatten" => flatten,
        "Squeeze" => squeeze,
        "Unsqueeze" => unsqueeze,
        "Transpose" => transpose,
        "Expand" => expand,
        "Shape" => shape,
        "Size" => |_, i| one(i64_tensor(&[], vec![i.tensor(0)?.len() as i64])?),
        "Identity" => identity,
        "DepthToSpace" => depth_to_space,
        "SpaceToDepth" => space_to_depth,
        _ => return None,
    };
    Some(k)
}

fn identity(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    Ok(vec![i
        .value(0)
        .cloned()
        .ok_or_else(|| OpError::new("input 0 is required"))?])
}

/// Reshapes `t` (contiguous copy when needed).
pub(crate) fn reshaped(t: &Tensor, shape: &[usize]) -> Result<Tensor, OpError> {
    if numel(shape) != t.len() {
        return Err(OpError::new(format!(
            "cannot reshape {:?} to {shape:?}",
            t.shape()
        )));
    }
    like(t, t.candle().reshape(shape)?)
}

fn reshape(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let spec = match i.opt(1)? {
        Some(s) => ints(s)?,
        None => n
            .attrs
            .ints("shape")?
            .ok_or_else(|| OpError::new("no shape"))?
            .to_vec(),
    };
    let allow_zero = n.attrs.int("allowzero", 0)? != 0;
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (d, &s) in spec.iter().enumerate() {
        match s {
            0 if !allow_zero => out.push(
                *x.shape()
                    .get(d)
                    .ok_or_else(|| OpError::new("0 in shape past the input rank"))?,
            ),
            -1 if infer.is_none() => {
                infer = Some(d);
                out.push(1);
            }
            s if s >= 0 => out.push(s as usize),
            s => return Err(OpError::new(format!("invalid dim {s} in shape"))),
        }
    }
    if let Some(d) = infer {
        let known = numel(&out);
        if known == 0 || x.len() % known != 0 {
            return Err(OpError::new(format!(
                "cannot infer -1 reshaping {:?} to {spec:?}",
                x.shape()
            )));
        }
        out[d] = x.len() / known;
    }
    one(reshaped(x, &out)?)
}

fn flatten(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let r = x.rank();
    let a = n.attrs.int("axis", 1)?;
    // Range [-r, r]; a negative axis counts from the end of the input's dims.
    let a = if a < 0 { a + r as i64 } else { a };
    let a = axis_in(a, r + 1)?;
    let outer = numel(&x.shape()[..a]);
    let inner = numel(&x.shape()[a..]);
    one(reshaped(x, &[outer, inner])?)
}

fn axes_arg(n: &NodeInfo, i: &Inputs<'_>, at: usize) -> Result<Option<Vec<i64>>, OpError> {
    if let Some(t) = i.opt(at)? {
        return Ok(Some(ints(t)?));
    }
    Ok(n.attrs.ints("axes")?.map(<[i64]>::to_vec))
}

fn squeeze(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let r = x.rank();
    let axes = match axes_arg(n, i, 1)? {
        Some(a) => a
            .iter()
            .map(|&a| axis_in(a, r))
            .collect::<Result<Vec<_>, _>>()?,
        None => (0..r).filter(|&d| x.shape()[d] == 1).collect(),
    };
    let mut out = Vec::new();
    for (d, &s) in x.shape().iter().enumerate() {
        if axes.contains(&d) {
            if s != 1 {
                return Err(OpError::new(format!("cannot squeeze dim {d} of size {s}")));
            }
        } else {
            out.push(s);
        }
    }
    one(reshaped(x, &out)?)
}

fn unsqueeze(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let axes = axes_arg(n, i, 1)?.ok_or_else(|| OpError::new("no axes"))?;
    let out_rank = x.rank() + axes.len();
    let mut axes = axes
        .iter()
        .map(|&a| axis_in(a, out_rank))
        .collect::<Result<Vec<_>, _>>()?;
    axes.sort_unstable();
    axes.dedup();
    if axes.len() + x.rank() != out_rank {
        return Err(OpError::new("repeated axes"));
    }
    let mut out = Vec::with_capacity(out_rank);
    let mut src = x.shape().iter();
    for d in 0..out_rank {
        if axes.contains(&d) {
            out.push(1);
        } else if let Some(&s) = src.next() {
            out.push(s);
        }
    }
    one(reshaped(x, &out)?)
}

/// Permutes `t`'s axes and makes the result contiguous.
pub(crate) fn permuted(t: &Tensor, perm: &[usize]) -> Result<Tensor, OpError> {
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return Ok(t.clone());
    }
    like(t, t.candle().permute(perm)?.contiguous()?)
}

fn transpose(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let r = x.rank();
    let perm: Vec<usize> = match n.attrs.ints("perm")? {
        Some(p) => p
            .iter()
            .map(|&a| axis_in(a, r))
            .collect::<Result<Vec<_>, _>>()?,
        // Default: reverse the axes.
        None => (0..r).rev().collect(),
    };
    let mut seen = perm.clone();
    seen.sort_unstable();
    if seen != (0..r).collect::<Vec<_>>() {
        return Err(OpError::new(format!("perm {perm:?} is not a permutation")));
    }
    one(permuted(x, &perm)?)
}

fn expand(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let shape: Vec<usize> = ints(i.tensor(1)?)?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| OpError::new("negative dim in shape")))
        .collect::<Result<_, _>>()?;
    let out = broadcast_shape(x.shape(), &shape)?;
    one(like(x, expand_to(x.candle(), &out)?)?)
}

fn shape(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i
        .value(0)
        .ok_or_else(|| OpError::new("input 0 is required"))?;
    let Value::Tensor(x) = x else {
        return Err(OpError::new("Shape of a non-tensor"));
    };
    let r = x.rank() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(n.attrs.int("start", 0)?);
    let end = clamp(n.attrs.int("end", r)?);
    let dims: Vec<i64> = x
        .shape()
        .get(start..end.max(start))
        .unwrap_or(&[])
        .iter()
        .map(|&d| d as i64)
        .collect();
    let len = dims.len();
    one(i64_tensor(&[len], dims)?)
}

fn depth_to_space(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let b = usize::try_from(n.attrs.int("blocksize", 0)?).unwrap_or(0);
    let &[nb, c, h, w] = x.shape() else {
        return Err(OpError::new("DepthToSpace needs a 4-D input"));
    };
    if b == 0 || c % (b * b) != 0 {
        return Err(OpError::new("channels must be a multiple of blocksize^2"));
    }
    let oc = c / (b * b);
    let t = if n.attrs.string("mode", "DCR")? == "CRD" {
        let t = reshaped(x, &[nb, oc, b, b, h, w])?;
        permuted(&t, &[0, 1, 4, 2, 5, 3])?
    } else {
        let t = reshaped(x, &[nb, b, b, oc, h, w])?;
        permuted(&t, &[0, 3, 4, 1, 5, 2])?
    };
    one(reshaped(&t, &[nb, oc, h * b, w * b])?)
}

fn space_to_depth(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let b = usize::try_from(n.attrs.int("blocksize", 0)?).unwrap_or(0);
    let &[nb, c, h, w] = x.shape() else {
        return Err(OpError::new("SpaceToDepth needs a 4-D input"));
    };
    if b == 0 || h % b != 0 || w % b != 0 {
        return Err(OpError::new(
            "height and width must be multiples of blocksize",
        ));
    }
    let t = reshaped(x, &[nb, c, h / b, b, w / b, b])?;
    // Output channel: (row * b + col) * c + ch for DCR, ch * b * b + row * b + col for
    // CRD (opset 28), the inverses of DepthToSpace's two modes.
    let perm = match n.attrs.string("mode", "DCR")? {
        "DCR" => [0, 3, 5, 1, 2, 4],
        "CRD" => [0, 1, 3, 5, 2, 4],
        m => return Err(OpError::new(format!("mode must be DCR or CRD, got {m:?}"))),
    };
    let t = permuted(&t, &perm)?;
    one(reshaped(&t, &[nb, c * b * b, h / b, w / b])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attrs::Attrs;

    fn info() -> NodeInfo {
        NodeInfo {
            attrs: Attrs::default(),
            opset: 17,
            outputs: 1,
        }
    }

    #[test]
    fn transpose_without_perm_reverses_axes() {
        let x = Tensor::from_f32(&[2, 3], (0..6).map(|v| v as f32).collect()).unwrap();
        let vals = [Value::Tensor(x)];
        let out = transpose(
            &info(),
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        let t = out[0].as_tensor().unwrap();
        assert_eq!(t.shape(), &[3, 2]);
        assert_eq!(t.to_f32_vec().unwrap(), vec![0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn reshape_copies_zero_dims_and_infers_minus_one() {
        let x = Tensor::from_f32(&[2, 3, 4], vec![0.; 24]).unwrap();
        let s = Tensor::from_i64(&[2], vec![0, -1]).unwrap();
        let vals = [Value::Tensor(x), Value::Tensor(s)];
        let out = reshape(
            &info(),
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        assert_eq!(out[0].as_tensor().unwrap().shape(), &[2, 12]);
    }

    #[test]
    fn unsqueeze_accepts_negative_axes() {
        let x = Tensor::from_f32(&[3], vec![0.; 3]).unwrap();
        let a = Tensor::from_i64(&[1], vec![-1]).unwrap();
        let vals = [Value::Tensor(x), Value::Tensor(a)];
        let out = unsqueeze(
            &info(),
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        assert_eq!(out[0].as_tensor().unwrap().shape(), &[3, 1]);
    }

    #[test]
    fn space_to_depth_crd_keeps_each_channel_block_together() {
        let x = Tensor::from_f32(&[1, 2, 2, 2], (0..8).map(|v| v as f32).collect()).unwrap();
        let vals = [Value::Tensor(x)];
        let mut n = info();
        n.attrs.set("blocksize", crate::ops::Attr::Int(2));
        n.attrs.set("mode", crate::ops::Attr::String("CRD".into()));
        let out = space_to_depth(
            &n,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        let y = out[0].as_tensor().unwrap();
        assert_eq!(y.shape(), &[1, 8, 1, 1]);
        assert_eq!(
            y.to_f32_vec().unwrap(),
            (0..8).map(|v| v as f32).collect::<Vec<_>>()
        );
    }
}
