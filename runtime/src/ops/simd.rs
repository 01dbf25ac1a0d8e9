//! Hot loops compiled more than once: for AVX-512, for AVX2 with FMA, and for
//! the baseline x86-64 the crate is built for, picked at run time by CPU
//! detection.
//!
//! Design: the workspace builds for baseline x86-64 (SSE2) so that one binary
//! runs on every node, which leaves our own loops at a quarter of the vector
//! width ONNX Runtime's kernels use (the `gemm` crate detects its own).
//! Elementwise bodies (the LSTM cell) are one safe `#[inline(always)]` body
//! instantiated inside `#[target_feature]` wrappers, which the compiler
//! vectorises well. Reductions (the matrix-vector product) it vectorised badly
//! (scalar lane shuffles, slower than the `gemm` crate), so those are written
//! with `std::arch` intrinsics, one function per feature level. The `unsafe`
//! here is calling a wrapper after `is_x86_feature_detected!` has confirmed
//! the CPU has its features, and unaligned vector loads from slices whose
//! length was checked.
//!
//! This module holds no state and allocates nothing.

#![allow(unsafe_code)]

use crate::ops::OpError;

/// Instantiates the safe body `$body` (a function taking `$args`) three times:
/// AVX-512, AVX2 + FMA, baseline; `$name` dispatches to the best the CPU runs.
/// The body's `FMA` parameter is true in the copies that have FMA.
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) => $body:ident) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    $body::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $body::<true>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (and so AVX2 and FMA),
                    // every feature `avx512` is compiled with.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA, the features `avx2`
                    // is compiled with.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body::<false>($($arg),*)
        }
    };
}

/// The baseline body of [`matvec_acc`]: plain dot products.
fn matvec_plain(r: &[f32], rs: usize, row0: usize, x: &[f32], y: &mut [f32]) {
    for (j, o) in y.iter_mut().enumerate() {
        let row = &r[(row0 + j) * rs..(row0 + j) * rs + x.len()];
        *o += crate::ops::fastmath::sum_by_pairs(row, x);
    }
}

/// Defines one `std::arch` body of [`matvec_acc`] for a vector width: four rows
/// at a time, each with its own lane accumulator, so four multiply-add chains
/// run side by side and `x` is loaded once per four rows; a row's last
/// `len % lanes` products are summed plainly.
macro_rules! matvec_kernel {
    (
        $(#[$doc:meta])*
        $name:ident, $features:literal, lanes: $lanes:literal, $vec:ty,
        load: $load:path, zero: $zero:path, fmadd: $fmadd:path, reduce: $reduce:expr
    ) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        fn $name(r: &[f32], rs: usize, row0: usize, x: &[f32], y: &mut [f32]) {
            const L: usize = $lanes;
            let k = x.len();
            let full = k - k % L;
            let row = |j: usize| &r[(row0 + j) * rs..(row0 + j) * rs + k];
            // SAFETY (every load): `v` points at a row or at `x`, each `k`
            // long (`row` sliced it, so it lies in `r`), and c + L <= full <=
            // k, so the L floats read from `v + c` lie inside; loadu has no
            // alignment requirement. Raw pointers keep bounds checks out of
            // the loop: with slices, how well LLVM hoisted them depended on
            // what else shared the codegen unit, and a build where it did not
            // (a check and stack reloads per load) ran the LSTM 13% slower.
            let load = |v: *const f32, c: usize| -> $vec {
                debug_assert!(c + L <= k);
                unsafe { $load(v.add(c)) }
            };
            let reduce = $reduce;
            let tail = |row: &[f32]| -> f32 {
                row[full..].iter().zip(&x[full..]).map(|(a, b)| a * b).sum()
            };
            let xp = x.as_ptr();
            let n = y.len();
            let mut j = 0;
            while j + 4 <= n {
                let rows = [row(j), row(j + 1), row(j + 2), row(j + 3)];
                let p = rows.map(<[f32]>::as_ptr);
                let mut acc = [$zero(); 4];
                let mut c = 0;
                while c < full {
                    let xv = load(xp, c);
                    acc[0] = $fmadd(load(p[0], c), xv, acc[0]);
                    acc[1] = $fmadd(load(p[1], c), xv, acc[1]);
                    acc[2] = $fmadd(load(p[2], c), xv, acc[2]);
                    acc[3] = $fmadd(load(p[3], c), xv, acc[3]);
                    c += L;
                }
                for q in 0..4 {
                    y[j + q] += reduce(acc[q]) + tail(rows[q]);
                }
                j += 4;
            }
            while j < n {
                let rw = row(j);
                let mut acc = $zero();
                let mut c = 0;
                while c < full {
                    acc = $fmadd(load(rw.as_ptr(), c), load(xp, c), acc);
                    c += L;
                }
                y[j] += reduce(acc) + tail(rw);
                j += 1;
            }
        }
    };
}

matvec_kernel! {
    /// [`matvec_acc`] with AVX-512 (16 lanes).
    matvec_avx512, "avx512f", lanes: 16, std::arch::x86_64::__m512,
    load: std::arch::x86_64::_mm512_loadu_ps,
    zero: std::arch::x86_64::_mm512_setzero_ps,
    fmadd: std::arch::x86_64::_mm512_fmadd_ps,
    reduce: std::arch::x86_64::_mm512_reduce_add_ps
}

matvec_kernel! {
    /// [`matvec_acc`] with AVX2 and FMA (8 lanes).
    matvec_avx2, "avx2,fma", lanes: 8, std::arch::x86_64::__m256,
    load: std::arch::x86_64::_mm256_loadu_ps,
    zero: std::arch::x86_64::_mm256_setzero_ps,
    fmadd: std::arch::x86_64::_mm256_fmadd_ps,
    reduce: |v: std::arch::x86_64::__m256| -> f32 {
        use std::arch::x86_64::{
            _mm256_castps256_ps128, _mm256_extractf128_ps, _mm_add_ps, _mm_cvtss_f32, _mm_hadd_ps,
        };
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_hadd_ps(s, s);
        _mm_cvtss_f32(_mm_hadd_ps(s, s))
    }
}

/// Calls the best [`matvec_acc`] body the CPU runs.
fn matvec_dispatch(r: &[f32], rs: usize, row0: usize, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, the feature `matvec_avx512` is
            // compiled with.
            return unsafe { matvec_avx512(r, rs, row0, x, y) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, the features `matvec_avx2` is
            // compiled with.
            return unsafe { matvec_avx2(r, rs, row0, x, y) };
        }
    }
    matvec_plain(r, rs, row0, x, y)
}

/// `y[j] += Σ_k r[(row0 + j) * rs + k] · x[k]`: rows `row0..row0 + y.len()` of the
/// row-major matrix `r` (row stride `rs >= x.len()`) times the vector `x`. The
/// batch-1 recurrent step of an LSTM is this product, where the `gemm` crate
/// spent most of its time in strided copies and one horizontal sum per output.
pub(crate) fn matvec_acc(
    r: &[f32],
    rs: usize,
    row0: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), OpError> {
    let fits = x.len() <= rs
        && (y.is_empty()
            || (row0 + y.len() - 1)
                .checked_mul(rs)
                .and_then(|v| v.checked_add(x.len()))
                .is_some_and(|end| end <= r.len()));
    if !fits {
        return Err(OpError::new(format!(
            "internal: matvec of rows {row0}..+{} ({} wide, stride {rs}) of a {}-element matrix",
            y.len(),
            x.len(),
            r.len()
        )));
    }
    matvec_dispatch(r, rs, row0, x, y);
    Ok(())
}

