//! Operators that make tensors from attributes or shapes: `Constant`,
//! `ConstantOfShape`, `Range`, `EyeLike`, `Trilu`.
//!
//! With constant inputs these are folded at load time by the planner.

use crate::ops::common::{
    checked_numel, from_f64, from_i64, full, ints, like, scalar_f64, scalar_i64,
};
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::{ElemType, Tensor};

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "Constant" => constant,
        "ConstantOfShape" => constant_of_shape,
        "Range" => range,
        "EyeLike" => eye_like,
        "Trilu" => trilu,
        _ => return None,
    };
    Some(k)
}

fn constant(n: &NodeInfo, _: &Inputs<'_>) -> OpResult {
    let a = &n.attrs;
    if let Some(t) = a.tensor("value")? {
        return one(t.clone());
    }
    if let Some(v) = a.opt_int("value_int")? {
        return one(Tensor::from_i64(&[], vec![v])?);
    }
    if let Some(v) = a.ints("value_ints")? {
        return one(Tensor::from_i64(&[v.len()], v.to_vec())?);
    }
    if a.has("value_float") {
        let v = a.float("value_float", 0.0)?;
        return one(Tensor::from_f32(&[], vec![v])?);
    }
    if let Some(v) = a.floats("value_floats")? {
        return one(Tensor::from_f32(&[v.len()], v.to_vec())?);
    }
    Err(OpError::new("Constant has no supported value attribute"))
}

fn constant_of_shape(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let shape: Vec<usize> = ints(i.tensor(0)?)?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| OpError::new("negative dim")))
        .collect::<Result<_, _>>()?;
    checked_numel(&shape, "ConstantOfShape shape")?;
    match n.attrs.tensor("value")? {
        Some(v) => {
            let scalar = v.candle().flatten_all()?.narrow(0, 0, 1)?;
            let data = scalar.reshape(())?.broadcast_as(&*shape)?.contiguous()?;
            one(like(v, data)?)
        }
        None => one(full(ElemType::F32, &shape, 0.0)?),
    }
}

fn range(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let start = i.tensor(0)?;
    let elem = start.elem_type();
    if elem.is_float() {
        let (s, l, d) = (
            scalar_f64(start)?,
            scalar_f64(i.tensor(1)?)?,
            scalar_f64(i.tensor(2)?)?,
        );
        let n = ((l - s) / d).ceil().max(0.0);
        if !n.is_finite() || n > 1e9 {
            return Err(OpError::new("range too long"));
        }
        let v = (0..n as usize).map(|k| s + k as f64 * d).collect();
        return one(from_f64(elem, &[n as usize], v)?);
    }
    let (s, l, d) = (
        scalar_i64(start)?,
        scalar_i64(i.tensor(1)?)?,
        scalar_i64(i.tensor(2)?)?,
    );
    if d == 0 {
        return Err(OpError::new("delta is 0"));
    }
    let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
    let v = (0..n as i64).map(|k| s + k * d).collect();
    one(from_i64(elem, &[n], v)?)
}

fn eye_like(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let &[rows, cols] = x.shape() else {
        return Err(OpError::new("EyeLike needs a 2-D input"));
    };
    let elem = match n.attrs.opt_int("dtype")? {
        Some(code) => ElemType::from_onnx(code as i32)
            .ok_or_else(|| OpError::new(format!("unsupported dtype {code}")))?,
        None => x.elem_type(),
    };
    let k = n.attrs.int("k", 0)?;
    let mut v = vec![0.0; rows * cols];
    for r in 0..rows {
        let c = r as i64 + k;
        if c >= 0 && (c as usize) < cols {
            v[r * cols + c as usize] = 1.0;
        }
    }
    one(from_f64(elem, &[rows, cols], v)?)
}

fn trilu(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let upper = n.attrs.int("upper", 1)? != 0;
    let k = match i.opt(1)? {
        Some(t) => scalar_i64(t)?,
        None => 0,
    };
    let r = x.rank();
    if r < 2 {
        return Err(OpError::new("Trilu needs rank >= 2"));
    }
    let (rows, cols) = (x.shape()[r - 2], x.shape()[r - 1]);
    let mut mask = Vec::with_capacity(x.len());
    for _ in 0..x.len() / (rows * cols).max(1) {
        for a in 0..rows as i64 {
            for b in 0..cols as i64 {
                mask.push(if upper { b - a >= k } else { b - a <= k });
            }
        }
    }
    if x.is_empty() {
        return one(x.clone());
    }
    let m = crate::ops::common::bool_tensor(x.shape(), mask)?;
    let zero = full(x.elem_type(), x.shape(), 0.0)?;
    one(like(x, m.candle().where_cond(x.candle(), zero.candle())?)?)
}
