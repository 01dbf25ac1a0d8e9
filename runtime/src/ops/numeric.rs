//! Numeric odds and ends: `CumProd` (the product twin of `CumSum`), `Det` and
//! `BitCast`.
//!
//! `CumProd` and `Det` run on host copies, floats in f64 and integers in wrapping
//! i64; `BitCast` moves raw little-endian bit patterns between types of one width.

use half::{bf16, f16};

use crate::ops::common::{axis_in, from_f64, from_i64, need_float, numel, scalar_i64};
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::{ElemType, Tensor};

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "CumProd" => cumprod,
        "Det" => det,
        "BitCast" => bitcast,
        _ => return None,
    };
    Some(k)
}

/// Running products along `axis` of an `outer x len x inner` layout, in place.
fn running_product<T: Copy>(
    v: &mut [T],
    (outer, len, inner): (usize, usize, usize),
    one: T,
    exclusive: bool,
    reverse: bool,
    mul: impl Fn(T, T) -> T,
) {
    for o in 0..outer {
        for i in 0..inner {
            let mut acc = one;
            for step in 0..len {
                let k = if reverse { len - 1 - step } else { step };
                let at = (o * len + k) * inner + i;
                let x = v[at];
                if exclusive {
                    v[at] = acc;
                    acc = mul(acc, x);
                } else {
                    acc = mul(acc, x);
                    v[at] = acc;
                }
            }
        }
    }
}

fn cumprod(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let axis = i.tensor(1)?;
    if axis.len() != 1 {
        return Err(OpError::new("CumProd axis must be a scalar"));
    }
    let shape = x.shape();
    // A scalar has one axis position to scan, like a one-element vector.
    let a = axis_in(scalar_i64(axis)?, shape.len().max(1))?;
    let dims = if shape.is_empty() {
        (1, 1, 1)
    } else {
        (numel(&shape[..a]), shape[a], numel(&shape[a + 1..]))
    };
    let exclusive = n.attrs.int("exclusive", 0)? != 0;
    let reverse = n.attrs.int("reverse", 0)? != 0;
    if x.elem_type().is_float() {
        let mut v = x.to_f64_vec()?;
        running_product(&mut v, dims, 1.0, exclusive, reverse, |a, b| a * b);
        one(from_f64(x.elem_type(), shape, v)?)
    } else {
        let mut v = x.to_i64_vec()?;
        running_product(&mut v, dims, 1, exclusive, reverse, i64::wrapping_mul);
        one(from_i64(x.elem_type(), shape, v)?)
    }
}

/// The determinant of the `m x m` row-major matrix `a`, by LU with partial pivoting.
fn determinant(mut a: Vec<f64>, m: usize) -> f64 {
    let mut det = 1.0;
    for c in 0..m {
        let pivot = (c..m)
            .max_by(|&p, &q| a[p * m + c].abs().total_cmp(&a[q * m + c].abs()))
            .unwrap_or(c);
        if a[pivot * m + c] == 0.0 {
            return 0.0;
        }
        if pivot != c {
            for k in 0..m {
                a.swap(c * m + k, pivot * m + k);
            }
            det = -det;
        }
        let p = a[c * m + c];
        det *= p;
        for r in c + 1..m {
            let f = a[r * m + c] / p;
            for k in c..m {
                a[r * m + k] -= f * a[c * m + k];
            }
        }
    }
    det
}

fn det(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    need_float(x, "Det")?;
    let shape = x.shape();
    let r = shape.len();
    if r < 2 || shape[r - 1] != shape[r - 2] {
        return Err(OpError::new(format!(
            "Det needs square matrices in the last two dims, got {shape:?}"
        )));
    }
    let m = shape[r - 1];
    let v = x.to_f64_vec()?;
    let batch = numel(&shape[..r - 2]);
    let out = (0..batch)
        .map(|b| determinant(v[b * m * m..(b + 1) * m * m].to_vec(), m))
        .collect();
    one(from_f64(x.elem_type(), &shape[..r - 2], out)?)
}

/// Bits per element.
fn width(t: ElemType) -> u32 {
    match t {
        ElemType::I8 | ElemType::U8 | ElemType::Bool => 8,
        ElemType::I16 | ElemType::U16 | ElemType::F16 | ElemType::BF16 => 16,
        ElemType::I32 | ElemType::U32 | ElemType::F32 => 32,
        _ => 64,
    }
}

/// The raw bit pattern of every element, zero-extended.
fn bits_of(x: &Tensor) -> Result<Vec<u64>, OpError> {
    let flat = x.candle().flatten_all()?;
    Ok(match x.elem_type() {
        ElemType::F32 => flat
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| u64::from(v.to_bits()))
            .collect(),
        ElemType::F64 => flat
            .to_vec1::<f64>()?
            .into_iter()
            .map(f64::to_bits)
            .collect(),
        ElemType::F16 => flat
            .to_vec1::<f16>()?
            .into_iter()
            .map(|v| u64::from(v.to_bits()))
            .collect(),
        ElemType::BF16 => flat
            .to_vec1::<bf16>()?
            .into_iter()
            .map(|v| u64::from(v.to_bits()))
            .collect(),
        t => {
            let mask = if width(t) == 64 {
                u64::MAX
            } else {
                (1u64 << width(t)) - 1
            };
            x.to_i64_vec()?
                .into_iter()
                .map(|v| v as u64 & mask)
                .collect()
        }
    })
}