/// `y[s][j] += Σ_k rt[k * ld + cols[s] + j] · x[k]` for the four segments `s`
/// (all `y[s]` the same length): four column ranges of the row-major matrix
/// `rt` (row stride `ld`, one row per element of `x`) times `x`. The batch-1
/// recurrent step of an LSTM whose R the planner stored transposed
/// ([hidden, 4 * hidden]) is this product, a segment per gate.
///
/// Design: the transposed form needs no horizontal sums. For each `k` the
/// kernel broadcasts `x[k]` and adds it times a row's columns into
/// accumulators that stay in registers for all of `x` (AVX-512: 4 vectors of
/// 16 per segment, 16 in all), so a step's product is bound by streaming R
/// from cache; the row form ([`matvec_acc`]) spent a horizontal sum per
/// output and had four multiply-add chains where this has sixteen.
pub(crate) fn matvec_t_acc4(
    rt: &[f32],
    ld: usize,
    x: &[f32],
    cols: [usize; 4],
    y: [&mut [f32]; 4],
    reverse: bool,
) -> Result<(), OpError> {
    let n = y[0].len();
    let fits = y.iter().all(|s| s.len() == n)
        && (x.is_empty()
            || n == 0
            || cols.iter().all(|&c| {
                c.checked_add(n).is_some_and(|end| end <= ld)
                    && (x.len() - 1)
                        .checked_mul(ld)
                        .and_then(|v| v.checked_add(c + n))
                        .is_some_and(|end| end <= rt.len())
            }));
    if !fits {
        return Err(OpError::new(format!(
            "internal: transposed matvec of columns {cols:?}+{n} (stride {ld}, {} rows) of a {}-element matrix",
            x.len(),
            rt.len()
        )));
    }
    if n == 0 || x.is_empty() {
        return Ok(());
    }
    matvec_t_dispatch(rt, ld, x, cols, y, reverse);
    Ok(())
}

/// The baseline body of [`matvec_t_acc4`] (rows in reverse order if `reverse`).
fn matvec_t_plain(
    rt: &[f32],
    ld: usize,
    x: &[f32],
    cols: [usize; 4],
    y: [&mut [f32]; 4],
    reverse: bool,
) {
    for (s, ys) in y.into_iter().enumerate() {
        for (j, o) in ys.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            let mut add = |k: usize| acc = rt[k * ld + cols[s] + j].mul_add(x[k], acc);
            if reverse {
                (0..x.len()).rev().for_each(&mut add);
            } else {
                (0..x.len()).for_each(&mut add);
            }
            *o += acc;
        }
    }
}

/// Defines one `std::arch` body of [`matvec_t_acc4`] for a vector width:
/// `$block::<W, REV>` runs `W` vectors of every segment from column offset `j`
/// over all of `x` (rows in reverse order if `REV`); `$name` covers the
/// segments with blocks of `$w` vectors, then single vectors, then the last
/// `n % lanes` columns plainly, or all of that in reverse order.
macro_rules! matvec_t_kernel {
    (
        $(#[$doc:meta])*
        $name:ident, $block:ident, $features:literal, lanes: $lanes:literal, block: $w:literal,
        $vec:ty, load: $load:path, store: $store:path, zero: $zero:path,
        set1: $set1:path, fmadd: $fmadd:path, add: $add:path
    ) => {
        /// `W` vectors of each segment, from column offset `j`.
        ///
        /// # Safety
        /// The CPU has the features this body is compiled with, and every
        /// `cols[s] + j + W * lanes <= ld`, `(x.len() - 1) * ld + cols[s] +
        /// j + W * lanes <= rt.len()` and `j + W * lanes <= y[s].len()`
        /// ([`matvec_t_acc4`] checked the whole ranges).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $block<const W: usize, const REV: bool>(
            rt: &[f32],
            ld: usize,
            x: &[f32],
            cols: [usize; 4],
            j: usize,
            y: &mut [&mut [f32]; 4],
        ) {
            const L: usize = $lanes;
            let mut acc = [[$zero(); W]; 4];
            let p = cols.map(|c| rt.as_ptr().wrapping_add(c + j));
            let k = x.len();
            // SAFETY (loads and stores): within the ranges the caller
            // guaranteed; loadu/storeu have no alignment requirement.
            unsafe {
                for i in 0..k {
                    let row = if REV { k - 1 - i } else { i };
                    let xb = $set1(*x.as_ptr().add(row));
                    let off = row * ld;
                    for s in 0..4 {
                        for w in 0..W {
                            let v = $load(p[s].add(off + w * L));
                            acc[s][w] = $fmadd(v, xb, acc[s][w]);
                        }
                    }
                }
                for s in 0..4 {
                    let d = y[s].as_mut_ptr().add(j);
                    for w in 0..W {
                        let o = d.add(w * L);
                        $store(o, $add($load(o), acc[s][w]));
                    }
                }
            }
        }

        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        fn $name(
            rt: &[f32],
            ld: usize,
            x: &[f32],
            cols: [usize; 4],
            mut y: [&mut [f32]; 4],
            reverse: bool,
        ) {
            const L: usize = $lanes;
            let n = y[0].len();
            let blocks = n / ($w * L);
            let singles = (n - blocks * $w * L) / L;
            let vec_end = blocks * $w * L + singles * L;
            // Part i of the vectors: a block of $w, or (past the blocks) one.
            let part = |i: usize, y: &mut [&mut [f32]; 4]| {
                // SAFETY: matvec_t_acc4 checked columns cols[s]..cols[s] + n
                // of every row; each part ends at or below vec_end <= n.
                unsafe {
                    match (i < blocks, reverse) {
                        (true, false) => $block::<$w, false>(rt, ld, x, cols, i * $w * L, y),
                        (true, true) => $block::<$w, true>(rt, ld, x, cols, i * $w * L, y),
                        (false, rev) => {
                            let j = blocks * $w * L + (i - blocks) * L;
                            if rev {
                                $block::<1, true>(rt, ld, x, cols, j, y)
                            } else {
                                $block::<1, false>(rt, ld, x, cols, j, y)
                            }
                        }
                    }
                }
            };
            let tail = |y: &mut [&mut [f32]; 4]| {
                if vec_end < n {
                    let rest = y.each_mut().map(|s| &mut s[vec_end..]);
                    matvec_t_plain(rt, ld, x, cols.map(|c| c + vec_end), rest, reverse);
                }
            };
            if reverse {
                tail(&mut y);
                (0..blocks + singles).rev().for_each(|i| part(i, &mut y));
            } else {
                (0..blocks + singles).for_each(|i| part(i, &mut y));
                tail(&mut y);
            }
        }
    };
}

