//! Element-wise binary and variadic operators with numpy broadcasting: arithmetic,
//! comparison, logic, bitwise, `Where`, `PRelu`, `Sum`/`Mean`/`Max`/`Min`.
//!
//! Floats run on candle's broadcast kernels; integers run on host copies in i64 with
//! wrapping arithmetic (ONNX integer arithmetic wraps; candle's would trap in debug
//! builds) and are narrowed back to their element type.

use crate::ops::common::{
    bool_tensor, broadcast_all, broadcast_shape, expand_to, from_f64, from_i64, like,
};
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::{ElemType, Tensor};

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "Add" => add,
        "Sub" => sub,
        "Mul" => mul,
        "Div" => div,
        "Pow" => pow,
        "Mod" => modulo,
        "Equal" => equal,
        "Less" => less,
        "Greater" => greater,
        "LessOrEqual" => less_or_equal,
        "GreaterOrEqual" => greater_or_equal,
        "And" => and,
        "Or" => or,
        "Xor" => xor,
        "BitwiseAnd" => bitwise_and,
        "BitwiseOr" => bitwise_or,
        "BitwiseXor" => bitwise_xor,
        "BitShift" => bit_shift,
        "Where" => where_,
        "PRelu" => prelu,
        "Sum" => sum,
        "Mean" => mean,
        "Max" => max,
        "Min" => min,
        _ => return None,
    };
    Some(k)
}

/// A broadcast shape and both operands' values over it.
type Broadcast<T> = (Vec<usize>, Vec<T>, Vec<T>);

/// Both operands' values as i64 over the broadcast shape.
fn host_i64(a: &Tensor, b: &Tensor) -> Result<Broadcast<i64>, OpError> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let av = a.with_data(expand_to(a.candle(), &shape)?)?.to_i64_vec()?;
    let bv = b.with_data(expand_to(b.candle(), &shape)?)?.to_i64_vec()?;
    Ok((shape, av, bv))
}

/// Both operands' values as f64 over the broadcast shape.
fn host_f64(a: &Tensor, b: &Tensor) -> Result<Broadcast<f64>, OpError> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let av = a.with_data(expand_to(a.candle(), &shape)?)?.to_f64_vec()?;
    let bv = b.with_data(expand_to(b.candle(), &shape)?)?.to_f64_vec()?;
    Ok((shape, av, bv))
}

fn same_type(a: &Tensor, b: &Tensor) -> Result<(), OpError> {
    if a.elem_type() != b.elem_type() {
        return Err(OpError::new(format!(
            "operands have different element types: {} and {}",
            a.elem_type(),
            b.elem_type()
        )));
    }
    Ok(())
}

/// Arithmetic: candle for floats, wrapping i64 on the host for integers.
fn arith(
    i: &Inputs<'_>,
    float: fn(
        &candle_core::Tensor,
        &candle_core::Tensor,
    ) -> candle_core::Result<candle_core::Tensor>,
    int: fn(i64, i64) -> Option<i64>,
) -> OpResult {
    let (a, b) = (i.tensor(0)?, i.tensor(1)?);
    same_type(a, b)?;
    one(binary(a, b, float, int)?)
}

fn binary(
    a: &Tensor,
    b: &Tensor,
    float: fn(
        &candle_core::Tensor,
        &candle_core::Tensor,
    ) -> candle_core::Result<candle_core::Tensor>,
    int: fn(i64, i64) -> Option<i64>,
) -> Result<Tensor, OpError> {
    if a.elem_type().is_float() {
        return like(a, float(a.candle(), b.candle())?);
    }
    let (shape, av, bv) = host_i64(a, b)?;
    let v = av
        .iter()
        .zip(&bv)
        .map(|(&x, &y)| int(x, y).ok_or_else(|| OpError::new("integer division by zero")))
        .collect::<Result<Vec<_>, _>>()?;
    from_i64(a.elem_type(), &shape, v)
}

fn add(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    arith(i, |a, b| a.broadcast_add(b), |x, y| Some(x.wrapping_add(y)))
}

fn sub(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    arith(i, |a, b| a.broadcast_sub(b), |x, y| Some(x.wrapping_sub(y)))
}

fn mul(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    arith(i, |a, b| a.broadcast_mul(b), |x, y| Some(x.wrapping_mul(y)))
}

