//! `FlexAttention` (domain `ai.onnx.preview`, version 1): scaled dot-product
//! attention over rank-4 Q/K/V with grouped-query heads and two optional modifier
//! subgraphs, `score_mod` on the scores before the softmax and `prob_mod` on the
//! probabilities after it.
//!
//! Computed on the host in f64, rounding where a computation in the tensors' own
//! types rounds: Q and K are scaled by `sqrt(scale)` and multiplied in the input
//! type, then scores, softmax, modifiers and the product with V run in the softmax
//! precision (float for half inputs) and Y is cast back. The modifiers run through
//! the executor's planned bodies ([`crate::exec::run_body`]); this kernel does not
//! look inside them.

use crate::exec::run_body;
use crate::ops::attention::{to_heads, Heads};
use crate::ops::common::from_f64;
use crate::ops::precision::{float_type, round_to, softmax_in};
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::{ElemType, Tensor};
use crate::value::Value;

/// The kernel for `op` in the `ai.onnx.preview` domain, if this family has it.
pub(super) fn lookup_preview(op: &str) -> Option<Kernel> {
    match op {
        "FlexAttention" => Some(flex_attention),
        _ => None,
    }
}

/// A rank-4 input as heads.
fn rank4(t: &Tensor, what: &str) -> Result<Heads, OpError> {
    if t.rank() != 4 {
        return Err(OpError::new(format!(
            "FlexAttention {what} must be rank 4, got {:?}",
            t.shape()
        )));
    }
    to_heads(t, None, what)
}

/// Runs the modifier subgraph `name`, if the node has one, on `values` of
/// `shape`, checking that it keeps the shape and element type.
fn modify(
    n: &NodeInfo,
    i: &Inputs<'_>,
    name: &str,
    elem: ElemType,
    shape: &[usize],
    values: Vec<f64>,
) -> Result<Vec<f64>, OpError> {
    if !n.attrs.has(name) {
        return Ok(values);
    }
    let body = n.attrs.graph(name)?;
    let arg = Value::Tensor(from_f64(elem, shape, values)?);
    let out = run_body(body, vec![arg], i).map_err(|e| OpError::new(format!("{name}: {e}")))?;
    match out.first() {
        Some(Value::Tensor(t)) if t.shape() == shape && t.elem_type() == elem => {
            Ok(t.to_f64_vec()?)
        }
        Some(Value::Tensor(t)) => Err(OpError::new(format!(
            "{name} returned {:?} of {}, expected {shape:?} of {elem}",
            t.shape(),
            t.elem_type()
        ))),
        _ => Err(OpError::new(format!("{name} returned no tensor"))),
    }
}