matvec_t_kernel! {
    /// [`matvec_t_acc4`] with AVX-512 (16 lanes; blocks of 4 vectors per
    /// segment, 16 accumulators).
    matvec_t_avx512, matvec_t_block_avx512, "avx512f", lanes: 16, block: 4,
    std::arch::x86_64::__m512,
    load: std::arch::x86_64::_mm512_loadu_ps, store: std::arch::x86_64::_mm512_storeu_ps,
    zero: std::arch::x86_64::_mm512_setzero_ps, set1: std::arch::x86_64::_mm512_set1_ps,
    fmadd: std::arch::x86_64::_mm512_fmadd_ps, add: std::arch::x86_64::_mm512_add_ps
}

matvec_t_kernel! {
    /// [`matvec_t_acc4`] with AVX2 and FMA (8 lanes; blocks of 3 vectors per
    /// segment, 12 of the 16 registers).
    matvec_t_avx2, matvec_t_block_avx2, "avx2,fma", lanes: 8, block: 3,
    std::arch::x86_64::__m256,
    load: std::arch::x86_64::_mm256_loadu_ps, store: std::arch::x86_64::_mm256_storeu_ps,
    zero: std::arch::x86_64::_mm256_setzero_ps, set1: std::arch::x86_64::_mm256_set1_ps,
    fmadd: std::arch::x86_64::_mm256_fmadd_ps, add: std::arch::x86_64::_mm256_add_ps
}

/// Calls the best [`matvec_t_acc4`] body the CPU runs.
fn matvec_t_dispatch(
    rt: &[f32],
    ld: usize,
    x: &[f32],
    cols: [usize; 4],
    y: [&mut [f32]; 4],
    reverse: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, the feature the body is compiled with.
            return unsafe { matvec_t_avx512(rt, ld, x, cols, y, reverse) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, the features the body is compiled with.
            return unsafe { matvec_t_avx2(rt, ld, x, cols, y, reverse) };
        }
    }
    matvec_t_plain(rt, ld, x, cols, y, reverse)
}

/// The shape of one depthwise plane's convolution (see [`depthwise_plane`]):
/// output size, kernel size, strides (the column stride 1 or 2) and
/// dilations, each (rows, columns).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DepthwiseGeometry {
    pub(crate) out: (usize, usize),
    pub(crate) kernel: (usize, usize),
    pub(crate) strides: (usize, usize),
    pub(crate) dilations: (usize, usize),
}

impl DepthwiseGeometry {
    /// The rows of the padded input plane the outputs read, and the least row
    /// stride the kernel needs (it reads whole vectors past the last output).
    pub(crate) fn plane(&self) -> (usize, usize) {
        let ((oh, ow), (kh, kw)) = (self.out, self.kernel);
        let ((sh, sw), (dh, dw)) = (self.strides, self.dilations);
        let rows = oh.saturating_sub(1) * sh + kh.saturating_sub(1) * dh + 1;
        let width = sw * ow.next_multiple_of(16) + kw.saturating_sub(1) * dw;
        (rows, width)
    }
}

/// A depthwise (one input channel) 2-D convolution of one output channel:
/// `y[oy * ow + ox] = bias + Σ taps[ki * kw + kj] · p[(oy * sh + ki * dh) *
/// pw + ox * sw + kj * dw]` over a zero-padded input plane `p` of row stride
/// `pw`, then Relu'd if `relu`; the column stride `sw` is 1 or 2. Only for
/// CPUs with AVX-512 or AVX2 and FMA ([`depthwise_available`]); elsewhere
/// callers keep their general path.
///
/// `p` must hold the rows and row stride [`DepthwiseGeometry::plane`] gives:
/// the kernel reads whole vectors past the last output and masks only the
/// stores of the last partial vector.
pub(crate) fn depthwise_plane(
    p: &[f32],
    pw: usize,
    geometry: DepthwiseGeometry,
    taps: &[f32],
    (bias, relu): (f32, bool),
    y: &mut [f32],
) -> Result<(), OpError> {
    let ((oh, ow), (kh, kw)) = (geometry.out, geometry.kernel);
    if oh == 0 || ow == 0 {
        return Ok(());
    }
    let (rows, width) = geometry.plane();
    let fits = taps.len() == kh * kw
        && kh > 0
        && kw > 0
        && geometry.strides.0 > 0
        && matches!(geometry.strides.1, 1 | 2)
        && y.len() == oh * ow
        && width <= pw
        && rows.checked_mul(pw).is_some_and(|n| n <= p.len());
    if !fits {
        return Err(OpError::new(format!(
            "internal: depthwise plane {geometry:?} from {} values at row stride {pw}",
            p.len()
        )));
    }
    #[cfg(target_arch = "x86_64")]
    {
        let args = (p, pw, geometry, taps, bias, y);
        let variant = ((kh, kw) == (3, 3), relu, geometry.strides.1 == 2);
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the ranges were checked above.
            unsafe { depthwise_variant!(depthwise_avx512, variant, args) };
            return Ok(());
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA; the ranges were checked above.
            unsafe { depthwise_variant!(depthwise_avx2, variant, args) };
            return Ok(());
        }
    }
    Err(OpError::new(
        "internal: the depthwise kernel needs AVX2 and FMA",
    ))
}

/// Calls the instantiation of body `$f` for `(K3, RELU, S2)` = `$v`.
macro_rules! depthwise_variant {
    ($f:ident, $v:expr, $args:expr) => {
        match $v {
            (true, true, false) => $f::<true, true, false>($args),
            (true, false, false) => $f::<true, false, false>($args),
            (false, true, false) => $f::<false, true, false>($args),
            (false, false, false) => $f::<false, false, false>($args),
            (true, true, true) => $f::<true, true, true>($args),
            (true, false, true) => $f::<true, false, true>($args),
            (false, true, true) => $f::<false, true, true>($args),
            (false, false, true) => $f::<false, false, true>($args),
        }
    };
}
use depthwise_variant;

/// Whether this CPU runs [`depthwise_plane`].
pub(crate) fn depthwise_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            || (std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`depthwise_plane`]'s operands: plane, row stride, geometry, taps, bias,
/// output.
#[cfg(target_arch = "x86_64")]
type DepthwiseArgs<'a> = (
    &'a [f32],
    usize,
    DepthwiseGeometry,
    &'a [f32],
    f32,
    &'a mut [f32],
);

