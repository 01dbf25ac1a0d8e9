//! Helpers shared by the kernel families: axis normalisation, broadcasting, host
//! copies, and tensor construction in a given element type.
//!
//! Nothing here is an operator; [`lookup`] finds none.

use candle_core::Device;
use rayon::prelude::*;

use crate::ops::{Kernel, OpError};
use crate::tensor::{ElemType, Tensor};

/// Values from which the f32 row kernels (softmax family, LayerNormalization)
/// split their rows over threads (an attention's score matrix of 4 heads x 64
/// x 64 is 16K).
const PARALLEL_ROWS_MIN: usize = 8 * 1024;

/// `f` applied to each row of `inner` values of `v`, results in row order; the
/// rows go to rayon's threads when `v` holds [`PARALLEL_ROWS_MIN`] values or
/// more and there are threads to share them. No rows when `inner` is 0.
pub(crate) fn map_rows_f32<T: Send>(
    v: &mut [f32],
    inner: usize,
    f: impl Fn(&mut [f32]) -> T + Sync + Send,
) -> Vec<T> {
    if inner == 0 {
        return Vec::new();
    }
    if v.len() >= PARALLEL_ROWS_MIN && rayon::current_num_threads() > 1 {
        v.par_chunks_mut(inner)
            .with_min_len(PARALLEL_ROWS_MIN.div_ceil(inner))
            .map(f)
            .collect()
    } else {
        v.chunks_mut(inner).map(f).collect()
    }
}

/// No operator lives here.
pub(super) fn lookup(_op: &str) -> Option<Kernel> {
    None
}

/// `axis` normalised against `rank` positions exactly.
pub(crate) fn axis_in(axis: i64, rank: usize) -> Result<usize, OpError> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(OpError::new(format!(
            "axis {axis} out of range for rank {rank}"
        )));
    }
    Ok(a as usize)
}

/// The numpy broadcast of two shapes.
pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, OpError> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(OpError::new(format!(
                "shapes {a:?} and {b:?} do not broadcast"
            )));
        };
    }
    Ok(out)
}

/// The broadcast of many shapes.
pub(crate) fn broadcast_all(shapes: &[&[usize]]) -> Result<Vec<usize>, OpError> {
    let mut out: Vec<usize> = Vec::new();
    for s in shapes {
        out = broadcast_shape(&out, s)?;
    }
    Ok(out)
}

/// Broadcasts a candle tensor to `shape` (no copy) and makes it contiguous.
pub(crate) fn expand_to(
    t: &candle_core::Tensor,
    shape: &[usize],
) -> Result<candle_core::Tensor, OpError> {
    if t.dims() == shape {
        return Ok(t.clone());
    }
    Ok(t.broadcast_as(shape)?.contiguous()?)
}

/// Row-major strides of `shape`.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The element count of `shape`.
/// Most elements a kernel creates for a shape or size read from an input's
/// *values* (ConstantOfShape, window and DFT lengths, Col2Im's image, ...):
/// 2^30, 4 GiB of f32. Past it the kernel returns an error instead of asking
/// the allocator for what a hostile or broken input names (an allocation
/// failure aborts the process; it cannot be caught like a panic).
pub(crate) const MAX_SIZED_ELEMENTS: usize = 1 << 30;

/// The element count of `shape` (read from an input's values), or an error
/// naming `what` when it overflows or exceeds [`MAX_SIZED_ELEMENTS`].
pub(crate) fn checked_numel(shape: &[usize], what: &str) -> Result<usize, OpError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_SIZED_ELEMENTS)
        .ok_or_else(|| {
            OpError::new(format!(
                "{what} {shape:?} is too large (at most {MAX_SIZED_ELEMENTS} elements)"
            ))
        })
}

pub(crate) fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A tensor's values as i64, for shape-like inputs.
pub(crate) fn ints(t: &Tensor) -> Result<Vec<i64>, OpError> {
    Ok(t.to_i64_vec()?)
}

/// A scalar (or one-element) tensor as f64.
pub(crate) fn scalar_f64(t: &Tensor) -> Result<f64, OpError> {
    let v = t.to_f64_vec()?;
    v.first()
        .copied()
        .ok_or_else(|| OpError::new("expected a scalar, got an empty tensor"))
}

/// A scalar (or one-element) tensor as i64.
pub(crate) fn scalar_i64(t: &Tensor) -> Result<i64, OpError> {
    let v = t.to_i64_vec()?;
    v.first()
        .copied()
        .ok_or_else(|| OpError::new("expected a scalar, got an empty tensor"))
}

/// Maps every element through `f` in f64, keeping the element type.
pub(crate) fn map_f64(t: &Tensor, f: impl Fn(f64) -> f64) -> Result<Tensor, OpError> {
    let v: Vec<f64> = t.to_f64_vec()?.into_iter().map(f).collect();
    Ok(Tensor::from_f64_as(t.elem_type(), t.shape(), v)?)
}

