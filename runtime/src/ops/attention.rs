//! `Attention` (opset 23+): scaled dot-product attention over 3-D or 4-D Q/K/V,
//! with grouped-query heads, boolean or additive masks, causal masking, past
//! key/value caches, `softcap`, `nonpad_kv_seqlen`, and the optional
//! `qk_matmul_output` in each of its four modes.
//!
//! Computed on the host in f64, one (batch, head) at a time. The speed work of
//! issue 5 should move the two products onto candle matmuls.

use crate::ops::common::{expand_to, from_f64, numel};
use crate::ops::{Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::{ElemType, Tensor};
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    match op {
        "Attention" => Some(attention),
        _ => None,
    }
}

/// A [B, heads, seq, size] view of Q, K or V as f64 values.
struct Heads {
    v: Vec<f64>,
    heads: usize,
    seq: usize,
    size: usize,
}

fn to_heads(t: &Tensor, heads_attr: Option<i64>) -> Result<(usize, Heads), OpError> {
    match *t.shape() {
        [b, h, s, d] => Ok((
            b,
            Heads {
                v: t.to_f64_vec()?,
                heads: h,
                seq: s,
                size: d,
            },
        )),
        [b, s, hidden] => {
            let h = heads_attr
                .and_then(|h| usize::try_from(h).ok())
                .filter(|&h| h > 0 && hidden % h == 0)
                .ok_or_else(|| OpError::new("3-D inputs need q_num_heads/kv_num_heads"))?;
            let d = hidden / h;
            let src = t.to_f64_vec()?;
            let mut v = vec![0f64; src.len()];
            for bi in 0..b {
                for si in 0..s {
                    for hi in 0..h {
                        for di in 0..d {
                            v[((bi * h + hi) * s + si) * d + di] =
                                src[(bi * s + si) * hidden + hi * d + di];
                        }
                    }
                }
            }
            Ok((
                b,
                Heads {
                    v,
                    heads: h,
                    seq: s,
                    size: d,
                },
            ))
        }
        _ => Err(OpError::new("Q, K and V must be 3-D or 4-D")),
    }
}

/// Appends `cur` to `past` along the sequence axis.
fn concat_seq(past: Option<Heads>, cur: Heads, batch: usize) -> Result<Heads, OpError> {
    let Some(p) = past else { return Ok(cur) };
    if p.heads != cur.heads || p.size != cur.size {
        return Err(OpError::new("past and current key/value disagree"));
    }
    let seq = p.seq + cur.seq;
    let mut v = Vec::with_capacity(batch * cur.heads * seq * cur.size);
    for bh in 0..batch * cur.heads {
        v.extend_from_slice(&p.v[bh * p.seq * p.size..(bh + 1) * p.seq * p.size]);
        v.extend_from_slice(&cur.v[bh * cur.seq * cur.size..(bh + 1) * cur.seq * cur.size]);
    }
    Ok(Heads {
        v,
        heads: cur.heads,
        seq,
        size: cur.size,
    })
}

