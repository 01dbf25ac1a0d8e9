//! Dense matrix products on caller-owned host buffers: the `gemm` crate's kernels
//! (the ones candle's CPU matmul calls) behind a safe, bounds-checked entry point.
//!
//! Design: candle's matmul allocates its output, always splits over all
//! `RAYON_NUM_THREADS` threads and needs contiguous operands. The conv and
//! recurrent kernels instead want to write into a slice of their own output, read
//! transposed or strided operands in place and pick the parallelism themselves
//! (one thread per batch item, say). [`gemm`] gives them that; it checks every
//! operand's extent against its slice before the one `unsafe` call.
//!
//! This module does not allocate, convert element types or choose strides.

#![allow(unsafe_code)]

use rayon::prelude::*;

use crate::ops::OpError;

/// Element types the `gemm` crate multiplies (it panics on any other `T`, so the
/// trait is sealed to these two).
pub(crate) trait GemmElem: Copy + Default + 'static + sealed::Sealed {
    const ONE: Self;
}

impl GemmElem for f32 {
    const ONE: Self = 1.0;
}

impl GemmElem for f64 {
    const ONE: Self = 1.0;
}

mod sealed {
    pub(crate) trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A read-only matrix view: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef<'a, T> {
    pub(crate) data: &'a [T],
    /// Row stride in elements.
    pub(crate) rs: usize,
    /// Column stride in elements.
    pub(crate) cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major matrix with `cols` columns.
    pub(crate) fn rows(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns, read in place.
    pub(crate) fn transposed(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// Highest index a `rows x cols` view with strides `rs`, `cs` reads, checked.
fn last_index(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    (rows - 1)
        .checked_mul(rs)?
        .checked_add((cols - 1).checked_mul(cs)?)
}

fn check<T>(
    what: &str,
    len: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Result<(), OpError> {
    let fits = last_index(rows, cols, rs, cs).is_some_and(|i| i < len)
        && isize::try_from(rs).is_ok()
        && isize::try_from(cs).is_ok();
    if fits {
        Ok(())
    } else {
        Err(OpError::new(format!(
            "internal: {what} of {rows}x{cols} (strides {rs}, {cs}) exceeds its {len} {}",
            std::any::type_name::<T>()
        )))
    }
}

/// `dst[m, n] (+)= a[m, k] · b[k, n]`, with `dst` row-major at row stride `dst_rs`
/// (>= `n`, so rows never overlap). With `accumulate` the product is added to what
/// `dst` holds (a bias written beforehand, say); otherwise `dst` is overwritten.
/// `threads > 1` lets the `gemm` crate split the product over rayon's pool.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: GemmElem>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    threads: usize,
) -> Result<(), OpError> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    if dst_rs < n && m > 1 {
        return Err(OpError::new("internal: gemm output rows overlap"));
    }
    check::<T>("gemm output", dst.len(), m, n, dst_rs, 1)?;
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(T::default());
            }
        }
        return Ok(());
    }
    check::<T>("gemm lhs", a.data.len(), m, k, a.rs, a.cs)?;
    check::<T>("gemm rhs", b.data.len(), k, n, b.rs, b.cs)?;
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `check` proved that every element the product reads or writes lies
    // inside its slice: dst's m x n at strides (dst_rs, 1), a's m x k at (a.rs, a.cs)
    // and b's k x n at (b.rs, b.cs), all strides fitting isize. dst's rows do not
    // overlap (dst_rs >= n), so concurrent row blocks of a parallel product write
    // disjoint elements. `dst` is borrowed mutably and `a`, `b` shared, so they
    // cannot alias. `T` is f32 or f64 (sealed), the types `gemm` supports without
    // panicking; the conj flags are ignored for real types.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// [`gemm`] split into one row block per thread, each block a single-threaded
