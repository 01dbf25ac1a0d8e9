//! `RotaryEmbedding` (opset 23): rotary positional embeddings (RoPE) over 4-D
//! `[B, heads, S, head_size]` or 3-D `[B, S, heads * head_size]` input, halves or
//! interleaved pairs, full or partial (`rotary_embedding_dim`) rotation, with the
//! cos/sin caches indexed by `position_ids` or given per token.
//!
//! Computed on the host in f64, rounding to the input type after each product and
//! sum as a computation in that type does. The caches are inputs: this kernel does
//! not build them from a base frequency.

use crate::ops::common::from_f64;
use crate::ops::precision::round_to;
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::Tensor;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    match op {
        "RotaryEmbedding" => Some(rotary_embedding),
        _ => None,
    }
}

/// Where the input's values live: element (b, h, s, d) is at
/// `b * batch + h * head + s * seq + d`.
struct Layout {
    batch: usize,
    heads: usize,
    seq: usize,
    head_size: usize,
    b_stride: usize,
    h_stride: usize,
    s_stride: usize,
}

fn layout(x: &Tensor, num_heads: i64) -> Result<Layout, OpError> {
    match *x.shape() {
        [b, h, s, d] => Ok(Layout {
            batch: b,
            heads: h,
            seq: s,
            head_size: d,
            b_stride: h * s * d,
            h_stride: s * d,
            s_stride: d,
        }),
        [b, s, hidden] => {
            let h = usize::try_from(num_heads)
                .ok()
                .filter(|&h| h > 0 && hidden % h == 0)
                .ok_or_else(|| {
                    OpError::new(format!(
                        "3-D input of hidden size {hidden} needs num_heads dividing it, got {num_heads}"
                    ))
                })?;
            let d = hidden / h;
            Ok(Layout {
                batch: b,
                heads: h,
                seq: s,
                head_size: d,
                b_stride: s * hidden,
                h_stride: d,
                s_stride: hidden,
            })
        }
        _ => Err(OpError::new(format!(
            "RotaryEmbedding input must be 3-D or 4-D, got {:?}",
            x.shape()
        ))),
    }
}