fn bitcast(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let code = n.attrs.int("to", 0)?;
    let to = i32::try_from(code)
        .ok()
        .and_then(ElemType::from_onnx)
        .ok_or_else(|| OpError::new(format!("BitCast to unsupported element type {code}")))?;
    let (from_w, to_w) = (width(x.elem_type()), width(to));
    if from_w != to_w {
        return Err(OpError::new(format!(
            "BitCast from {} ({from_w} bits) to {to} ({to_w} bits): widths differ",
            x.elem_type()
        )));
    }
    let bits = bits_of(x)?;
    let shape = x.shape();
    let dev = x.candle().device();
    let data = match to {
        ElemType::F32 => {
            let v: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b as u32)).collect();
            candle_core::Tensor::from_vec(v, shape, dev)?
        }
        ElemType::F64 => {
            let v: Vec<f64> = bits.iter().map(|&b| f64::from_bits(b)).collect();
            candle_core::Tensor::from_vec(v, shape, dev)?
        }
        ElemType::F16 => {
            let v: Vec<f16> = bits.iter().map(|&b| f16::from_bits(b as u16)).collect();
            candle_core::Tensor::from_vec(v, shape, dev)?
        }
        ElemType::BF16 => {
            let v: Vec<bf16> = bits.iter().map(|&b| bf16::from_bits(b as u16)).collect();
            candle_core::Tensor::from_vec(v, shape, dev)?
        }
        t => {
            let shift = 64 - to_w;
            let v: Vec<i64> = bits
                .iter()
                .map(|&b| {
                    if t.is_signed_int() {
                        // Sign-extend from the type's width.
                        ((b << shift) as i64) >> shift
                    } else {
                        // Off-spec: a bool byte other than 0 or 1 has no ONNX meaning;
                        // it reads as true.
                        b as i64
                    }
                })
                .collect();
            return one(Tensor::from_i64_as(t, shape, v)?);
        }
    };
    one(Tensor::from_candle(to, data)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attrs::Attr;
    use crate::value::Value;

    fn info(attrs: &[(&str, Attr)]) -> NodeInfo {
        crate::ops::testing::info_with(26, 1, attrs)
    }

    use crate::ops::testing::run;

    fn axis(a: i64) -> Value {
        Value::Tensor(Tensor::from_i64(&[], vec![a]).unwrap())
    }

    #[test]
    fn cumprod_follows_the_spec_examples() {
        let x = Value::Tensor(Tensor::from_i64_as(ElemType::I32, &[3], vec![1, 2, 3]).unwrap());
        let cases = [
            (0, 0, vec![1, 2, 6]),
            (1, 0, vec![1, 1, 2]),
            (0, 1, vec![6, 6, 3]),
            (1, 1, vec![6, 3, 1]),
        ];
        for (exclusive, reverse, want) in cases {
            let n = info(&[
                ("exclusive", Attr::Int(exclusive)),
                ("reverse", Attr::Int(reverse)),
            ]);
            let t = run(cumprod, &n, &[x.clone(), axis(0)]).unwrap();
            assert_eq!(t.elem_type(), ElemType::I32);
            assert_eq!(t.to_i64_vec().unwrap(), want);
        }
    }

    #[test]
    fn cumprod_along_a_negative_axis() {
        let x = Tensor::from_f32(&[2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let t = run(cumprod, &info(&[]), &[Value::Tensor(x), axis(-1)]).unwrap();
        assert_eq!(t.to_f32_vec().unwrap(), vec![1., 2., 6., 4., 20., 120.]);
    }

    #[test]
    fn cumprod_rejects_an_axis_out_of_range() {
        let x = Tensor::from_f32(&[2], vec![1., 2.]).unwrap();
        assert!(run(cumprod, &info(&[]), &[Value::Tensor(x), axis(1)]).is_err());
    }

    #[test]
    fn det_of_a_batch_needs_pivoting() {
        let x = Tensor::from_f32(&[2, 2, 2], vec![0., 1., 2., 3., 1., 2., 3., 4.]).unwrap();
        let t = run(det, &info(&[]), &[Value::Tensor(x)]).unwrap();
        assert_eq!(t.shape(), &[2]);
        assert_eq!(t.to_f32_vec().unwrap(), vec![-2., -2.]);
    }

    #[test]
    fn det_rejects_a_non_square_matrix() {
        let x = Tensor::from_f32(&[2, 3], vec![0.; 6]).unwrap();
        assert!(run(det, &info(&[]), &[Value::Tensor(x)]).is_err());
    }

    #[test]
    fn bitcast_reinterprets_float_bits_as_int32() {
        let x = Tensor::from_f32(&[], vec![1.0]).unwrap();
        let t = run(bitcast, &info(&[("to", Attr::Int(6))]), &[Value::Tensor(x)]).unwrap();
        assert_eq!(t.elem_type(), ElemType::I32);
        assert_eq!(t.to_i64_vec().unwrap(), vec![1_065_353_216]);
    }

    #[test]
    fn bitcast_sign_extends_into_narrow_signed_types() {
        let x = Tensor::from_i64_as(ElemType::U16, &[2], vec![32768, 65535]).unwrap();
        let t = run(bitcast, &info(&[("to", Attr::Int(5))]), &[Value::Tensor(x)]).unwrap();
        assert_eq!(t.to_i64_vec().unwrap(), vec![-32768, -1]);
    }

    #[test]
    fn bitcast_between_widths_is_rejected() {
        let x = Tensor::from_f32(&[1], vec![1.0]).unwrap();
        let out = run(bitcast, &info(&[("to", Attr::Int(7))]), &[Value::Tensor(x)]);
        assert!(out.is_err());
    }
}