/// Defines one `std::arch` body of [`depthwise_plane`] for a vector width:
/// per output row, vectors of `lanes` outputs, each the bias plus every tap
/// times the input vector under it, Relu'd in register when `RELU`. `K3` is
/// the 3x3 kernel: its nine weights stay in registers and each tap row sums
/// into its own accumulator (three chains of three multiply-adds instead of
/// one of nine). `S2` is column stride 2: a tap's inputs are the even
/// elements of twice as many from its first, picked out of two loads by
/// `$even`. `$store_part` stores the first `left` lanes of the last vector.
macro_rules! depthwise_kernel {
    (
        $(#[$doc:meta])*
        $name:ident, $features:literal, lanes: $lanes:literal, $vec:ty,
        load: $load:path, store: $store:path, set1: $set1:path, fmadd: $fmadd:path,
        add: $add:path, max: $max:path, zero: $zero:path,
        even: $even:expr, store_part: $store_part:expr
    ) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU has the features this body is compiled with and
        /// [`depthwise_plane`]'s checks passed (`K3` only for a 3x3 kernel,
        /// `S2` only for column stride 2, else stride 1).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const K3: bool, const RELU: bool, const S2: bool>(
            args: DepthwiseArgs<'_>,
        ) {
            const L: usize = $lanes;
            let (p, pw, geometry, taps, bias, y) = args;
            let ((oh, ow), (kh, kw)) = (geometry.out, geometry.kernel);
            let ((sh, _), (dh, dw)) = (geometry.strides, geometry.dilations);
            let sw = if S2 { 2 } else { 1 };
            let (pp, yp) = (p.as_ptr(), y.as_mut_ptr());
            let b = $set1(bias);
            let w3: [$vec; 9] = std::array::from_fn(|t| $set1(taps[t % taps.len()]));
            for oy in 0..oh {
                let mut ox = 0;
                while ox < ow {
                    let left = ow - ox;
                    let at = |ki: usize, kj: usize| {
                        // SAFETY: row oy * sh + ki * dh is below the plane's
                        // rows, and the L * sw values from column ox * sw +
                        // kj * dw end at or before sw * ow.next_multiple_of(16)
                        // + (kw - 1) * dw <= pw, so every load lies in `p`.
                        unsafe {
                            let v = pp.add((oy * sh + ki * dh) * pw + ox * sw + kj * dw);
                            if S2 {
                                $even($load(v), $load(v.add(L)))
                            } else {
                                $load(v)
                            }
                        }
                    };
                    let mut acc = if K3 {
                        // -0.0, not 0.0: x + -0.0 is x for every x, -0.0 included.
                        let neg0 = $set1(-0.0);
                        let mut r = [b, neg0, neg0];
                        for (ki, acc) in r.iter_mut().enumerate() {
                            for kj in 0..3 {
                                *acc = $fmadd(at(ki, kj), w3[ki * 3 + kj], *acc);
                            }
                        }
                        $add($add(r[0], r[1]), r[2])
                    } else {
                        let mut acc = b;
                        for ki in 0..kh {
                            for kj in 0..kw {
                                acc = $fmadd(at(ki, kj), $set1(taps[ki * kw + kj]), acc);
                            }
                        }
                        acc
                    };
                    if RELU {
                        // max returns its second operand for NaN and for equal
                        // values, so NaN and -0.0 pass as `Activation::Relu`
                        // leaves them.
                        acc = $max($zero(), acc);
                    }
                    // SAFETY: outputs oy * ow + ox .. + min(L, left) lie in `y`.
                    unsafe {
                        let out = yp.add(oy * ow + ox);
                        if left >= L {
                            $store(out, acc);
                        } else {
                            $store_part(out, acc, left);
                        }
                    }
                    ox += L;
                }
            }
        }
    };
}

depthwise_kernel! {
    /// [`depthwise_plane`] with AVX-512 (16 lanes; the masked store writes
    /// the last partial vector).
    depthwise_avx512, "avx512f", lanes: 16, std::arch::x86_64::__m512,
    load: std::arch::x86_64::_mm512_loadu_ps, store: std::arch::x86_64::_mm512_storeu_ps,
    set1: std::arch::x86_64::_mm512_set1_ps, fmadd: std::arch::x86_64::_mm512_fmadd_ps,
    add: std::arch::x86_64::_mm512_add_ps, max: std::arch::x86_64::_mm512_max_ps,
    zero: std::arch::x86_64::_mm512_setzero_ps,
    even: |a, b| {
        use std::arch::x86_64::*;
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        _mm512_permutex2var_ps(a, evens, b)
    },
    store_part: |out: *mut f32, v, left: usize| {
        std::arch::x86_64::_mm512_mask_storeu_ps(out, ((1u32 << left) - 1) as u16, v)
    }
}

depthwise_kernel! {
    /// [`depthwise_plane`] with AVX2 and FMA (8 lanes; `maskstore` writes
    /// the last partial vector).
    depthwise_avx2, "avx2,fma", lanes: 8, std::arch::x86_64::__m256,
    load: std::arch::x86_64::_mm256_loadu_ps, store: std::arch::x86_64::_mm256_storeu_ps,
    set1: std::arch::x86_64::_mm256_set1_ps, fmadd: std::arch::x86_64::_mm256_fmadd_ps,
    add: std::arch::x86_64::_mm256_add_ps, max: std::arch::x86_64::_mm256_max_ps,
    zero: std::arch::x86_64::_mm256_setzero_ps,
    even: |a, b| {
        use std::arch::x86_64::*;
        // [a0 a2 b0 b2 | a4 a6 b4 b6], then its 64-bit lanes as 0, 2, 1, 3.
        let t = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(t)))
    },
    store_part: |out: *mut f32, v, left: usize| {
        use std::arch::x86_64::*;
        let mask = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(left as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        _mm256_maskstore_ps(out, mask, v)
    }
}

/// The LSTM cell body: `fastmath::lstm_cell`, inlined into each copy.
#[inline(always)]
fn lstm_cell_body<const FMA: bool>(
    i: &mut [f32],
    o: &mut [f32],
    f: &mut [f32],
    g: &mut [f32],
    c: &mut [f32],
    h: &mut [f32],
) {
    crate::ops::fastmath::lstm_cell([i, o, f, g], c, h);
}

multiversion! {
    /// [`crate::ops::fastmath::lstm_cell`] compiled for the CPU's vector width.
    fn lstm_cell_dispatch(
        i: &mut [f32],
        o: &mut [f32],
        f: &mut [f32],
        g: &mut [f32],
        c: &mut [f32],
        h: &mut [f32]
    ) => lstm_cell_body
}

/// The default-activation LSTM cell (see `fastmath::lstm_cell`) at the CPU's
/// vector width.
pub(crate) fn lstm_cell(gates: [&mut [f32]; 4], c: &mut [f32], h: &mut [f32]) {
    let [i, o, f, g] = gates;
    lstm_cell_dispatch(i, o, f, g, c, h);
}

/// The body of [`pool_2x2_bias_relu`].
#[inline(always)]
fn pool_body<const FMA: bool>(
    src: &[f32],
    dst: &mut [f32],
    w: usize,
    ow: usize,
    bias: f32,
    relu: bool,
) {
    use crate::ops::pool::max_pool_2x2_then;
    if relu {
        max_pool_2x2_then(src, dst, w, ow, |v| {
            let v = v + bias;
            if v < 0.0 {
                0.0
            } else {
                v
            }
        });
    } else {
        max_pool_2x2_then(src, dst, w, ow, |v| v + bias);
    }
}

multiversion! {
    /// A 2x2, stride-2 max pool of one plane (`src` rows `w` wide, `dst` rows
    /// `ow` wide) with `bias` added to each maximum and then, with `relu`, a
    /// Relu: the epilogue of a conv with a fused pool. Without a bias pass
    /// -0.0, which leaves every value (signed zeros included) as it is.
    fn pool_2x2_bias_relu(src: &[f32], dst: &mut [f32], w: usize, ow: usize, bias: f32, relu: bool)
        => pool_body
}

/// The body of [`softmax_row`].
#[inline(always)]
fn softmax_body<const FMA: bool>(row: &mut [f32]) {
    use crate::ops::fastmath;
    // The maximum in 16 lanes; `f32::max` skips NaN in any order, so this is
    // the sequential fold's result.
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = row.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v);
        }
    }
    let m = lanes.iter().copied().fold(tail, f32::max);
    for v in row.iter_mut() {
        *v -= m;
    }
    fastmath::exp_in_place(row);
    let inv = 1.0 / fastmath::sum_by(row, |x| x);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

