//! `Attention` (opset 23+): scaled dot-product attention over 3-D or 4-D Q/K/V,
//! with grouped-query heads, boolean or additive masks, causal masking, sliding
//! windows (`left_window_size`/`right_window_size`, opset 25), past key/value
//! caches, `softcap`, `nonpad_kv_seqlen`, `softmax_precision`, and the optional
//! `qk_matmul_output` in each of its four modes.
//!
//! Computed on the host in f64, one (batch, head, query) row at a time, rounding to
//! the input's float type where a computation in that type rounds: after each
//! elementwise step and once after each dot product (products accumulate wide).
//! That keeps half-precision results on the same ulp as a reference computing in
//! the tensor's own type. The speed work of issue 5 should move the two products
//! onto candle matmuls.

use crate::ops::common::{expand_to, from_f64, numel};
use crate::ops::precision::{float_type, round_to, softmax_in};
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
pub(crate) struct Heads {
    pub(crate) batch: usize,
    pub(crate) v: Vec<f64>,
    pub(crate) heads: usize,
    pub(crate) seq: usize,
    pub(crate) size: usize,
}

/// Q, K or V as heads: 4-D as given, 3-D `[B, S, heads * size]` split by
/// `heads_attr`.
pub(crate) fn to_heads(t: &Tensor, heads_attr: Option<i64>, what: &str) -> Result<Heads, OpError> {
    match *t.shape() {
        [b, h, s, d] => Ok(Heads {
            batch: b,
            v: t.to_f64_vec()?,
            heads: h,
            seq: s,
            size: d,
        }),
        [b, s, hidden] => {
            let h = heads_attr
                .and_then(|h| usize::try_from(h).ok())
                .filter(|&h| h > 0 && hidden % h == 0)
                .ok_or_else(|| {
                    OpError::new(format!(
                        "3-D {what} of hidden size {hidden} needs a head count that divides it"
                    ))
                })?;
            let d = hidden / h;
            let src = t.to_f64_vec()?;
            let mut v = vec![0f64; src.len()];
            for bi in 0..b {
                for si in 0..s {
                    for hi in 0..h {
                        let from = (bi * s + si) * hidden + hi * d;
                        let to = ((bi * h + hi) * s + si) * d;
                        v[to..to + d].copy_from_slice(&src[from..from + d]);
                    }
                }
            }
            Ok(Heads {
                batch: b,
                v,
                heads: h,
                seq: s,
                size: d,
            })
        }
        _ => Err(OpError::new(format!(
            "{what} must be 3-D or 4-D, got shape {:?}",
            t.shape()
        ))),
    }
}

/// Appends `cur` to `past` along the sequence axis.
fn concat_seq(past: Option<Heads>, cur: Heads) -> Result<Heads, OpError> {
    let Some(p) = past else { return Ok(cur) };
    if p.batch != cur.batch || p.heads != cur.heads || p.size != cur.size {
        return Err(OpError::new(format!(
            "past [{}, {}, _, {}] and current [{}, {}, _, {}] key/value disagree",
            p.batch, p.heads, p.size, cur.batch, cur.heads, cur.size
        )));
    }
    let seq = p.seq + cur.seq;
    let mut v = Vec::with_capacity(cur.batch * cur.heads * seq * cur.size);
    for bh in 0..cur.batch * cur.heads {
        v.extend_from_slice(&p.v[bh * p.seq * p.size..(bh + 1) * p.seq * p.size]);
        v.extend_from_slice(&cur.v[bh * cur.seq * cur.size..(bh + 1) * cur.seq * cur.size]);
    }
    Ok(Heads {
        batch: cur.batch,
        v,
        heads: cur.heads,
        seq,
        size: cur.size,
    })
}

/// `softcap * tanh(x / softcap)`, rounded to `elem` after each step.
pub(crate) fn soft_cap(elem: ElemType, softcap: f64, x: f64) -> f64 {
    let r = |v: f64| round_to(elem, v);
    r(r(r(x / softcap).tanh()) * softcap)
}

/// The node's masking attributes and inputs, resolved for one batch.
struct Masking {
    causal: bool,
    /// -1 leaves a side unbounded.
    left: i64,
    right: i64,
    past_len: usize,
    /// Valid keys per batch item (external cache), if given.
    nonpad: Option<Vec<i64>>,
}

impl Masking {
    /// Count of valid keys preceding the query block of batch item `b`.
    fn offset(&self, b: usize, qs: usize) -> i64 {
        match &self.nonpad {
            Some(np) if self.past_len == 0 => np[b] - qs as i64,
            _ => self.past_len as i64,
        }
    }