fn flex_attention(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let q_t = i.tensor(0)?;
    let elem = q_t.elem_type();
    if !elem.is_float() {
        return Err(OpError::new(format!("FlexAttention of {elem} inputs")));
    }
    let (q, k, v) = (
        rank4(q_t, "Q")?,
        rank4(i.tensor(1)?, "K")?,
        rank4(i.tensor(2)?, "V")?,
    );
    let (b, hq, ls, e) = (q.batch, q.heads, q.seq, q.size);
    if k.batch != b
        || v.batch != b
        || k.size != e
        || k.heads != v.heads
        || k.seq != v.seq
        || k.heads == 0
        || hq % k.heads != 0
    {
        return Err(OpError::new(format!(
            "Q [{b}, {hq}, {ls}, {e}], K [{}, {}, {}, {}] and V [{}, {}, {}, {}] do not agree",
            k.batch, k.heads, k.seq, k.size, v.batch, v.heads, v.seq, v.size
        )));
    }
    let (ks, vd, group) = (k.seq, v.size, hq / k.heads);
    let sm = match n.attrs.opt_int("softmax_precision")? {
        Some(c) => float_type(c, "softmax_precision")?,
        None if elem == ElemType::F64 => ElemType::F64,
        None => ElemType::F32,
    };
    // The scale and its root are taken in float, then cast to the input type.
    let scale = if n.attrs.has("scale") {
        n.attrs.float("scale", 1.0)?
    } else {
        1.0 / (e as f32).sqrt()
    };
    let r = |x: f64| round_to(elem, x);
    let root = r(f64::from(scale.sqrt()));
    let qv: Vec<f64> = q.v.iter().map(|&x| r(x * root)).collect();
    let kv: Vec<f64> = k.v.iter().map(|&x| r(x * root)).collect();
    let shape = [b, hq, ls, ks];
    let mut scores = Vec::with_capacity(b * hq * ls * ks);
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / group;
            for s in 0..ls {
                let qrow = &qv[((bi * hq + h) * ls + s) * e..][..e];
                for t in 0..ks {
                    let krow = &kv[((bi * k.heads + kh) * ks + t) * e..][..e];
                    let dot: f64 = qrow.iter().zip(krow).map(|(a, c)| a * c).sum();
                    scores.push(round_to(sm, r(dot)));
                }
            }
        }
    }
    let mut probs = modify(n, i, "score_mod", sm, &shape, scores)?;
    if ks > 0 {
        for row in probs.chunks_mut(ks) {
            softmax_in(sm, row);
        }
    }
    let probs = modify(n, i, "prob_mod", sm, &shape, probs)?;
    let mut y = Vec::with_capacity(b * hq * ls * vd);
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / group;
            for s in 0..ls {
                let prow = &probs[((bi * hq + h) * ls + s) * ks..][..ks];
                for x in 0..vd {
                    let dot: f64 = prow
                        .iter()
                        .enumerate()
                        .map(|(t, &p)| {
                            p * round_to(sm, v.v[((bi * v.heads + kh) * ks + t) * vd + x])
                        })
                        .sum();
                    y.push(r(round_to(sm, dot)));
                }
            }
        }
    }
    one(from_f64(elem, &[b, hq, ls, vd], y)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Attr, Attrs};

    fn t4(shape: [usize; 4], v: Vec<f32>) -> Value {
        Value::Tensor(Tensor::from_f32(&shape, v).unwrap())
    }

    fn run(attrs: &[(&str, Attr)], vals: &[Value]) -> Result<Vec<f32>, OpError> {
        let mut a = Attrs::default();
        for (k, v) in attrs {
            a.set(k, v.clone());
        }
        let n = NodeInfo {
            attrs: a,
            opset: 1,
            outputs: 1,
        };
        let out = flex_attention(
            &n,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )?;
        Ok(out[0].as_tensor().unwrap().to_f32_vec().unwrap())
    }

    #[test]
    fn equal_scores_average_the_values() {
        let z = t4([1, 1, 1, 2], vec![0.0; 2]);
        let k = t4([1, 1, 2, 2], vec![0.0; 4]);
        let v = t4([1, 1, 2, 1], vec![1.0, 3.0]);
        assert_eq!(run(&[], &[z, k, v]).unwrap(), vec![2.0]);
    }

    #[test]
    fn scale_weighs_the_scores() {
        // Scores 0 and 1 (scale 1): weights 1 / (1 + e) and e / (1 + e).
        let q = t4([1, 1, 1, 1], vec![1.0]);
        let k = t4([1, 1, 2, 1], vec![0.0, 1.0]);
        let v = t4([1, 1, 2, 1], vec![0.0, 1.0]);
        let y = run(&[("scale", Attr::Float(1.0))], &[q, k, v]).unwrap();
        let e = std::f32::consts::E;
        assert!((y[0] - e / (1.0 + e)).abs() < 1e-6);
    }

    #[test]
    fn grouped_query_heads_share_kv_heads_in_order() {
        let q = t4([1, 2, 1, 1], vec![0.0; 2]);
        let k = t4([1, 1, 1, 1], vec![0.0]);
        let v = t4([1, 1, 1, 1], vec![5.0]);
        assert_eq!(run(&[], &[q, k, v]).unwrap(), vec![5.0, 5.0]);
    }

    #[test]
    fn non_rank_four_inputs_are_rejected() {
        let q = Value::Tensor(Tensor::from_f32(&[1, 1, 2], vec![0.0; 2]).unwrap());
        assert!(run(&[], &[q.clone(), q.clone(), q]).is_err());
    }

    #[test]
    fn heads_that_do_not_group_are_rejected() {
        let q = t4([1, 3, 1, 1], vec![0.0; 3]);
        let k = t4([1, 2, 1, 1], vec![0.0; 2]);
        assert!(run(&[], &[q, k.clone(), k]).is_err());
    }
}
