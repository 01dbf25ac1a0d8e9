//! Type conversion and inference-time no-ops: `Cast`, `CastLike`, `Dropout`,
//! `QuantizeLinear`, `DequantizeLinear`, `DynamicQuantizeLinear`, `Einsum`.
//!
//! Casts follow ONNX: float to integer truncates toward zero, anything non-zero is
//! `true`, integers wrap into narrower types.

use crate::ops::common::{axis_in, bool_tensor, expand_to, from_f64, numel, scalar_f64};
use crate::ops::precision::round_to;
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::{ElemType, Tensor};
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "Cast" => cast,
        "CastLike" => |_, i| one(cast_to(i.tensor(0)?, i.tensor(1)?.elem_type())?),
        "Dropout" => dropout,
        "QuantizeLinear" => quantize,
        "DequantizeLinear" => dequantize,
        "DynamicQuantizeLinear" => dynamic_quantize,
        "Einsum" => crate::ops::einsum::einsum,
        _ => return None,
    };
    Some(k)
}

/// `t` converted to `to`.
pub(crate) fn cast_to(t: &Tensor, to: ElemType) -> Result<Tensor, OpError> {
    if t.elem_type() == to {
        return Ok(t.clone());
    }
    if to == ElemType::Bool {
        let v = t.to_f64_vec()?.into_iter().map(|v| v != 0.0).collect();
        return bool_tensor(t.shape(), v);
    }
    if to.is_float() {
        if t.elem_type() == ElemType::U64 {
            let v = t
                .to_i64_vec()?
                .into_iter()
                .map(|v| v as u64 as f64)
                .collect();
            return from_f64(to, t.shape(), v);
        }
        return Ok(Tensor::from_candle(to, t.candle().clone())?);
    }
    if t.elem_type().is_float() {
        let v: Vec<i64> = t
            .to_f64_vec()?
            .into_iter()
            .map(|v| {
                if to == ElemType::U64 {
                    v as u64 as i64
                } else {
                    v as i64
                }
            })
            .collect();
        return Ok(Tensor::from_i64_as(to, t.shape(), v)?);
    }
    Ok(Tensor::from_i64_as(to, t.shape(), t.to_i64_vec()?)?)
}

fn cast(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let code = n.attrs.int("to", 0)?;
    let to = ElemType::from_onnx(code as i32)
        .ok_or_else(|| OpError::new(format!("Cast to unsupported element type {code}")))?;
    one(cast_to(i.tensor(0)?, to)?)
}

fn dropout(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let training = match i.opt(2)? {
        Some(t) => scalar_f64(t)? != 0.0,
        None => false,
    };
    let ratio = match i.opt(1)? {
        Some(t) => scalar_f64(t)?,
        None => f64::from(n.attrs.float("ratio", 0.5)?),
    };
    if training && ratio != 0.0 {
        return Err(OpError::new("Dropout in training mode is not supported"));
    }
    let mut out = vec![Value::Tensor(x.clone())];
    if n.outputs > 1 {
        out.push(Value::Tensor(bool_tensor(x.shape(), vec![true; x.len()])?));
    }
    Ok(out)
}

/// A scale or zero point broadcast along `axis` of `shape` (per-tensor when it
/// has one element; blocked when `block` > 0).
fn along_axis(p: &Tensor, shape: &[usize], axis: i64, block: i64) -> Result<Vec<f64>, OpError> {
    if p.len() == 1 {
        return Ok(vec![p.to_f64_vec()?[0]; numel(shape)]);
    }
    let a = axis_in(axis, shape.len())?;
    let v = p.to_f64_vec()?;
    if block > 0 {
        let b = block as usize;
        let inner = numel(&shape[a + 1..]);
        let outer = numel(&shape[..a]);
        let dim = shape[a];
        let pdim = p.shape().get(a).copied().unwrap_or(1);
        let mut out = Vec::with_capacity(numel(shape));
        for o in 0..outer {
            for d in 0..dim {
                for k in 0..inner {
                    out.push(v[(o * pdim + d / b) * inner + k]);
                }
            }
        }
        return Ok(out);
    }
    let mut bshape = vec![1; shape.len()];
    bshape[a] = shape[a];
    let t = p.with_data(p.candle().reshape(bshape)?)?;
    Ok(t.with_data(expand_to(t.candle(), shape)?)?.to_f64_vec()?)
}