fn div(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (a, b) = (i.tensor(0)?, i.tensor(1)?);
    same_type(a, b)?;
    one(binary(a, b, |a, b| a.broadcast_div(b), i64::checked_div)?)
}

fn pow(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (a, b) = (i.tensor(0)?, i.tensor(1)?);
    if a.elem_type().is_float() {
        let (shape, av, bv) = host_f64(a, b)?;
        let v = av.iter().zip(&bv).map(|(&x, &y)| x.powf(y)).collect();
        return one(from_f64(a.elem_type(), &shape, v)?);
    }
    let (shape, av, bv) = host_f64(a, b)?;
    let v = av
        .iter()
        .zip(&bv)
        .map(|(&x, &y)| x.powf(y) as i64)
        .collect();
    one(from_i64(a.elem_type(), &shape, v)?)
}

fn modulo(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (a, b) = (i.tensor(0)?, i.tensor(1)?);
    let fmod = n.attrs.int("fmod", 0)? != 0;
    if a.elem_type().is_float() {
        let (shape, av, bv) = host_f64(a, b)?;
        let v = av
            .iter()
            .zip(&bv)
            .map(|(&x, &y)| {
                if fmod {
                    x % y
                } else {
                    let r = x % y;
                    if r != 0.0 && (r < 0.0) != (y < 0.0) {
                        r + y
                    } else {
                        r
                    }
                }
            })
            .collect();
        return one(from_f64(a.elem_type(), &shape, v)?);
    }
    let (shape, av, bv) = host_i64(a, b)?;
    let v = av
        .iter()
        .zip(&bv)
        .map(|(&x, &y)| {
            let r = x.checked_rem(y)?;
            Some(if !fmod && r != 0 && (r < 0) != (y < 0) {
                r + y
            } else {
                r
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| OpError::new("integer modulo by zero"))?;
    one(from_i64(a.elem_type(), &shape, v)?)
}

fn compare(i: &Inputs<'_>, f: fn(std::cmp::Ordering) -> bool) -> OpResult {
    let (a, b) = (i.tensor(0)?, i.tensor(1)?);
    same_type(a, b)?;
    if a.elem_type().is_float() {
        let (shape, av, bv) = host_f64(a, b)?;
        let v = av
            .iter()
            .zip(&bv)
            .map(|(x, y)| x.partial_cmp(y).is_some_and(f))
            .collect();
        return one(bool_tensor(&shape, v)?);
    }
    let (shape, av, bv) = host_i64(a, b)?;
    let unsigned64 = a.elem_type() == ElemType::U64;
    let v = av
        .iter()
        .zip(&bv)
        .map(|(&x, &y)| {
            if unsigned64 {
                f((x as u64).cmp(&(y as u64)))
            } else {
                f(x.cmp(&y))
            }
        })
        .collect();
    one(bool_tensor(&shape, v)?)
}

fn equal(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    compare(i, |o| o.is_eq())
}

fn less(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    compare(i, |o| o.is_lt())
}

fn greater(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    compare(i, |o| o.is_gt())
}

fn less_or_equal(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    compare(i, |o| o.is_le())
}

fn greater_or_equal(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    compare(i, |o| o.is_ge())
}

fn int_binary(i: &Inputs<'_>, f: fn(i64, i64) -> i64) -> OpResult {
    let (a, b) = (i.tensor(0)?, i.tensor(1)?);
    let (shape, av, bv) = host_i64(a, b)?;
    let v = av.iter().zip(&bv).map(|(&x, &y)| f(x, y)).collect();
    one(from_i64(a.elem_type(), &shape, v)?)
}

fn and(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    int_binary(i, |x, y| i64::from(x != 0 && y != 0))
}

fn or(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    int_binary(i, |x, y| i64::from(x != 0 || y != 0))
}

fn xor(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    int_binary(i, |x, y| i64::from((x != 0) != (y != 0)))
}

fn bitwise_and(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    int_binary(i, |x, y| x & y)
}

fn bitwise_or(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    int_binary(i, |x, y| x | y)
}

fn bitwise_xor(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    int_binary(i, |x, y| x ^ y)
}

fn bit_shift(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let left = match n.attrs.string("direction", "")? {
        "LEFT" => true,
        "RIGHT" => false,
        d => {
            return Err(OpError::new(format!(
                "direction must be LEFT or RIGHT, got {d:?}"
            )))
        }
    };
    let (a, b) = (i.tensor(0)?, i.tensor(1)?);
    let (shape, av, bv) = host_i64(a, b)?;
    let elem = a.elem_type();
    let width: i64 = match elem {
        ElemType::I8 | ElemType::U8 => 8,
        ElemType::I16 | ElemType::U16 => 16,
        ElemType::I32 | ElemType::U32 => 32,
        ElemType::I64 | ElemType::U64 => 64,
        other => return Err(OpError::new(format!("BitShift on {other}"))),
    };
    let signed = elem.is_signed_int();
    let v = av
        .iter()
        .zip(&bv)
        .map(|(&x, &y)| {
            // Opset 28: a shift outside [0, width) leaves only the sign fill.
            if y < 0 || y >= width {
                return if !left && signed && x < 0 { -1 } else { 0 };
            }
            if left {
                // Bits past the type's width are dropped when narrowing back.
                ((x as u64) << y) as i64
            } else if signed {
                // Signed values arrive sign-extended: an arithmetic shift.
                x >> y
            } else {
                ((x as u64) >> y) as i64
            }
        })
        .collect();
    one(from_i64(a.elem_type(), &shape, v)?)
}

fn where_(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (c, x, y) = (i.tensor(0)?, i.tensor(1)?, i.tensor(2)?);
    same_type(x, y)?;
    let shape = broadcast_all(&[c.shape(), x.shape(), y.shape()])?;
    let cc = expand_to(c.candle(), &shape)?;
    let xc = expand_to(x.candle(), &shape)?;
    let yc = expand_to(y.candle(), &shape)?;
    one(like(x, cc.where_cond(&xc, &yc)?)?)
}

fn prelu(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, slope) = (i.tensor(0)?, i.tensor(1)?);
    // Before opset 7 a 1-D slope of C values applies along the channel axis.
    let reshaped_slope;
    let slope = if slope.rank() == 1
        && x.rank() > 2
        && slope.shape()[0] == x.shape()[1]
        && broadcast_shape(x.shape(), slope.shape()).is_err()
    {
        let mut s = vec![slope.shape()[0]];
        s.extend(std::iter::repeat_n(1, x.rank() - 2));
        reshaped_slope = like(slope, slope.candle().reshape(s)?)?;
        &reshaped_slope
    } else {
        slope
    };
    let (shape, xv, sv) = host_f64(x, slope)?;
    if shape != x.shape() {
        return Err(OpError::new(format!(
            "slope {:?} does not broadcast to X {:?}",
            slope.shape(),
            x.shape()
        )));
    }
    let v = xv
        .iter()
        .zip(&sv)
        .map(|(&x, &s)| if x < 0.0 { x * s } else { x })
        .collect();
    one(from_f64(x.elem_type(), &shape, v)?)
}

fn variadic(
    i: &Inputs<'_>,
    float: fn(
        &candle_core::Tensor,
        &candle_core::Tensor,
    ) -> candle_core::Result<candle_core::Tensor>,
    int: fn(i64, i64) -> Option<i64>,
) -> Result<Tensor, OpError> {
    let ts = i.tensors()?;
    let (first, rest) = ts
        .split_first()
        .ok_or_else(|| OpError::new("needs at least one input"))?;
    let mut acc = (*first).clone();
    for t in rest {
        same_type(&acc, t)?;
        acc = binary(&acc, t, float, int)?;
    }
    Ok(acc)
}

fn sum(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    one(variadic(
        i,
        |a, b| a.broadcast_add(b),
        |x, y| Some(x.wrapping_add(y)),
    )?)
}

fn mean(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let s = variadic(i, |a, b| a.broadcast_add(b), |x, y| Some(x.wrapping_add(y)))?;
    let n = i.tensors()?.len() as f64;
    one(like(&s, (s.candle() / n)?)?)
}

fn float_max(
    a: &candle_core::Tensor,
    b: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    // NaN propagates, as numpy's maximum does.
    let m = a.broadcast_maximum(b)?;
    nan_propagate(a, b, m)
}

fn float_min(
    a: &candle_core::Tensor,
    b: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    let m = a.broadcast_minimum(b)?;
    nan_propagate(a, b, m)
}

fn nan_propagate(
    a: &candle_core::Tensor,
    b: &candle_core::Tensor,
    m: candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    let shape = m.dims().to_vec();
    let a = a.broadcast_as(&*shape)?;
    let b = b.broadcast_as(&*shape)?;
    let m = a.ne(&a)?.where_cond(&a, &m)?;
    b.ne(&b)?.where_cond(&b, &m)
}

fn max(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let ts = i.tensors()?;
    if ts.first().is_some_and(|t| t.elem_type() == ElemType::U64) {
        return one(variadic(i, float_max, |x, y| {
            Some(if (x as u64) > (y as u64) { x } else { y })
        })?);
    }
    one(variadic(i, float_max, |x, y| Some(x.max(y)))?)
}

fn min(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let ts = i.tensors()?;
    if ts.first().is_some_and(|t| t.elem_type() == ElemType::U64) {
        return one(variadic(i, float_min, |x, y| {
            Some(if (x as u64) < (y as u64) { x } else { y })
        })?);
    }
    one(variadic(i, float_min, |x, y| Some(x.min(y)))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    fn run(k: Kernel, ts: &[Tensor]) -> Tensor {
        let vals: Vec<Value> = ts.iter().cloned().map(Value::Tensor).collect();
        let info = NodeInfo {
            attrs: Default::default(),
            opset: 17,
            outputs: 1,
        };
        let out = k(
            &info,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        out[0].as_tensor().unwrap().clone()
    }

    #[test]
    fn add_broadcasts_a_row_over_a_matrix() {
        let a = Tensor::from_f32(&[2, 2], vec![1., 2., 3., 4.]).unwrap();
        let b = Tensor::from_f32(&[2], vec![10., 20.]).unwrap();
        let r = run(add, &[a, b]);
        assert_eq!(r.to_f32_vec().unwrap(), vec![11., 22., 13., 24.]);
    }

    #[test]
    fn uint8_addition_wraps() {
        let a = Tensor::from_i64_as(ElemType::U8, &[1], vec![250]).unwrap();
        let b = Tensor::from_i64_as(ElemType::U8, &[1], vec![10]).unwrap();
        assert_eq!(run(add, &[a, b]).to_i64_vec().unwrap(), vec![4]);
    }

    #[test]
    fn pow_of_negative_base_with_integer_exponent_is_real() {
        let a = Tensor::from_f32(&[1], vec![-2.0]).unwrap();
        let b = Tensor::from_f32(&[1], vec![3.0]).unwrap();
        assert_eq!(run(pow, &[a, b]).to_f32_vec().unwrap(), vec![-8.0]);
    }

    #[test]
    fn integer_mod_takes_the_divisor_sign_by_default() {
        let a = Tensor::from_i64(&[2], vec![-7, 7]).unwrap();
        let b = Tensor::from_i64(&[2], vec![3, -3]).unwrap();
        let info = NodeInfo {
            attrs: Default::default(),
            opset: 13,
            outputs: 1,
        };
        let vals = [Value::Tensor(a), Value::Tensor(b)];
        let out = modulo(
            &info,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        assert_eq!(
            out[0].as_tensor().unwrap().to_i64_vec().unwrap(),
            vec![2, -2]
        );
    }

    #[test]
    fn max_propagates_nan() {
        let a = Tensor::from_f32(&[2], vec![f32::NAN, 1.0]).unwrap();
        let b = Tensor::from_f32(&[2], vec![0.0, 2.0]).unwrap();
        let r = run(max, &[a, b]).to_f32_vec().unwrap();
        assert!(r[0].is_nan());
        assert_eq!(r[1], 2.0);
    }

    #[test]
    fn signed_right_shift_out_of_range_leaves_the_sign_fill() {
        let x = Tensor::from_i64_as(ElemType::I8, &[4], vec![-8, 4, -1, -8]).unwrap();
        let y = Tensor::from_i64_as(ElemType::I8, &[4], vec![-1, 8, 100, 1]).unwrap();
        let vals = [Value::Tensor(x), Value::Tensor(y)];
        let mut info = NodeInfo {
            attrs: Default::default(),
            opset: 28,
            outputs: 1,
        };
        info.attrs
            .set("direction", crate::ops::Attr::String("RIGHT".into()));
        let out = bit_shift(
            &info,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        let z = out[0].as_tensor().unwrap().to_i64_vec().unwrap();
        assert_eq!(z, vec![-1, 0, -1, -4]);
    }
}
