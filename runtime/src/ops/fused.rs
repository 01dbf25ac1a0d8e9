//! Fused epilogues for the compute-heavy kernels (`Gemm`, `Conv`): bias add and an
//! elementwise activation applied in the one pass that also builds the output
//! buffer (or in place, as `Conv` does), and borrowed access to the f32 data of
//! CPU tensors.
//!
//! Design: the planner ([`crate::plan`]) fuses a `Relu` that is the only reader of
//! a `Gemm` or `Conv` output into that node by setting the private attribute
//! [`FUSED_ACTIVATION`]; the kernel then applies it here instead of the executor
//! allocating another tensor for it. The planner removes that key from every
//! node it reads from a model, so only its own fusions set it.
//!
//! This module does not decide what to fuse; the planner does.

use candle_core::{Device, Storage, WithDType};

use crate::ops::{NodeInfo, OpError};

/// The private attribute naming a fused activation (`"Relu"`).
pub(crate) const FUSED_ACTIVATION: &str = "flotilla.fused_activation";

/// The private attribute marking a `Conv` whose output goes through a 2x2,
/// stride-2 `MaxPool` (no padding, floor mode) before anything else reads it;
/// the planner sets it (see `plan::fuse_pools`) and the conv kernel then writes
/// the pooled output.
pub(crate) const FUSED_MAX_POOL: &str = "flotilla.fused_max_pool_2x2";

/// A `Gemm` whose B (read with `transB=1`) has fewer outputs than this runs as
/// one dot product per output for every row (`matmul::gemm_f32`), and the
/// planner leaves such a constant B untransposed (`plan::pretranspose_weights`).
pub(crate) const NARROW_GEMM: usize = 64;

/// An activation applied in an epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    None,
    Relu,
}

impl Activation {
    /// The activation the planner fused into `n`.
    pub(crate) fn of(n: &NodeInfo) -> Result<Self, OpError> {
        match n.attrs.string(FUSED_ACTIVATION, "")? {
            "" => Ok(Self::None),
            "Relu" => Ok(Self::Relu),
            other => Err(OpError::new(format!("unknown fused activation {other:?}"))),
        }
    }

    /// True for operators the planner may fuse.
    pub(crate) fn fusable(op_type: &str) -> bool {
        op_type == "Relu"
    }

    /// Applies the activation to every value of `v`.
    pub(crate) fn apply_in_place(self, v: &mut [f32]) {
        if self != Self::None {
            for x in v {
                *x = self.apply(*x);
            }
        }
    }

    #[inline]
    pub(crate) fn apply(self, v: f32) -> f32 {
        match self {
            Self::None => v,
            // NaN stays NaN, as Relu's kernel does.
            Self::Relu => {
                if v < 0.0 {
                    0.0
                } else {
                    v
                }
            }
        }
    }
}

/// Calls `f` with the row-major f32 data of `t` without copying when `t` is a
/// contiguous f32 tensor on the CPU, and with a host copy otherwise.
pub(crate) fn with_f32<R>(
    t: &candle_core::Tensor,
    f: impl FnOnce(&[f32]) -> Result<R, OpError>,
) -> Result<R, OpError> {
    with_host(t, f)
}

/// [`with_f32`] for any host element type `T`: borrowed when `t` already is a
/// contiguous CPU tensor of `T`, converted into a host copy otherwise.
pub(crate) fn with_host<T: WithDType, R>(
    t: &candle_core::Tensor,
    f: impl FnOnce(&[T]) -> Result<R, OpError>,
) -> Result<R, OpError> {
    if t.dtype() == T::DTYPE && t.is_contiguous() && t.device().is_cpu() {
        let (storage, layout) = t.storage_and_layout();
        if let Storage::Cpu(cpu) = &*storage {
            let data = cpu.as_slice::<T>()?;
            let start = layout.start_offset();
            let slice = data
                .get(start..start + t.elem_count())
                .ok_or_else(|| OpError::new("internal: tensor storage too short"))?;
            return f(slice);
        }
    }
    let copy = t.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?;
    f(&copy)
}

/// `act(y[r, c] + bias[c])` for a row-major `[rows, cols]` matrix `y` (bias per
/// column, as after a `Gemm`), as a new f32 tensor of `shape`.
pub(crate) fn rows_epilogue(
    y: &candle_core::Tensor,
    bias: Option<&[f32]>,
    act: Activation,
    cols: usize,
) -> Result<candle_core::Tensor, OpError> {
    let shape = y.dims().to_vec();
    let out = with_f32(y, |v| {
        let mut out = Vec::with_capacity(v.len());
        match bias {
            Some(b) if b.len() == cols && cols > 0 => {
                for row in v.chunks_exact(cols) {
                    out.extend(row.iter().zip(b).map(|(x, b)| act.apply(x + b)));
                }
            }
            Some(_) => return Err(OpError::new("internal: bias length mismatch")),
            None => out.extend(v.iter().map(|&x| act.apply(x))),
        }
        Ok(out)
    })?;
    Ok(candle_core::Tensor::from_vec(out, shape, &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_epilogue_adds_the_bias_per_column_then_applies_relu() {
        let y =
            candle_core::Tensor::from_vec(vec![1f32, -2., -3., 4.], (2, 2), &Device::Cpu).unwrap();
        let r = rows_epilogue(&y, Some(&[1.0, 1.0]), Activation::Relu, 2).unwrap();
        let v: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![2., 0., 0., 5.]);
    }

    #[test]
    fn relu_in_place_zeroes_negatives_and_keeps_nan() {
        let mut v = [-1.0f32, 0.5, f32::NAN];
        Activation::Relu.apply_in_place(&mut v);
        assert_eq!(&v[..2], &[0.0, 0.5]);
        assert!(v[2].is_nan());
    }

    #[test]
    fn with_f32_reads_a_transposed_tensor_in_logical_order() {
        let t = candle_core::Tensor::from_vec(vec![1f32, 2., 3., 4.], (2, 2), &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        let v = with_f32(&t, |s| Ok(s.to_vec())).unwrap();
        assert_eq!(v, vec![1., 3., 2., 4.]);
    }
}
