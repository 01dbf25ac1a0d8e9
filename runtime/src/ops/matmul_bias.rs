//! The planner's fused `MatMul` + bias `Add` (+ `Relu`): a linear layer as
//! exported by PyTorch (`x @ W + b`) in one product whose output buffer starts as
//! the bias, so the `Add` costs nothing and no intermediate tensor is allocated.
//!
//! Design: the planner ([`crate::plan`]) rewrites `MatMul(A, W)` followed by
//! `Add(·, b)` (either operand order) into one step with inputs `[A, W, b]` when
//! `W` and `b` are constants and the `Add` is the product's only reader; a `Relu`
//! after it may then be fused too ([`crate::ops::FUSED_ACTIVATION`]). The fast
//! path needs f32 operands, a 2-D `W` `[K, N]` and a bias that only varies along
//! the last axis without widening the output's shape; anything else runs the
//! unfused kernels in sequence, so the fused step always means exactly what the
//! nodes it replaced meant.
//!
//! This module does not decide what to fuse.

use candle_core::DType;

use crate::ops::fused::with_f32;
use crate::ops::sgemm::{self, MatRef};
use crate::ops::{lookup, one, Activation, Inputs, NodeInfo, OpError, OpResult};
use crate::tensor::Tensor;
use crate::value::Value;

/// The `op_type` the planner gives a fused step (for errors and reports).
pub(crate) const FUSED_OP: &str = "MatMul+Add";

/// `act(A · W + b)`; see the module docs.
pub(crate) fn matmul_add(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let act = Activation::of(n)?;
    let (a, w, b) = (i.tensor(0)?, i.tensor(1)?, i.tensor(2)?);
    if let Some(y) = fast(a, w, b, act)? {
        return one(y);
    }
    general(n, a, w, b, act)
}

/// The unfused kernels, in the order the graph had them.
fn general(n: &NodeInfo, a: &Tensor, w: &Tensor, b: &Tensor, act: Activation) -> OpResult {
    let kernel =
        |op: &str| lookup("", op).ok_or_else(|| OpError::new(format!("internal: no {op} kernel")));
    let plain = NodeInfo {
        attrs: Default::default(),
        opset: n.opset,
        outputs: 1,
    };
    let (va, vw) = (Value::Tensor(a.clone()), Value::Tensor(w.clone()));
    let mut y = kernel("MatMul")?(
        &plain,
        &Inputs {
            values: vec![Some(&va), Some(&vw)],
        },
    )?;
    let vb = Value::Tensor(b.clone());
    let product = y
        .pop()
        .ok_or_else(|| OpError::new("internal: no product"))?;
    let mut y = kernel("Add")?(
        &plain,
        &Inputs {
            values: vec![Some(&product), Some(&vb)],
        },
    )?;
    if act == Activation::Relu {
        let sum = y.pop().ok_or_else(|| OpError::new("internal: no sum"))?;
        y = kernel("Relu")?(
            &plain,
            &Inputs {
                values: vec![Some(&sum)],
            },
        )?;
    }
    Ok(y)
}