multiversion! {
    /// Softmax of one contiguous row in place (max subtracted, the vectorised
    /// `fastmath::exp`, normalised), at the CPU's vector width.
    fn softmax_row(row: &mut [f32]) => softmax_body
}

/// A stride-1 convolution computed straight from a zero-padded input, without
/// im2col or any packing: the operands of [`direct_conv`].
///
/// Output `(r, c)` reads the padded input at `r * row + c + tap` for each
/// kernel tap's offset `tap = kh * dh * row + kw * dw`, so an output row's
/// consecutive columns are consecutive loads. The output is computed in
/// vectors of lanes laid out by [`Positions`].
pub(crate) struct DirectConv<'a> {
    /// `cg` padded planes of `plane` values each, then zeros: [`direct_conv`]
    /// checks that the last vector's reads stay inside.
    pub(crate) x: &'a [f32],
    pub(crate) plane: usize,
    pub(crate) cg: usize,
    /// Offset of each kernel tap in a padded plane.
    pub(crate) taps: &'a [usize],
    /// The weights as the model holds them: `m` rows of `cg * taps` values.
    /// They are read in place (a block's channels are one broadcast from each
    /// of its rows), not packed per call: weights packed on the calling
    /// thread had to travel to the other thread's core on every call, and two
    /// threads ran barely faster than one.
    pub(crate) w: &'a [f32],
    /// Output channels.
    pub(crate) m: usize,
    /// The padded input's row length.
    pub(crate) row: usize,
    pub(crate) positions: Positions,
}

/// Which output positions [`direct_conv`]'s vectors cover; vector `q` is
/// always written at `q * lanes` of its channel's output row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Positions {
    /// Whole padded rows back to back, the padded columns computed and thrown
    /// away: vector `q` reads from `q * lanes`, and the output has the padded
    /// input's row length. Little waste where a row is short of a whole number
    /// of vectors (56 columns of 16 lanes), much with narrow images.
    Flat,
    /// `n` vectors per output row, the padded columns skipped: vector
    /// `r * n + j` reads from `r * row + j * lanes`, and the output rows are
    /// `n * lanes` long. No waste where the width is a whole number of
    /// vectors (64, 32, 16 columns).
    Rows(usize),
}

impl DirectConv<'_> {
    /// How many vectors cover `rows` output rows.
    pub(crate) fn vectors(&self, rows: usize, lanes: usize) -> usize {
        match self.positions {
            Positions::Flat => (rows * self.row).div_ceil(lanes),
            Positions::Rows(n) => rows * n,
        }
    }

    /// Where vector `q` starts reading in a padded plane (before the taps).
    /// It grows with `q`: in `Rows(n)`, `(n - 1) * lanes` is short of the
    /// output width and so of `row`.
    #[inline(always)]
    fn input_at(&self, q: usize, lanes: usize) -> usize {
        match self.positions {
            Positions::Flat => q * lanes,
            Positions::Rows(n) => q / n * self.row + q % n * lanes,
        }
    }
}

/// Weights (f32 values) above which [`direct_conv`] runs each channel block
/// over all its tiles rather than each tile over all blocks: 1 MiB, half an L2.
const DIRECT_WEIGHTS_IN_CACHE: usize = 256 * 1024;

/// How the CPU's [`direct_conv`] body blocks its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DirectShape {
    /// Output channels per block (one broadcast weight each).
    pub(crate) channels: usize,
    /// f32 lanes per vector.
    pub(crate) lanes: usize,
    avx512: bool,
}

/// The AVX-512 body's blocking (see `direct_conv_avx512`).
const AVX512_SHAPE: DirectShape = DirectShape {
    channels: 8,
    lanes: 16,
    avx512: true,
};

/// The AVX2 body's blocking (see `direct_conv_avx2`).
const AVX2_SHAPE: DirectShape = DirectShape {
    channels: 4,
    lanes: 8,
    avx512: false,
};

/// Whether this CPU runs the body `shape` describes.
fn runs(shape: DirectShape) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if shape == AVX512_SHAPE {
            return std::arch::is_x86_feature_detected!("avx512f");
        }
        if shape == AVX2_SHAPE {
            return std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
        }
    }
    let _ = shape;
    false
}

/// The [`direct_conv`] body this CPU runs, or `None` without AVX2 and FMA (the
/// caller then takes the im2col path).
pub(crate) fn direct_shape() -> Option<DirectShape> {
    [AVX512_SHAPE, AVX2_SHAPE].into_iter().find(|&s| runs(s))
}

/// Defines one `std::arch` body of [`direct_conv`]: a tile of `P` vectors of
/// output positions times one block of `CB` output channels is held in
/// registers, and each (input channel, tap) loads `P` input vectors and
/// broadcasts `CB` weights, then does `CB * P` multiply-adds. `P` is the
/// body's full tile or smaller, for the vectors left over.
macro_rules! direct_conv_kernel {
    (
        $(#[$doc:meta])*
        $name:ident, $all:ident, $features:literal, lanes: $lanes:literal,
        channels: $cb:literal, tile: $pv:literal,
        $vec:ty, load: $load:path, store: $store:path,
        zero: $zero:path, set1: $set1:path, fmadd: $fmadd:path
    ) => {
        /// Vectors `0..nvec` through the body above: whole tiles, then the
        /// vectors left over as one smaller tile.
        ///
        /// # Safety
        /// As for the body, for vectors up to `nvec`.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $all<const K3: bool>(
            a: &DirectConv<'_>,
            nvec: usize,
            dst: &mut [f32],
            ld: usize,
        ) {
            let full = nvec - nvec % $pv;
            // SAFETY: the caller's bounds cover every vector up to `nvec`,
            // and each range's length is a multiple of its tile.
            unsafe {
                $name::<$pv, K3>(a, 0..full, dst, ld);
                match nvec - full {
                    0 => {}
                    1 => $name::<1, K3>(a, full..nvec, dst, ld),
                    _ => $name::<2, K3>(a, full..nvec, dst, ld),
                }
            }
        }

        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU has the features this body is compiled with, `vecs.len()`
        /// is a multiple of `P`, and `a` and `dst` passed [`direct_conv`]'s
        /// bounds checks for vectors up to `vecs.end`.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const P: usize, const K3: bool>(
            a: &DirectConv<'_>,
            vecs: std::ops::Range<usize>,
            dst: &mut [f32],
            ld: usize,
        ) {
            const L: usize = $lanes;
            const CB: usize = $cb;
            let ntaps = a.taps.len();
            let xp = a.x.as_ptr();
            let wp = a.w.as_ptr();
            let dp = dst.as_mut_ptr();
            let depth = a.cg * ntaps;
            let blocks = a.m.div_ceil(CB);
            // Tiles outermost keeps a tile's input in L1 for every channel
            // block (a 3-channel first layer ran 45% slower the other way);
            // with more weights than L2 holds comfortably, channel blocks go
            // outermost so that one block's weights stay in cache while its
            // tiles stream the input (tiles outermost re-read every weight per
            // tile, which ran a 512-channel layer 4x slower).
            let tiles = vecs.len() / P;
            let blocks_outer = a.w.len() > DIRECT_WEIGHTS_IN_CACHE;
            for i in 0..blocks * tiles {
                let (blk, tile) = if blocks_outer {
                    (i / tiles, i % tiles)
                } else {
                    (i % blocks, i / blocks)
                };
                let q0 = vecs.start + tile * P;
                let mut at = [0usize; P];
                for (v, o) in at.iter_mut().enumerate() {
                    *o = a.input_at(q0 + v, L);
                }
                let mut acc = [[$zero(); P]; CB];
                // SAFETY (pointer offsets and loads): `direct_conv` checked
                // that every input read, up to plane cg - 1 at the last
                // vector's start + L + the largest tap, lies in `a.x` (starts
                // grow with the vector), that `a.w` holds `m` rows of `depth`
                // values, and that `dst` holds `blocks * CB` rows of `ld >=
                // vecs.end * L` values. A last block's missing channels read
                // the last row again (their sums land in rows past `m`).
                let mut rows = [wp; CB];
                for (c, r) in rows.iter_mut().enumerate() {
                    *r = unsafe { wp.add((blk * CB + c).min(a.m - 1) * depth) };
                }
                for ci in 0..a.cg {
                    let xb = unsafe { xp.add(ci * a.plane) };
                    let k0 = ci * ntaps;
                    // A dense 3x3 kernel (`K3`) has nine taps at offsets the
                    // compiler can unroll: rows of the padded input apart,
                    // columns 0, 1, 2.
                    let count = if K3 { 9 } else { ntaps };
                    for t in 0..count {
                        let off = if K3 { t / 3 * a.row + t % 3 } else { a.taps[t] };
                        let mut xv = [$zero(); P];
                        for (x, &o) in xv.iter_mut().zip(&at) {
                            *x = unsafe { $load(xb.add(o + off)) };
                        }
                        for (row, w) in acc.iter_mut().zip(&rows) {
                            let wv = $set1(unsafe { *w.add(k0 + t) });
                            for (s, x) in row.iter_mut().zip(&xv) {
                                *s = $fmadd(wv, *x, *s);
                            }
                        }
                    }
                }
                for (c, row) in acc.iter().enumerate() {
                    for (v, s) in row.iter().enumerate() {
                        unsafe { $store(dp.add((blk * CB + c) * ld + (q0 + v) * L), *s) };
                    }
                }
            }
        }
    };
}

