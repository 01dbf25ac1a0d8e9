//! Normalisations: `BatchNormalization` (inference and training mode),
//! `LayerNormalization`, `GroupNormalization`, `InstanceNormalization`,
//! `RMSNormalization`, `LpNormalization`, `MeanVarianceNormalization`, `LRN`.
//!
//! Statistics are computed on the host in f64; parameters are broadcast to the
//! input's shape first, so every layout the schemas allow works the same way.

use crate::ops::common::{axis_in, expand_to, from_f64, numel};
use crate::ops::{Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::Tensor;
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "BatchNormalization" => batch_norm,
        "LayerNormalization" => layer_norm,
        "RMSNormalization" => rms_norm,
        "GroupNormalization" => group_norm,
        "InstanceNormalization" => instance_norm,
        "LpNormalization" => lp_norm,
        "MeanVarianceNormalization" => mvn,
        "LRN" => lrn,
        _ => return None,
    };
    Some(k)
}

/// Values of `t` broadcast to `shape`.
fn expanded(t: &Tensor, shape: &[usize]) -> Result<Vec<f64>, OpError> {
    Ok(t.with_data(expand_to(t.candle(), shape)?)?.to_f64_vec()?)
}

/// Per-channel values of a [C] parameter.
fn per_channel(t: &Tensor, c: usize, what: &str) -> Result<Vec<f64>, OpError> {
    let v = t.to_f64_vec()?;
    if v.len() != c {
        return Err(OpError::new(format!(
            "{what} has {} values for {c} channels",
            v.len()
        )));
    }
    Ok(v)
}

fn batch_norm(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    if x.rank() < 2 {
        return Err(OpError::new("BatchNormalization needs rank >= 2"));
    }
    let eps = f64::from(n.attrs.float("epsilon", 1e-5)?);
    let momentum = f64::from(n.attrs.float("momentum", 0.9)?);
    let (nb, c) = (x.shape()[0], x.shape()[1]);
    let sp = numel(&x.shape()[2..]);
    let scale = per_channel(i.tensor(1)?, c, "scale")?;
    let bias = per_channel(i.tensor(2)?, c, "B")?;
    let mut mean = per_channel(i.tensor(3)?, c, "mean")?;
    let mut var = per_channel(i.tensor(4)?, c, "var")?;
    let xv = x.to_f64_vec()?;
    let training = n.attrs.int("training_mode", 0)? != 0;
    let mut extra = Vec::new();
    if training {
        let cnt = (nb * sp) as f64;
        let mut bm = vec![0f64; c];
        let mut bv = vec![0f64; c];
        for (k, &v) in xv.iter().enumerate() {
            bm[(k / sp.max(1)) % c] += v / cnt;
        }
        for (k, &v) in xv.iter().enumerate() {
            let ch = (k / sp.max(1)) % c;
            bv[ch] += (v - bm[ch]).powi(2) / cnt;
        }
        let rm: Vec<f64> = (0..c)
            .map(|k| mean[k] * momentum + bm[k] * (1.0 - momentum))
            .collect();
        let rv: Vec<f64> = (0..c)
            .map(|k| var[k] * momentum + bv[k] * (1.0 - momentum))
            .collect();
        extra.push(from_f64(i.tensor(3)?.elem_type(), &[c], rm)?);
        extra.push(from_f64(i.tensor(4)?.elem_type(), &[c], rv)?);
        mean = bm;
        var = bv;
    }
    let y: Vec<f64> = xv
        .iter()
        .enumerate()
        .map(|(k, &v)| {
            let ch = (k / sp.max(1)) % c;
            (v - mean[ch]) / (var[ch] + eps).sqrt() * scale[ch] + bias[ch]
        })
        .collect();
    let mut out = vec![Value::Tensor(from_f64(x.elem_type(), x.shape(), y)?)];
    out.extend(extra.into_iter().map(Value::Tensor));
    Ok(out)
}

