//! `CausalConvWithState` (opset 27): a stateful causal depthwise 1-D convolution
//! over `[B, C, L]` with kernel `[C, 1, k]`, an optional bias and a fused SiLU,
//! carrying the last `k - 1` positions from one call to the next (Mamba, Gated
//! DeltaNet decode).
//!
//! Computed on the host in f64; the convolution rounds once to the input type, the
//! activation once more, as a reference computing in that type does. Only the
//! depthwise case exists: a full convolution is `Conv`.

use crate::ops::common::from_f64;
use crate::ops::precision::round_to;
use crate::ops::{Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::Tensor;
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    match op {
        "CausalConvWithState" => Some(causal_conv_with_state),
        _ => None,
    }
}

/// Requires `t` to have `shape` and the element type of `like`.
fn check(t: &Tensor, like: &Tensor, shape: &[usize], what: &str) -> Result<(), OpError> {
    if t.shape() != shape || t.elem_type() != like.elem_type() {
        return Err(OpError::new(format!(
            "{what} is {:?} of {}, expected {shape:?} of {}",
            t.shape(),
            t.elem_type(),
            like.elem_type()
        )));
    }
    Ok(())
}

fn causal_conv_with_state(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, w) = (i.tensor(0)?, i.tensor(1)?);
    let elem = x.elem_type();
    let silu = match n.attrs.string("activation", "none")? {
        "none" => false,
        "silu" | "swish" => true,
        other => return Err(OpError::new(format!("unknown activation {other:?}"))),
    };
    let [b, c, len] = *x.shape() else {
        return Err(OpError::new(format!(
            "input must be [batch, channels, length], got {:?}",
            x.shape()
        )));
    };
    if !elem.is_float() {
        return Err(OpError::new(format!("CausalConvWithState of {elem} input")));
    }
    let k = match *w.shape() {
        [wc, 1, k] if wc == c && k > 0 => k,
        _ => {
            return Err(OpError::new(format!(
                "weight {:?} should be [{c}, 1, k] with k > 0",
                w.shape()
            )))
        }
    };
    check(w, x, w.shape(), "weight")?;
    let bias = match i.opt(2)? {
        Some(t) => {
            check(t, x, &[c], "bias")?;
            t.to_f64_vec()?
        }
        None => vec![0.0; c],
    };
    let carry = k - 1;
    let past = match i.opt(3)? {
        Some(t) => {
            check(t, x, &[b, c, carry], "past_state")?;
            t.to_f64_vec()?
        }
        None => vec![0.0; b * c * carry],
    };
    let (xv, wv) = (x.to_f64_vec()?, w.to_f64_vec()?);
    let r = |v: f64| round_to(elem, v);
    let mut y = Vec::with_capacity(b * c * len);
    let mut present = Vec::with_capacity(b * c * carry);
    let mut padded = Vec::with_capacity(carry + len);
    for bc in 0..b * c {
        let ch = bc % c;
        padded.clear();
        padded.extend_from_slice(&past[bc * carry..(bc + 1) * carry]);
        padded.extend_from_slice(&xv[bc * len..(bc + 1) * len]);
        let taps = &wv[ch * k..(ch + 1) * k];
        for t in 0..len {
            let acc: f64 = taps.iter().zip(&padded[t..t + k]).map(|(a, v)| a * v).sum();
            let v = r(acc + bias[ch]);
            y.push(if silu { r(v / (1.0 + (-v).exp())) } else { v });
        }
        present.extend_from_slice(&padded[len..]);
    }
    Ok(vec![
        Value::Tensor(from_f64(elem, x.shape(), y)?),
        Value::Tensor(from_f64(elem, &[b, c, carry], present)?),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Attr, Attrs};

    fn t(shape: &[usize], v: Vec<f32>) -> Option<Value> {
        Some(Value::Tensor(Tensor::from_f32(shape, v).unwrap()))
    }

    fn run(act: Option<&str>, vals: &[Option<Value>]) -> Result<Vec<Vec<f32>>, OpError> {
        let mut attrs = Attrs::default();
        if let Some(a) = act {
            attrs.set("activation", Attr::String(a.to_owned()));
        }
        let n = NodeInfo {
            attrs,
            opset: 27,
            outputs: 2,
        };
        let out = causal_conv_with_state(
            &n,
            &Inputs {
                values: vals.iter().map(Option::as_ref).collect(),
            },
        )?;
        Ok(out
            .iter()
            .map(|v| v.as_tensor().unwrap().to_f32_vec().unwrap())
            .collect())
    }

    #[test]
    fn without_past_state_the_sequence_is_zero_padded() {
        // Kernel [1, 10, 100]: y[t] = x[t-2] + 10 x[t-1] + 100 x[t].
        let out = run(
            None,
            &[
                t(&[1, 1, 3], vec![1., 2., 3.]),
                t(&[1, 1, 3], vec![1., 10., 100.]),
            ],
        )
        .unwrap();
        assert_eq!(out[0], vec![100., 210., 321.]);
        assert_eq!(out[1], vec![2., 3.]);
    }

    #[test]
    fn past_state_and_bias_carry_into_the_output() {
        let out = run(
            None,
            &[
                t(&[1, 1, 1], vec![3.]),
                t(&[1, 1, 3], vec![1., 10., 100.]),
                t(&[1], vec![0.5]),
                t(&[1, 1, 2], vec![1., 2.]),
            ],
        )
        .unwrap();
        assert_eq!(out[0], vec![321.5]);
        assert_eq!(out[1], vec![2., 3.]);
    }

    #[test]
    fn silu_is_fused_after_the_bias() {
        let out = run(
            Some("silu"),
            &[t(&[1, 1, 1], vec![1.]), t(&[1, 1, 1], vec![2.])],
        )
        .unwrap();
        let want = 2.0 / (1.0 + (-2f32).exp());
        assert!((out[0][0] - want).abs() < 1e-6);
        assert!(out[1].is_empty());
    }

    #[test]
    fn wrong_weight_and_state_shapes_are_rejected() {
        let x = t(&[1, 2, 3], vec![0.; 6]);
        assert!(run(None, &[x.clone(), t(&[1, 1, 2], vec![0.; 2])]).is_err());
        let w = t(&[2, 1, 2], vec![0.; 4]);
        let bad_state = t(&[1, 2, 2], vec![0.; 4]);
        assert!(run(None, &[x.clone(), w.clone(), None, bad_state]).is_err());
        assert!(run(Some("gelu"), &[x, w]).is_err());
    }
}