direct_conv_kernel! {
    /// [`direct_conv`] with AVX-512: 8 channels x `P` vectors of 16 (with
    /// `P` = 3, 24 of the 32 registers accumulate).
    direct_conv_avx512, direct_conv_avx512_all, "avx512f", lanes: 16, channels: 8, tile: 3,
    std::arch::x86_64::__m512,
    load: std::arch::x86_64::_mm512_loadu_ps,
    store: std::arch::x86_64::_mm512_storeu_ps,
    zero: std::arch::x86_64::_mm512_setzero_ps,
    set1: std::arch::x86_64::_mm512_set1_ps,
    fmadd: std::arch::x86_64::_mm512_fmadd_ps
}

direct_conv_kernel! {
    /// [`direct_conv`] with AVX2 and FMA: 4 channels x `P` vectors of 8
    /// (with `P` = 2, 8 of the 16 registers accumulate).
    direct_conv_avx2, direct_conv_avx2_all, "avx2,fma", lanes: 8, channels: 4, tile: 2,
    std::arch::x86_64::__m256,
    load: std::arch::x86_64::_mm256_loadu_ps,
    store: std::arch::x86_64::_mm256_storeu_ps,
    zero: std::arch::x86_64::_mm256_setzero_ps,
    set1: std::arch::x86_64::_mm256_set1_ps,
    fmadd: std::arch::x86_64::_mm256_fmadd_ps
}