fn quantize(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let axis = n.attrs.int("axis", 1)?;
    let block = n.attrs.int("block_size", 0)?;
    let scale = along_axis(i.tensor(1)?, x.shape(), axis, block)?;
    // The quotient is taken in the inputs' own type, so that a tie there (0.5 /
    // (1 / 51) is 25.5 in float, 25.4999... in double) rounds to even as specified.
    let quotient_elem = quotient_type(x.elem_type(), i.tensor(1)?.elem_type());
    let (zp, elem) = match i.opt(2)? {
        Some(z) => (along_axis(z, x.shape(), axis, block)?, z.elem_type()),
        None => (vec![0.0; x.len()], ElemType::U8),
    };
    let elem = match n.attrs.opt_int("output_dtype")? {
        Some(c) if c != 0 => ElemType::from_onnx(c as i32)
            .ok_or_else(|| OpError::new(format!("unsupported output_dtype {c}")))?,
        _ => elem,
    };
    let (lo, hi) = match elem {
        ElemType::U8 => (0.0, 255.0),
        ElemType::I8 => (-128.0, 127.0),
        ElemType::U16 => (0.0, 65535.0),
        ElemType::I16 => (-32768.0, 32767.0),
        ElemType::I32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
        other => return Err(OpError::new(format!("QuantizeLinear to {other}"))),
    };
    let v: Vec<i64> = x
        .to_f64_vec()?
        .iter()
        .enumerate()
        .map(|(k, &v)| {
            let q = round_to(quotient_elem, v / scale[k]);
            (q.round_ties_even() + zp[k]).clamp(lo, hi) as i64
        })
        .collect();
    one(Tensor::from_i64_as(elem, x.shape(), v)?)
}

/// The float type `x / scale` is computed in: the inputs' common type, float when
/// two different half types meet.
fn quotient_type(x: ElemType, scale: ElemType) -> ElemType {
    if x == scale {
        x
    } else if x == ElemType::F64 || scale == ElemType::F64 {
        ElemType::F64
    } else {
        ElemType::F32
    }
}

fn dequantize(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let axis = n.attrs.int("axis", 1)?;
    let block = n.attrs.int("block_size", 0)?;
    let s = i.tensor(1)?;
    let scale = along_axis(s, x.shape(), axis, block)?;
    let zp = match i.opt(2)? {
        Some(z) => along_axis(z, x.shape(), axis, block)?,
        None => vec![0.0; x.len()],
    };
    let v = x
        .to_f64_vec()?
        .iter()
        .enumerate()
        .map(|(k, &v)| (v - zp[k]) * scale[k])
        .collect();
    one(from_f64(s.elem_type(), x.shape(), v)?)
}

fn dynamic_quantize(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let v = x.to_f64_vec()?;
    let max = v.iter().copied().fold(0f64, f64::max);
    let min = v.iter().copied().fold(0f64, f64::min);
    // The reference computes in float32; so does this, to round the same way.
    let scale = ((max - min) as f32) / 255.0f32;
    let zp = if scale == 0.0 {
        0.0
    } else {
        (0.0 - min as f32 / scale)
            .round_ties_even()
            .clamp(0.0, 255.0)
    };
    let q: Vec<i64> = v
        .iter()
        .map(|&v| {
            let s = if scale == 0.0 { 0.0 } else { v as f32 / scale };
            (s.round_ties_even() + zp).clamp(0.0, 255.0) as i64
        })
        .collect();
    let scale = f64::from(scale);
    Ok(vec![
        Value::Tensor(Tensor::from_i64_as(ElemType::U8, x.shape(), q)?),
        Value::Tensor(from_f64(ElemType::F32, &[], vec![scale])?),
        Value::Tensor(Tensor::from_i64_as(ElemType::U8, &[], vec![zp as i64])?),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_divides_in_float_so_float_ties_round_to_even() {
        // 0.5 / (1 / 51) is 25.4999... in double but exactly 25.5 in float, which
        // rounds to 26; with zero point 153 that is 179 (DynamicQuantizeLinear's
        // expanded test).
        let x = Tensor::from_f32(&[2], vec![0.5, 2.0]).unwrap();
        let scale = Tensor::from_f32(&[], vec![0.019_607_844]).unwrap();
        let zp = Tensor::from_i64_as(ElemType::U8, &[], vec![153]).unwrap();
        let vals = [Value::Tensor(x), Value::Tensor(scale), Value::Tensor(zp)];
        let n = NodeInfo {
            attrs: Default::default(),
            opset: 21,
            outputs: 1,
        };
        let out = quantize(
            &n,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        let y = out[0].as_tensor().unwrap();
        assert_eq!(y.elem_type(), ElemType::U8);
        assert_eq!(y.to_i64_vec().unwrap(), vec![179, 255]);
    }

    #[test]
    fn quotients_of_mixed_types_are_taken_in_the_wider() {
        assert_eq!(quotient_type(ElemType::F16, ElemType::F16), ElemType::F16);
        assert_eq!(quotient_type(ElemType::F16, ElemType::F32), ElemType::F32);
        assert_eq!(quotient_type(ElemType::F32, ElemType::F64), ElemType::F64);
    }
}