    /// True when query `s` of batch item `b` may attend key `t`, mask aside.
    fn allows(&self, b: usize, qs: usize, s: usize, t: usize) -> bool {
        let p = self.offset(b, qs) + s as i64;
        let t = t as i64;
        let valid = self.nonpad.as_ref().is_none_or(|np| t < np[b]);
        valid
            && !(self.causal && t > p)
            && !(self.left >= 0 && p - t > self.left)
            && !(self.right >= 0 && t - p > self.right)
    }
}

/// The attention mask as an additive bias broadcast to `[b, hq, qs, ks]`; a
/// shorter last dim is padded with `-inf`.
fn mask_bias(m: &Tensor, full: [usize; 4]) -> Result<Vec<f64>, OpError> {
    let [b, hq, qs, ks] = full;
    if numel(&full) == 0 {
        return Ok(Vec::new());
    }
    if m.rank() > 4 {
        return Err(OpError::new(format!(
            "attn_mask of rank {} (at most 4)",
            m.rank()
        )));
    }
    let last = m.shape().last().copied().unwrap_or(1);
    if last > ks {
        return Err(OpError::new(format!(
            "attn_mask covers {last} keys, more than the {ks} given"
        )));
    }
    let mut ms = m.shape().to_vec();
    while ms.len() < 4 {
        ms.insert(0, 1);
    }
    let target = [b, hq, qs, last];
    let m4 = m.with_data(m.candle().reshape(&*ms)?)?;
    let expanded = expand_to(m4.candle(), &target).map_err(|e| {
        OpError::new(format!(
            "attn_mask {:?} does not broadcast to {target:?}: {e}",
            m.shape()
        ))
    })?;
    let mut mv = m4.with_data(expanded)?.to_f64_vec()?;
    if m.elem_type() == ElemType::Bool {
        for x in mv.iter_mut() {
            *x = if *x != 0.0 { 0.0 } else { f64::NEG_INFINITY };
        }
    }
    let mut out = vec![f64::NEG_INFINITY; numel(&full)];
    for (row, src) in out.chunks_mut(ks).zip(mv.chunks(last.max(1))) {
        row[..last].copy_from_slice(&src[..last]);
    }
    Ok(out)
}

