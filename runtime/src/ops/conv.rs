//! Convolutions: `Conv` (any number of spatial dims, strides, pads, dilations,
//! groups, `auto_pad`), `ConvTranspose`, `ConvInteger`.
//!
//! Design: a 2-D stride-1 conv (the common CNN layer) runs the direct kernel
//! of `simd::direct_conv` on a zero-padded copy of the rows each band reads,
//! with the model's weights read in place ([`DirectPlan`] says when). Every
//! other geometry goes through im2col on the host and the `gemm` crate's
//! kernels ([`sgemm`]) with the group's weights, writing straight into the
//! output. Two spatial dims build im2col in blocks of output rows that stay in
//! cache, 1x1 kernels skip it; the bias is written into the output before the
//! product accumulates onto it, and a fused activation (and 2x2 pool) is
//! applied per block while it is still in cache. With more than one thread and
//! more than one image, images run in parallel; a single image is cut into
//! bands of output rows, one per thread. Depthwise and NHWC kernels are not
//! here yet.

use candle_core::{DType, Device};

use rayon::prelude::*;

use crate::ops::common::{for_each_index, like, numel, scalar_i64};
use crate::ops::fused::with_f32;
use crate::ops::sgemm::{self, MatRef};
use crate::ops::simd;
use crate::ops::window::Window;
use crate::ops::{one, Activation, Inputs, Kernel, NodeInfo, OpError, OpResult, FUSED_MAX_POOL};
use crate::tensor::{ElemType, Tensor};

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "Conv" => conv,
        "ConvTranspose" => conv_transpose,
        "ConvInteger" => conv_integer,
        _ => return None,
    };
    Some(k)
}

fn group_count(n: &NodeInfo) -> Result<usize, OpError> {
    let g = n.attrs.int("group", 1)?;
    usize::try_from(g)
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| OpError::new(format!("invalid group {g}")))
}

/// For every (spatial output position, kernel position) of one spatial axis the
/// input coordinate, or `None` when it falls in the padding.
fn axis_map(w: &Window, d: usize, input: usize) -> Vec<Option<usize>> {
    let (o, k) = (w.out[d], w.kernel[d]);
    let mut m = Vec::with_capacity(o * k);
    for oi in 0..o {
        for ki in 0..k {
            let p = (oi * w.strides[d] + ki * w.dilations[d]) as i64 - w.pad_begin[d] as i64;
            m.push((p >= 0 && (p as usize) < input).then_some(p as usize));
        }
    }
    m
}

/// im2col of one (batch item, group) slice `x` of shape [c, spatial...] into
/// [c * prod(kernel), prod(out)].
fn im2col(
    x: &[f32],
    c: usize,
    spatial: &[usize],
    w: &Window,
    maps: &[Vec<Option<usize>>],
) -> Vec<f32> {
    let ksz = numel(&w.kernel);
    let osz = numel(&w.out);
    let isz = numel(spatial);
    let mut cols = vec![0f32; c * ksz * osz];
    let in_strides = crate::ops::common::strides(spatial);
    let kd = w.kernel.len();
    let mut kk = 0;
    for_each_index(&w.kernel, |kidx| {
        let mut o = 0;
        for_each_index(&w.out, |oidx| {
            let mut off = 0;
            let mut inside = true;
            for d in 0..kd {
                match maps[d][oidx[d] * w.kernel[d] + kidx[d]] {
                    Some(p) => off += p * in_strides[d],
                    None => {
                        inside = false;
                        break;
                    }
                }
            }
            if inside {
                for ci in 0..c {
                    cols[(ci * ksz + kk) * osz + o] = x[ci * isz + off];
                }
            }
            o += 1;
        });
        kk += 1;
    });
    cols
}