fn rotary_embedding(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let (cos_t, sin_t) = (i.tensor(1)?, i.tensor(2)?);
    let elem = x.elem_type();
    if !elem.is_float() {
        return Err(OpError::new(format!("RotaryEmbedding of {elem} input")));
    }
    let l = layout(x, n.attrs.int("num_heads", 0)?)?;
    let interleaved = n.attrs.int("interleaved", 0)? != 0;
    let rd = match n.attrs.int("rotary_embedding_dim", 0)? {
        0 => l.head_size,
        r => usize::try_from(r).map_err(|_| OpError::new(format!("rotary_embedding_dim {r}")))?,
    };
    if rd % 2 != 0 || rd > l.head_size {
        return Err(OpError::new(format!(
            "rotary dimension {rd} must be even and at most the head size {}",
            l.head_size
        )));
    }
    let half = rd / 2;
    if cos_t.shape() != sin_t.shape() || cos_t.shape().last() != Some(&half) {
        return Err(OpError::new(format!(
            "cos {:?} and sin {:?} caches need a last dim of {half}",
            cos_t.shape(),
            sin_t.shape()
        )));
    }
    // Row of the caches for each (batch, position).
    let rows: Vec<usize> = match i.opt(3)? {
        Some(p) => {
            let max = cos_t.shape()[0];
            if cos_t.rank() != 2 || p.shape() != [l.batch, l.seq] {
                return Err(OpError::new(format!(
                    "with position_ids {:?}, caches {:?} must be [max_position, {half}] for [{}, {}]",
                    p.shape(),
                    cos_t.shape(),
                    l.batch,
                    l.seq
                )));
            }
            p.to_i64_vec()?
                .into_iter()
                .map(|v| {
                    usize::try_from(v).ok().filter(|&v| v < max).ok_or_else(|| {
                        OpError::new(format!("position id {v} outside the {max} cached"))
                    })
                })
                .collect::<Result<_, _>>()?
        }
        None => {
            if cos_t.shape() != [l.batch, l.seq, half] {
                return Err(OpError::new(format!(
                    "without position_ids, caches {:?} must be [{}, {}, {half}]",
                    cos_t.shape(),
                    l.batch,
                    l.seq
                )));
            }
            (0..l.batch * l.seq).collect()
        }
    };
    let (cos, sin) = (cos_t.to_f64_vec()?, sin_t.to_f64_vec()?);
    let r = |v: f64| round_to(elem, v);
    let mut y = x.to_f64_vec()?;
    for b in 0..l.batch {
        for s in 0..l.seq {
            let row = rows[b * l.seq + s] * half;
            let (c, sn) = (&cos[row..row + half], &sin[row..row + half]);
            for h in 0..l.heads {
                let base = b * l.b_stride + h * l.h_stride + s * l.s_stride;
                let v = &mut y[base..base + rd];
                for j in 0..half {
                    let (p1, p2) = if interleaved {
                        (2 * j, 2 * j + 1)
                    } else {
                        (j, j + half)
                    };
                    let (x1, x2) = (v[p1], v[p2]);
                    v[p1] = r(r(c[j] * x1) - r(sn[j] * x2));
                    v[p2] = r(r(sn[j] * x1) + r(c[j] * x2));
                }
            }
        }
    }
    one(from_f64(elem, x.shape(), y)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Attr, Attrs};
    use crate::value::Value;

    fn run(attrs: &[(&str, i64)], vals: &[Option<Value>]) -> Result<Vec<f32>, OpError> {
        let mut a = Attrs::default();
        for (k, v) in attrs {
            a.set(k, Attr::Int(*v));
        }
        let n = NodeInfo {
            attrs: a,
            opset: 23,
            outputs: 1,
        };
        let out = rotary_embedding(
            &n,
            &Inputs {
                values: vals.iter().map(Option::as_ref).collect(),
            },
        )?;
        Ok(out[0].as_tensor().unwrap().to_f32_vec().unwrap())
    }

    fn t(shape: &[usize], v: Vec<f32>) -> Option<Value> {
        Some(Value::Tensor(Tensor::from_f32(shape, v).unwrap()))
    }

    /// One token of head size 4 = [1, 2, 3, 4]; a quarter turn on the first pair
    /// and none on the second.
    fn quarter_turn(attrs: &[(&str, i64)]) -> Vec<f32> {
        let x = t(&[1, 1, 1, 4], vec![1., 2., 3., 4.]);
        let cos = t(&[1, 1, 2], vec![0., 1.]);
        let sin = t(&[1, 1, 2], vec![1., 0.]);
        run(attrs, &[x, cos, sin]).unwrap()
    }

    #[test]
    fn halves_rotate_the_first_against_the_second_half() {
        // Pairs (x0, x2) and (x1, x3): (1, 3) turns to (-3, 1), (2, 4) stays.
        assert_eq!(quarter_turn(&[]), vec![-3., 2., 1., 4.]);
    }

    #[test]
    fn interleaved_rotates_adjacent_pairs() {
        // Pairs (x0, x1) and (x2, x3): (1, 2) turns to (-2, 1), (3, 4) stays.
        assert_eq!(quarter_turn(&[("interleaved", 1)]), vec![-2., 1., 3., 4.]);
    }

    #[test]
    fn position_ids_index_the_caches_and_partial_rotation_keeps_the_rest() {
        let x = t(&[1, 1, 1, 4], vec![1., 2., 3., 4.]);
        // Row 1 of the cache is a half turn.
        let cos = t(&[2, 1], vec![1., -1.]);
        let sin = t(&[2, 1], vec![0., 0.]);
        let pos = Some(Value::Tensor(Tensor::from_i64(&[1, 1], vec![1]).unwrap()));
        let y = run(&[("rotary_embedding_dim", 2)], &[x, cos, sin, pos]).unwrap();
        assert_eq!(y, vec![-1., -2., 3., 4.]);
    }

    #[test]
    fn out_of_range_position_ids_are_rejected() {
        let x = t(&[1, 1, 1, 2], vec![1., 2.]);
        let cos = t(&[2, 1], vec![1., 1.]);
        let pos = Some(Value::Tensor(Tensor::from_i64(&[1, 1], vec![2]).unwrap()));
        let err = run(&[], &[x, cos.clone(), cos, pos]).unwrap_err();
        assert!(err.message.contains("position id"), "{err}");
    }

    #[test]
    fn three_d_input_needs_num_heads() {
        let x = t(&[1, 1, 4], vec![1., 2., 3., 4.]);
        let cos = t(&[1, 1, 1], vec![1.]);
        assert!(run(&[], &[x.clone(), cos.clone(), cos.clone()]).is_err());
        let y = run(&[("num_heads", 2)], &[x, cos.clone(), cos]).unwrap();
        // cos 1, sin 1 per pair: (a, b) -> (a - b, a + b) on each head.
        assert_eq!(y, vec![-1., 3., -1., 7.]);
    }
}
