//! Quantized linear operators: `QLinearMatMul` and `QLinearConv`, 8-bit operands
//! with scales and zero points in, an 8-bit result requantized out.
//!
//! Design: each shifts its operands by their zero points and hands the integer
//! product to the existing `MatMulInteger`/`ConvInteger` kernels (found through
//! [`crate::ops::lookup`]), then requantizes on the host: the multiplier
//! `a_scale * b_scale / y_scale` is formed in the scales' float type, applied in
//! f64, rounded half to even and saturated to the output type. No integer-only
//! fixed-point requantization is attempted.

use crate::ops::common::{broadcast_all, expand_to, numel};
use crate::ops::precision::round_to;
use crate::ops::{lookup as find_kernel, one, Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::{ElemType, Tensor};
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "QLinearMatMul" => qlinear_matmul,
        "QLinearConv" => qlinear_conv,
        _ => return None,
    };
    Some(k)
}

/// The saturation range of an 8-bit quantized type.
fn range(elem: ElemType) -> Result<(f64, f64), OpError> {
    match elem {
        ElemType::U8 => Ok((0.0, 255.0)),
        ElemType::I8 => Ok((-128.0, 127.0)),
        other => Err(OpError::new(format!(
            "quantized values must be int8 or uint8, got {other}"
        ))),
    }
}

/// `t`'s values broadcast (numpy style) to `shape`, as f64.
fn broadcast_f64(t: &Tensor, shape: &[usize], what: &str) -> Result<Vec<f64>, OpError> {
    if t.len() == 1 {
        return Ok(vec![t.to_f64_vec()?[0]; numel(shape)]);
    }
    let data = expand_to(t.candle(), shape).map_err(|e| {
        OpError::new(format!(
            "{what} {:?} does not broadcast to {shape:?}: {e}",
            t.shape()
        ))
    })?;
    Ok(t.with_data(data)?.to_f64_vec()?)
}

/// A per-row parameter of `a` given as a vector `[M]` becomes `[M, 1]`, so that it
/// broadcasts along rows; anything else is taken as it is.
fn per_row(p: &Tensor, a_rank: usize) -> Result<Tensor, OpError> {
    if p.rank() == 1 && p.len() > 1 && a_rank >= 2 {
        return Ok(p.with_data(p.candle().reshape((p.len(), 1))?)?);
    }
    Ok(p.clone())
}

/// `q - zero_point` as an int32 tensor of `q`'s shape.
fn shifted(q: &Tensor, zp: &Tensor, what: &str) -> Result<Tensor, OpError> {
    range(q.elem_type())?;
    if zp.elem_type() != q.elem_type() {
        return Err(OpError::new(format!(
            "{what} zero point is {}, the values {}",
            zp.elem_type(),
            q.elem_type()
        )));
    }
    let z = broadcast_f64(zp, q.shape(), what)?;
    let v: Vec<i64> = q
        .to_i64_vec()?
        .into_iter()
        .zip(z)
        .map(|(x, z)| x - z as i64)
        .collect();
    Ok(Tensor::from_i64_as(ElemType::I32, q.shape(), v)?)
}

/// Calls another family's kernel by name.
fn call(name: &str, n: &NodeInfo, vals: &[Value]) -> Result<Tensor, OpError> {
    let k = find_kernel("", name).ok_or_else(|| OpError::new(format!("internal: no {name}")))?;
    let out = k(
        n,
        &Inputs {
            values: vals.iter().map(Some).collect(),
        },
    )?;
    match out.into_iter().next() {
        Some(Value::Tensor(t)) => Ok(t),
        _ => Err(OpError::new(format!("internal: {name} gave no tensor"))),
    }
}

/// Requantizes integer accumulators: `round_half_even(acc * mult) + zp`,
/// saturated to `zp`'s type.
fn requantize(acc: &Tensor, mult: &[f64], zp: &Tensor) -> Result<Tensor, OpError> {
    let (lo, hi) = range(zp.elem_type())?;
    let z = broadcast_f64(zp, acc.shape(), "y_zero_point")?;
    let v: Vec<i64> = acc
        .to_f64_vec()?
        .iter()
        .zip(mult)
        .zip(z)
        .map(|((&a, &m), z)| (a * m + z).round_ties_even().clamp(lo, hi) as i64)
        .collect();
    Ok(Tensor::from_i64_as(zp.elem_type(), acc.shape(), v)?)
}

