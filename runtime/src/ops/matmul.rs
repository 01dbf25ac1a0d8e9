//! Matrix products: `MatMul` (numpy semantics: 1-D promotion, batch broadcasting),
//! `Gemm`, `MatMulInteger`.
//!
//! f32 products whose batches need no broadcasting (and f32 `Gemm` with alpha 1 and
//! a per-column or full bias) run on [`sgemm`] straight into their output buffer,
//! the bias written first; other float products on candle's matmul (the `gemm`
//! crate on CPU); integer products on the host in i64.

use candle_core::DType;

use crate::ops::common::{broadcast_shape, expand_to, from_i64, like, numel, scalar_i64};
use rayon::prelude::*;

use crate::ops::fused::{rows_epilogue, with_f32};
use crate::ops::sgemm::{self, MatRef};
use crate::ops::shape::reshaped;
use crate::ops::simd;
use crate::ops::{one, Activation, Inputs, Kernel, NodeInfo, OpError, OpResult, NARROW_GEMM};
use crate::tensor::{ElemType, Tensor};

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "MatMul" => matmul,
        "Gemm" => gemm,
        "MatMulInteger" => matmul_integer,
        _ => return None,
    };
    Some(k)
}

/// Shapes of a numpy matmul: batch dims, m, k, n, and the output shape.
struct Dims {
    batch: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    out: Vec<usize>,
}

fn dims(a: &[usize], b: &[usize]) -> Result<Dims, OpError> {
    if a.is_empty() || b.is_empty() {
        return Err(OpError::new("MatMul of a scalar"));
    }
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        return Err(OpError::new(format!(
            "MatMul of {a:?} and {b:?}: inner dims differ"
        )));
    }
    let batch = broadcast_shape(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    let mut out = batch.clone();
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(Dims {
        batch,
        m,
        k,
        n,
        out,
    })
}

/// A float matmul with numpy semantics on candle tensors of one dtype.
pub(crate) fn matmul_float(
    a: &candle_core::Tensor,
    b: &candle_core::Tensor,
) -> Result<candle_core::Tensor, OpError> {
    let d = dims(a.dims(), b.dims())?;
    let bsz = numel(&d.batch);
    let mut a_full = d.batch.clone();
    a_full.extend([d.m, d.k]);
    let mut b_full = d.batch.clone();
    b_full.extend([d.k, d.n]);
    let a3 = expand_to(
        &a.reshape(if a.rank() == 1 {
            vec![1, d.k]
        } else {
            a.dims().to_vec()
        })?,
        &a_full,
    )?
    .reshape((bsz, d.m, d.k))?;
    // A weight shared by the whole batch multiplies as one [B*M, K] x [K, N].
    let r = if b.rank() <= 2 && bsz > 0 {
        let b2 = b.reshape((d.k, d.n))?.contiguous()?;
        a3.reshape((bsz * d.m, d.k))?.matmul(&b2)?
    } else {
        let b3 = expand_to(
            &b.reshape(if b.rank() == 1 {
                vec![d.k, 1]
            } else {
                b.dims().to_vec()
            })?,
            &b_full,
        )?
        .reshape((bsz, d.k, d.n))?;
        a3.contiguous()?.matmul(&b3.contiguous()?)?
    };
    Ok(r.reshape(d.out)?)
}

