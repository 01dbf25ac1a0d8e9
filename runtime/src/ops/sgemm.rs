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
    // SAFETY: `check` proved that dst's m x n at strides (dst_rs, 1) lies inside
    // `dst`, and `dst` is borrowed mutably for the whole call.
    unsafe { product(m, n, k, dst.as_mut_ptr(), dst_rs, accumulate, a, b, threads) };
    Ok(())
}

/// The one call into the `gemm` crate, for operands [`check`]ed by the caller.
///
/// # Safety
///
/// `a` and `b` must have passed [`check`] for `m x k` and `k x n`; `dst` must
/// point to `m` rows of `n` writable elements at row stride `dst_rs >= n` (when
/// `m > 1`) that nothing else reads or writes during the call; `k > 0`.
#[allow(clippy::too_many_arguments)]
unsafe fn product<T: GemmElem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    threads: usize,
) {
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: by this function's contract every element the product reads lies
    // inside `a` and `b` (strides fitting isize), and the m x n elements it
    // writes are exclusively the caller's; dst's rows do not overlap, so
    // concurrent row blocks of a parallel product write disjoint elements. `T` is
    // f32 or f64 (sealed), the types `gemm` supports without panicking; the conj
    // flags are ignored for real types.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
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
}

/// A block of consecutive columns of every row of a row-major matrix, borrowed
/// mutably; [`split_columns`] cuts one matrix into blocks over disjoint columns
/// so that threads can each compute one block in place (a convolution's output
/// channels are rows and its output positions columns, so a block is a band of
/// output positions of every channel).
pub(crate) struct ColumnsMut<'a, T> {
    /// The matrix's first element; rows `0..rows` at stride `rs`.
    base: *mut T,
    rows: usize,
    rs: usize,
    cols: std::ops::Range<usize>,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: a block gives access only to its own columns, which no other block
// covers (`split_columns`), and it holds the matrix's unique borrow for 'a, so
// moving it to another thread is like moving a `&mut [T]`.
unsafe impl<T: Send> Send for ColumnsMut<'_, T> {}

/// Cuts the `rows x rs` row-major matrix `data` into blocks of columns at the
/// ascending boundaries `bounds` (block i covers columns bounds[i]..bounds[i+1]).
pub(crate) fn split_columns<'a, T>(
    data: &'a mut [T],
    rows: usize,
    rs: usize,
    bounds: &[usize],
) -> Result<Vec<ColumnsMut<'a, T>>, OpError> {
    let sorted = bounds.windows(2).all(|w| w[0] <= w[1]);
    let last = bounds.last().copied().unwrap_or(0);
    let fits = rows == 0 || rows.checked_mul(rs).is_some_and(|n| n <= data.len());
    if !sorted || last > rs || !fits {
        return Err(OpError::new(format!(
            "internal: column blocks {bounds:?} of a {rows}x{rs} matrix in {} elements",
            data.len()
        )));
    }
    let base = data.as_mut_ptr();
    Ok(bounds
        .windows(2)
        .map(|w| ColumnsMut {
            base,
            rows,
            rs,
            cols: w[0]..w[1],
            _borrow: std::marker::PhantomData,
        })
        .collect())
}