/// The float type the scales share.
fn scale_type(scales: &[&Tensor]) -> Result<ElemType, OpError> {
    let e = scales[0].elem_type();
    if !e.is_float() || scales.iter().any(|s| s.elem_type() != e) {
        return Err(OpError::new("scales must share one float type"));
    }
    Ok(e)
}

fn qlinear_matmul(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (a, a_s, a_zp) = (i.tensor(0)?, i.tensor(1)?, i.tensor(2)?);
    let (b, b_s, b_zp) = (i.tensor(3)?, i.tensor(4)?, i.tensor(5)?);
    let (y_s, y_zp) = (i.tensor(6)?, i.tensor(7)?);
    let se = scale_type(&[a_s, b_s, y_s])?;
    let (a_s, a_zp) = (per_row(a_s, a.rank())?, per_row(a_zp, a.rank())?);
    let sa = Value::Tensor(shifted(a, &a_zp, "a")?);
    let sb = Value::Tensor(shifted(b, b_zp, "b")?);
    let acc = call("MatMulInteger", n, &[sa, sb])?;
    let out = acc.shape().to_vec();
    // Per-row scales of `a` and per-column scales of `b` broadcast to the output
    // as numpy does; a scale of one element is per tensor.
    let fit = |s: &Tensor| -> Result<Vec<usize>, OpError> {
        if s.len() == 1 {
            Ok(Vec::new())
        } else {
            Ok(s.shape().to_vec())
        }
    };
    let shape = broadcast_all(&[&out, &fit(&a_s)?, &fit(b_s)?, &fit(y_s)?])?;
    if shape != out {
        return Err(OpError::new(format!(
            "scales of shapes {:?}, {:?}, {:?} do not fit the product {out:?}",
            a_s.shape(),
            b_s.shape(),
            y_s.shape()
        )));
    }
    let av = broadcast_f64(&a_s, &out, "a_scale")?;
    let bv = broadcast_f64(b_s, &out, "b_scale")?;
    let yv = broadcast_f64(y_s, &out, "y_scale")?;
    let r = |x: f64| round_to(se, x);
    let mult: Vec<f64> = (0..av.len()).map(|k| r(r(av[k] * bv[k]) / yv[k])).collect();
    one(requantize(&acc, &mult, y_zp)?)
}