fn attention(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let q_t = i.tensor(0)?;
    let elem = q_t.elem_type();
    if !elem.is_float() {
        return Err(OpError::new(format!("Attention of {elem} inputs")));
    }
    let three_d = q_t.rank() == 3;
    let q = to_heads(q_t, n.attrs.opt_int("q_num_heads")?, "Q")?;
    let kv_heads = n.attrs.opt_int("kv_num_heads")?;
    let k_t = i.tensor(1)?;
    let k = to_heads(k_t, kv_heads, "K")?;
    let v = to_heads(i.tensor(2)?, kv_heads, "V")?;
    let past_k = i
        .opt(4)?
        .map(|t| to_heads(t, None, "past_key"))
        .transpose()?;
    let past_v = i
        .opt(5)?
        .map(|t| to_heads(t, None, "past_value"))
        .transpose()?;
    if past_k.is_some() != past_v.is_some() {
        return Err(OpError::new("past_key and past_value go together"));
    }
    let past_len = past_k.as_ref().map_or(0, |p| p.seq);
    let k = concat_seq(past_k, k)?;
    let v = concat_seq(past_v, v)?;
    let b = q.batch;
    if k.batch != b || v.batch != b || k.seq != v.seq {
        return Err(OpError::new(format!(
            "Q batch {b}, K [{}, seq {}], V [{}, seq {}] disagree",
            k.batch, k.seq, v.batch, v.seq
        )));
    }
    if q.size != k.size || k.heads != v.heads || k.heads == 0 || q.heads % k.heads != 0 {
        return Err(OpError::new(format!(
            "Q has {} heads of {}, K {} of {}, V {} heads: they do not agree",
            q.heads, q.size, k.heads, k.size, v.heads
        )));
    }
    let (qs, ks, d, vd, hq) = (q.seq, k.seq, q.size, v.size, q.heads);
    let group = hq / k.heads;
    let r = |x: f64| round_to(elem, x);
    let scale = if n.attrs.has("scale") {
        f64::from(n.attrs.float("scale", 1.0)?)
    } else {
        1.0 / (d as f64).sqrt()
    };
    // Q and K are each scaled by sqrt(scale), in the input type, before the product.
    let root = r(scale.sqrt());
    let qv: Vec<f64> = q.v.iter().map(|&x| r(x * root)).collect();
    let kv: Vec<f64> = k.v.iter().map(|&x| r(x * root)).collect();
    let softcap = f64::from(n.attrs.float("softcap", 0.0)?);
    let mode = n.attrs.int("qk_matmul_output_mode", 0)?;
    if !(0..=3).contains(&mode) {
        return Err(OpError::new(format!("qk_matmul_output_mode {mode}")));
    }
    let sm_elem = match n.attrs.opt_int("softmax_precision")? {
        Some(c) => float_type(c, "softmax_precision")?,
        None => elem,
    };
    let window = |name: &str| -> Result<i64, OpError> {
        let w = n.attrs.int(name, -1)?;
        if w < -1 {
            return Err(OpError::new(format!("{name} {w} (-1 or more)")));
        }
        Ok(w)
    };
    let nonpad: Option<Vec<i64>> = i.opt(6)?.map(|t| t.to_i64_vec()).transpose()?;
    if let Some(np) = &nonpad {
        if np.len() != b || np.iter().any(|&x| x < 0 || x > ks as i64) {
            return Err(OpError::new(format!(
                "nonpad_kv_seqlen {np:?} should hold {b} lengths of at most {ks}"
            )));
        }
    }
    let masking = Masking {
        causal: n.attrs.int("is_causal", 0)? != 0,
        left: window("left_window_size")?,
        right: window("right_window_size")?,
        past_len,
        nonpad,
    };
    let full = [b, hq, qs, ks];
    let mask = i.opt(3)?.map(|m| mask_bias(m, full)).transpose()?;
    let mut y = vec![0f64; b * hq * qs * vd];
    let mut qk_out = vec![0f64; numel(&full)];
    let mut bias = vec![0f64; ks];
    let mut row = vec![0f64; ks];
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / group;
            for s in 0..qs {
                let base = ((bi * hq + h) * qs + s) * ks;
                for (t, x) in bias.iter_mut().enumerate() {
                    *x = if masking.allows(bi, qs, s, t) {
                        mask.as_ref().map_or(0.0, |m| m[base + t])
                    } else {
                        f64::NEG_INFINITY
                    };
                }
                let qrow = &qv[((bi * hq + h) * qs + s) * d..][..d];
                for (t, x) in row.iter_mut().enumerate() {
                    let krow = &kv[((bi * k.heads + kh) * ks + t) * d..][..d];
                    *x = r(qrow.iter().zip(krow).map(|(a, c)| a * c).sum::<f64>());
                }
                let out = &mut qk_out[base..base + ks];
                if mode == 0 {
                    out.copy_from_slice(&row);
                }
                // Softcap applies to the scores before the bias, so that a -inf
                // bias stays -inf.
                if softcap > 0.0 {
                    row.iter_mut()
                        .for_each(|x| *x = soft_cap(elem, softcap, *x));
                }
                if mode == 1 {
                    out.copy_from_slice(&row);
                }
                for (x, &c) in row.iter_mut().zip(&bias) {
                    *x = r(*x + c);
                }
                if mode == 2 {
                    out.copy_from_slice(&row);
                }
                // A row whose bias allows no key attends to nothing: zero weights.
                if bias.iter().all(|&c| c == f64::NEG_INFINITY) {
                    row.iter_mut().for_each(|x| *x = 0.0);
                } else {
                    row.iter_mut().for_each(|x| *x = round_to(sm_elem, *x));
                    softmax_in(sm_elem, &mut row);
                    row.iter_mut().for_each(|x| *x = r(*x));
                }
                if mode == 3 {
                    out.copy_from_slice(&row);
                }
                let ybase = ((bi * hq + h) * qs + s) * vd;
                for (x, o) in y[ybase..ybase + vd].iter_mut().enumerate() {
                    let dot: f64 = row
                        .iter()
                        .enumerate()
                        .map(|(t, &p)| p * v.v[((bi * v.heads + kh) * ks + t) * vd + x])
                        .sum();
                    *o = r(dot);
                }
            }
        }
    }
    let y_t = if three_d {
        let mut out = vec![0f64; y.len()];
        for bi in 0..b {
            for h in 0..hq {
                for s in 0..qs {
                    let from = ((bi * hq + h) * qs + s) * vd;
                    let to = (bi * qs + s) * hq * vd + h * vd;
                    out[to..to + vd].copy_from_slice(&y[from..from + vd]);
                }
            }
        }
        from_f64(elem, &[b, qs, hq * vd], out)?
    } else {
        from_f64(elem, &[b, hq, qs, vd], y)?
    };
    let kv_elem = k_t.elem_type();
    Ok(vec![
        Value::Tensor(y_t),
        Value::Tensor(from_f64(kv_elem, &[b, k.heads, ks, d], k.v)?),
        Value::Tensor(from_f64(kv_elem, &[b, v.heads, ks, vd], v.v)?),
        Value::Tensor(from_f64(elem, &full, qk_out)?),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Attr;

    fn info(attrs: &[(&str, Attr)]) -> NodeInfo {
        crate::ops::testing::info_with(25, 4, attrs)
    }

    fn t4(shape: [usize; 4], v: Vec<f32>) -> Value {
        Value::Tensor(Tensor::from_f32(&shape, v).unwrap())
    }

    fn run(n: &NodeInfo, vals: &[Option<Value>]) -> Result<Vec<Vec<f32>>, OpError> {
        let ins = Inputs {
            values: vals.iter().map(Option::as_ref).collect(),
        };
        let out = attention(n, &ins)?;
        Ok(out
            .iter()
            .map(|v| v.as_tensor().unwrap().to_f32_vec().unwrap())
            .collect())
    }

    /// One head of size 1 over five positions: Q = K = 0 so every allowed key
    /// weighs the same, and V = position, so Y is the mean allowed position.
    fn positions(n: &NodeInfo) -> Vec<f32> {
        let zeros = t4([1, 1, 5, 1], vec![0.0; 5]);
        let v = t4([1, 1, 5, 1], vec![0., 1., 2., 3., 4.]);
        run(n, &[Some(zeros.clone()), Some(zeros), Some(v)]).unwrap()[0].clone()
    }

    #[test]
    fn default_attention_averages_all_keys() {
        assert_eq!(positions(&info(&[])), vec![2.0; 5]);
    }

    #[test]
    fn causal_attention_sees_only_earlier_keys() {
        let y = positions(&info(&[("is_causal", Attr::Int(1))]));
        assert_eq!(y, vec![0.0, 0.5, 1.0, 1.5, 2.0]);
    }

    #[test]
    fn sliding_window_bounds_both_sides() {
        let y = positions(&info(&[
            ("left_window_size", Attr::Int(1)),
            ("right_window_size", Attr::Int(0)),
        ]));
        assert_eq!(y, vec![0.0, 0.5, 1.5, 2.5, 3.5]);
        let y = positions(&info(&[
            ("left_window_size", Attr::Int(0)),
            ("right_window_size", Attr::Int(1)),
        ]));
        assert_eq!(y, vec![0.5, 1.5, 2.5, 3.5, 4.0]);
    }

    #[test]
    fn qk_output_mode_one_is_softcapped_and_unbiased() {
        let n = info(&[
            ("softcap", Attr::Float(1.0)),
            ("qk_matmul_output_mode", Attr::Int(1)),
            ("scale", Attr::Float(1.0)),
        ]);
        let q = t4([1, 1, 1, 1], vec![2.0]);
        let k = t4([1, 1, 2, 1], vec![1.0, 3.0]);
        let mask = Value::Tensor(Tensor::from_f32(&[1, 2], vec![0.0, -100.0]).unwrap());
        let out = run(&n, &[Some(q), Some(k.clone()), Some(k), Some(mask)]).unwrap();
        let want = [2f32.tanh(), 6f32.tanh()];
        for (a, b) in out[3].iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn fully_masked_rows_give_zeros() {
        let n = info(&[]);
        let z = t4([1, 1, 2, 1], vec![1.0, 1.0]);
        let mask =
            Value::Tensor(Tensor::from_bools(&[2, 2], vec![false, false, true, true]).unwrap());
        let out = run(&n, &[Some(z.clone()), Some(z.clone()), Some(z), Some(mask)]).unwrap();
        assert_eq!(out[0], vec![0.0, 1.0]);
    }

    #[test]
    fn mismatched_heads_are_rejected() {
        let q = t4([1, 3, 1, 2], vec![0.0; 6]);
        let k = t4([1, 2, 1, 2], vec![0.0; 4]);
        let err = run(&info(&[]), &[Some(q), Some(k.clone()), Some(k)]).unwrap_err();
        assert!(err.message.contains("heads"), "{err}");
    }

    #[test]
    fn three_d_inputs_need_head_counts() {
        let q = Value::Tensor(Tensor::from_f32(&[1, 1, 4], vec![0.0; 4]).unwrap());
        let err = run(&info(&[]), &[Some(q.clone()), Some(q.clone()), Some(q)]).unwrap_err();
        assert!(err.message.contains("head count"), "{err}");
    }

    #[test]
    fn negative_windows_other_than_minus_one_are_rejected() {
        let z = t4([1, 1, 1, 1], vec![0.0]);
        let n = info(&[("left_window_size", Attr::Int(-2))]);
        assert!(run(&n, &[Some(z.clone()), Some(z.clone()), Some(z)]).is_err());
    }
}