/// f32 products whose operands need no broadcasting beyond a shared 2-D weight,
/// on [`sgemm::gemm`] straight into the output buffer (no expand, no copy of a
/// contiguous operand), one product per batch item; `None` for the other cases.
fn matmul_f32(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>, OpError> {
    if a.elem_type() != ElemType::F32 || b.elem_type() != ElemType::F32 {
        return Ok(None);
    }
    if a.rank() < 2 || b.rank() < 2 {
        return Ok(None);
    }
    let d = dims(a.shape(), b.shape())?;
    let (m, k, n) = (d.m, d.k, d.n);
    let a_batch = &a.shape()[..a.rank() - 2];
    let b_batch = &b.shape()[..b.rank() - 2];
    let shared_weight = b.rank() == 2;
    if !shared_weight && (a_batch != d.batch.as_slice() || b_batch != d.batch.as_slice()) {
        return Ok(None);
    }
    let bsz = numel(&d.batch);
    let mut out = vec![0f32; bsz * m * n];
    let threads = sgemm::threads_for(bsz * m, n, k);
    with_f32(a.candle(), |av| {
        with_f32(b.candle(), |bv| {
            if shared_weight {
                return sgemm::gemm_rows_parallel(
                    bsz * m,
                    n,
                    k,
                    &mut out,
                    n,
                    false,
                    MatRef::rows(av, k),
                    MatRef::rows(bv, n),
                );
            }
            if av.len() != bsz * m * k || bv.len() != bsz * k * n {
                return Err(OpError::new("internal: matmul operand sizes"));
            }
            let item = |(p, y): (usize, &mut [f32])| {
                sgemm::gemm(
                    m,
                    n,
                    k,
                    y,
                    n,
                    false,
                    MatRef::rows(&av[p * m * k..(p + 1) * m * k], k),
                    MatRef::rows(&bv[p * k * n..(p + 1) * k * n], n),
                    1,
                )
            };
            if m * n == 0 {
                Ok(())
            } else if threads > 1 && bsz > 1 {
                out.par_chunks_mut(m * n).enumerate().try_for_each(item)
            } else {
                out.chunks_mut(m * n).enumerate().try_for_each(item)
            }
        })
    })?;
    Ok(Some(Tensor::from_f32(&d.out, out)?))
}

fn matmul(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (a, b) = (i.tensor(0)?, i.tensor(1)?);
    if let Some(y) = matmul_f32(a, b)? {
        return one(y);
    }
    if a.elem_type().is_float() {
        let c = if a.candle().dtype() == DType::F16 || a.candle().dtype() == DType::BF16 {
            matmul_float(
                &a.candle().to_dtype(DType::F32)?,
                &b.candle().to_dtype(DType::F32)?,
            )?
        } else {
            matmul_float(a.candle(), b.candle())?
        };
        return one(like(a, c)?);
    }
    one(matmul_int(a, b, 0, 0, a.elem_type())?)
}

fn matmul_int(a: &Tensor, b: &Tensor, za: i64, zb: i64, out: ElemType) -> Result<Tensor, OpError> {
    let d = dims(a.shape(), b.shape())?;
    let mut a_full = d.batch.clone();
    a_full.extend([d.m, d.k]);
    let mut b_full = d.batch.clone();
    b_full.extend([d.k, d.n]);
    let a_shape = if a.rank() == 1 {
        vec![1, d.k]
    } else {
        a.shape().to_vec()
    };
    let b_shape = if b.rank() == 1 {
        vec![d.k, 1]
    } else {
        b.shape().to_vec()
    };
    let av = reshaped(a, &a_shape)?;
    let av = av
        .with_data(expand_to(av.candle(), &a_full)?)?
        .to_i64_vec()?;
    let bv = reshaped(b, &b_shape)?;
    let bv = bv
        .with_data(expand_to(bv.candle(), &b_full)?)?
        .to_i64_vec()?;
    let bsz = numel(&d.batch);
    let mut r = vec![0i64; bsz * d.m * d.n];
    for bi in 0..bsz {
        for m in 0..d.m {
            for kk in 0..d.k {
                let x = av[(bi * d.m + m) * d.k + kk] - za;
                for n in 0..d.n {
                    r[(bi * d.m + m) * d.n + n] += x * (bv[(bi * d.k + kk) * d.n + n] - zb);
                }
            }
        }
    }
    from_i64(out, &d.out, r)
}

fn matmul_integer(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (a, b) = (i.tensor(0)?, i.tensor(1)?);
    let za = i.opt(2)?.map(scalar_i64).transpose()?.unwrap_or(0);
    let zb = i.opt(3)?.map(scalar_i64).transpose()?.unwrap_or(0);
    one(matmul_int(a, b, za, zb, ElemType::I32)?)
}

/// f32 `Gemm` with alpha = 1 and a bias that is absent (or beta = 1 and the bias
/// per column or a full `[M, N]` matrix): one [`sgemm::gemm`] into a buffer that
/// starts as the bias, reading transposed operands in place; `None` otherwise.
fn gemm_f32(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    (ta, tb): (bool, bool),
    (alpha, beta): (f64, f64),
    act: Activation,
) -> Result<Option<Tensor>, OpError> {
    let f32s = [Some(a), Some(b), c]
        .iter()
        .flatten()
        .all(|t| t.elem_type() == ElemType::F32);
    if !f32s || alpha != 1.0 || (c.is_some() && beta != 1.0) {
        return Ok(None);
    }
    let (m, k) = if ta {
        (a.shape()[1], a.shape()[0])
    } else {
        (a.shape()[0], a.shape()[1])
    };
    let (k2, n) = if tb {
        (b.shape()[1], b.shape()[0])
    } else {
        (b.shape()[0], b.shape()[1])
    };
    if k != k2 {
        return Ok(None);
    }
    let mut out = match c {
        None => vec![0f32; m * n],
        Some(c) if c.shape() == [n] || c.shape() == [1, n] => {
            let mut out = Vec::with_capacity(m * n);
            with_f32(c.candle(), |bias| {
                for _ in 0..m {
                    out.extend_from_slice(bias);
                }
                Ok(())
            })?;
            out
        }
        Some(c) if c.shape() == [m, n] => c.to_f32_vec()?,
        Some(_) => return Ok(None),
    };
    if tb && (1..NARROW_GEMM).contains(&n) && k > 0 && (m == 1 || !ta) {
        // Each row of A times B's rows: one dot product per output, the same
        // arithmetic for a row whatever the batch, so a row scores the same
        // alone as in a batch (batch scoring resumes to identical output). At
        // batch 1 the `gemm` crate took ~16 µs for a 4096 x 10 head that this
        // does in a few.
        with_f32(a.candle(), |av| {
            let av = av
                .get(..m * k)
                .ok_or_else(|| OpError::new("internal: Gemm A shorter than M x K"))?;
            with_f32(b.candle(), |bv| {
                let row = |(y, x): (&mut [f32], &[f32])| simd::matvec_acc(bv, k, 0, x, y);
                if sgemm::threads_for(m, n, k) > 1 {
                    out.par_chunks_mut(n)
                        .zip(av.par_chunks(k))
                        .try_for_each(row)
                } else {
                    out.chunks_mut(n).zip(av.chunks(k)).try_for_each(row)
                }
            })
        })?;
        act.apply_in_place(&mut out);
        return Ok(Some(Tensor::from_f32(&[m, n], out)?));
    }
    if m == 1 && !tb && n >= 4 && (1..=ONE_CHAIN_K).contains(&k) {
        // One row times a row-major [K, N] B (the planner's layout for a
        // Gemm weight): the sum of B's rows weighted by the row, four column
        // segments at a time with accumulators in registers
        // (`simd::matvec_t_acc4`). The `gemm` crate took ~4 µs of the MLP
        // benchmark's 5 µs at batch 1 for its two 256-wide layers; this
        // takes ~1.5. Up to `ONE_CHAIN_K` both sum each output in one chain
        // of multiply-adds, so a row scores the same bytes alone as in a
        // batch (which the `gemm` crate computes).
        with_f32(a.candle(), |av| {
            let av = av
                .get(..k)
                .ok_or_else(|| OpError::new("internal: Gemm A shorter than K"))?;
            with_f32(b.candle(), |bv| row_times_rows(av, bv, n, &mut out))
        })?;
        act.apply_in_place(&mut out);
        return Ok(Some(Tensor::from_f32(&[m, n], out)?));
    }
    with_f32(a.candle(), |av| {
        with_f32(b.candle(), |bv| {
            let am = if ta {
                MatRef::transposed(av, m)
            } else {
                MatRef::rows(av, k)
            };
            let bm = if tb {
                MatRef::transposed(bv, k)
            } else {
                MatRef::rows(bv, n)
            };
            sgemm::gemm_rows_parallel(m, n, k, &mut out, n, c.is_some(), am, bm)
        })
    })?;
    act.apply_in_place(&mut out);
    Ok(Some(Tensor::from_f32(&[m, n], out)?))
}

/// Longest K for which one row takes [`row_times_rows`] instead of the `gemm`
/// crate: the crate never splits K into blocks shorter than 512
/// (`gemm_common::cache::kernel_params`), so up to this length each of its
/// outputs is one chain of multiply-adds from zero added to C, as in
/// [`row_times_rows`], and a row's output does not depend on the batch it is
/// in (`a_wide_gemm_scores_each_row_the_same_alone_or_in_a_batch`).
const ONE_CHAIN_K: usize = 512;

/// `y[j] += Σ_k x[k] · b[k * n + j]` for the `n` columns of the row-major
/// `[x.len(), n]` matrix `b`: up to 256 columns per pass as four equal
/// segments, the last few (under four) plainly.
fn row_times_rows(x: &[f32], b: &[f32], n: usize, y: &mut [f32]) -> Result<(), OpError> {
    if y.len() != n || x.len().checked_mul(n).is_none_or(|len| len > b.len()) {
        return Err(OpError::new(format!(
            "internal: a {}-element row times a {}-element matrix of {n} columns into {}",
            x.len(),
            b.len(),
            y.len()
        )));
    }
    let mut c0 = 0;
    while n - c0 >= 4 {
        let seg = (n - c0).min(256) / 4;
        let (s0, rest) = y[c0..c0 + 4 * seg].split_at_mut(seg);
        let (s1, rest) = rest.split_at_mut(seg);
        let (s2, s3) = rest.split_at_mut(seg);
        simd::matvec_t_acc4(
            b,
            n,
            x,
            [c0, c0 + seg, c0 + 2 * seg, c0 + 3 * seg],
            [s0, s1, s2, s3],
            false,
        )?;
        c0 += 4 * seg;
    }
    for (j, o) in y.iter_mut().enumerate().skip(c0) {
        let mut acc = 0f32;
        for (kk, xv) in x.iter().enumerate() {
            acc = b[kk * n + j].mul_add(*xv, acc);
        }
        *o += acc;
    }
    Ok(())
}

fn gemm(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (a, b) = (i.tensor(0)?, i.tensor(1)?);
    let alpha = f64::from(n.attrs.float("alpha", 1.0)?);
    let beta = f64::from(n.attrs.float("beta", 1.0)?);
    let ta = n.attrs.int("transA", 0)? != 0;
    let tb = n.attrs.int("transB", 0)? != 0;
    let act = Activation::of(n)?;
    if a.rank() != 2 || b.rank() != 2 {
        return Err(OpError::new("Gemm needs 2-D A and B"));
    }
    if let Some(y) = gemm_f32(a, b, i.opt(2)?, (ta, tb), (alpha, beta), act)? {
        return one(y);
    }
    let to_f = |t: &Tensor| -> Result<candle_core::Tensor, OpError> {
        Ok(match t.candle().dtype() {
            DType::F32 | DType::F64 => t.candle().clone(),
            _ => t.candle().to_dtype(DType::F32)?,
        })
    };
    let mut ac = to_f(a)?;
    let mut bc = to_f(b)?;
    if ta {
        ac = ac.t()?;
    }
    if tb {
        bc = bc.t()?;
    }
    // The planner stores constant weights pre-transposed, so these are no-ops for
    // them; gemm reads a transposed 2-D operand in place.
    if !ac.is_contiguous() && !ac.t()?.is_contiguous() {
        ac = ac.contiguous()?;
    }
    if !bc.is_contiguous() && !bc.t()?.is_contiguous() {
        bc = bc.contiguous()?;
    }
    let mut y = ac.matmul(&bc)?;
    let cols = y.dims()[1];
    let c = i.opt(2)?;
    // Fast path: one pass adds a per-column bias and applies the fused activation.
    if alpha == 1.0 && y.dtype() == DType::F32 {
        match c {
            None => {
                if act != Activation::None {
                    y = rows_epilogue(&y, None, act, cols)?;
                }
                return one(like(a, y)?);
            }
            Some(c)
                if beta == 1.0
                    && c.candle().dtype() == DType::F32
                    && (c.shape() == [cols] || c.shape() == [1, cols]) =>
            {
                let y = with_f32(c.candle(), |bias| rows_epilogue(&y, Some(bias), act, cols))?;
                return one(like(a, y)?);
            }
            Some(_) => {}
        }
    }
    if alpha != 1.0 {
        y = (y * alpha)?;
    }
    if let Some(c) = c {
        if beta != 0.0 {
            let mut cc = to_f(c)?;
            if beta != 1.0 {
                cc = (cc * beta)?;
            }
            y = y.broadcast_add(&cc)?;
        }
    }
    if act == Activation::Relu {
        y = y.relu()?;
    }
    one(like(a, y)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    fn info() -> NodeInfo {
        NodeInfo {
            attrs: Default::default(),
            opset: 13,
            outputs: 1,
        }
    }

    fn run_matmul(a: &Tensor, b: &Tensor) -> Tensor {
        let vals = [Value::Tensor(a.clone()), Value::Tensor(b.clone())];
        let out = matmul(
            &info(),
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        out[0].as_tensor().unwrap().clone()
    }

    fn ramp(shape: &[usize], seed: usize) -> Tensor {
        let len: usize = shape.iter().product();
        let v = (0..len)
            .map(|k| (((k + seed) * 7919) % 23) as f32 * 0.1 - 1.1)
            .collect();
        Tensor::from_f32(shape, v).unwrap()
    }

    #[test]
    fn the_f32_batched_path_matches_candle_and_broadcasts_stay_general() {
        let cases: &[(&[usize], &[usize], bool)] = &[
            (&[2, 3, 4, 5], &[2, 3, 5, 6], true),
            (&[4, 5], &[5, 6], true),
            (&[2, 4, 5], &[5, 6], true),
            (&[8, 64, 64], &[8, 64, 64], true),
            (&[2, 0, 5], &[2, 5, 3], true),
            // Broadcast batches and 1-D operands take the general path.
            (&[1, 4, 5], &[3, 5, 6], false),
            (&[2, 1, 4, 5], &[3, 5, 6], false),
            (&[4, 5], &[2, 5, 6], false),
            (&[5], &[2, 5, 6], false),
            (&[2, 4, 5], &[5], false),
        ];
        for (seed, (ash, bsh, fast)) in cases.iter().enumerate() {
            let (a, b) = (ramp(ash, seed), ramp(bsh, seed + 50));
            assert_eq!(
                matmul_f32(&a, &b).unwrap().is_some(),
                *fast,
                "{ash:?} {bsh:?}"
            );
            let got = run_matmul(&a, &b);
            let want = matmul_float(a.candle(), b.candle()).unwrap();
            assert_eq!(got.shape(), want.dims());
            let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
            for (g, w) in got.to_f32_vec().unwrap().iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
            }
        }
    }

    #[test]
    fn the_f32_gemm_path_matches_candle_for_every_transpose_and_bias() {
        // A batch of rows, and one row (one dot product per output when B is
        // read transposed).
        for (m, k, n) in [(5, 7, 3), (1, 37, 10)] {
            gemm_path_matches_candle(m, k, n);
        }
    }

    #[test]
    fn a_narrow_gemm_scores_each_row_the_same_alone_or_in_a_batch() {
        // Batch scoring cut at any row must resume to the same bytes, so a
        // row's output may not depend on the rows scored beside it.
        let (m, k, n) = (37, 300, 10);
        let a = ramp(&[m, k], 11);
        let bt = ramp(&[n, k], 12);
        let c = ramp(&[n], 13);
        let score = |a: &Tensor| {
            let y = gemm_f32(
                a,
                &bt,
                Some(&c),
                (false, true),
                (1.0, 1.0),
                Activation::None,
            );
            y.unwrap().unwrap().to_f32_vec().unwrap()
        };
        let batch = score(&a);
        let av = a.to_f32_vec().unwrap();
        for r in [0, 5, 36] {
            let row = Tensor::from_f32(&[1, k], av[r * k..(r + 1) * k].to_vec()).unwrap();
            let alone = score(&row);
            assert_eq!(alone, batch[r * n..(r + 1) * n], "row {r}");
        }
    }

    #[test]
    fn a_wide_gemm_scores_each_row_the_same_alone_or_in_a_batch() {
        // As above, for B in the planner's row-major [K, N] layout, where one
        // row takes `row_times_rows` and a batch the `gemm` crate.
        // K up to ONE_CHAIN_K. Past it one row takes the crate too, and the
        // crate itself gives a row alone other last bits than in a batch
        // (K = 1000: it was so before this path existed).
        for (m, k, n) in [(37, 64, 256), (9, 300, 100), (4, 512, 80), (2, 1, 4)] {
            let a = ramp(&[m, k], 21);
            let b = ramp(&[k, n], 22);
            let c = ramp(&[n], 23);
            let score = |a: &Tensor| {
                let y = gemm_f32(
                    a,
                    &b,
                    Some(&c),
                    (false, false),
                    (1.0, 1.0),
                    Activation::Relu,
                );
                y.unwrap().unwrap().to_f32_vec().unwrap()
            };
            let batch = score(&a);
            let av = a.to_f32_vec().unwrap();
            for r in [0, m / 2, m - 1] {
                let row = Tensor::from_f32(&[1, k], av[r * k..(r + 1) * k].to_vec()).unwrap();
                let alone = score(&row);
                assert_eq!(alone, batch[r * n..(r + 1) * n], "{m}x{k}x{n} row {r}");
            }
        }
    }

    #[test]
    fn one_row_times_a_wide_matrix_matches_plain_sums() {
        for (k, n) in [
            (1, 4),
            (7, 5),
            (64, 63),
            (64, 64),
            (33, 256),
            (20, 259),
            (300, 515),
        ] {
            let x: Vec<f32> = (0..k).map(|i| (i % 13) as f32 * 0.25 - 1.5).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 29) as f32 * 0.125 - 1.75).collect();
            let mut y: Vec<f32> = (0..n).map(|j| j as f32).collect();
            let want: Vec<f32> = (0..n)
                .map(|j| j as f32 + (0..k).map(|kk| x[kk] * b[kk * n + j]).sum::<f32>())
                .collect();
            row_times_rows(&x, &b, n, &mut y).unwrap();
            for (j, (g, w)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-3 * (1.0 + w.abs()),
                    "{k}x{n} col {j}: {g} vs {w}"
                );
            }
        }
        // Operands that do not fit are an error, not a panic.
        let mut y = vec![0f32; 8];
        assert!(row_times_rows(&[1.0; 4], &[0.0; 31], 8, &mut y).is_err());
        assert!(row_times_rows(&[1.0; 4], &[0.0; 32], 7, &mut y).is_err());
    }

    #[test]
    fn an_empty_narrow_gemm_is_the_bias_not_a_panic() {
        // K = 0: every output is its bias; N = 0: nothing to compute.
        let a = Tensor::from_f32(&[3, 0], vec![]).unwrap();
        let bt = Tensor::from_f32(&[10, 0], vec![]).unwrap();
        let c = ramp(&[10], 5);
        let y = gemm_f32(
            &a,
            &bt,
            Some(&c),
            (false, true),
            (1.0, 1.0),
            Activation::None,
        )
        .unwrap()
        .unwrap();
        let bias = c.to_f32_vec().unwrap();
        assert_eq!(y.to_f32_vec().unwrap(), bias.repeat(3));
        let a = Tensor::from_f32(&[3, 4], vec![1.0; 12]).unwrap();
        let bt = Tensor::from_f32(&[0, 4], vec![]).unwrap();
        let y = gemm_f32(&a, &bt, None, (false, true), (1.0, 1.0), Activation::None)
            .unwrap()
            .unwrap();
        assert_eq!(y.shape(), &[3, 0]);
    }

    fn gemm_path_matches_candle(m: usize, k: usize, n: usize) {
        let a = ramp(&[m, k], 1);
        let at = ramp(&[k, m], 2);
        let b = ramp(&[k, n], 3);
        let bt = ramp(&[n, k], 4);
        let biases = [
            None,
            Some(ramp(&[n], 5)),
            Some(ramp(&[1, n], 6)),
            Some(ramp(&[m, n], 7)),
            // Not the fast path: broadcast along rows, or a scalar.
            Some(ramp(&[m, 1], 8)),
            Some(ramp(&[1], 9)),
        ];
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for c in &biases {
                for (alpha, beta) in [(1.0, 1.0), (0.5, 1.0), (1.0, 2.0)] {
                    let aa = if ta { &at } else { &a };
                    let bb = if tb { &bt } else { &b };
                    let fast = gemm_f32(
                        aa,
                        bb,
                        c.as_ref(),
                        (ta, tb),
                        (alpha, beta),
                        Activation::Relu,
                    )
                    .unwrap();
                    let bias_fits = c
                        .as_ref()
                        .is_none_or(|c| c.shape() != [m, 1] && c.shape() != [1]);
                    let expect_fast = alpha == 1.0 && (c.is_none() || beta == 1.0) && bias_fits;
                    assert_eq!(fast.is_some(), expect_fast);
                    let mut attrs = crate::ops::Attrs::default();
                    attrs.set("transA", crate::ops::Attr::Int(i64::from(ta)));
                    attrs.set("transB", crate::ops::Attr::Int(i64::from(tb)));
                    attrs.set("alpha", crate::ops::Attr::Float(alpha as f32));
                    attrs.set("beta", crate::ops::Attr::Float(beta as f32));
                    let info = NodeInfo {
                        attrs,
                        opset: 13,
                        outputs: 1,
                    };
                    let mut vals = vec![Value::Tensor(aa.clone()), Value::Tensor(bb.clone())];
                    if let Some(c) = c {
                        vals.push(Value::Tensor(c.clone()));
                    }
                    let got = gemm(
                        &info,
                        &Inputs {
                            values: vals.iter().map(Some).collect(),
                        },
                    )
                    .unwrap();
                    let got = got[0].as_tensor().unwrap().to_f32_vec().unwrap();
                    // Reference: candle on transposed copies.
                    let ac = if ta {
                        aa.candle().t().unwrap()
                    } else {
                        aa.candle().clone()
                    };
                    let bc = if tb {
                        bb.candle().t().unwrap()
                    } else {
                        bb.candle().clone()
                    };
                    let mut want = (ac
                        .contiguous()
                        .unwrap()
                        .matmul(&bc.contiguous().unwrap())
                        .unwrap()
                        * alpha)
                        .unwrap();
                    if let Some(c) = c {
                        want = want.broadcast_add(&(c.candle() * beta).unwrap()).unwrap();
                    }
                    let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
                    }
                    assert_eq!(got.len(), m * n);
                }
            }
        }
    }

    #[test]
    fn matmul_of_vector_and_matrix_drops_the_promoted_dim() {
        let a = Tensor::from_f32(&[2], vec![1., 2.]).unwrap();
        let b = Tensor::from_f32(&[2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let vals = [Value::Tensor(a), Value::Tensor(b)];
        let out = matmul(
            &info(),
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        let t = out[0].as_tensor().unwrap();
        assert_eq!(t.shape(), &[3]);
        assert_eq!(t.to_f32_vec().unwrap(), vec![9., 12., 15.]);
    }

    #[test]
    fn gemm_defaults_to_alpha_beta_one_without_transpose() {
        let a = Tensor::from_f32(&[1, 2], vec![1., 2.]).unwrap();
        let b = Tensor::from_f32(&[2, 1], vec![3., 4.]).unwrap();
        let c = Tensor::from_f32(&[1], vec![10.]).unwrap();
        let vals = [Value::Tensor(a), Value::Tensor(b), Value::Tensor(c)];
        let out = gemm(
            &info(),
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        assert_eq!(out[0].as_tensor().unwrap().to_f32_vec().unwrap(), vec![21.]);
    }
}