/// product on rayon's pool. For the short-and-wide products of inference (a
/// batch of rows times a weight) this scales better than the `gemm` crate's own
/// splitting; products below [`threads_for`]'s size run on the calling thread.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_rows_parallel<T: GemmElem + Send + Sync>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
) -> Result<(), OpError> {
    let threads = threads_for(m, n, k);
    if threads <= 1 || m < 2 * threads || dst_rs < n {
        return gemm(m, n, k, dst, dst_rs, accumulate, a, b, 1);
    }
    let rows = m.div_ceil(threads);
    dst.par_chunks_mut(rows * dst_rs)
        .enumerate()
        .try_for_each(|(block, d)| {
            let r0 = block * rows;
            let mb = rows.min(m.saturating_sub(r0));
            if mb == 0 {
                return Ok(());
            }
            let start = r0
                .checked_mul(a.rs)
                .filter(|&s| s <= a.data.len())
                .ok_or_else(|| OpError::new("internal: gemm lhs row block out of range"))?;
            let ab = MatRef {
                data: &a.data[start..],
                rs: a.rs,
                cs: a.cs,
            };
            gemm(mb, n, k, d, dst_rs, accumulate, ab, b, 1)
        })
}

/// Below this many multiply-adds a product runs on one thread: waking rayon's
/// workers costs more than splitting it saves.
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// The threads a product of `m x k` by `k x n` should use: [`threads`] when it is
/// big enough to split, else 1.
pub(crate) fn threads_for(m: usize, n: usize, k: usize) -> usize {
    let macs = m.saturating_mul(n).saturating_mul(k);
    if macs >= PARALLEL_MIN_MACS {
        threads()
    } else {
        1
    }
}

/// The thread count rayon (and candle's gemm) use: `RAYON_NUM_THREADS` or the
/// machine's.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn gemm_matches_the_naive_product_with_a_transposed_rhs_and_accumulation() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|v| v as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|v| (v % 5) as f32 - 1.0).collect();
        // bt is b transposed, [n, k] row-major.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let want = naive(m, n, k, &a, &b);
        let mut out = vec![1f32; m * (n + 2)];
        gemm(
            m,
            n,
            k,
            &mut out,
            n + 2,
            true,
            MatRef::rows(&a, k),
            MatRef::transposed(&bt, k),
            1,
        )
        .unwrap();
        for i in 0..m {
            for j in 0..n {
                assert_eq!(out[i * (n + 2) + j], want[i * n + j] + 1.0);
            }
            assert_eq!(out[i * (n + 2) + n], 1.0);
        }
    }

    #[test]
    fn row_blocks_on_the_pool_give_the_single_threaded_product() {
        let (m, n, k) = (131, 129, 130);
        let a: Vec<f32> = (0..m * k).map(|v| ((v * 31) % 17) as f32 - 8.0).collect();
        let b: Vec<f32> = (0..k * n).map(|v| ((v * 7) % 13) as f32 - 6.0).collect();
        let want = naive(m, n, k, &a, &b);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for transposed_a in [false, true] {
            let at: Vec<f32> = (0..m * k).map(|i| a[(i % m) * k + i / m]).collect();
            let am = if transposed_a {
                MatRef::transposed(&at, m)
            } else {
                MatRef::rows(&a, k)
            };
            let mut out = vec![0f32; m * n];
            pool.install(|| {
                gemm_rows_parallel(m, n, k, &mut out, n, false, am, MatRef::rows(&b, n))
            })
            .unwrap();
            assert_eq!(out, want);
        }
    }

    #[test]
    fn gemm_rejects_an_operand_shorter_than_its_shape() {
        let mut out = vec![0f32; 4];
        let a = vec![1f32; 3];
        let b = vec![1f32; 4];
        let r = gemm(
            2,
            2,
            2,
            &mut out,
            2,
            false,
            MatRef::rows(&a, 2),
            MatRef::rows(&b, 2),
            1,
        );
        assert!(r.is_err());
    }
}