fn qlinear_conv(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, x_s, x_zp) = (i.tensor(0)?, i.tensor(1)?, i.tensor(2)?);
    let (w, w_s, w_zp) = (i.tensor(3)?, i.tensor(4)?, i.tensor(5)?);
    let (y_s, y_zp) = (i.tensor(6)?, i.tensor(7)?);
    let se = scale_type(&[x_s, w_s, y_s])?;
    if x_s.len() != 1 || x_zp.len() != 1 || y_s.len() != 1 || y_zp.len() != 1 {
        return Err(OpError::new(
            "x and y scales and zero points must be per tensor",
        ));
    }
    let m = w.shape().first().copied().unwrap_or(0);
    // Per output channel parameters of `w` are [M]; they broadcast along axis 0.
    let per_channel = |p: &Tensor, what: &str| -> Result<Vec<f64>, OpError> {
        match p.len() {
            1 => Ok(vec![p.to_f64_vec()?[0]; m]),
            len if len == m && p.rank() == 1 => Ok(p.to_f64_vec()?),
            _ => Err(OpError::new(format!(
                "{what} {:?} should have 1 or {m} values",
                p.shape()
            ))),
        }
    };
    if w_zp.elem_type() != w.elem_type() {
        return Err(OpError::new(format!(
            "w zero point is {}, the weights {}",
            w_zp.elem_type(),
            w.elem_type()
        )));
    }
    let wz = per_channel(w_zp, "w_zero_point")?;
    let ws = per_channel(w_s, "w_scale")?;
    let mut wz_shape = vec![1; w.rank()];
    if let Some(d) = wz_shape.first_mut() {
        *d = m;
    }
    let wz_t = Tensor::from_f64_as(w.elem_type(), &wz_shape, wz)?;
    let sx = Value::Tensor(shifted(x, x_zp, "x")?);
    let sw = Value::Tensor(shifted(w, &wz_t, "w")?);
    let acc = call("ConvInteger", n, &[sx, sw])?;
    let shape = acc.shape().to_vec();
    let inner = numel(shape.get(2..).unwrap_or(&[]));
    let bias = match i.opt(8)? {
        Some(b) if b.len() == m => b.to_f64_vec()?,
        Some(b) => {
            return Err(OpError::new(format!(
                "bias has {} values for {m} channels",
                b.len()
            )))
        }
        None => vec![0.0; m],
    };
    let (xs, ys) = (x_s.to_f64_vec()?[0], y_s.to_f64_vec()?[0]);
    let r = |v: f64| round_to(se, v);
    let mut mult = Vec::with_capacity(numel(&shape));
    let mut acc_v = acc.to_f64_vec()?;
    for (k, a) in acc_v.iter_mut().enumerate() {
        let ch = (k / inner.max(1)) % m.max(1);
        *a += bias[ch];
        mult.push(r(r(xs * ws[ch]) / ys));
    }
    let acc = Tensor::from_f64_as(ElemType::F64, &shape, acc_v)?;
    one(requantize(&acc, &mult, y_zp)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u8s(shape: &[usize], v: Vec<i64>) -> Value {
        Value::Tensor(Tensor::from_i64_as(ElemType::U8, shape, v).unwrap())
    }

    fn f32s(shape: &[usize], v: Vec<f32>) -> Value {
        Value::Tensor(Tensor::from_f32(shape, v).unwrap())
    }

    fn run(k: Kernel, vals: &[Value]) -> Result<Vec<i64>, OpError> {
        let n = NodeInfo {
            attrs: Default::default(),
            opset: 21,
            outputs: 1,
        };
        let out = k(
            &n,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )?;
        Ok(out[0].as_tensor().unwrap().to_i64_vec().unwrap())
    }

    #[test]
    fn matmul_shifts_multiplies_and_requantizes() {
        // (a - 1) = [[1, 2]], (b - 0) = [[3], [4]]: 11; * 0.5 * 1 / 0.25 = 22; + 10.
        let vals = [
            u8s(&[1, 2], vec![2, 3]),
            f32s(&[], vec![0.5]),
            u8s(&[], vec![1]),
            u8s(&[2, 1], vec![3, 4]),
            f32s(&[], vec![1.0]),
            u8s(&[], vec![0]),
            f32s(&[], vec![0.25]),
            u8s(&[], vec![10]),
        ];
        assert_eq!(run(qlinear_matmul, &vals).unwrap(), vec![32]);
    }

    #[test]
    fn matmul_saturates_and_rounds_half_to_even() {
        // 11 * 0.5 = 5.5 rounds to 6; 11 * 100 saturates at 255.
        let mk = |y_scale: f32| {
            [
                u8s(&[1, 2], vec![1, 2]),
                f32s(&[], vec![1.0]),
                u8s(&[], vec![0]),
                u8s(&[2, 1], vec![3, 4]),
                f32s(&[], vec![1.0]),
                u8s(&[], vec![0]),
                f32s(&[], vec![y_scale]),
                u8s(&[], vec![0]),
            ]
        };
        assert_eq!(run(qlinear_matmul, &mk(2.0)).unwrap(), vec![6]);
        assert_eq!(run(qlinear_matmul, &mk(0.01)).unwrap(), vec![255]);
    }

    #[test]
    fn matmul_rejects_a_zero_point_of_another_type() {
        let i8zp = Value::Tensor(Tensor::from_i64_as(ElemType::I8, &[], vec![0]).unwrap());
        let vals = [
            u8s(&[1, 1], vec![1]),
            f32s(&[], vec![1.0]),
            i8zp,
            u8s(&[1, 1], vec![1]),
            f32s(&[], vec![1.0]),
            u8s(&[], vec![0]),
            f32s(&[], vec![1.0]),
            u8s(&[], vec![0]),
        ];
        assert!(run(qlinear_matmul, &vals).is_err());
    }

    #[test]
    fn conv_with_per_channel_weights_and_bias() {
        // 1x1 kernel, two output channels over one input pixel of value 4 (zp 2).
        let vals = [
            u8s(&[1, 1, 1, 1], vec![4]),
            f32s(&[], vec![1.0]),
            u8s(&[], vec![2]),
            u8s(&[2, 1, 1, 1], vec![3, 5]),
            f32s(&[2], vec![1.0, 2.0]),
            u8s(&[2], vec![1, 1]),
            f32s(&[], vec![1.0]),
            u8s(&[], vec![0]),
            Value::Tensor(Tensor::from_i64_as(ElemType::I32, &[2], vec![1, 0]).unwrap()),
        ];
        // ch0: (2 * 2 + 1) * 1 = 5; ch1: (2 * 4 + 0) * 2 = 16.
        assert_eq!(run(qlinear_conv, &vals).unwrap(), vec![5, 16]);
    }
}