/// Computes the first `rows` output rows of every channel of `a` into `dst`:
/// channel `c`'s sums (no bias) at `dst[c * ld..]`, vector `q` at `q *
/// lanes` (see [`Positions`] for which output each vector holds). `ld` must be
/// at least the vectors' length, and `dst` must hold `m` rounded up to
/// [`DirectShape::channels`] such rows.
pub(crate) fn direct_conv(
    shape: DirectShape,
    a: &DirectConv<'_>,
    rows: usize,
    dst: &mut [f32],
    ld: usize,
) -> Result<(), OpError> {
    let l = shape.lanes;
    let nvec = a.vectors(rows, l);
    if nvec == 0 {
        return Ok(());
    }
    let max_tap = a.taps.iter().copied().max().unwrap_or(0);
    let reads_to =
        a.cg.checked_sub(1)
            .map(|c| c * a.plane + a.input_at(nvec - 1, l) + l + max_tap);
    let out_rows = a.m.div_ceil(shape.channels) * shape.channels;
    let span = nvec * l;
    let fits = runs(shape)
        && a.m > 0
        && matches!(a.positions, Positions::Flat | Positions::Rows(1..))
        && reads_to.is_some_and(|end| end <= a.x.len())
        && a.w.len() >= a.m * a.cg * a.taps.len()
        && ld >= span
        && (out_rows - 1) * ld + span <= dst.len();
    if !fits {
        return Err(OpError::new(format!(
            "internal: direct conv of {rows} rows ({} input, {} weights, {} output values)",
            a.x.len(),
            a.w.len(),
            dst.len()
        )));
    }
    // The dense-3x3 bodies compute tap t's offset as the kernel's formula.
    let k3 = a.taps.len() == 9
        && a.taps
            .iter()
            .enumerate()
            .all(|(t, &off)| off == t / 3 * a.row + t % 3);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `runs` saw the body's features on this CPU, and the bounds
        // were checked above for every vector up to `nvec`.
        unsafe {
            match (shape.avx512, k3) {
                (true, true) => direct_conv_avx512_all::<true>(a, nvec, dst, ld),
                (true, false) => direct_conv_avx512_all::<false>(a, nvec, dst, ld),
                (false, true) => direct_conv_avx2_all::<true>(a, nvec, dst, ld),
                (false, false) => direct_conv_avx2_all::<false>(a, nvec, dst, ld),
            }
        }
        Ok(())
    }
    #[cfg(not(target_arch = "x86_64"))]
    Err(OpError::new("internal: no direct conv body on this CPU"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matvec_matches_the_plain_sums_for_quads_lanes_and_tails() {
        for (rows, rs, row0, k, n) in [
            (40, 40, 3, 37, 30),
            (64, 16, 0, 16, 64),
            (9, 5, 2, 3, 7),
            (4, 4, 0, 0, 3),
        ] {
            let r: Vec<f32> = (0..rows * rs)
                .map(|v| ((v * 7) % 11) as f32 - 5.0)
                .collect();
            let x: Vec<f32> = (0..k).map(|v| v as f32 * 0.5 - 1.0).collect();
            let mut y: Vec<f32> = (0..n).map(|v| v as f32).collect();
            let want: Vec<f32> = (0..n)
                .map(|j| j as f32 + (0..k).map(|c| r[(row0 + j) * rs + c] * x[c]).sum::<f32>())
                .collect();
            let mut plain = y.clone();
            matvec_plain(&r, rs, row0, &x, &mut plain);
            assert_eq!(plain, want, "baseline: rs {rs}, row0 {row0}, k {k}, n {n}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let mut v = y.clone();
                // SAFETY: the CPU has AVX2 and FMA.
                unsafe { matvec_avx2(&r, rs, row0, &x, &mut v) };
                assert_eq!(v, want, "AVX2: rs {rs}, row0 {row0}, k {k}, n {n}");
            }
            matvec_acc(&r, rs, row0, &x, &mut y).unwrap();
            assert_eq!(y, want, "dispatched: rs {rs}, row0 {row0}, k {k}, n {n}");
        }
    }

    #[test]
    fn direct_conv_matches_the_plain_sums_for_every_body_and_layout() {
        // (input channels, output channels, taps, padded row, output rows,
        // output width): partial channel blocks, leftover vectors, one tap,
        // a width past a whole number of vectors.
        let three = |row: usize| {
            (0..3)
                .flat_map(|i| (0..3).map(move |j| i * row + j))
                .collect::<Vec<_>>()
        };
        for (cg, m, taps, row, rows, ow) in [
            (3, 16, three(10), 10, 8, 8usize),
            (5, 7, vec![0, 2, 20, 22], 10, 5, 7),
            (1, 1, vec![0], 1, 1, 1),
            (2, 9, vec![0, 1, 10, 11], 10, 9, 9),
            (4, 11, three(35), 35, 6, 33),
            (2, 8, three(18), 18, 7, 16),
        ] {
            let plane = (rows + 3) * row;
            let x: Vec<f32> = (0..cg * plane + 64)
                .map(|v| ((v * 7919) % 23) as f32 * 0.25 - 2.5)
                .collect();
            let w: Vec<f32> = (0..m * cg * taps.len())
                .map(|v| ((v * 31) % 13) as f32 * 0.5 - 3.0)
                .collect();
            let want = |co: usize, r: usize, c: usize| -> f32 {
                let mut s = 0f32;
                for ci in 0..cg {
                    for (t, &off) in taps.iter().enumerate() {
                        s += w[(co * cg + ci) * taps.len() + t] * x[ci * plane + r * row + c + off];
                    }
                }
                s
            };
            for shape in [AVX512_SHAPE, AVX2_SHAPE] {
                if !runs(shape) {
                    continue;
                }
                let l = shape.lanes;
                for positions in [Positions::Flat, Positions::Rows(ow.div_ceil(l))] {
                    let a = DirectConv {
                        x: &x,
                        plane,
                        cg,
                        taps: &taps,
                        w: &w,
                        m,
                        row,
                        positions,
                    };
                    let span = a.vectors(rows, l) * l;
                    let ld = span + 3;
                    let mut dst = vec![f32::NAN; m.div_ceil(shape.channels) * shape.channels * ld];
                    direct_conv(shape, &a, rows, &mut dst, ld).unwrap();
                    for co in 0..m {
                        for r in 0..rows {
                            for c in 0..ow {
                                let at = match positions {
                                    Positions::Flat => r * row + c,
                                    Positions::Rows(n) => r * n * l + c,
                                };
                                let (got, v) = (dst[co * ld + at], want(co, r, c));
                                assert!(
                                    (got - v).abs() <= 1e-4 * (1.0 + v.abs()),
                                    "{shape:?} {positions:?} cg {cg} m {m}: ({co}, {r}, {c}): {got} vs {v}"
                                );
                            }
                        }
                    }
                    // Reads past the input, a short output or a too-narrow row
                    // stride are refused, not run.
                    let max_tap = taps.iter().copied().max().unwrap_or(0);
                    let last = a.input_at(a.vectors(rows, l) - 1, l);
                    let short = DirectConv {
                        x: &x[..(cg - 1) * plane + last + l + max_tap - 1],
                        ..a
                    };
                    assert!(direct_conv(shape, &short, rows, &mut dst, ld).is_err());
                    assert!(direct_conv(shape, &a, rows, &mut dst[..ld], ld).is_err());
                    assert!(direct_conv(shape, &a, rows, &mut dst, span - 1).is_err());
                }
            }
        }
    }

    #[test]
    fn matvec_rejects_rows_outside_the_matrix() {
        let r = vec![0f32; 20];
        let mut y = vec![0f32; 4];
        assert!(matvec_acc(&r, 5, 1, &[1.0; 5], &mut y).is_err());
        assert!(matvec_acc(&r, 4, 0, &[1.0; 5], &mut y).is_err());
        assert!(matvec_acc(&r, 5, 0, &[1.0; 5], &mut y).is_ok());
        assert!(matvec_acc(&r, 5, 1, &[1.0; 4], &mut y[..3]).is_ok());
    }

    /// `matvec_t_acc4` against plain f64 sums, for widths that take whole
    /// blocks, single vectors and scalar tails of both bodies (AVX-512 blocks
    /// of 64 columns per segment, AVX2 of 24), with segments that start at
    /// odd columns and rows wider than the segments.
    #[test]
    fn transposed_matvec_matches_the_plain_sums_for_blocks_vectors_and_tails() {
        type Body = fn(&[f32], usize, &[f32], [usize; 4], [&mut [f32]; 4], bool);
        let mut bodies: Vec<(&str, Body)> = vec![
            ("plain", matvec_t_plain),
            ("dispatched", |rt, ld, x, cols, y, reverse| {
                matvec_t_acc4(rt, ld, x, cols, y, reverse).unwrap()
            }),
        ];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA; the ranges below fit.
            bodies.push(("AVX2", |rt, ld, x, cols, y, reverse| unsafe {
                matvec_t_avx2(rt, ld, x, cols, y, reverse)
            }));
        }
        let runs = bodies
            .iter()
            .flat_map(|&(b, f)| [(b, f, false), (b, f, true)]);
        for (body, f, reverse) in runs {
            for (n, k) in [
                (1, 1),
                (7, 3),
                (8, 5),
                (16, 9),
                (24, 4),
                (40, 6),
                (64, 8),
                (100, 17),
                (131, 2),
            ] {
                let ld = 4 * n + 5;
                let cols = [1, n + 2, 2 * n + 3, 3 * n + 5];
                let rt: Vec<f32> = (0..k * ld)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
                    .collect();
                let x: Vec<f32> = (0..k).map(|i| ((i * 13 % 7) as f32 - 3.0) / 4.0).collect();
                let mut ys: Vec<Vec<f32>> = (0..4).map(|s| vec![s as f32 * 0.5; n]).collect();
                let [a, b, c, d] = &mut ys[..] else {
                    unreachable!()
                };
                f(&rt, ld, &x, cols, [a, b, c, d], reverse);
                for (s, y) in ys.iter().enumerate() {
                    for (j, &got) in y.iter().enumerate() {
                        let want = s as f64 * 0.5
                            + (0..k)
                                .map(|q| f64::from(rt[q * ld + cols[s] + j]) * f64::from(x[q]))
                                .sum::<f64>();
                        assert!(
                            (f64::from(got) - want).abs() < 1e-4,
                            "{body} (reverse {reverse}): n {n} k {k} segment {s} column {j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn transposed_matvec_rejects_columns_outside_the_matrix() {
        let rt = vec![0f32; 3 * 10];
        let (mut a, mut b, mut c, mut d) = ([0f32; 2], [0f32; 2], [0f32; 2], [0f32; 2]);
        let ok = |cols, k: usize, rt: &[f32], y: [&mut [f32]; 4]| {
            matvec_t_acc4(rt, 10, &vec![1.0; k], cols, y, false).is_ok()
        };
        assert!(ok([0, 2, 4, 8], 3, &rt, [&mut a, &mut b, &mut c, &mut d]));
        // A segment past the row's end, a row past the matrix's end.
        assert!(!ok([0, 2, 4, 9], 3, &rt, [&mut a, &mut b, &mut c, &mut d]));
        assert!(!ok([0, 2, 4, 8], 4, &rt, [&mut a, &mut b, &mut c, &mut d]));
        assert!(!ok(
            [0, 2, 4, 8],
            3,
            &rt[..29],
            [&mut a, &mut b, &mut c, &mut d]
        ));
        // Segments of different lengths.
        assert!(!ok(
            [0, 2, 4, 8],
            3,
            &rt,
            [&mut a, &mut b, &mut c, &mut d[..1]]
        ));
        // Nothing to do is fine, even with columns out of range.
        assert!(ok([0, 2, 4, 8], 0, &rt, [&mut a, &mut b, &mut c, &mut d]));
    }

    /// Every depthwise body (the dispatched one, and AVX2 on its own where
    /// the CPU has it) against plain sums: 3x3 and 5x3 kernels, column
    /// strides 1 and 2, row stride 2, dilations, partial last vectors, Relu.
    #[test]
    fn depthwise_bodies_match_the_plain_sums() {
        type Body = fn(DepthwiseArgs<'_>, bool);
        let mut bodies: Vec<(&str, Body)> = Vec::new();
        if depthwise_available() {
            bodies.push(("dispatched", |(p, pw, g, taps, bias, y), relu| {
                depthwise_plane(p, pw, g, taps, (bias, relu), y).unwrap()
            }));
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA; the planes below are sized by
            // DepthwiseGeometry::plane, as depthwise_plane checks.
            bodies.push(("AVX2", |args, relu| unsafe {
                let v = ((args.2.kernel == (3, 3)), relu, args.2.strides.1 == 2);
                depthwise_variant!(depthwise_avx2, v, args)
            }));
        }
        if bodies.is_empty() {
            eprintln!("no AVX2+FMA on this CPU: the depthwise kernel is not used here");
        }
        let cases = [
            ((5, 21), (3, 3), (1, 1), (1, 1)),
            ((4, 7), (3, 3), (2, 2), (1, 1)),
            ((3, 19), (5, 3), (1, 2), (2, 1)),
            ((6, 9), (2, 3), (1, 1), (1, 2)),
            ((2, 33), (3, 3), (3, 2), (1, 1)),
        ];
        for (body, f) in bodies {
            for &(out, kernel, strides, dilations) in &cases {
                let g = DepthwiseGeometry {
                    out,
                    kernel,
                    strides,
                    dilations,
                };
                let (rows, pw) = g.plane();
                let pw = pw + 3;
                let p: Vec<f32> = (0..rows * pw)
                    .map(|i| ((i * 29 % 37) as f32 - 18.0) / 9.0)
                    .collect();
                let taps: Vec<f32> = (0..kernel.0 * kernel.1)
                    .map(|t| (t as f32 - 4.0) / 5.0)
                    .collect();
                for relu in [false, true] {
                    let mut y = vec![f32::NAN; out.0 * out.1];
                    f((&p, pw, g, &taps, 0.25, &mut y), relu);
                    for oy in 0..out.0 {
                        for ox in 0..out.1 {
                            let mut want = 0.25f32;
                            for ki in 0..kernel.0 {
                                for kj in 0..kernel.1 {
                                    let at = (oy * strides.0 + ki * dilations.0) * pw
                                        + ox * strides.1
                                        + kj * dilations.1;
                                    want += taps[ki * kernel.1 + kj] * p[at];
                                }
                            }
                            if relu {
                                want = want.max(0.0);
                            }
                            let got = y[oy * out.1 + ox];
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{body} {g:?} relu {relu} at ({oy}, {ox}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_pool_epilogue_keeps_nan_and_signed_zeros() {
        // Two rows of 6: three windows, the middle one holding a NaN.
        let src = [
            -0.0,
            -0.0,
            1.0,
            f32::NAN,
            -3.0,
            -2.0, //
            -0.0,
            -0.0,
            0.5,
            0.25,
            -4.0,
            -1.0,
        ];
        for (bias, relu) in [(-0.0, false), (-0.0, true), (0.5, false), (1.5, true)] {
            let mut got = [9f32; 3];
            pool_2x2_bias_relu(&src, &mut got, 6, 3, bias, relu);
            let mut want = [9f32; 3];
            crate::ops::pool::max_pool_2x2_then(&src, &mut want, 6, 3, |v| {
                let v = v + bias;
                if relu && v < 0.0 {
                    0.0
                } else {
                    v
                }
            });
            assert!(got[1].is_nan() && want[1].is_nan(), "NaN wins: {got:?}");
            for i in [0, 2] {
                assert_eq!(
                    got[i].to_bits(),
                    want[i].to_bits(),
                    "{bias} {relu}: {got:?}"
                );
            }
        }
        let mut z = [9f32; 1];
        pool_2x2_bias_relu(&[-0.0; 4], &mut z, 2, 1, -0.0, false);
        assert!(z[0] == 0.0 && z[0].is_sign_negative(), "-0.0 stays -0.0");
    }

    #[test]
    fn the_dispatched_softmax_matches_the_baseline_body() {
        for n in [1, 15, 16, 37, 128] {
            let row: Vec<f32> = (0..n).map(|v| ((v * 13) % 17) as f32 * 0.7 - 4.0).collect();
            let (mut got, mut want) = (row.clone(), row.clone());
            softmax_row(&mut got);
            softmax_body::<false>(&mut want);
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1e-30),
                    "{n}: {a} vs {b}"
                );
            }
            let total: f32 = got.iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "{n}: sums to {total}");
        }
        let mut with_nan = [1.0, f32::NAN, 2.0];
        softmax_row(&mut with_nan);
        assert!(with_nan.iter().all(|v| v.is_nan()), "{with_nan:?}");
    }

    #[test]
    fn the_dispatched_cell_matches_the_baseline_cell() {
        let n = 37;
        let gate = |s: f32| (0..n).map(|v| (v as f32 - 18.0) * s).collect::<Vec<f32>>();
        let (mut i, mut o, mut f, mut g) = (gate(0.3), gate(-0.2), gate(0.1), gate(0.25));
        let (mut i2, mut o2, mut f2, mut g2) = (i.clone(), o.clone(), f.clone(), g.clone());
        let (mut c, mut h) = (gate(0.05), vec![0f32; n]);
        let (mut c2, mut h2) = (c.clone(), vec![0f32; n]);
        lstm_cell([&mut i, &mut o, &mut f, &mut g], &mut c, &mut h);
        crate::ops::fastmath::lstm_cell([&mut i2, &mut o2, &mut f2, &mut g2], &mut c2, &mut h2);
        for (a, b) in h.iter().zip(&h2).chain(c.iter().zip(&c2)) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