fn layer_norm(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let r = x.rank();
    let a = axis_in(n.attrs.int("axis", -1)?, r)?;
    let eps = f64::from(n.attrs.float("epsilon", 1e-5)?);
    let inner = numel(&x.shape()[a..]);
    let outer = numel(&x.shape()[..a]);
    let xv = x.to_f64_vec()?;
    let scale = expanded(i.tensor(1)?, x.shape())?;
    let bias = match i.opt(2)? {
        Some(b) => Some(expanded(b, x.shape())?),
        None => None,
    };
    let mut y = vec![0f64; xv.len()];
    let mut means = Vec::with_capacity(outer);
    let mut inv_stds = Vec::with_capacity(outer);
    for o in 0..outer {
        let row = &xv[o * inner..(o + 1) * inner];
        let mean = row.iter().sum::<f64>() / inner as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / inner as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for k in 0..inner {
            let idx = o * inner + k;
            y[idx] = (xv[idx] - mean) * inv * scale[idx] + bias.as_ref().map_or(0.0, |b| b[idx]);
        }
        means.push(mean);
        inv_stds.push(inv);
    }
    let mut stat_shape = x.shape()[..a].to_vec();
    stat_shape.extend(std::iter::repeat_n(1, r - a));
    let stat_type = match n.attrs.int("stash_type", 1)? {
        1 => crate::tensor::ElemType::F32,
        _ => x.elem_type(),
    };
    Ok(vec![
        Value::Tensor(from_f64(x.elem_type(), x.shape(), y)?),
        Value::Tensor(from_f64(stat_type, &stat_shape, means)?),
        Value::Tensor(from_f64(stat_type, &stat_shape, inv_stds)?),
    ])
}

fn rms_norm(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let a = axis_in(n.attrs.int("axis", -1)?, x.rank())?;
    let eps = f64::from(n.attrs.float("epsilon", 1e-5)?);
    let inner = numel(&x.shape()[a..]);
    let xv = x.to_f64_vec()?;
    let scale = expanded(i.tensor(1)?, x.shape())?;
    let mut y = vec![0f64; xv.len()];
    if inner > 0 {
        for (o, row) in xv.chunks(inner).enumerate() {
            let ms = row.iter().map(|v| v * v).sum::<f64>() / inner as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            for k in 0..inner {
                let idx = o * inner + k;
                y[idx] = xv[idx] * inv * scale[idx];
            }
        }
    }
    Ok(vec![Value::Tensor(from_f64(x.elem_type(), x.shape(), y)?)])
}

/// Normalises each of `groups` contiguous blocks per batch item, then applies a
/// per-channel affine transform.
fn grouped(
    x: &Tensor,
    groups: usize,
    eps: f64,
    scale: &[f64],
    bias: &[f64],
) -> Result<Tensor, OpError> {
    let (nb, c) = (x.shape()[0], x.shape()[1]);
    let sp = numel(&x.shape()[2..]);
    if groups == 0 || c % groups != 0 {
        return Err(OpError::new("channels must divide into groups"));
    }
    let per = c / groups * sp;
    let xv = x.to_f64_vec()?;
    let mut y = vec![0f64; xv.len()];
    for g in 0..nb * groups {
        let block = &xv[g * per..(g + 1) * per];
        let mean = block.iter().sum::<f64>() / per as f64;
        let var = block.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / per as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for k in 0..per {
            let idx = g * per + k;
            let ch = (idx / sp.max(1)) % c;
            y[idx] = (xv[idx] - mean) * inv * scale[ch] + bias[ch];
        }
    }
    from_f64(x.elem_type(), x.shape(), y)
}

fn group_norm(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    if x.rank() < 2 {
        return Err(OpError::new("GroupNormalization needs rank >= 2"));
    }
    let c = x.shape()[1];
    let groups = usize::try_from(n.attrs.int("num_groups", 0)?).unwrap_or(0);
    let eps = f64::from(n.attrs.float("epsilon", 1e-5)?);
    let mut scale = i.tensor(1)?.to_f64_vec()?;
    let mut bias = i.tensor(2)?.to_f64_vec()?;
    // Opset 18 gave scale and bias per group; opset 21 per channel.
    if scale.len() == groups && groups != c && groups > 0 {
        scale = (0..c).map(|ch| scale[ch / (c / groups)]).collect();
        bias = (0..c).map(|ch| bias[ch / (c / groups)]).collect();
    }
    if scale.len() != c || bias.len() != c {
        return Err(OpError::new("scale and bias need one value per channel"));
    }
    Ok(vec![Value::Tensor(grouped(x, groups, eps, &scale, &bias)?)])
}

