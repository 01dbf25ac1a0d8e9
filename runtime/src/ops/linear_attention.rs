//! `LinearAttention` (opset 27): recurrent linear attention over packed
//! `[B, T, heads * size]` inputs with a `[B, H_kv, d_k, d_v]` state, under the
//! `linear`, `gated`, `delta` and `gated_delta` update rules, with grouped-query
//! heads.
//!
//! Runs the recurrence token by token on the host in f64 (the spec's sequential
//! semantics) and rounds once to the output types. The chunk-parallel algorithm
//! that `chunk_size` hints at is not implemented: the hint is accepted and ignored.

use crate::ops::common::from_f64;
use crate::ops::{Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::Tensor;
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    match op {
        "LinearAttention" => Some(linear_attention),
        _ => None,
    }
}

/// A positive head-count attribute.
fn heads(n: &NodeInfo, name: &str) -> Result<usize, OpError> {
    let h = n
        .attrs
        .opt_int(name)?
        .ok_or_else(|| OpError::new(format!("attribute {name:?} is required")))?;
    usize::try_from(h)
        .ok()
        .filter(|&h| h > 0)
        .ok_or_else(|| OpError::new(format!("{name} {h} must be positive")))
}

/// A packed `[B, T, heads * size]` input: its values and per-head size.
fn packed(t: &Tensor, b: usize, len: usize, heads: usize, what: &str) -> Result<usize, OpError> {
    match *t.shape() {
        [tb, tl, hd] if tb == b && tl == len && hd % heads == 0 => Ok(hd / heads),
        _ => Err(OpError::new(format!(
            "{what} {:?} should be [{b}, {len}, {heads} * size]",
            t.shape()
        ))),
    }
}

