//! `SwiGLU` (opset 28): `Y = Swish_alpha(A) * B`, the gated activation of Llama-style
//! feed-forward blocks, with `Swish_alpha(a) = a * sigmoid(alpha * a)`.
//!
//! Computed on the host in f64, rounding to the input type after each step as a
//! computation in that type does. A and B must have the same shape: the operator
//! does not broadcast. Splitting a packed projection into A and B is the graph's
//! job (`Split`/`Slice`), not this kernel's.

use crate::ops::common::from_f64;
use crate::ops::precision::round_to;
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    match op {
        "SwiGLU" => Some(swiglu),
        _ => None,
    }
}

fn swiglu(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (a, b) = (i.tensor(0)?, i.tensor(1)?);
    let elem = a.elem_type();
    if !elem.is_float() || b.elem_type() != elem {
        return Err(OpError::new(format!(
            "SwiGLU needs A and B of one float type, got {elem} and {}",
            b.elem_type()
        )));
    }
    if a.shape() != b.shape() {
        return Err(OpError::new(format!(
            "SwiGLU does not broadcast: A is {:?}, B is {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let alpha = f64::from(n.attrs.float("alpha", 1.0)?);
    let r = |x: f64| round_to(elem, x);
    let y = a
        .to_f64_vec()?
        .into_iter()
        .zip(b.to_f64_vec()?)
        .map(|(a, b)| {
            let gate = r(1.0 / r(1.0 + r(r(-alpha * a).exp())));
            r(r(a * gate) * b)
        })
        .collect();
    one(from_f64(elem, a.shape(), y)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Attr, Attrs};
    use crate::tensor::Tensor;
    use crate::value::Value;

    fn run(alpha: Option<f32>, a: Tensor, b: Tensor) -> Result<Vec<f32>, OpError> {
        let mut attrs = Attrs::default();
        if let Some(al) = alpha {
            attrs.set("alpha", Attr::Float(al));
        }
        let n = NodeInfo {
            attrs,
            opset: 28,
            outputs: 1,
        };
        let vals = [Value::Tensor(a), Value::Tensor(b)];
        let out = swiglu(
            &n,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )?;
        Ok(out[0].as_tensor().unwrap().to_f32_vec().unwrap())
    }

    fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn default_alpha_is_one() {
        let a = Tensor::from_f32(&[2], vec![1.0, -2.0]).unwrap();
        let b = Tensor::from_f32(&[2], vec![3.0, 0.5]).unwrap();
        let y = run(None, a, b).unwrap();
        let want = [sigmoid(1.0) * 3.0, -2.0 * sigmoid(-2.0) * 0.5];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn alpha_scales_the_sigmoid_argument() {
        let a = Tensor::from_f32(&[1], vec![2.0]).unwrap();
        let b = Tensor::from_f32(&[1], vec![1.0]).unwrap();
        let y = run(Some(0.5), a, b).unwrap();
        assert!((y[0] - 2.0 * sigmoid(1.0)).abs() < 1e-6);
    }

    #[test]
    fn different_shapes_are_rejected() {
        let a = Tensor::from_f32(&[2], vec![1.0, 2.0]).unwrap();
        let b = Tensor::from_f32(&[1], vec![1.0]).unwrap();
        assert!(run(None, a, b).unwrap_err().message.contains("broadcast"));
    }

    #[test]
    fn integer_inputs_are_rejected() {
        let a = Tensor::from_i64(&[1], vec![1]).unwrap();
        let b = Tensor::from_i64(&[1], vec![1]).unwrap();
        assert!(run(None, a, b).is_err());
    }
}