/// The one-product path, or `None` when the operands need the general one.
fn fast(a: &Tensor, w: &Tensor, b: &Tensor, act: Activation) -> Result<Option<Tensor>, OpError> {
    let f32s = [a, w, b].iter().all(|t| t.candle().dtype() == DType::F32);
    if !f32s || w.rank() != 2 || a.rank() == 0 {
        return Ok(None);
    }
    let (k, n) = (w.shape()[0], w.shape()[1]);
    let ash = a.shape();
    if ash[ash.len() - 1] != k {
        return Ok(None);
    }
    let out_shape: Vec<usize> = if a.rank() == 1 {
        vec![n]
    } else {
        ash[..ash.len() - 1].iter().copied().chain([n]).collect()
    };
    // The bias must broadcast along the last axis only and not widen the output.
    let bsh = b.shape();
    let bias_fits = bsh.len() <= out_shape.len()
        && bsh.last().is_some_and(|&l| l == n)
        && bsh[..bsh.len() - 1].iter().all(|&d| d == 1);
    if !bias_fits {
        return Ok(None);
    }
    let m = out_shape[..out_shape.len() - 1].iter().product::<usize>();
    let mut out = Vec::with_capacity(m * n);
    with_f32(b.candle(), |bias| {
        for _ in 0..m {
            out.extend_from_slice(bias);
        }
        Ok(())
    })?;
    with_f32(a.candle(), |av| {
        with_f32(w.candle(), |wv| {
            sgemm::gemm_rows_parallel(
                m,
                n,
                k,
                &mut out,
                n,
                true,
                MatRef::rows(av, k),
                MatRef::rows(wv, n),
            )
        })
    })?;
    act.apply_in_place(&mut out);
    Ok(Some(Tensor::from_f32(&out_shape, out)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Attr, FUSED_ACTIVATION};

    fn rand(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn tensor(shape: &[usize], seed: u64) -> Tensor {
        Tensor::from_f32(shape, rand(shape.iter().product(), seed)).unwrap()
    }

    fn info(relu: bool) -> NodeInfo {
        let mut attrs = crate::ops::Attrs::default();
        if relu {
            attrs.set(FUSED_ACTIVATION, Attr::String("Relu".into()));
        }
        NodeInfo {
            attrs,
            opset: 13,
            outputs: 1,
        }
    }

    fn run(f: Kernel3, a: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Tensor {
        let vals = [a, w, b].map(|t| Value::Tensor(t.clone()));
        let out = f(
            &info(relu),
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        out[0].as_tensor().unwrap().clone()
    }

    type Kernel3 = fn(&NodeInfo, &Inputs<'_>) -> OpResult;

    fn general_kernel(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
        let act = Activation::of(n)?;
        general(n, i.tensor(0)?, i.tensor(1)?, i.tensor(2)?, act)
    }

    fn assert_close(x: &Tensor, y: &Tensor) {
        assert_eq!(x.shape(), y.shape());
        for (p, q) in x.to_f32_vec().unwrap().iter().zip(y.to_f32_vec().unwrap()) {
            assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{p} vs {q}");
        }
    }

    #[test]
    fn fused_linear_layer_matches_matmul_then_add_then_relu() {
        let cases: &[(&[usize], usize, &[usize])] = &[
            (&[3, 5], 4, &[4]),
            (&[2, 7, 5], 6, &[1, 6]),
            (&[5], 3, &[3]),
            (&[1, 4, 9, 16], 33, &[1, 1, 33]),
            (&[0, 5], 3, &[3]),
        ];
        for (seed, (ash, n, bsh)) in cases.iter().enumerate() {
            let k = *ash.last().unwrap();
            let a = tensor(ash, seed as u64);
            let w = tensor(&[k, *n], seed as u64 + 100);
            let b = tensor(bsh, seed as u64 + 200);
            for relu in [false, true] {
                assert!(fast(&a, &w, &b, Activation::None).unwrap().is_some());
                let got = run(matmul_add, &a, &w, &b, relu);
                let want = run(general_kernel, &a, &w, &b, relu);
                assert_close(&got, &want);
            }
        }
    }

    #[test]
    fn biases_that_widen_or_vary_by_row_take_the_general_path() {
        let a = tensor(&[3, 4], 1);
        let w = tensor(&[4, 5], 2);
        for bsh in [&[1, 1, 5][..], &[3, 5], &[3, 1], &[1]] {
            let b = tensor(bsh, 3);
            assert!(fast(&a, &w, &b, Activation::None).unwrap().is_none());
            let got = run(matmul_add, &a, &w, &b, true);
            let want = run(general_kernel, &a, &w, &b, true);
            assert_close(&got, &want);
        }
        // A batched weight is a plain MatMul, not a linear layer.
        let w3 = tensor(&[3, 4, 5], 4);
        let b = tensor(&[5], 5);
        assert!(fast(&a, &w3, &b, Activation::None).unwrap().is_none());
        assert_close(
            &run(matmul_add, &a, &w3, &b, false),
            &run(general_kernel, &a, &w3, &b, false),
        );
    }
}