fn linear_attention(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (q_t, k_t, v_t) = (i.tensor(0)?, i.tensor(1)?, i.tensor(2)?);
    let elem = q_t.elem_type();
    if !elem.is_float() {
        return Err(OpError::new(format!("LinearAttention of {elem} inputs")));
    }
    let rule = n.attrs.string("update_rule", "gated_delta")?;
    let (gated, delta) = match rule {
        "linear" => (false, false),
        "gated" => (true, false),
        "delta" => (false, true),
        "gated_delta" => (true, true),
        other => return Err(OpError::new(format!("unknown update_rule {other:?}"))),
    };
    let (hq, hk) = (heads(n, "q_num_heads")?, heads(n, "kv_num_heads")?);
    if hq % hk != 0 {
        return Err(OpError::new(format!(
            "q_num_heads {hq} is not a multiple of kv_num_heads {hk}"
        )));
    }
    let [b, len, _] = *q_t.shape() else {
        return Err(OpError::new(format!(
            "query must be [batch, length, heads * size], got {:?}",
            q_t.shape()
        )));
    };
    let dk = packed(q_t, b, len, hq, "query")?;
    if packed(k_t, b, len, hk, "key")? != dk {
        return Err(OpError::new(format!(
            "key {:?} should have {hk} heads of the query's size {dk}",
            k_t.shape()
        )));
    }
    let dv = packed(v_t, b, len, hk, "value")?;
    let state_shape = [b, hk, dk, dv];
    let (mut state, state_elem) = match i.opt(3)? {
        Some(p) if p.shape() == state_shape && p.elem_type().is_float() => {
            (p.to_f64_vec()?, p.elem_type())
        }
        Some(p) => {
            return Err(OpError::new(format!(
                "past_state {:?} of {} should be float {state_shape:?}",
                p.shape(),
                p.elem_type()
            )))
        }
        None => (vec![0.0; b * hk * dk * dv], elem),
    };
    // Decay per (token, kv head, key dim) index, as a stride over key dims (0 for
    // one decay per head).
    let decay = match (i.opt(4)?, gated) {
        (Some(d), true) => {
            let per_dim = match *d.shape() {
                [db, dl, x] if db == b && dl == len && x == hk * dk => true,
                [db, dl, x] if db == b && dl == len && x == hk => false,
                _ => {
                    return Err(OpError::new(format!(
                        "decay {:?} should be [{b}, {len}, {hk}] or [{b}, {len}, {}]",
                        d.shape(),
                        hk * dk
                    )))
                }
            };
            Some((d.to_f64_vec()?, per_dim))
        }
        (None, true) => return Err(OpError::new(format!("update_rule {rule:?} needs decay"))),
        (Some(_), false) => {
            return Err(OpError::new(format!("update_rule {rule:?} takes no decay")))
        }
        (None, false) => None,
    };
    let beta = match (i.opt(5)?, delta) {
        (Some(bt), true) => match *bt.shape() {
            [bb, bl, x] if bb == b && bl == len && (x == hk || x == 1) => {
                Some((bt.to_f64_vec()?, x))
            }
            _ => {
                return Err(OpError::new(format!(
                    "beta {:?} should be [{b}, {len}, {hk}] or [{b}, {len}, 1]",
                    bt.shape()
                )))
            }
        },
        (None, true) => return Err(OpError::new(format!("update_rule {rule:?} needs beta"))),
        (Some(_), false) => {
            return Err(OpError::new(format!("update_rule {rule:?} takes no beta")))
        }
        (None, false) => None,
    };
    let scale = match f64::from(n.attrs.float("scale", 0.0)?) {
        0.0 => 1.0 / (dk as f64).sqrt(),
        s => s,
    };
    let (qv, kv, vv) = (q_t.to_f64_vec()?, k_t.to_f64_vec()?, v_t.to_f64_vec()?);
    let group = hq / hk;
    let mut out = vec![0f64; b * len * hq * dv];
    let mut update = vec![0f64; dv];
    for bi in 0..b {
        for t in 0..len {
            let tok = bi * len + t;
            for h in 0..hk {
                let s = &mut state[(bi * hk + h) * dk * dv..][..dk * dv];
                let key = &kv[(tok * hk + h) * dk..][..dk];
                if let Some((g, per_dim)) = &decay {
                    for d in 0..dk {
                        let gd = if *per_dim {
                            g[(tok * hk + h) * dk + d]
                        } else {
                            g[tok * hk + h]
                        };
                        let f = gd.exp();
                        s[d * dv..(d + 1) * dv].iter_mut().for_each(|x| *x *= f);
                    }
                }
                update.copy_from_slice(&vv[(tok * hk + h) * dv..][..dv]);
                if let Some((bt, width)) = &beta {
                    let rate = bt[tok * width + if *width == 1 { 0 } else { h }];
                    for (m, u) in update.iter_mut().enumerate() {
                        let retrieved: f64 = (0..dk).map(|d| s[d * dv + m] * key[d]).sum();
                        *u = rate * (*u - retrieved);
                    }
                }
                for (d, &kd) in key.iter().enumerate() {
                    for (x, &u) in s[d * dv..(d + 1) * dv].iter_mut().zip(&update) {
                        *x += kd * u;
                    }
                }
                for qh in h * group..(h + 1) * group {
                    let query = &qv[(tok * hq + qh) * dk..][..dk];
                    let o = &mut out[(tok * hq + qh) * dv..][..dv];
                    for (m, x) in o.iter_mut().enumerate() {
                        let dot: f64 = (0..dk).map(|d| query[d] * s[d * dv + m]).sum();
                        *x = scale * dot;
                    }
                }
            }
        }
    }
    Ok(vec![
        Value::Tensor(from_f64(elem, &[b, len, hq * dv], out)?),
        Value::Tensor(from_f64(state_elem, &state_shape, state)?),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Attr, Attrs};

    fn t(shape: &[usize], v: Vec<f32>) -> Option<Value> {
        Some(Value::Tensor(Tensor::from_f32(shape, v).unwrap()))
    }

    fn run(attrs: &[(&str, Attr)], vals: &[Option<Value>]) -> Result<Vec<Vec<f32>>, OpError> {
        let mut a = Attrs::default();
        a.set("q_num_heads", Attr::Int(1));
        a.set("kv_num_heads", Attr::Int(1));
        for (k, v) in attrs {
            a.set(k, v.clone());
        }
        let n = NodeInfo {
            attrs: a,
            opset: 27,
            outputs: 2,
        };
        let out = linear_attention(
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

    fn linear() -> (&'static str, Attr) {
        ("update_rule", Attr::String("linear".into()))
    }

    #[test]
    fn linear_rule_accumulates_outer_products() {
        // d_k = d_v = 1, scale 1: the state is the running sum of k * v.
        let ones = t(&[1, 2, 1], vec![1., 1.]);
        let v = t(&[1, 2, 1], vec![2., 3.]);
        let out = run(&[linear()], &[ones.clone(), ones, v]).unwrap();
        assert_eq!(out[0], vec![2., 5.]);
        assert_eq!(out[1], vec![5.]);
    }

    #[test]
    fn default_rule_is_gated_delta_and_needs_decay_and_beta() {
        let x = t(&[1, 1, 1], vec![1.]);
        let err = run(&[], &[x.clone(), x.clone(), x.clone()]).unwrap_err();
        assert!(err.message.contains("decay"), "{err}");
        // decay log 0.5, beta 1, past state 4: S = 0.5 * 4 + (v - 0.5 * 4) = v.
        let decay = t(&[1, 1, 1], vec![0.5f32.ln()]);
        let past = t(&[1, 1, 1, 1], vec![4.]);
        let v = t(&[1, 1, 1], vec![3.]);
        let out = run(&[], &[x.clone(), x.clone(), v, past, decay, x]).unwrap();
        assert!((out[1][0] - 3.0).abs() < 1e-6);
    }

    #[test]
    fn grouped_query_heads_share_a_state() {
        let q = t(&[1, 1, 2], vec![1., 2.]);
        let kv = t(&[1, 1, 1], vec![1.]);
        let out = run(
            &[
                linear(),
                ("q_num_heads", Attr::Int(2)),
                ("scale", Attr::Float(1.0)),
            ],
            &[q, kv.clone(), kv],
        )
        .unwrap();
        assert_eq!(out[0], vec![1., 2.]);
    }

    #[test]
    fn inputs_the_rule_does_not_take_are_rejected() {
        let x = t(&[1, 1, 1], vec![1.]);
        let vals = [x.clone(), x.clone(), x.clone(), None, x];
        assert!(run(&[linear()], &vals).is_err());
    }

    #[test]
    fn misshapen_key_is_rejected() {
        let q = t(&[1, 1, 2], vec![1., 2.]);
        let k = t(&[1, 1, 3], vec![1., 2., 3.]);
        assert!(run(&[linear()], &[q.clone(), k, q]).is_err());
    }
}