/// Maps every element through `f` in i64, keeping the element type.
pub(crate) fn map_i64(t: &Tensor, f: impl Fn(i64) -> i64) -> Result<Tensor, OpError> {
    let v: Vec<i64> = t.to_i64_vec()?.into_iter().map(f).collect();
    Ok(Tensor::from_i64_as(t.elem_type(), t.shape(), v)?)
}

/// A tensor of `elem` from f64 values.
pub(crate) fn from_f64(elem: ElemType, shape: &[usize], v: Vec<f64>) -> Result<Tensor, OpError> {
    Ok(Tensor::from_f64_as(elem, shape, v)?)
}

/// A tensor of `elem` from i64 values.
pub(crate) fn from_i64(elem: ElemType, shape: &[usize], v: Vec<i64>) -> Result<Tensor, OpError> {
    Ok(Tensor::from_i64_as(elem, shape, v)?)
}

/// An int64 tensor.
pub(crate) fn i64_tensor(shape: &[usize], v: Vec<i64>) -> Result<Tensor, OpError> {
    Ok(Tensor::from_i64(shape, v)?)
}

/// A bool tensor.
pub(crate) fn bool_tensor(shape: &[usize], v: Vec<bool>) -> Result<Tensor, OpError> {
    Ok(Tensor::from_bools(shape, v)?)
}

/// Wraps a candle result with the same element type as `like`.
pub(crate) fn like(like: &Tensor, data: candle_core::Tensor) -> Result<Tensor, OpError> {
    Ok(like.with_data(data)?)
}

/// A candle tensor on the CPU.
pub(crate) fn cpu() -> &'static Device {
    &Device::Cpu
}

/// Requires a float tensor.
pub(crate) fn need_float(t: &Tensor, what: &str) -> Result<(), OpError> {
    if t.elem_type().is_float() {
        Ok(())
    } else {
        Err(OpError::new(format!(
            "{what} needs a float tensor, got {}",
            t.elem_type()
        )))
    }
}

/// A tensor of `out_shape` whose element `k` is element `idx[k]` of `t` flattened
/// (row-major). Works for every element type: values are moved, not converted.
pub(crate) fn take(t: &Tensor, out_shape: &[usize], idx: Vec<i64>) -> Result<Tensor, OpError> {
    let n = idx.len();
    if n != numel(out_shape) {
        return Err(OpError::new(
            "internal: index count does not match the shape",
        ));
    }
    let flat = t.candle().flatten_all()?;
    let len = flat.elem_count() as i64;
    if idx.iter().any(|&i| i < 0 || i >= len) {
        return Err(OpError::new("index out of range"));
    }
    if n == 0 {
        let empty = flat.narrow(0, 0, 0)?.reshape(out_shape)?;
        return like(t, empty);
    }
    let ids = candle_core::Tensor::from_vec(idx, n, cpu())?;
    like(t, flat.index_select(&ids, 0)?.reshape(out_shape)?)
}

/// Calls `f` with every coordinate of `shape` in row-major order.
pub(crate) fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; shape.len()];
    loop {
        f(&idx);
        let mut d = shape.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// A tensor of `elem` and `shape` filled with `value`.
pub(crate) fn full(elem: ElemType, shape: &[usize], value: f64) -> Result<Tensor, OpError> {
    let n = numel(shape);
    if elem.is_float() {
        from_f64(elem, shape, vec![value; n])
    } else {
        from_i64(elem, shape, vec![value as i64; n])
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn sizes_read_from_values_are_bounded() {
        assert_eq!(checked_numel(&[2, 3, 4], "x").unwrap(), 24);
        assert!(checked_numel(&[MAX_SIZED_ELEMENTS + 1], "x").is_err());
        let e = checked_numel(&[usize::MAX, 2], "ConstantOfShape shape").unwrap_err();
        assert!(e.message.contains("ConstantOfShape shape"), "{e:?}");
    }

    use super::*;

    #[test]
    fn negative_axis_counts_from_the_end() {
        assert_eq!(axis_in(-1, 3).unwrap(), 2);
        assert_eq!(axis_in(-3, 3).unwrap(), 0);
        assert!(axis_in(3, 3).is_err());
        assert!(axis_in(-4, 3).is_err());
    }

    #[test]
    fn shapes_broadcast_numpy_style() {
        assert_eq!(broadcast_shape(&[2, 1, 3], &[4, 1]).unwrap(), vec![2, 4, 3]);
        assert_eq!(broadcast_shape(&[], &[5]).unwrap(), vec![5]);
        assert!(broadcast_shape(&[2], &[3]).is_err());
    }

    #[test]
    fn for_each_index_visits_row_major() {
        let mut seen = Vec::new();
        for_each_index(&[2, 2], |i| seen.push(i.to_vec()));
        assert_eq!(seen, vec![vec![0, 0], vec![0, 1], vec![1, 0], vec![1, 1]]);
        let mut count = 0;
        for_each_index(&[], |_| count += 1);
        assert_eq!(count, 1);
    }

    #[test]
    fn strides_are_row_major() {
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(strides(&[]), Vec::<usize>::new());
    }
}
