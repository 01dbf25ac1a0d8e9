//! Normalisations: `BatchNormalization` (inference and training mode),
//! `LayerNormalization`, `GroupNormalization`, `InstanceNormalization`,
//! `RMSNormalization`, `LpNormalization`, `MeanVarianceNormalization`, `LRN`.
//!
//! Statistics are computed on the host in f64; parameters are broadcast to the
//! input's shape first, so every layout the schemas allow works the same way.
//! The exception is f32 `LayerNormalization` whose scale and bias cover exactly
//! the normalised axes: one f32 pass per row, no broadcast copies.

use crate::ops::common::{axis_in, expand_to, from_f64, map_rows_f32, numel};
use crate::ops::fastmath;
use crate::ops::{Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::{ElemType, Tensor};
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

/// The values of an f32 `LayerNormalization` parameter that covers exactly the
/// normalised axes `tail` (leading 1s allowed), or `None` when it broadcasts in
/// any other way.
fn per_row_f32(t: &Tensor, tail: &[usize]) -> Result<Option<Vec<f32>>, OpError> {
    let sh = t.shape();
    let fits = t.elem_type() == ElemType::F32
        && sh.len() >= tail.len()
        && sh[sh.len() - tail.len()..] == *tail
        && sh[..sh.len() - tail.len()].iter().all(|&d| d == 1);
    Ok(if fits { Some(t.to_f32_vec()?) } else { None })
}

/// The f32 fast path of `LayerNormalization`: rows normalised in place in f32
/// (statistics summed in eight f32 lanes), scale and bias read once per row
/// position, rows split over threads when there are enough.
fn layer_norm_f32(
    n: &NodeInfo,
    i: &Inputs<'_>,
    a: usize,
    eps: f64,
) -> Result<Option<Vec<Value>>, OpError> {
    let x = i.tensor(0)?;
    if x.elem_type() != ElemType::F32 || n.attrs.int("stash_type", 1)? != 1 {
        return Ok(None);
    }
    let tail = &x.shape()[a..];
    let Some(scale) = per_row_f32(i.tensor(1)?, tail)? else {
        return Ok(None);
    };
    let bias = match i.opt(2)? {
        Some(b) => match per_row_f32(b, tail)? {
            Some(v) => Some(v),
            None => return Ok(None),
        },
        None => None,
    };
    let inner = numel(tail);
    let outer = numel(&x.shape()[..a]);
    let mut y = x.to_f32_vec()?;
    let (means, inv_stds): (Vec<f32>, Vec<f32>) = if inner > 0 {
        let norm_row = |row: &mut [f32]| {
            let mean = fastmath::sum_by(row, |v| v) / inner as f32;
            let var = fastmath::sum_by(row, |v| (v - mean) * (v - mean)) / inner as f32;
            let inv = 1.0 / (f64::from(var) + eps).sqrt();
            let (m32, inv32) = (mean, inv as f32);
            match &bias {
                Some(b) => {
                    for ((v, s), b) in row.iter_mut().zip(&scale).zip(b) {
                        *v = (*v - m32) * inv32 * s + b;
                    }
                }
                None => {
                    for (v, s) in row.iter_mut().zip(&scale) {
                        *v = (*v - m32) * inv32 * s;
                    }
                }
            }
            (mean, inv32)
        };
        map_rows_f32(&mut y, inner, norm_row).into_iter().unzip()
    } else {
        (vec![f32::NAN; outer], vec![f32::NAN; outer])
    };
    let mut stat_shape = x.shape()[..a].to_vec();
    stat_shape.extend(std::iter::repeat_n(1, x.rank() - a));
    Ok(Some(vec![
        Value::Tensor(Tensor::from_f32(x.shape(), y)?),
        Value::Tensor(Tensor::from_f32(&stat_shape, means)?),
        Value::Tensor(Tensor::from_f32(&stat_shape, inv_stds)?),
    ]))
}

fn layer_norm(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let r = x.rank();
    let a = axis_in(n.attrs.int("axis", -1)?, r)?;
    let eps = f64::from(n.attrs.float("epsilon", 1e-5)?);
    if let Some(out) = layer_norm_f32(n, i, a, eps)? {
        return Ok(out);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Attr;

    fn run(x: &Tensor, scale: &Tensor, bias: Option<&Tensor>, axis: i64) -> Vec<Vec<f64>> {
        let mut attrs = crate::ops::Attrs::default();
        attrs.set("axis", Attr::Int(axis));
        let info = NodeInfo {
            attrs,
            opset: 17,
            outputs: 3,
        };
        let mut vals = vec![Value::Tensor(x.clone()), Value::Tensor(scale.clone())];
        if let Some(b) = bias {
            vals.push(Value::Tensor(b.clone()));
        }
        let out = layer_norm(
            &info,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        out.iter()
            .map(|v| v.as_tensor().unwrap().to_f64_vec().unwrap())
            .collect()
    }

    fn f64_of(t: &Tensor) -> Tensor {
        Tensor::from_f64_as(ElemType::F64, t.shape(), t.to_f64_vec().unwrap()).unwrap()
    }

    #[test]
    fn layer_norm_rows_split_over_threads_give_the_one_thread_result() {
        let shape = [64usize, 256];
        let x = Tensor::from_f32(
            &shape,
            (0..64 * 256)
                .map(|k| ((k * 5) % 17) as f32 * 0.2 - 1.5)
                .collect(),
        )
        .unwrap();
        let scale =
            Tensor::from_f32(&[256], (0..256).map(|k| 1.0 + k as f32 * 0.01).collect()).unwrap();
        let bias = Tensor::from_f32(&[256], (0..256).map(|k| k as f32 * -0.003).collect()).unwrap();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| run(&x, &scale, Some(&bias), -1))
        };
        let one = on(1);
        assert_eq!(one[1].len(), 64, "one mean per row");
        assert_eq!(on(2), one);
        assert_eq!(on(3), one);
    }

    #[test]
    fn the_f32_layer_norm_matches_the_f64_path_and_broadcasts_stay_general() {
        let shape = [2usize, 3, 4];
        let x = Tensor::from_f32(
            &shape,
            (0..24).map(|k| ((k * 5) % 7) as f32 * 0.3 - 1.0).collect(),
        )
        .unwrap();
        let cases: &[(i64, &[usize])] = &[
            (-1, &[4]),
            (-1, &[1, 4]),
            (1, &[3, 4]),
            // Broadcast parameters: not the fast path, same result.
            (1, &[1, 4]),
            (1, &[3, 1]),
            (0, &[4]),
        ];
        for (axis, psh) in cases {
            let n: usize = psh.iter().product();
            let scale =
                Tensor::from_f32(psh, (0..n).map(|k| 0.5 + k as f32 * 0.1).collect()).unwrap();
            let bias = Tensor::from_f32(psh, (0..n).map(|k| k as f32 * -0.2).collect()).unwrap();
            for b in [Some(&bias), None] {
                let got = run(&x, &scale, b, *axis);
                let b64 = b.map(f64_of);
                let want = run(&f64_of(&x), &f64_of(&scale), b64.as_ref(), *axis);
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.len(), w.len());
                    for (p, q) in g.iter().zip(w) {
                        assert!(
                            (p - q).abs() < 1e-5 * (1.0 + q.abs()),
                            "{axis} {psh:?}: {p} vs {q}"
                        );
                    }
                }
            }
        }
    }
}