fn instance_norm(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    if x.rank() < 2 {
        return Err(OpError::new("InstanceNormalization needs rank >= 2"));
    }
    let c = x.shape()[1];
    let eps = f64::from(n.attrs.float("epsilon", 1e-5)?);
    let scale = per_channel(i.tensor(1)?, c, "scale")?;
    let bias = per_channel(i.tensor(2)?, c, "B")?;
    Ok(vec![Value::Tensor(grouped(x, c, eps, &scale, &bias)?)])
}

fn lp_norm(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let a = axis_in(n.attrs.int("axis", -1)?, x.rank())?;
    let p = n.attrs.int("p", 2)?;
    let (t, inner, _, _) = crate::ops::reduce::rows(x, &[a])?;
    let mut v = t.to_f64_vec()?;
    if inner > 0 {
        for row in v.chunks_mut(inner) {
            let norm = if p == 1 {
                row.iter().map(|v| v.abs()).sum::<f64>()
            } else {
                row.iter().map(|v| v * v).sum::<f64>().sqrt()
            };
            for v in row.iter_mut() {
                *v = if norm == 0.0 { 0.0 } else { *v / norm };
            }
        }
    }
    let r = x.rank();
    let mut perm: Vec<usize> = (0..r).filter(|&d| d != a).collect();
    perm.push(a);
    let mut inv = vec![0; r];
    for (k, &q) in perm.iter().enumerate() {
        inv[q] = k;
    }
    let row_shape: Vec<usize> = perm.iter().map(|&d| x.shape()[d]).collect();
    let y = from_f64(x.elem_type(), &row_shape, v)?;
    Ok(vec![Value::Tensor(crate::ops::shape::permuted(&y, &inv)?)])
}

fn mvn(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let r = x.rank();
    let axes: Vec<usize> = match n.attrs.ints("axes")? {
        Some(a) => a.iter().map(|&a| axis_in(a, r)).collect::<Result<_, _>>()?,
        None => vec![0, 2, 3].into_iter().filter(|&d| d < r).collect(),
    };
    let (t, inner, _, _) = crate::ops::reduce::rows(x, &axes)?;
    let mut v = t.to_f64_vec()?;
    if inner > 0 {
        for row in v.chunks_mut(inner) {
            let mean = row.iter().sum::<f64>() / inner as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / inner as f64;
            let sd = var.sqrt() + 1e-9;
            for v in row.iter_mut() {
                *v = (*v - mean) / sd;
            }
        }
    }
    let kept: Vec<usize> = (0..r).filter(|d| !axes.contains(d)).collect();
    let mut perm = kept;
    perm.extend(&axes);
    let mut inv = vec![0; r];
    for (k, &q) in perm.iter().enumerate() {
        inv[q] = k;
    }
    let row_shape: Vec<usize> = perm.iter().map(|&d| x.shape()[d]).collect();
    let y = from_f64(x.elem_type(), &row_shape, v)?;
    Ok(vec![Value::Tensor(crate::ops::shape::permuted(&y, &inv)?)])
}

fn lrn(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let size = n.attrs.int("size", 0)?.max(1) as usize;
    let alpha = f64::from(n.attrs.float("alpha", 1e-4)?);
    let beta = f64::from(n.attrs.float("beta", 0.75)?);
    let bias = f64::from(n.attrs.float("bias", 1.0)?);
    if x.rank() < 2 {
        return Err(OpError::new("LRN needs rank >= 2"));
    }
    let (nb, c) = (x.shape()[0], x.shape()[1]);
    let sp = numel(&x.shape()[2..]);
    let xv = x.to_f64_vec()?;
    let lo = (size - 1) / 2;
    let hi = (size - 1).div_ceil(2);
    let mut y = vec![0f64; xv.len()];
    for b in 0..nb {
        for ch in 0..c {
            for s in 0..sp {
                let from = ch.saturating_sub(lo);
                let to = (ch + hi).min(c - 1);
                let sq: f64 = (from..=to).map(|k| xv[(b * c + k) * sp + s].powi(2)).sum();
                let idx = (b * c + ch) * sp + s;
                y[idx] = xv[idx] / (bias + alpha / size as f64 * sq).powf(beta);
            }
        }
    }
    Ok(vec![Value::Tensor(from_f64(x.elem_type(), x.shape(), y)?)])
}