/// im2col for two spatial dims, for the output rows `rows` only: the
/// `[c * kh * kw, rows.len() * ow]` block of the matrix [`im2col`] builds, written
/// row by row into `cols` (every element, padding as 0, so a reused buffer needs no
/// clearing), with the valid output columns of each kernel tap computed once (a
/// plain copy at stride 1).
fn im2col_2d(
    x: &[f32],
    c: usize,
    (h, wd): (usize, usize),
    w: &Window,
    rows: std::ops::Range<usize>,
    cols: &mut [f32],
) {
    let (kh, kw) = (w.kernel[0], w.kernel[1]);
    let ow = w.out[1];
    let (sh, sw) = (w.strides[0], w.strides[1]);
    let n = rows.len() * ow;
    if n == 0 {
        return;
    }
    if sh == 1 && sw == 1 && ow == wd {
        im2col_2d_rows_contiguous(x, c, (h, wd), w, rows, cols);
        return;
    }
    for kx in 0..kw {
        // Output columns whose input column ox*sw + off lies inside [0, wd).
        let off = (kx * w.dilations[1]) as i64 - w.pad_begin[1] as i64;
        let lo = if off < 0 {
            ((-off) as usize).div_ceil(sw)
        } else {
            0
        };
        let hi = if (wd as i64) > off {
            ((wd as i64 - off) as usize).div_ceil(sw).min(ow)
        } else {
            0
        };
        let (lo, hi) = if lo < hi { (lo, hi) } else { (0, 0) };
        for ci in 0..c {
            let plane = &x[ci * h * wd..(ci + 1) * h * wd];
            for ky in 0..kh {
                let row = ((ci * kh + ky) * kw + kx) * n;
                let row = &mut cols[row..row + n];
                for (dst, oy) in row.chunks_exact_mut(ow).zip(rows.clone()) {
                    let iy = (oy * sh + ky * w.dilations[0]) as i64 - w.pad_begin[0] as i64;
                    if iy < 0 || iy as usize >= h || lo == hi {
                        dst.fill(0.0);
                        continue;
                    }
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    let src = &plane[iy as usize * wd..(iy as usize + 1) * wd];
                    let dst = &mut dst[lo..hi];
                    let first = (lo * sw) as i64 + off;
                    if sw == 1 {
                        let first = first as usize;
                        dst.copy_from_slice(&src[first..first + dst.len()]);
                    } else {
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d = src[first as usize + j * sw];
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col_2d`] at stride 1 when the output is as wide as the input (the
/// "same" padding of most CNNs): a kernel tap's row of the im2col block is then
/// the input plane read from one offset on, so it is one copy per (channel,
/// tap) and block instead of one per output row, with the padding columns
/// (which that copy fills from the neighbouring input row) cleared afterwards.
fn im2col_2d_rows_contiguous(
    x: &[f32],
    c: usize,
    (h, wd): (usize, usize),
    w: &Window,
    rows: std::ops::Range<usize>,
    cols: &mut [f32],
) {
    let (kh, kw) = (w.kernel[0], w.kernel[1]);
    let ow = wd;
    let n = rows.len() * ow;
    let plane_len = h * wd;
    for ci in 0..c {
        let plane = &x[ci * plane_len..(ci + 1) * plane_len];
        for ky in 0..kh {
            let dy = (ky * w.dilations[0]) as i64 - w.pad_begin[0] as i64;
            for kx in 0..kw {
                let dx = (kx * w.dilations[1]) as i64 - w.pad_begin[1] as i64;
                let at = ((ci * kh + ky) * kw + kx) * n;
                let dst = &mut cols[at..at + n];
                // dst[t] = plane[start + t] wherever that index is inside the
                // plane; t runs over the block's output rows and columns.
                let start = (rows.start as i64 + dy) * wd as i64 + dx;
                let lo = (-start).clamp(0, n as i64) as usize;
                let hi = (plane_len as i64 - start).clamp(lo as i64, n as i64) as usize;
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
                if lo < hi {
                    let s0 = (start + lo as i64) as usize;
                    dst[lo..hi].copy_from_slice(&plane[s0..s0 + (hi - lo)]);
                }
                // Columns whose input column falls left or right of the plane
                // read the neighbouring row above: they are padding.
                let (pad_lo, pad_hi) = if dx < 0 {
                    (0, ((-dx) as usize).min(ow))
                } else {
                    (ow.saturating_sub(dx as usize), ow)
                };
                if pad_lo < pad_hi {
                    for row in dst.chunks_exact_mut(ow) {
                        row[pad_lo..pad_hi].fill(0.0);
                    }
                }
            }
        }
    }
}

/// How many f32 values one im2col block may hold (256 KiB): blocks of output rows
/// are built and multiplied one at a time so that the block stays in cache.
const IM2COL_BLOCK: usize = 64 * 1024;

fn conv(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, w) = (i.tensor(0)?, i.tensor(1)?);
    let pooled = n.attrs.has(FUSED_MAX_POOL);
    let y = conv_f32(n, x, w, i.opt(2)?, Activation::of(n)?, pooled)?;
    one(Tensor::from_candle(x.elem_type(), y)?)
}

fn conv_f32(
    n: &NodeInfo,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    pooled: bool,
) -> Result<candle_core::Tensor, OpError> {
    if x.rank() < 3 || w.rank() != x.rank() {
        return Err(OpError::new(format!(
            "Conv of X {:?} with W {:?}",
            x.shape(),
            w.shape()
        )));
    }
    let g = group_count(n)?;
    let (nb, c) = (x.shape()[0], x.shape()[1]);
    let spatial = &x.shape()[2..];
    let m = w.shape()[0];
    let cg = w.shape()[1];
    if cg * g != c || !m.is_multiple_of(g) {
        return Err(OpError::new(format!(
            "channels: X has {c}, W {:?}, group {g}",
            w.shape()
        )));
    }
    let kernel = match n.attrs.ints("kernel_shape")? {
        Some(k) => k.iter().map(|&v| v.max(0) as usize).collect(),
        None => w.shape()[2..].to_vec(),
    };
    if kernel != w.shape()[2..] {
        return Err(OpError::new("kernel_shape does not match W"));
    }
    let win = Window::new(n, spatial, kernel, false)?;
    let ksz = numel(&win.kernel);
    let osz = numel(&win.out);
    let isz = numel(spatial);
    let mg = m / g;
    let bias: Option<Vec<f32>> = match bias {
        Some(b) if b.len() == m => Some(b.to_f32_vec()?),
        Some(b) => {
            return Err(OpError::new(format!(
                "bias has {} values for {m} channels",
                b.len()
            )))
        }
        None => None,
    };
    let kdim = cg * ksz;
    // A 1x1 kernel at stride 1 without padding reads the input as its own im2col.
    let pointwise = win.kernel.iter().all(|&k| k == 1)
        && win.strides.iter().all(|&s| s == 1)
        && win.pad_begin.iter().all(|&p| p == 0)
        && win.out == spatial;
    // Only the N-D im2col reads these; two spatial dims have their own.
    let maps: Vec<_> = if spatial.len() == 2 {
        Vec::new()
    } else {
        (0..spatial.len())
            .map(|d| axis_map(&win, d, spatial[d]))
            .collect()
    };
    let out_dims: Vec<usize> = if pooled {
        if spatial.len() != 2 {
            return Err(OpError::new(format!(
                "a fused 2x2 MaxPool needs two spatial dims, X has {}",
                spatial.len()
            )));
        }
        win.out.iter().map(|&o| o / 2).collect()
    } else {
        win.out.clone()
    };
    let ysz = numel(&out_dims);
    let xc = x.candle().to_dtype(DType::F32)?;
    let wc = w.candle().to_dtype(DType::F32)?;
    let mut out = vec![0f32; nb * m * ysz];
    let threads = sgemm::threads();
    with_f32(&wc, |wv| {
        with_f32(&xc, |xv| {
            if xv.len() != nb * c * isz || wv.len() != m * kdim {
                return Err(OpError::new("internal: conv operand sizes"));
            }
            if out.is_empty() {
                return Ok(());
            }
            let direct = DirectPlan::new(&win, spatial, pointwise, (cg, mg));
            let geometry = ConvGeometry {
                c,
                cg,
                g,
                mg,
                kdim,
                isz,
                osz,
                spatial,
                win: &win,
                maps: &maps,
                pointwise,
                bias: bias.as_deref(),
                act,
                pooled,
                direct: direct.as_ref(),
            };
            let image = |b: usize, y: &mut [f32], t: usize| {
                let xb = &xv[b * c * isz..(b + 1) * c * isz];
                geometry.image(xb, wv, y, t)
            };
            if nb > 1 && threads > 1 {
                // One image per task; each product on its own thread.
                out.par_chunks_mut(m * ysz)
                    .enumerate()
                    .try_for_each(|(b, y)| image(b, y, 1))
            } else {
                for (b, y) in out.chunks_mut(m * ysz).enumerate() {
                    image(b, y, threads)?;
                }
                Ok(())
            }
        })
    })?;
    let mut shape = vec![nb, m];
    shape.extend(&out_dims);
    Ok(candle_core::Tensor::from_vec(out, &*shape, &Device::Cpu)?)
}

/// One `Conv`'s resolved sizes, shared by the per-image work.
struct ConvGeometry<'a> {
    c: usize,
    cg: usize,
    g: usize,
    mg: usize,
    /// Rows of the im2col matrix: cg * prod(kernel).
    kdim: usize,
    isz: usize,
    osz: usize,
    spatial: &'a [usize],
    win: &'a Window,
    maps: &'a [Vec<Option<usize>>],
    pointwise: bool,
    bias: Option<&'a [f32]>,
    act: Activation,
    /// A 2x2 stride-2 MaxPool follows (the planner fused it): the output is
    /// [m, oh / 2, ow / 2] (see [`ConvGeometry::pooled_band`]).
    pooled: bool,
    /// Set when the direct kernel computes this conv instead of im2col.
    direct: Option<&'a DirectPlan>,
}

/// The deepest sum (input channels x taps) the direct kernel takes: 512
/// channels of 3x3, the deepest measured. With the dense-3x3 body it beat
/// im2col and the `gemm` crate there (512 channels at 14x14: 12.1 -> 6.2 ms;
/// 256 at 14x14: 2.14 -> 1.56 ms; 64 channels of 5x5 at 28x28: 1.59 -> 1.18
/// ms); before that body, 256 channels of 3x3 had run slower direct.
const DIRECT_MAX_DEPTH: usize = 4608;

/// Weights (f32 values) of one group above which the direct kernel splits
/// the output channels between threads rather than the rows: 4 MiB, twice a
/// core's L2 on the machine measured. 512 channels of 3x3 (9.4 MB) ran
/// faster split by channels (7x7: 2.23 -> 1.32 ms at 2 threads; 14x14: 3.44
/// -> 3.20 ms), 256 channels (2.4 MB) slower (14x14: 0.89 -> 1.10 ms).
const CHANNEL_SPLIT_WEIGHTS: usize = 1024 * 1024;

/// Output values per block of a direct conv's scratch (256 KiB, within L2).
const DIRECT_BLOCK: usize = 64 * 1024;

/// A 2-D stride-1 conv computed by [`simd::direct_conv`] from zero-padded
/// copies of the rows each band reads, with the model's weights read in place:
/// no im2col and no packing.
struct DirectPlan {
    shape: simd::DirectShape,
    /// Flat offsets of the kernel taps in a padded plane.
    taps: Vec<usize>,
    /// Padded input columns, the rows below an output row that it reads,
    /// and the padding before the rows and columns.
    wp: usize,
    reach_h: usize,
    pad_top: usize,
    pad_left: usize,
    /// Output channel blocks per group.
    blocks: usize,
    /// Which positions the kernel's vectors cover, and the row length of
    /// its output (`wp` for flat positions, whole vectors for rows).
    positions: simd::Positions,
    out_row: usize,
}

impl DirectPlan {
    /// The plan for a conv, or `None` where im2col does better or the direct
    /// kernel does not apply: other than two non-empty spatial dims and input
    /// channels at stride 1, 1x1
    /// kernels (their input is their own im2col), more than a third more
    /// positions computed than kept (padded columns or lanes past the row's
    /// end: narrow rows with wide kernels, 5x5 images), more than a third of a channel
    /// block empty, sums deeper than [`DIRECT_MAX_DEPTH`], or a CPU without
    /// AVX2 and FMA.
    fn new(
        win: &Window,
        spatial: &[usize],
        pointwise: bool,
        (cg, mg): (usize, usize),
    ) -> Option<Self> {
        if spatial.len() != 2
            || spatial.contains(&0)
            || cg == 0
            || pointwise
            || win.strides.iter().any(|&s| s != 1)
        {
            return None;
        }
        let shape = simd::direct_shape()?;
        let (kh, kw) = (win.kernel[0], win.kernel[1]);
        let (dh, dw) = (win.dilations[0], win.dilations[1]);
        let hp = spatial[0] + win.pad_begin[0] + win.pad_end[0];
        let wp = spatial[1] + win.pad_begin[1] + win.pad_end[1];
        let (oh, ow) = (win.out[0], win.out[1]);
        let reach_h = kh.checked_sub(1)? * dh;
        let reach_w = kw.checked_sub(1)? * dw;
        if oh == 0 || ow == 0 || hp != oh + reach_h || wp != ow + reach_w {
            return None;
        }
        let blocks = mg.div_ceil(shape.channels);
        // Positions computed against outputs kept, for whichever layout of
        // vectors computes fewer.
        let l = shape.lanes;
        let per_row = ow.div_ceil(l);
        let flat = (oh * wp).div_ceil(l) * l;
        let (positions, out_row, computed) = if oh * per_row * l <= flat {
            (
                simd::Positions::Rows(per_row),
                per_row * l,
                oh * per_row * l,
            )
        } else {
            (simd::Positions::Flat, wp, flat)
        };
        if 3 * computed > 4 * oh * ow
            || 2 * blocks * shape.channels > 3 * mg
            || cg * kh * kw > DIRECT_MAX_DEPTH
        {
            return None;
        }
        let taps = (0..kh)
            .flat_map(|i| (0..kw).map(move |j| i * dh * wp + j * dw))
            .collect::<Vec<_>>();
        Some(Self {
            shape,
            taps,
            wp,
            reach_h,
            pad_top: win.pad_begin[0],
            pad_left: win.pad_begin[1],
            blocks,
            positions,
            out_row,
        })
    }

    /// Writes rows `rows` (in padded coordinates) of the zero-padded planes
    /// of `xs` ([cg, ih, iw]) into `padded`, one plane of `rows.len() * wp`
    /// values per channel, followed by the zeros the last vector reads past the
    /// final plane. Each band pads only the rows it reads, in its own scratch,
    /// so the copy is made in the cache of the core that reads it (data
    /// written on one core and read on the other is what kept two threads
    /// barely faster than one: see `simd::DirectConv::w`).
    fn pad_rows(
        &self,
        xs: &[f32],
        cg: usize,
        (ih, iw): (usize, usize),
        rows: std::ops::Range<usize>,
        padded: &mut Vec<f32>,
    ) {
        let plane = rows.len() * self.wp;
        padded.clear();
        padded.resize(
            cg * plane + self.shape.lanes + self.wp + self.taps.last().copied().unwrap_or(0),
            0.0,
        );
        let inside = rows.start.max(self.pad_top)..rows.end.min(self.pad_top + ih);
        for (src, dst) in xs.chunks_exact(ih * iw).zip(padded.chunks_exact_mut(plane)) {
            for pr in inside.clone() {
                let r = pr - self.pad_top;
                let at = (pr - rows.start) * self.wp + self.pad_left;
                dst[at..at + iw].copy_from_slice(&src[r * iw..(r + 1) * iw]);
            }
        }
    }

    /// The kernel's operands for one group's weights `w` ([mg, cg * taps])
    /// over `padded` (planes of `plane` values).
    fn operands<'a>(
        &'a self,
        padded: &'a [f32],
        plane: usize,
        (cg, mg): (usize, usize),
        w: &'a [f32],
    ) -> simd::DirectConv<'a> {
        simd::DirectConv {
            x: padded,
            plane,
            cg,
            taps: &self.taps,
            w,
            m: mg,
            row: self.wp,
            positions: self.positions,
        }
    }

    /// `rows` in blocks of at most `per` rows each, at least one row per
    /// block, whose scratch output (`blocks * channels` rows of `per * wp`
    /// values) stays near [`DIRECT_BLOCK`].
    fn row_blocks(
        &self,
        rows: std::ops::Range<usize>,
        rows_per_output_row: usize,
    ) -> impl Iterator<Item = std::ops::Range<usize>> {
        let per_row = self.blocks * self.shape.channels * self.wp * rows_per_output_row;
        let size = (DIRECT_BLOCK / per_row.max(1)).max(1);
        let end = rows.end;
        rows.step_by(size).map(move |r0| r0..(r0 + size).min(end))
    }

    /// The scratch length and row stride for `rows` output rows.
    fn scratch_len(&self, rows: usize) -> (usize, usize) {
        let l = self.shape.lanes;
        let ld = match self.positions {
            simd::Positions::Flat => (rows * self.wp).div_ceil(l) * l,
            simd::Positions::Rows(n) => rows * n * l,
        };
        (self.blocks * self.shape.channels * ld, ld)
    }
}

/// One thread's reusable buffers: an im2col block, a direct conv's padded
/// input, and a block's unpooled (or, direct, padded-width) output.
///
/// Design: they live per thread across calls ([`with_scratch`]). Buffers made
/// per call were zero-filled each time they grew, and the direct kernel's
/// output block (up to [`DIRECT_BLOCK`] values) made that fill 5% of a small
/// CNN's run.
#[derive(Default)]
struct Scratch {
    cols: Vec<f32>,
    conv: Vec<f32>,
    /// A direct conv's zero-padded input.
    padded: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's [`Scratch`], or with a fresh one where this
/// thread's is already in use (a band that rayon ran on a thread waiting
/// inside another band of the same thread).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// The first `n` elements of `v`, growing it (with zeros) only when it is
/// shorter: callers overwrite every element they use.
fn grown(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

impl ConvGeometry<'_> {
    /// The output `y` of one image `x` ([c, isz]) with weights `w` ([m, kdim]):
    /// [m, osz], or [m, oh / 2, ow / 2] with a fused pool. Per group: two
    /// spatial dims go by bands of output rows ([`Self::for_each_band`]), each
    /// in im2col blocks with bias, activation (and pool) applied per block;
    /// other shapes get the bias written first, one product accumulated onto
    /// it and the activation after.
    fn image(&self, x: &[f32], w: &[f32], y: &mut [f32], threads: usize) -> Result<(), OpError> {
        let (cg, mg, kdim, isz, osz) = (self.cg, self.mg, self.kdim, self.isz, self.osz);
        let two_d = self.spatial.len() == 2;
        if self.pooled && !two_d {
            return Err(OpError::new(
                "internal: a fused pool needs two spatial dims",
            ));
        }
        let (ph, pw) = (
            self.win.out[0] / 2,
            self.win.out.get(1).map_or(0, |o| o / 2),
        );
        let ysz = if self.pooled { ph * pw } else { osz };
        if x.len() != self.c * isz || y.len() != self.g * mg * ysz {
            return Err(OpError::new("internal: conv image sizes"));
        }
        if self.depthwise() {
            return self.depthwise_image(x, w, y, threads);
        }
        for gi in 0..self.g {
            let xs = &x[gi * cg * isz..(gi + 1) * cg * isz];
            let wg = MatRef::rows(&w[gi * mg * kdim..(gi + 1) * mg * kdim], kdim);
            let yg = &mut y[gi * mg * ysz..(gi + 1) * mg * ysz];
            let bias = self.bias.map(|b| &b[gi * mg..(gi + 1) * mg]);
            let banded = two_d && (self.pooled || !self.pointwise);
            if let (Some(b), false) = (bias, banded) {
                for (row, &bv) in yg.chunks_exact_mut(osz).zip(b) {
                    row.fill(bv);
                }
            }
            let acc = self.bias.is_some();
            let band_threads = threads.min(sgemm::threads_for(mg, osz, kdim));
            if let Some(d) = self.direct {
                let (rows, pooled) = if self.pooled {
                    ((ph, pw), true)
                } else {
                    ((self.win.out[0], self.win.out[1]), false)
                };
                self.direct_image(d, (xs, wg.data), bias, yg, (rows, pooled), band_threads)?;
            } else if self.pooled {
                self.for_each_band(yg, (ph, pw), band_threads, |band, prows, s| {
                    self.pooled_band(xs, wg, bias, band, prows, s)
                })?;
            } else if self.pointwise {
                sgemm::gemm(
                    mg,
                    osz,
                    kdim,
                    yg,
                    osz,
                    acc,
                    wg,
                    MatRef::rows(xs, osz),
                    threads,
                )?;
                self.activate(yg, 0..osz);
            } else if banded {
                let (oh, ow) = (self.win.out[0], self.win.out[1]);
                self.for_each_band(yg, (oh, ow), band_threads, |band, rows, s| {
                    self.band(xs, wg, bias, band, (rows, ow), &mut s.cols)
                })?;
            } else {
                let cols = im2col(xs, cg, self.spatial, self.win, self.maps);
                sgemm::gemm(
                    mg,
                    osz,
                    kdim,
                    yg,
                    osz,
                    acc,
                    wg,
                    MatRef::rows(&cols, osz),
                    threads,
                )?;
                self.activate(yg, 0..osz);
            }
        }
        Ok(())
    }

    /// Whether [`Self::depthwise_image`] computes this conv: one input channel
    /// per group, two spatial dims, a column stride of 1 or 2, no fused pool,
    /// no direct plan, and a CPU with AVX-512 or AVX2 and FMA.
    fn depthwise(&self) -> bool {
        self.cg == 1
            && self.spatial.len() == 2
            && matches!(self.win.strides[..], [sh, 1 | 2] if sh > 0)
            && !self.pooled
            && self.direct.is_none()
            && self.win.out.iter().all(|&o| o > 0)
            && simd::depthwise_available()
    }

    /// A depthwise conv of one image (see [`Self::depthwise`]): each output
    /// channel from its group's input plane, zero-padded once into the
    /// thread's scratch, by [`simd::depthwise_plane`]; channels split over
    /// `threads`.
    ///
    /// Design: im2col and a one-row product per channel (the general path)
    /// spent more time building and walking the nine-row im2col than
    /// multiplying: MobileNet's 3x3 depthwise layers ran 1.75x (32 channels
    /// at 112x112) to 2.42x (128 at 28x28) ONNX Runtime's time.
    fn depthwise_image(
        &self,
        x: &[f32],
        w: &[f32],
        y: &mut [f32],
        threads: usize,
    ) -> Result<(), OpError> {
        let (ih, iw) = (self.spatial[0], self.spatial[1]);
        let win = self.win;
        let geometry = simd::DepthwiseGeometry {
            out: (win.out[0], win.out[1]),
            kernel: (win.kernel[0], win.kernel[1]),
            strides: (win.strides[0], win.strides[1]),
            dilations: (win.dilations[0], win.dilations[1]),
        };
        let (pt, pl) = (win.pad_begin[0], win.pad_begin[1]);
        let ksz = win.kernel[0] * win.kernel[1];
        // Rows the outputs read, and a row stride with room for whole vectors.
        let (prows, pw) = geometry.plane();
        let osz = self.osz;
        // Output channels per task: a group's (its plane is padded once for
        // all of them), or with one group a share of its channels per thread.
        let per = if self.g > 1 || threads <= 1 {
            self.mg
        } else {
            self.mg.div_ceil(threads)
        };
        // Output channels o0.. (one group's) into `ys`.
        let channels = |o0: usize, ys: &mut [f32], plane: &mut Vec<f32>| -> Result<(), OpError> {
            let gi = o0 / self.mg;
            let xs = &x[gi * self.isz..(gi + 1) * self.isz];
            let buf = grown(plane, prows * pw);
            // Zero only the border: the rows above and below the input's,
            // and each input row's columns left and right of it. Input rows
            // or columns past what the outputs read (padding at the end cut
            // them off) are not copied.
            let n = iw.min(pw.saturating_sub(pl));
            let rows_in = ih.min(prows.saturating_sub(pt));
            buf[..pt.min(prows) * pw].fill(0.0);
            buf[(pt + rows_in).min(prows) * pw..].fill(0.0);
            for (iy, src) in xs.chunks_exact(iw.max(1)).take(rows_in).enumerate() {
                let row = &mut buf[(iy + pt) * pw..(iy + pt + 1) * pw];
                let left = pl.min(pw);
                row[..left].fill(0.0);
                row[left..left + n].copy_from_slice(&src[..n]);
                row[left + n..].fill(0.0);
            }
            let relu = self.act == Activation::Relu;
            for (j, yo) in ys.chunks_mut(osz).enumerate() {
                let o = o0 + j;
                let taps = w
                    .get(o * ksz..(o + 1) * ksz)
                    .ok_or_else(|| OpError::new("internal: depthwise weights"))?;
                // No bias adds -0.0, which leaves every sum as it is (0.0
                // would turn a -0.0 sum into 0.0).
                let bias = self.bias.map_or(-0.0, |b| b[o]);
                simd::depthwise_plane(buf, pw, geometry, taps, (bias, relu), yo)?;
            }
            Ok(())
        };
        if threads > 1 && y.len() > per * osz {
            y.par_chunks_mut(per * osz)
                .enumerate()
                .try_for_each(|(c, ys)| with_scratch(|s| channels(c * per, ys, &mut s.padded)))
        } else {
            with_scratch(|s| {
                y.chunks_mut(per * osz)
                    .enumerate()
                    .try_for_each(|(c, ys)| channels(c * per, ys, &mut s.padded))
            })
        }
    }

    /// The output rows `rows` (of `ow` positions each) of one group, which `band`
    /// covers in every output channel: built in blocks of output rows whose
    /// im2col stays in cache; each block's output gets the bias written, the
    /// product accumulated onto it and the activation applied while it is still
    /// in cache.
    fn band(
        &self,
        xs: &[f32],
        wg: MatRef<'_, f32>,
        bias: Option<&[f32]>,
        band: &mut sgemm::ColumnsMut<'_, f32>,
        (rows, ow): (std::ops::Range<usize>, usize),
        scratch: &mut Vec<f32>,
    ) -> Result<(), OpError> {
        let kdim = self.kdim;
        let dims = (self.spatial[0], self.spatial[1]);
        for block in self.row_blocks(rows.clone(), ow) {
            let (oy0, oy1) = (block.start, block.end);
            let ncols = (oy1 - oy0) * ow;
            let cols = grown(scratch, kdim * ncols);
            im2col_2d(xs, self.cg, dims, self.win, oy0..oy1, cols);
            let at = (oy0 - rows.start) * ow;
            if let Some(b) = bias {
                for (r, &bv) in b.iter().enumerate() {
                    band.row_mut(r)[at..at + ncols].fill(bv);
                }
            }
            band.gemm(
                at,
                ncols,
                kdim,
                bias.is_some(),
                wg,
                MatRef::rows(cols, ncols),
            )?;
            if self.act != Activation::None {
                for r in 0..self.mg {
                    self.act
                        .apply_in_place(&mut band.row_mut(r)[at..at + ncols]);
                }
            }
        }
        Ok(())
    }

    /// Cuts one group's output `y` (`mg` rows of `rows * per_row` values: output
    /// rows of `per_row` positions, per channel) into `parts` bands of whole
    /// output rows and runs `f` on each band with its row range and its
    /// thread's scratch: on this thread when `parts` is 1, else one band per
    /// rayon task, each writing straight into its columns of `y`.
    ///
    /// Design: the `gemm` crate does not split the short products of one image's
    /// blocks well (cnn_b1 ran slower at 2 threads than at 1), and im2col stayed
    /// on one thread; cutting the image into bands parallelises both.
    fn for_each_band(
        &self,
        y: &mut [f32],
        (rows, per_row): (usize, usize),
        parts: usize,
        f: impl Fn(
                &mut sgemm::ColumnsMut<'_, f32>,
                std::ops::Range<usize>,
                &mut Scratch,
            ) -> Result<(), OpError>
            + Sync,
    ) -> Result<(), OpError> {
        let parts = parts.min(rows).max(1);
        let bounds: Vec<usize> = (0..=parts).map(|p| p * rows / parts).collect();
        let col_bounds: Vec<usize> = bounds.iter().map(|&r| r * per_row).collect();
        let mut bands = sgemm::split_columns(y, self.mg, rows * per_row, &col_bounds)?;
        if parts == 1 {
            return match bands.first_mut() {
                Some(band) => with_scratch(|s| f(band, 0..rows, s)),
                None => Ok(()),
            };
        }
        bands
            .into_par_iter()
            .zip(bounds.par_windows(2))
            .try_for_each(|(mut band, r)| with_scratch(|s| f(&mut band, r[0]..r[1], s)))
    }

    /// One group's output `y` ([mg, rows * per_row]) by the direct kernel on
    /// `threads` threads: cut into bands of rows, or, where the group's
    /// weights outgrow a core's cache share ([`CHANNEL_SPLIT_WEIGHTS`]), into
    /// shares of whole channel blocks, each thread padding the whole image
    /// and streaming only its share of the weights (with bands of rows, both
    /// threads streamed all 9.4 MB of a 512-channel layer's weights and ran
    /// slower than one).
    fn direct_image(
        &self,
        d: &DirectPlan,
        (xs, w): (&[f32], &[f32]),
        bias: Option<&[f32]>,
        y: &mut [f32],
        ((rows, per_row), pooled): ((usize, usize), bool),
        threads: usize,
    ) -> Result<(), OpError> {
        let mg = self.mg;
        let ysz = rows * per_row;
        if threads < 2 || w.len() <= CHANNEL_SPLIT_WEIGHTS || ysz == 0 {
            return self.for_each_band(y, (rows, per_row), threads, |band, r, s| {
                self.direct_band(d, (xs, w), bias, band, r, pooled, s)
            });
        }
        let cb = d.shape.channels;
        let share = mg.div_ceil(cb).div_ceil(threads) * cb;
        y.par_chunks_mut(share * ysz)
            .zip(w.par_chunks(share * self.kdim))
            .enumerate()
            .try_for_each(|(p, (yc, wc))| {
                let mc = yc.len() / ysz;
                let bc = bias.map(|b| &b[p * share..p * share + mc]);
                let mut whole = sgemm::split_columns(yc, mc, ysz, &[0, ysz])?;
                match whole.first_mut() {
                    Some(band) => with_scratch(|s| {
                        self.direct_band(d, (xs, wc), bc, band, 0..rows, pooled, s)
                    }),
                    None => Ok(()),
                }
            })
    }

    /// Output rows `rows` of one group (pooled rows with `pooled`), which
    /// `band` covers in every output channel, by the direct kernel: each block
    /// of rows is computed into `scratch` and written out from there with the
    /// bias and activation (or pooled first, as in [`Self::pooled_band`]),
    /// dropping the padded columns.
    #[allow(clippy::too_many_arguments)]
    fn direct_band(
        &self,
        d: &DirectPlan,
        (xs, w): (&[f32], &[f32]),
        bias: Option<&[f32]>,
        band: &mut sgemm::ColumnsMut<'_, f32>,
        rows: std::ops::Range<usize>,
        pooled: bool,
        scratch: &mut Scratch,
    ) -> Result<(), OpError> {
        // `w` holds the weights of the channels `band` covers: all of the
        // group's, or a share of them (see `direct_image`).
        let mc = w.len() / self.kdim;
        let ow = self.win.out[1];
        let (wp, pw) = (d.wp, ow / 2);
        let relu = self.act == Activation::Relu;
        let (conv_rows, out_w) = if pooled { (2, pw) } else { (1, ow) };
        for block in d.row_blocks(rows.clone(), conv_rows) {
            let first = conv_rows * block.start;
            let count = conv_rows * block.len();
            // Output row r reads padded rows r..=r + reach.
            let padded_rows = first..first + count + d.reach_h;
            d.pad_rows(
                xs,
                self.cg,
                (self.spatial[0], self.spatial[1]),
                padded_rows.clone(),
                &mut scratch.padded,
            );
            let plane = padded_rows.len() * wp;
            let a = d.operands(&scratch.padded, plane, (self.cg, mc), w);
            let (len, ld) = d.scratch_len(count);
            let dst = grown(&mut scratch.conv, len);
            simd::direct_conv(d.shape, &a, count, dst, ld)?;
            // The kernel's output rows are `out_row` long, of which the
            // first `ow` are outputs.
            let width = count * d.out_row;
            let at = (block.start - rows.start) * out_w;
            let n = block.len() * out_w;
            for co in 0..mc {
                let src = &dst[co * ld..co * ld + width];
                let out = &mut band.row_mut(co)[at..at + n];
                // -0.0 leaves every value as it is, signed zeros included.
                let bv = bias.map_or(-0.0, |b| b[co]);
                if pooled {
                    simd::pool_2x2_bias_relu(src, out, d.out_row, pw, bv, relu);
                } else {
                    for (o, s) in out.chunks_exact_mut(ow).zip(src.chunks(d.out_row)) {
                        for (o, &v) in o.iter_mut().zip(&s[..ow]) {
                            *o = v + bv;
                        }
                    }
                    if relu {
                        self.act.apply_in_place(out);
                    }
                }
            }
        }
        Ok(())
    }

    /// The pooled rows `prows` of one group, which `band` covers in every output
    /// channel, with the fused 2x2 max pool: each block of an even number of
    /// output rows is computed into a scratch buffer and pooled from there while
    /// in cache, so the full-size output is never stored. Odd last rows and
    /// columns are never computed (MaxPool's floor mode drops them).
    fn pooled_band(
        &self,
        xs: &[f32],
        wg: MatRef<'_, f32>,
        bias: Option<&[f32]>,
        band: &mut sgemm::ColumnsMut<'_, f32>,
        prows: std::ops::Range<usize>,
        scratch: &mut Scratch,
    ) -> Result<(), OpError> {
        let (kdim, mg) = (self.kdim, self.mg);
        let (ow, pw) = (self.win.out[1], self.win.out[1] / 2);
        let dims = (self.spatial[0], self.spatial[1]);
        let relu = self.act == Activation::Relu;
        // Each pooled row reads two output rows of `ow` columns.
        for block in self.row_blocks(prows.clone(), 2 * ow) {
            let (pr0, pr1) = (block.start, block.end);
            let ncols = 2 * (pr1 - pr0) * ow;
            let cols = grown(&mut scratch.cols, kdim * ncols);
            im2col_2d(xs, self.cg, dims, self.win, 2 * pr0..2 * pr1, cols);
            let yb = grown(&mut scratch.conv, mg * ncols);
            let cols = MatRef::rows(cols, ncols);
            sgemm::gemm(mg, ncols, kdim, yb, ncols, false, wg, cols, 1)?;
            // One pass: pool, then the bias and activation on the pooled value
            // only (both commute with the maximum), written into the output.
            let (at, len) = ((pr0 - prows.start) * pw, (pr1 - pr0) * pw);
            for (r, src) in yb.chunks_exact(ncols).enumerate() {
                let dst = &mut band.row_mut(r)[at..at + len];
                // -0.0 leaves every value as it is (see pool_2x2_bias_relu).
                let bv = bias.map_or(-0.0, |b| b[r]);
                simd::pool_2x2_bias_relu(src, dst, ow, pw, bv, relu);
            }
        }
        Ok(())
    }

    /// `rows` in blocks whose im2col (`width` columns per row, `kdim` rows)
    /// holds at most [`IM2COL_BLOCK`] values, so that it stays in cache.
    fn row_blocks(
        &self,
        rows: std::ops::Range<usize>,
        width: usize,
    ) -> impl Iterator<Item = std::ops::Range<usize>> {
        let n = rows.len();
        let blocks = (self.kdim * n * width)
            .div_ceil(IM2COL_BLOCK)
            .clamp(1, n.max(1));
        let size = n.div_ceil(blocks).max(1);
        let end = rows.end;
        rows.step_by(size).map(move |r0| r0..(r0 + size).min(end))
    }

    /// Applies the fused activation to columns `cols` of every row of `y`.
    fn activate(&self, y: &mut [f32], cols: std::ops::Range<usize>) {
        if self.act == Activation::None || self.osz == 0 {
            return;
        }
        for row in y.chunks_exact_mut(self.osz) {
            self.act.apply_in_place(&mut row[cols.clone()]);
        }
    }
}

fn conv_integer(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, w) = (i.tensor(0)?, i.tensor(1)?);
    let zx = match i.opt(2)? {
        Some(t) if t.len() == 1 => scalar_i64(t)? as f64,
        Some(t) => {
            return Err(OpError::new(format!(
                "ConvInteger x_zero_point must be a scalar, has shape {:?}",
                t.shape()
            )))
        }
        None => 0.0,
    };
    let ws = w.candle().to_dtype(DType::F32)?;
    // w_zero_point is a scalar or one value per output channel (W's first dim).
    let ws = match i.opt(3)? {
        None => ws,
        Some(t) if t.len() == 1 => (ws - scalar_i64(t)? as f64)?,
        Some(t) if w.rank() > 0 && t.rank() == 1 && t.len() == w.shape()[0] => {
            let mut zshape = vec![1usize; w.rank()];
            zshape[0] = t.len();
            let z = t.candle().to_dtype(DType::F32)?.reshape(zshape)?;
            ws.broadcast_sub(&z)?
        }
        Some(t) => {
            return Err(OpError::new(format!(
                "ConvInteger w_zero_point {:?} fits neither a scalar nor W's {:?} output channels",
                t.shape(),
                w.shape()
            )))
        }
    };
    let xs = Tensor::from_candle(ElemType::F32, (x.candle().to_dtype(DType::F32)? - zx)?)?;
    let ws = Tensor::from_candle(ElemType::F32, ws)?;
    // Padding must read as the zero point, i.e. 0 after the shift: im2col pads with 0.
    let y = conv_f32(n, &xs, &ws, None, Activation::None, false)?;
    one(Tensor::from_candle(ElemType::I32, y.round()?)?)
}

fn conv_transpose(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, w) = (i.tensor(0)?, i.tensor(1)?);
    if x.rank() < 3 || w.rank() != x.rank() {
        return Err(OpError::new(
            "ConvTranspose needs X and W of equal rank >= 3",
        ));
    }
    let g = group_count(n)?;
    let (nb, c) = (x.shape()[0], x.shape()[1]);
    let spatial = x.shape()[2..].to_vec();
    let k = spatial.len();
    if w.shape()[0] != c || c % g != 0 {
        return Err(OpError::new("W's first dim must equal X's channels"));
    }
    let cg = c / g;
    let mg = w.shape()[1];
    let m = mg * g;
    let kernel: Vec<usize> = w.shape()[2..].to_vec();
    let get = |name: &str, default: usize, len: usize| -> Result<Vec<usize>, OpError> {
        match n.attrs.ints(name)? {
            Some(v) if v.len() == len => Ok(v.iter().map(|&x| x.max(0) as usize).collect()),
            Some(v) if !v.is_empty() => Err(OpError::new(format!("{name} has the wrong length"))),
            _ => Ok(vec![default; len]),
        }
    };
    let strides = get("strides", 1, k)?;
    let dil = get("dilations", 1, k)?;
    let out_pad = get("output_padding", 0, k)?;
    let auto_pad = n.attrs.string("auto_pad", "NOTSET")?;
    let out_shape_attr = n.attrs.ints("output_shape")?.map(<[i64]>::to_vec);
    let mut pb = vec![0usize; k];
    let mut out = vec![0usize; k];
    let explicit = get("pads", 0, 2 * k)?;
    for d in 0..k {
        let eff = (kernel[d] - 1) * dil[d] + 1;
        let full = strides[d] * (spatial[d].max(1) - 1) + out_pad[d] + eff;
        let target = match &out_shape_attr {
            Some(os) => Some(
                *os.get(os.len().wrapping_sub(k) + d)
                    .ok_or_else(|| OpError::new("output_shape too short"))?
                    as usize,
            ),
            None if auto_pad.starts_with("SAME") => Some(spatial[d] * strides[d]),
            None => None,
        };
        match target {
            Some(t) => {
                let total = full.saturating_sub(t);
                pb[d] = if auto_pad == "SAME_UPPER" {
                    total / 2
                } else {
                    total - total / 2
                };
                out[d] = t;
            }
            None => {
                pb[d] = explicit[d];
                out[d] = full
                    .checked_sub(explicit[d] + explicit[d + k])
                    .ok_or_else(|| OpError::new("pads larger than the output"))?;
            }
        }
    }
    let ksz = numel(&kernel);
    let isz = numel(&spatial);
    let osz = numel(&out);
    let xv = x.candle().to_dtype(DType::F32)?.reshape((nb, g, cg, isz))?;
    let wv = w
        .candle()
        .to_dtype(DType::F32)?
        .reshape((g, cg, mg * ksz))?;
    let mut y = vec![0f32; nb * m * osz];
    let out_strides = crate::ops::common::strides(&out);
    for b in 0..nb {
        for gi in 0..g {
            // [mg*ksz, isz] = W_g^T [mg*ksz, cg] x X_g [cg, isz]
            let cols = wv
                .get(gi)?
                .t()?
                .contiguous()?
                .matmul(&xv.get(b)?.get(gi)?.contiguous()?)?;
            let cols = cols.flatten_all()?.to_vec1::<f32>()?;
            let mut in_pos = 0;
            for_each_index(&spatial, |iidx| {
                let mut kk = 0;
                for_each_index(&kernel, |kidx| {
                    let mut off = 0usize;
                    let mut inside = true;
                    for d in 0..k {
                        let p = (iidx[d] * strides[d] + kidx[d] * dil[d]) as i64 - pb[d] as i64;
                        if p < 0 || p as usize >= out[d] {
                            inside = false;
                            break;
                        }
                        off += p as usize * out_strides[d];
                    }
                    if inside {
                        for mi in 0..mg {
                            let o = (b * m + gi * mg + mi) * osz + off;
                            y[o] += cols[(mi * ksz + kk) * isz + in_pos];
                        }
                    }
                    kk += 1;
                });
                in_pos += 1;
            });
        }
    }
    let mut shape = vec![nb, m];
    shape.extend(&out);
    let mut yt = candle_core::Tensor::from_vec(y, &*shape, &Device::Cpu)?;
    if let Some(bias) = i.opt(2)? {
        let mut bshape = vec![1, m];
        bshape.extend(std::iter::repeat_n(1, k));
        yt = yt.broadcast_add(&bias.candle().to_dtype(DType::F32)?.reshape(bshape)?)?;
    }
    one(like(x, yt)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attrs::Attrs;
    use crate::value::Value;

    fn conv_integer_of(ts: Vec<Tensor>, pads: Option<Vec<i64>>) -> OpResult {
        let mut attrs = Attrs::default();
        if let Some(p) = pads {
            attrs.set("pads", crate::ops::Attr::Ints(p));
        }
        let info = NodeInfo {
            attrs,
            opset: 10,
            outputs: 1,
        };
        let vals: Vec<Value> = ts.into_iter().map(Value::Tensor).collect();
        conv_integer(
            &info,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
    }

    fn u8s(shape: &[usize], v: Vec<i64>) -> Tensor {
        Tensor::from_i64_as(ElemType::U8, shape, v).unwrap()
    }

    #[test]
    fn conv_integer_applies_a_weight_zero_point_per_output_channel() {
        let x = u8s(&[1, 1, 1, 1], vec![3]);
        let w = u8s(&[2, 1, 1, 1], vec![1, 5]);
        let out =
            conv_integer_of(vec![x, w, u8s(&[], vec![1]), u8s(&[2], vec![0, 1])], None).unwrap();
        let t = out[0].as_tensor().unwrap();
        assert_eq!(t.elem_type(), ElemType::I32);
        assert_eq!(t.to_i64_vec().unwrap(), vec![2, 8]);
    }

    #[test]
    fn conv_integer_padding_reads_the_input_zero_point() {
        // Every padded tap equals x_zero_point, so it adds nothing.
        let x = u8s(&[1, 1, 1, 1], vec![4]);
        let w = u8s(&[1, 1, 2, 2], vec![1, 1, 1, 1]);
        let out = conv_integer_of(vec![x, w, u8s(&[], vec![1])], Some(vec![1, 1, 0, 0])).unwrap();
        assert_eq!(out[0].as_tensor().unwrap().to_i64_vec().unwrap(), vec![3]);
    }

    #[test]
    fn conv_integer_rejects_a_weight_zero_point_of_the_wrong_length() {
        let x = u8s(&[1, 1, 1, 1], vec![3]);
        let w = u8s(&[2, 1, 1, 1], vec![1, 5]);
        let zw = u8s(&[3], vec![0, 0, 0]);
        assert!(conv_integer_of(vec![x, w, u8s(&[], vec![0]), zw], None).is_err());
    }

    #[test]
    fn conv_with_default_attributes_is_a_valid_correlation() {
        let x = Tensor::from_f32(&[1, 1, 3, 3], (1..=9).map(|v| v as f32).collect()).unwrap();
        let w = Tensor::from_f32(&[1, 1, 2, 2], vec![1., 0., 0., 1.]).unwrap();
        let vals = [Value::Tensor(x), Value::Tensor(w)];
        let info = NodeInfo {
            attrs: Attrs::default(),
            opset: 11,
            outputs: 1,
        };
        let out = conv(
            &info,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
        .unwrap();
        let t = out[0].as_tensor().unwrap();
        assert_eq!(t.shape(), &[1, 1, 2, 2]);
        assert_eq!(t.to_f32_vec().unwrap(), vec![6., 8., 12., 14.]);
    }

    #[test]
    fn empty_channels_or_planes_give_an_answer_not_a_panic() {
        // (x shape, w shape, pads): no input channels, an empty plane padded
        // to a non-empty output, an empty plane.
        for (xs, ws, pads) in [
            (vec![1, 0, 8, 8], vec![16, 0, 3, 3], vec![1, 1, 1, 1]),
            (vec![1, 4, 0, 5], vec![16, 4, 1, 1], vec![1, 1, 1, 1]),
            (vec![1, 4, 0, 5], vec![16, 4, 3, 3], vec![1, 1, 1, 1]),
        ] {
            let x = Tensor::from_f32(&xs, vec![0.5; xs.iter().product()]).unwrap();
            let w = Tensor::from_f32(&ws, vec![0.25; ws.iter().product()]).unwrap();
            let vals = [Value::Tensor(x), Value::Tensor(w)];
            let mut attrs = Attrs::default();
            attrs.set("pads", crate::ops::Attr::Ints(pads));
            let info = NodeInfo {
                attrs,
                opset: 11,
                outputs: 1,
            };
            let inputs = Inputs {
                values: vals.iter().map(Some).collect(),
            };
            let out = conv(&info, &inputs).unwrap();
            let t = out[0].as_tensor().unwrap();
            // No input contributes: every output is zero.
            assert!(t.to_f32_vec().unwrap().iter().all(|&v| v == 0.0), "{xs:?}");
        }
    }

    /// Direct convolution by the definition, in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        xs: &[usize],
        w: &[f32],
        ws: &[usize],
        b: Option<&[f32]>,
        g: usize,
        win: &Window,
        relu: bool,
    ) -> Vec<f32> {
        let (nb, c) = (xs[0], xs[1]);
        let (m, cg) = (ws[0], ws[1]);
        let mg = m / g;
        let sp = &xs[2..];
        let k = sp.len();
        let mut out = Vec::new();
        for bi in 0..nb {
            for mi in 0..m {
                let gi = mi / mg;
                for_each_index(&win.out, |o| {
                    let mut acc = b.map_or(0.0, |b| f64::from(b[mi]));
                    for ci in 0..cg {
                        for_each_index(&win.kernel, |kk| {
                            let mut xoff = (bi * c + gi * cg + ci) as i64;
                            let mut woff = (mi * cg + ci) as i64;
                            for d in 0..k {
                                let p = (o[d] * win.strides[d] + kk[d] * win.dilations[d]) as i64
                                    - win.pad_begin[d] as i64;
                                if p < 0 || p >= sp[d] as i64 {
                                    return;
                                }
                                xoff = xoff * sp[d] as i64 + p;
                                woff = woff * win.kernel[d] as i64 + kk[d] as i64;
                            }
                            acc += f64::from(x[xoff as usize]) * f64::from(w[woff as usize]);
                        });
                    }
                    out.push(if relu && acc < 0.0 { 0.0 } else { acc as f32 });
                });
            }
        }
        out
    }

    #[test]
    fn conv_matches_the_direct_definition_for_every_geometry() {
        let mut seed = 11u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        // (x shape, m, group, kernel, strides, pads, dilations, bias, relu)
        type Case = (
            Vec<usize>,
            usize,
            usize,
            Vec<usize>,
            Vec<i64>,
            Vec<i64>,
            Vec<i64>,
            bool,
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                vec![1, 3, 9, 9],
                4,
                1,
                vec![3, 3],
                vec![1, 1],
                vec![1, 1, 1, 1],
                vec![1, 1],
                true,
                true,
            ),
            (
                vec![3, 4, 8, 7],
                6,
                2,
                vec![3, 3],
                vec![1, 1],
                vec![1, 1, 1, 1],
                vec![1, 1],
                true,
                false,
            ),
            (
                vec![2, 2, 9, 11],
                3,
                1,
                vec![3, 2],
                vec![2, 3],
                vec![0, 1, 2, 0],
                vec![1, 1],
                false,
                true,
            ),
            (
                vec![2, 4, 10, 10],
                4,
                4,
                vec![3, 3],
                vec![1, 2],
                vec![2, 1, 0, 2],
                vec![2, 1],
                true,
                false,
            ),
            (
                vec![2, 5, 6, 5],
                3,
                1,
                vec![1, 1],
                vec![1, 1],
                vec![0, 0, 0, 0],
                vec![1, 1],
                true,
                true,
            ),
            (
                vec![1, 2, 6, 6],
                2,
                1,
                vec![1, 1],
                vec![2, 2],
                vec![1, 1, 1, 1],
                vec![1, 1],
                false,
                false,
            ),
            (
                vec![2, 3, 11],
                4,
                1,
                vec![3],
                vec![2],
                vec![1, 2],
                vec![2],
                true,
                true,
            ),
            (
                vec![2, 2, 5, 4, 6],
                4,
                2,
                vec![2, 3, 2],
                vec![1, 2, 1],
                vec![1, 0, 1, 0, 1, 1],
                vec![1, 1, 2],
                true,
                false,
            ),
            // Same-width output with dilation and one-sided padding (the
            // contiguous im2col path).
            (
                vec![1, 3, 7, 8],
                2,
                1,
                vec![3, 3],
                vec![1, 1],
                vec![2, 0, 2, 4],
                vec![2, 2],
                true,
                false,
            ),
            // Large enough for several im2col blocks, and for bands of output
            // rows on several threads.
            (
                vec![1, 16, 40, 40],
                16,
                1,
                vec![3, 3],
                vec![1, 1],
                vec![1, 1, 1, 1],
                vec![1, 1],
                true,
                true,
            ),
            (
                vec![1, 32, 63, 50],
                32,
                2,
                vec![3, 3],
                vec![2, 1],
                vec![1, 0, 2, 1],
                vec![1, 1],
                true,
                true,
            ),
            // The direct kernel (see `the_direct_kernel_takes_...` below):
            // groups with a partial channel block, dilated rows, lopsided
            // pads, partial tiles, no bias; and a 5x5 kernel over several
            // row blocks and bands.
            (
                vec![2, 6, 13, 21],
                22,
                2,
                vec![3, 3],
                vec![1, 1],
                vec![2, 1, 0, 3],
                vec![2, 1],
                false,
                true,
            ),
            (
                vec![1, 8, 90, 70],
                12,
                1,
                vec![5, 5],
                vec![1, 1],
                vec![2, 2, 2, 2],
                vec![1, 1],
                true,
                false,
            ),
            // Depthwise (one input channel per group; the AVX-512 kernel
            // where the CPU has it): a vector and a partial one per row,
            // two outputs per group with lopsided pads and dilated rows over
            // a batch of 2, a 5x5 kernel over exactly one vector, and 1x1.
            (
                vec![1, 4, 9, 21],
                4,
                4,
                vec![3, 3],
                vec![1, 1],
                vec![1, 1, 1, 1],
                vec![1, 1],
                true,
                true,
            ),
            (
                vec![2, 3, 7, 37],
                6,
                3,
                vec![3, 3],
                vec![1, 1],
                vec![0, 2, 1, 0],
                vec![2, 1],
                false,
                false,
            ),
            (
                vec![1, 5, 12, 16],
                5,
                5,
                vec![5, 5],
                vec![1, 1],
                vec![2, 2, 2, 2],
                vec![1, 1],
                true,
                false,
            ),
            (
                vec![1, 3, 4, 5],
                3,
                3,
                vec![1, 1],
                vec![1, 1],
                vec![0, 0, 0, 0],
                vec![1, 1],
                true,
                true,
            ),
            // One input channel, one group, five outputs: threads share the
            // group's output channels, each padding the plane once.
            (
                vec![1, 1, 10, 20],
                5,
                1,
                vec![3, 3],
                vec![1, 1],
                vec![1, 1, 1, 1],
                vec![1, 1],
                true,
                true,
            ),
            // Depthwise at column stride 2 (each tap's inputs picked out of
            // two vectors): 3x3 stride 2 with a partial last vector, a
            // dilated kernel at strides (1, 2) over a batch, and 5x5 at (3, 2).
            (
                vec![1, 4, 15, 37],
                4,
                4,
                vec![3, 3],
                vec![2, 2],
                vec![1, 1, 1, 1],
                vec![1, 1],
                true,
                true,
            ),
            (
                vec![2, 3, 10, 33],
                6,
                3,
                vec![3, 3],
                vec![1, 2],
                vec![0, 1, 1, 0],
                vec![1, 2],
                false,
                false,
            ),
            (
                vec![1, 2, 9, 70],
                2,
                2,
                vec![5, 5],
                vec![3, 2],
                vec![2, 2, 2, 2],
                vec![1, 1],
                true,
                false,
            ),
            // Weights past CHANNEL_SPLIT_WEIGHTS: threads share the output
            // channels instead of the rows.
            (
                vec![1, 256, 6, 6],
                512,
                1,
                vec![3, 3],
                vec![1, 1],
                vec![1, 1, 1, 1],
                vec![1, 1],
                true,
                true,
            ),
        ];
        for (xs, m, g, kernel, strides, pads, dil, with_bias, relu) in cases {
            let cg = xs[1] / g;
            let mut ws = vec![m, cg];
            ws.extend(&kernel);
            let xv: Vec<f32> = (0..xs.iter().product::<usize>()).map(|_| rnd()).collect();
            let wv: Vec<f32> = (0..ws.iter().product::<usize>()).map(|_| rnd()).collect();
            let bv: Vec<f32> = (0..m).map(|_| rnd()).collect();
            let mut attrs = Attrs::default();
            attrs.set("group", crate::ops::Attr::Int(g as i64));
            attrs.set("strides", crate::ops::Attr::Ints(strides));
            attrs.set("pads", crate::ops::Attr::Ints(pads));
            attrs.set("dilations", crate::ops::Attr::Ints(dil));
            if relu {
                attrs.set(
                    crate::ops::FUSED_ACTIVATION,
                    crate::ops::Attr::String("Relu".to_owned()),
                );
            }
            let info = NodeInfo {
                attrs,
                opset: 11,
                outputs: 1,
            };
            let win = Window::new(&info, &xs[2..], kernel.clone(), false).unwrap();
            let want = reference(
                &xv,
                &xs,
                &wv,
                &ws,
                with_bias.then_some(&bv[..]),
                g,
                &win,
                relu,
            );
            let mut vals = vec![
                Value::Tensor(Tensor::from_f32(&xs, xv).unwrap()),
                Value::Tensor(Tensor::from_f32(&ws, wv).unwrap()),
            ];
            if with_bias {
                vals.push(Value::Tensor(Tensor::from_f32(&[m], bv).unwrap()));
            }
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let inputs = Inputs {
                    values: vals.iter().map(Some).collect(),
                };
                let out = pool.install(|| conv(&info, &inputs)).unwrap();
                let t = out[0].as_tensor().unwrap();
                let mut shape = vec![xs[0], m];
                shape.extend(&win.out);
                assert_eq!(t.shape(), &shape[..], "{xs:?} {kernel:?}");
                let got = t.to_f32_vec().unwrap();
                assert_eq!(got.len(), want.len());
                for (i, (p, q)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (p - q).abs() <= 1e-4 * (1.0 + q.abs()),
                        "{xs:?} {kernel:?}, {threads} threads, at {i}: {p} vs {q}"
                    );
                }
            }
        }
    }

    /// The depthwise kernel's fused Relu keeps NaN and -0.0 as the Relu
    /// kernel does (one input channel: the depthwise path on AVX-512 CPUs).
    #[test]
    fn a_depthwise_relu_keeps_nan_and_negative_zero() {
        let mut attrs = Attrs::default();
        attrs.set(
            crate::ops::FUSED_ACTIVATION,
            crate::ops::Attr::String("Relu".to_owned()),
        );
        let info = NodeInfo {
            attrs,
            opset: 11,
            outputs: 1,
        };
        let vals = [
            Value::Tensor(
                Tensor::from_f32(&[1, 1, 1, 4], vec![f32::NAN, -1.0, 2.0, -0.0]).unwrap(),
            ),
            Value::Tensor(Tensor::from_f32(&[1, 1, 1, 1], vec![1.0]).unwrap()),
        ];
        let inputs = Inputs {
            values: vals.iter().map(Some).collect(),
        };
        let out = conv(&info, &inputs).unwrap();
        let got = out[0].as_tensor().unwrap().to_f32_vec().unwrap();
        assert!(got[0].is_nan(), "{got:?}");
        assert_eq!(got[1..3], [0.0, 2.0]);
        assert!(got[3] == 0.0 && got[3].is_sign_negative(), "{got:?}");
    }

    #[test]
    fn the_direct_kernel_takes_the_common_cnn_geometries_and_leaves_the_rest() {
        if simd::direct_shape().is_none() {
            eprintln!("no AVX2+FMA on this CPU: the direct conv kernel is not used here");
            return;
        }
        let takes = |spatial: [usize; 2], k: usize, stride: i64, pads: [i64; 4], dil: [i64; 2]| {
            move |(cg, mg): (usize, usize)| {
                let mut attrs = Attrs::default();
                attrs.set("strides", crate::ops::Attr::Ints(vec![stride; 2]));
                attrs.set("pads", crate::ops::Attr::Ints(pads.to_vec()));
                attrs.set("dilations", crate::ops::Attr::Ints(dil.to_vec()));
                let info = NodeInfo {
                    attrs,
                    opset: 11,
                    outputs: 1,
                };
                let win = Window::new(&info, &spatial, vec![k, k], false).unwrap();
                DirectPlan::new(&win, &spatial, k == 1, (cg, mg)).is_some()
            }
        };
        let three = |side: [usize; 2]| takes(side, 3, 1, [1; 4], [1, 1]);
        assert!(three([64, 64])((3, 16)), "the first layer of a small CNN");
        assert!(three([16, 16])((32, 64)), "its third layer");
        assert!(
            takes([13, 21], 3, 1, [2, 1, 0, 3], [2, 1])((3, 11)),
            "dilated, lopsided"
        );
        assert!(takes([90, 70], 5, 1, [2; 4], [1, 1])((8, 12)), "5x5");
        assert!(!takes([32, 32], 3, 2, [1; 4], [1, 1])((16, 16)), "stride 2");
        assert!(!takes([32, 32], 1, 1, [0; 4], [1, 1])((16, 16)), "1x1");
        assert!(three([7, 7])((64, 64)), "7x7: 64 positions computed for 49");
        assert!(
            !three([5, 5])((64, 64)),
            "5x5: 48 positions computed for 25"
        );
        assert!(three([14, 14])((512, 512)), "512 channels");
        assert!(
            !three([14, 14])((1024, 1024)),
            "sums deeper than measured go to the gemm crate"
        );
        assert!(
            !takes([40, 6], 5, 1, [2; 4], [1, 1])((4, 16)),
            "narrow rows, wide kernel"
        );
        assert!(
            !three([32, 32])((16, 2)),
            "2 output channels of a block of 8"
        );
    }
}
