//! `TensorScatter` (opset 24): writes an update into a fixed-size cache along its
//! sequence axis at a per-batch write index, `linear` or `circular` (wrapping), as
//! for static KV caches.
//!
//! Values are moved, not converted, so every element type works. The cache is not
//! updated in place: the output is a new tensor.

use candle_core::Tensor as Candle;

use crate::ops::common::{axis_in, numel, strides, take};
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    match op {
        "TensorScatter" => Some(tensor_scatter),
        _ => None,
    }
}

fn tensor_scatter(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (past, update) = (i.tensor(0)?, i.tensor(1)?);
    let shape = past.shape();
    let rank = shape.len();
    if past.elem_type() != update.elem_type() || update.rank() != rank {
        return Err(OpError::new(format!(
            "cache {:?} of {} and update {:?} of {} differ in rank or type",
            shape,
            past.elem_type(),
            update.shape(),
            update.elem_type()
        )));
    }
    let axis = axis_in(n.attrs.int("axis", -2)?, rank)?;
    if axis == 0 {
        return Err(OpError::new("TensorScatter axis cannot be the batch axis"));
    }
    let circular = match n.attrs.string("mode", "linear")? {
        "linear" => false,
        "circular" => true,
        other => return Err(OpError::new(format!("unknown mode {other:?}"))),
    };
    let ushape = update.shape();
    let (max_seq, seq) = (shape[axis], ushape[axis]);
    if (0..rank).any(|d| d != axis && shape[d] != ushape[d]) || seq > max_seq {
        return Err(OpError::new(format!(
            "update {ushape:?} does not fit cache {shape:?} along axis {axis}"
        )));
    }
    let batch = shape[0];
    let writes = match i.opt(2)? {
        Some(w) => w.to_i64_vec()?,
        None => vec![0; batch],
    };
    if writes.len() != batch {
        return Err(OpError::new(format!(
            "write_indices has {} entries for batch {batch}",
            writes.len()
        )));
    }
    // Where each update row lands, per batch item.
    let mut starts = Vec::with_capacity(batch);
    for &w in &writes {
        if circular {
            starts.push(w.rem_euclid(max_seq.max(1) as i64) as usize);
        } else if w < 0 || w as usize + seq > max_seq {
            return Err(OpError::new(format!(
                "write index {w} + {seq} updates overrun the cache length {max_seq}"
            )));
        } else {
            starts.push(w as usize);
        }
    }
    // Output element k reads the cache (index k) or the update (index past.len() +
    // its update offset) from the two flattened and concatenated.
    let mut idx: Vec<i64> = (0..past.len() as i64).collect();
    let (cs, us) = (strides(shape), strides(ushape));
    let outer = numel(&ushape[..axis]);
    let inner = numel(&ushape[axis + 1..]);
    let per_batch = outer / batch.max(1);
    for o in 0..outer {
        let b = o / per_batch.max(1);
        // o enumerates the dims before `axis`; its offsets in cache and update
        // differ only by the axis stride.
        let (c_base, u_base) = (o * cs[axis] * max_seq, o * us[axis] * seq);
        for s in 0..seq {
            let mut dst = starts[b] + s;
            if circular {
                dst %= max_seq;
            }
            for k in 0..inner {
                idx[c_base + dst * cs[axis] + k] = (past.len() + u_base + s * us[axis] + k) as i64;
            }
        }
    }
    let both = Candle::cat(
        &[past.candle().flatten_all()?, update.candle().flatten_all()?],
        0,
    )?;
    let both = past.with_data(both)?;
    one(take(&both, shape, idx)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Attr, Attrs};
    use crate::tensor::{ElemType, Tensor};
    use crate::value::Value;

    fn run(mode: Option<&str>, vals: &[Value]) -> Result<Vec<i64>, OpError> {
        let mut attrs = Attrs::default();
        if let Some(m) = mode {
            attrs.set("mode", Attr::String(m.to_owned()));
        }
        let n = NodeInfo {
            attrs,
            opset: 24,
            outputs: 1,
        };
        let out = tensor_scatter(
            &n,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )?;
        Ok(out[0].as_tensor().unwrap().to_i64_vec().unwrap())
    }

    /// A [2, 4, 1] int32 cache of zeros and a [2, 2, 1] update of 1..=4.
    fn cache_and_update() -> (Value, Value) {
        let cache = Tensor::from_i64_as(ElemType::I32, &[2, 4, 1], vec![0; 8]).unwrap();
        let update = Tensor::from_i64_as(ElemType::I32, &[2, 2, 1], vec![1, 2, 3, 4]).unwrap();
        (Value::Tensor(cache), Value::Tensor(update))
    }

    #[test]
    fn without_write_indices_updates_land_at_the_start() {
        let (c, u) = cache_and_update();
        assert_eq!(run(None, &[c, u]).unwrap(), vec![1, 2, 0, 0, 3, 4, 0, 0]);
    }

    #[test]
    fn write_indices_place_each_batch_item() {
        let (c, u) = cache_and_update();
        let w = Value::Tensor(Tensor::from_i64(&[2], vec![2, 1]).unwrap());
        assert_eq!(run(None, &[c, u, w]).unwrap(), vec![0, 0, 1, 2, 0, 3, 4, 0]);
    }

    #[test]
    fn circular_mode_wraps_around() {
        let (c, u) = cache_and_update();
        let w = Value::Tensor(Tensor::from_i64(&[2], vec![3, 0]).unwrap());
        let got = run(Some("circular"), &[c, u, w]).unwrap();
        assert_eq!(got, vec![2, 0, 0, 1, 3, 4, 0, 0]);
    }

    #[test]
    fn linear_overrun_is_rejected() {
        let (c, u) = cache_and_update();
        let w = Value::Tensor(Tensor::from_i64(&[2], vec![3, 0]).unwrap());
        let err = run(Some("linear"), &[c, u, w]).unwrap_err();
        assert!(err.message.contains("overrun"), "{err}");
    }

    #[test]
    fn mismatched_shapes_are_rejected() {
        let (c, _) = cache_and_update();
        let u = Tensor::from_i64_as(ElemType::I32, &[1, 2, 1], vec![1, 2]).unwrap();
        assert!(run(None, &[c, Value::Tensor(u)]).is_err());
    }
}