impl<T: GemmElem> ColumnsMut<'_, T> {
    /// This block's part of row `r`.
    pub(crate) fn row_mut(&mut self, r: usize) -> &mut [T] {
        assert!(r < self.rows, "row {r} of a {}-row block", self.rows);
        // SAFETY: `split_columns` checked rows * rs <= data.len() and
        // cols.end <= rs, so the range lies inside the borrowed matrix; no other
        // block covers these columns, and `&mut self` makes the slice unique.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.add(r * self.rs + self.cols.start),
                self.cols.len(),
            )
        }
    }

    /// [`gemm`] into this block's columns `at..at + n` of all its rows
    /// (`m` must equal the block's row count), on the calling thread.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm(
        &mut self,
        at: usize,
        n: usize,
        k: usize,
        accumulate: bool,
        a: MatRef<'_, T>,
        b: MatRef<'_, T>,
    ) -> Result<(), OpError> {
        let m = self.rows;
        if at.checked_add(n).is_none_or(|end| end > self.cols.len()) {
            return Err(OpError::new(format!(
                "internal: columns {at}..+{n} of a {}-column block",
                self.cols.len()
            )));
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            if !accumulate {
                for r in 0..m {
                    self.row_mut(r)[at..at + n].fill(T::default());
                }
            }
            return Ok(());
        }
        check::<T>("gemm lhs", a.data.len(), m, k, a.rs, a.cs)?;
        check::<T>("gemm rhs", b.data.len(), k, n, b.rs, b.cs)?;
        // SAFETY: the m rows of columns cols.start + at .. + n lie inside the
        // borrowed matrix (`split_columns`'s checks, `at + n <= cols.len()`), at
        // row stride rs >= cols.end >= n; they are this block's alone.
        unsafe {
            product(
                m,
                n,
                k,
                self.base.add(self.cols.start + at),
                self.rs,
                accumulate,
                a,
                b,
                1,
            );
        }
        Ok(())
    }
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

/// Below this many multiply-adds a product runs on one thread: splitting it
/// costs more than it saves. A model run keeps the pool's workers awake
/// (`model::run_on_pool`), so a split costs about a microsecond, not a wake-up;
/// this bound was 2^21 before that and measured best at 2^17-2^19 after
/// (encoder and cnn_b1 at 2 threads 12-14% faster).
const PARALLEL_MIN_MACS: usize = 1 << 19;

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

    #[test]
    fn column_blocks_on_threads_compute_their_own_columns_only() {
        let (m, n, k) = (5, 23, 7);
        let a: Vec<f32> = (0..m * k).map(|v| ((v * 5) % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..k * n).map(|v| ((v * 3) % 7) as f32 - 3.0).collect();
        let want = naive(m, n, k, &a, &b);
        // A row stride wider than n: column n must stay untouched.
        let rs = n + 1;
        let mut out = vec![-1f32; m * rs];
        let bounds = [0, 4, 4, 15, n];
        let blocks = split_columns(&mut out, m, rs, &bounds).unwrap();
        assert_eq!(blocks.len(), 4);
        std::thread::scope(|s| {
            for (mut block, w) in blocks.into_iter().zip(bounds.windows(2)) {
                let b = &b;
                let a = &a;
                s.spawn(move || {
                    let width = w[1] - w[0];
                    for r in 0..m {
                        assert_eq!(block.row_mut(r).len(), width);
                        block.row_mut(r).fill(1.0);
                    }
                    // Two products side by side in the block, onto the 1s.
                    let half = width / 2;
                    for (at, len) in [(0, half), (half, width - half)] {
                        let cols = MatRef {
                            data: &b[w[0] + at..],
                            rs: n,
                            cs: 1,
                        };
                        block
                            .gemm(at, len, k, true, MatRef::rows(a, k), cols)
                            .unwrap();
                    }
                    assert!(block
                        .gemm(width, 1, k, true, MatRef::rows(a, k), cols0(b))
                        .is_err());
                });
            }
        });
        for i in 0..m {
            for j in 0..n {
                assert_eq!(out[i * rs + j], want[i * n + j] + 1.0, "({i}, {j})");
            }
            assert_eq!(out[i * rs + n], -1.0);
        }
    }

    fn cols0(b: &[f32]) -> MatRef<'_, f32> {
        MatRef::rows(b, 1)
    }

    #[test]
    fn column_blocks_reject_bounds_outside_the_matrix() {
        let mut out = vec![0f32; 12];
        assert!(split_columns(&mut out, 3, 4, &[0, 5]).is_err());
        assert!(split_columns(&mut out, 3, 4, &[0, 3, 2]).is_err());
        assert!(split_columns(&mut out, 4, 4, &[0, 4]).is_err());
        assert_eq!(split_columns(&mut out, 3, 4, &[0, 2, 4]).unwrap().len(), 2);
    }
}