fn attention(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let q_t = i.tensor(0)?;
    let three_d = q_t.rank() == 3;
    let (b, q) = to_heads(q_t, n.attrs.opt_int("q_num_heads")?)?;
    let kv_heads = n.attrs.opt_int("kv_num_heads")?;
    let (_, k) = to_heads(i.tensor(1)?, kv_heads)?;
    let (_, v) = to_heads(i.tensor(2)?, kv_heads)?;
    let past_k = i
        .opt(4)?
        .map(|t| to_heads(t, kv_heads).map(|h| h.1))
        .transpose()?;
    let past_v = i
        .opt(5)?
        .map(|t| to_heads(t, kv_heads).map(|h| h.1))
        .transpose()?;
    let past_len = past_k.as_ref().map_or(0, |p| p.seq);
    let k = concat_seq(past_k, k, b)?;
    let v = concat_seq(past_v, v, b)?;
    if q.size != k.size || k.heads != v.heads || k.heads == 0 || q.heads % k.heads != 0 {
        return Err(OpError::new("Q/K/V heads or sizes do not agree"));
    }
    let (qs, ks, d, vd) = (q.seq, k.seq, q.size, v.size);
    let scale = if n.attrs.has("scale") {
        f64::from(n.attrs.float("scale", 1.0)?)
    } else {
        1.0 / (d as f64).sqrt()
    };
    let causal = n.attrs.int("is_causal", 0)? != 0;
    let softcap = f64::from(n.attrs.float("softcap", 0.0)?);
    let mode = n.attrs.int("qk_matmul_output_mode", 0)?;
    let hq = q.heads;
    let group = hq / k.heads;
    // The mask, broadcast to [B, Hq, qs, ks]; a shorter last dim is padded with -inf.
    let full = [b, hq, qs, ks];
    let mask: Option<Vec<f64>> = match i.opt(3)? {
        None => None,
        Some(m) => {
            let last = m.shape().last().copied().unwrap_or(1);
            let mut ms = m.shape().to_vec();
            while ms.len() < 4 {
                ms.insert(0, 1);
            }
            let target = [
                if ms[0] == 1 { 1 } else { b },
                if ms[1] == 1 { 1 } else { hq },
                qs,
                last,
            ];
            let m4 = m.with_data(m.candle().reshape(&*ms)?)?;
            let mut mv = m4
                .with_data(expand_to(m4.candle(), &target)?)?
                .to_f64_vec()?;
            if m.elem_type() == ElemType::Bool {
                mv = mv
                    .into_iter()
                    .map(|x| if x != 0.0 { 0.0 } else { f64::NEG_INFINITY })
                    .collect();
            }
            let mut out = vec![f64::NEG_INFINITY; numel(&full)];
            for bi in 0..b {
                for h in 0..hq {
                    for s in 0..qs {
                        for t in 0..ks.min(last) {
                            let src = ((if target[0] == 1 { 0 } else { bi } * target[1]
                                + if target[1] == 1 { 0 } else { h })
                                * qs
                                + s)
                                * last
                                + t;
                            out[((bi * hq + h) * qs + s) * ks + t] = mv[src];
                        }
                    }
                }
            }
            Some(out)
        }
    };
    let nonpad: Option<Vec<i64>> = i.opt(6)?.map(|t| t.to_i64_vec()).transpose()?;
    let mut y = vec![0f64; b * hq * qs * vd];
    let mut qk_out = vec![0f64; numel(&full)];
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / group;
            for s in 0..qs {
                let qrow = &q.v[((bi * hq + h) * qs + s) * d..][..d];
                let mut row = vec![0f64; ks];
                for (t, r) in row.iter_mut().enumerate() {
                    let krow = &k.v[((bi * k.heads + kh) * ks + t) * d..][..d];
                    *r = qrow.iter().zip(krow).map(|(a, c)| a * c).sum::<f64>() * scale;
                }
                let base = ((bi * hq + h) * qs + s) * ks;
                if mode == 0 {
                    qk_out[base..base + ks].copy_from_slice(&row);
                }
                // Softcap applies to the scores before the mask, so that a -inf
                // mask stays -inf.
                if softcap > 0.0 {
                    for r in row.iter_mut() {
                        *r = softcap * (*r / softcap).tanh();
                    }
                }
                // Valid keys of this batch item; the causal diagonal ends at its end.
                let valid = nonpad
                    .as_ref()
                    .and_then(|np| np.get(bi).copied())
                    .unwrap_or(ks as i64);
                let offset = if nonpad.is_some() {
                    valid - qs as i64
                } else {
                    past_len as i64
                };
                for (t, r) in row.iter_mut().enumerate() {
                    let mut bias = mask.as_ref().map_or(0.0, |m| m[base + t]);
                    if (causal && t as i64 > s as i64 + offset) || t as i64 >= valid {
                        bias = f64::NEG_INFINITY;
                    }
                    *r += bias;
                }
                if mode == 1 || mode == 2 {
                    qk_out[base..base + ks].copy_from_slice(&row);
                }
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY || m.is_nan() {
                    // A fully masked row attends to nothing: zero weights.
                    row.iter_mut().for_each(|r| *r = 0.0);
                } else {
                    let sum: f64 = row.iter().map(|r| (r - m).exp()).sum();
                    for r in row.iter_mut() {
                        *r = (*r - m).exp() / sum;
                    }
                }
                if mode == 3 {
                    qk_out[base..base + ks].copy_from_slice(&row);
                }
                let ybase = ((bi * hq + h) * qs + s) * vd;
                for (t, &p) in row.iter().enumerate() {
                    let vrow = &v.v[((bi * v.heads + kh) * ks + t) * vd..][..vd];
                    for (o, &x) in y[ybase..ybase + vd].iter_mut().zip(vrow) {
                        *o += p * x;
                    }
                }
            }
        }
    }
    let elem = q_t.elem_type();
    let y_t = if three_d {
        let mut out = vec![0f64; y.len()];
        for bi in 0..b {
            for h in 0..hq {
                for s in 0..qs {
                    for x in 0..vd {
                        out[(bi * qs + s) * hq * vd + h * vd + x] =
                            y[((bi * hq + h) * qs + s) * vd + x];
                    }
                }
            }
        }
        from_f64(elem, &[b, qs, hq * vd], out)?
    } else {
        from_f64(elem, &[b, hq, qs, vd], y)?
    };
    let kv_elem = i.tensor(1)?.elem_type();
    Ok(vec![
        Value::Tensor(y_t),
        Value::Tensor(from_f64(kv_elem, &[b, k.heads, ks, d], k.v)?),
        Value::Tensor(from_f64(kv_elem, &[b, v.heads, ks, vd], v.v)?),
        Value::Tensor(from_f64(elem, &full, qk_out)?),
    ])
}
