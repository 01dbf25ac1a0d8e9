//! Sampling grids: `AffineGrid` (opset 20, 2-D and 3-D) builds a normalised
//! flow field from batched affine matrices, and `GridSample` (opsets 16 to 22,
//! any number of spatial dims) reads an input at the points of such a field.
//!
//! Both walk host f64 copies; results come back in the input's element type.
//! Grid coordinates are normalised to [-1, 1] and listed innermost spatial axis
//! first (x, then y, then z), the reverse of the tensor's axis order. This module
//! does not fuse the two operators.

use crate::ops::common::{for_each_index, from_f64, ints, need_float, numel, strides};
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "GridSample" => grid_sample,
        "AffineGrid" => affine_grid,
        _ => return None,
    };
    Some(k)
}

/// How a sample point is interpolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Nearest,
    Linear,
    Cubic,
}

/// What a sample reads outside the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Padding {
    Zeros,
    Border,
    Reflection,
}

/// The bicubic kernel's `A`, as in PyTorch and the ONNX schema.
const CUBIC_A: f64 = -0.75;

/// The 1-D cubic convolution weights of the four taps around a fraction `t`.
fn cubic_weights(t: f64) -> [f64; 4] {
    let near = |d: f64| ((CUBIC_A + 2.0) * d - (CUBIC_A + 3.0)) * d * d + 1.0;
    let far = |d: f64| ((CUBIC_A * d - 5.0 * CUBIC_A) * d + 8.0 * CUBIC_A) * d - 4.0 * CUBIC_A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Reflects `x` off the bounds `lo` and `hi` until it lies between them.
fn reflect(x: f64, lo: f64, hi: f64) -> f64 {
    let span = hi - lo;
    if span <= 0.0 {
        return lo;
    }
    if x < lo {
        let d = lo - x;
        let folds = (d / span).floor();
        let rest = d - folds * span;
        if folds % 2.0 == 0.0 {
            lo + rest
        } else {
            hi - rest
        }
    } else if x > hi {
        let d = x - hi;
        let folds = (d / span).floor();
        let rest = d - folds * span;
        if folds % 2.0 == 0.0 {
            hi - rest
        } else {
            lo + rest
        }
    } else {
        x
    }
}

/// One spatial axis of the input: its length and how it is read.
#[derive(Debug, Clone, Copy)]
struct Axis {
    len: usize,
    align_corners: bool,
    padding: Padding,
}

impl Axis {
    /// The pixel coordinate of normalised `g`.
    fn denormalize(&self, g: f64) -> f64 {
        let n = self.len as f64;
        if self.align_corners {
            (g + 1.0) / 2.0 * (n - 1.0)
        } else {
            ((g + 1.0) * n - 1.0) / 2.0
        }
    }

    /// The bounds reflection folds at: pixel centres with `align_corners`, the
    /// outer pixel edges without.
    fn bounds(&self) -> (f64, f64) {
        let n = self.len as f64;
        if self.align_corners {
            (0.0, n - 1.0)
        } else {
            (-0.5, n - 0.5)
        }
    }

    /// A sample coordinate after `border` or `reflection` pulled it inside
    /// [`Axis::bounds`].
    fn pad_coordinate(&self, x: f64) -> f64 {
        match self.padding {
            Padding::Zeros => x,
            // A point outside the bounds moves to the nearest edge pixel centre;
            // one inside stays put and its outer taps clamp. For linear and
            // nearest that is plain clamping; for cubic it is what the
            // reference (and so the conformance data) does.
            Padding::Border => {
                let (lo, hi) = self.bounds();
                if x < lo || x > hi {
                    x.clamp(0.0, self.len as f64 - 1.0)
                } else {
                    x
                }
            }
            Padding::Reflection => {
                let (lo, hi) = self.bounds();
                reflect(x, lo, hi)
            }
        }
    }

    /// The input index a tap at `i` reads, or `None` where it reads zero.
    fn tap(&self, i: i64) -> Option<usize> {
        let n = self.len as i64;
        if (0..n).contains(&i) {
            return Some(i as usize);
        }
        match self.padding {
            Padding::Zeros => None,
            Padding::Border => Some(i.clamp(0, n - 1) as usize),
            Padding::Reflection => {
                let (lo, hi) = self.bounds();
                let r = reflect(i as f64, lo, hi).round() as i64;
                Some(r.clamp(0, n - 1) as usize)
            }
        }
    }

    /// The taps (input index, weight) of pixel coordinate `x` along this axis.
    fn taps(&self, x: f64, mode: Mode) -> Vec<(Option<usize>, f64)> {
        // Taps reach two pixels either side, so pulling a far point in to eight
        // pixels outside changes nothing and keeps the index arithmetic small.
        let n = self.len as f64;
        let x = self.pad_coordinate(x).clamp(-8.0, n + 8.0);
        match mode {
            Mode::Nearest => vec![(self.tap(x.round_ties_even() as i64), 1.0)],
            Mode::Linear => {
                let f = x.floor();
                let t = x - f;
                let f = f as i64;
                vec![(self.tap(f), 1.0 - t), (self.tap(f + 1), t)]
            }
            Mode::Cubic => {
                let f = x.floor();
                let w = cubic_weights(x - f);
                let f = f as i64;
                (0..4)
                    .map(|k| (self.tap(f - 1 + k), w[k as usize]))
                    .collect()
            }
        }
    }
}

fn grid_sample(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, grid) = (i.tensor(0)?, i.tensor(1)?);
    need_float(x, "GridSample")?;
    need_float(grid, "GridSample's grid")?;
    let r = x.rank().checked_sub(2).filter(|&r| r > 0).ok_or_else(|| {
        OpError::new(format!(
            "GridSample needs X of rank >= 3, got {:?}",
            x.shape()
        ))
    })?;
    let (nb, c) = (x.shape()[0], x.shape()[1]);
    let gs = grid.shape();
    if gs.len() != r + 2 || gs[0] != nb || gs[r + 1] != r {
        return Err(OpError::new(format!(
            "GridSample grid {gs:?} does not fit X {:?}: expected [{nb}, out..., {r}]",
            x.shape()
        )));
    }
    // Opset 20 renamed bilinear/bicubic to linear/cubic; accept both spellings.
    let mode = match n.attrs.string("mode", "linear")? {
        "linear" | "bilinear" => Mode::Linear,
        "nearest" => Mode::Nearest,
        "cubic" | "bicubic" => Mode::Cubic,
        other => return Err(OpError::new(format!("unknown GridSample mode {other:?}"))),
    };
    let padding = match n.attrs.string("padding_mode", "zeros")? {
        "zeros" => Padding::Zeros,
        "border" => Padding::Border,
        "reflection" => Padding::Reflection,
        other => {
            return Err(OpError::new(format!(
                "unknown GridSample padding_mode {other:?}"
            )))
        }
    };
    let align_corners = n.attrs.int("align_corners", 0)? != 0;
    let spatial = &x.shape()[2..];
    if spatial.contains(&0) {
        return Err(OpError::new("GridSample cannot sample an empty input"));
    }
    let axes: Vec<Axis> = spatial
        .iter()
        .map(|&len| Axis {
            len,
            align_corners,
            padding,
        })
        .collect();
    let out_spatial = &gs[1..=r];
    let (isz, osz) = (numel(spatial), numel(out_spatial));
    let in_strides = strides(spatial);
    let xv = x.to_f64_vec()?;
    let gv = grid.to_f64_vec()?;
    let mut out = vec![0f64; nb * c * osz];
    let taps_per_axis = match mode {
        Mode::Nearest => 1,
        Mode::Linear => 2,
        Mode::Cubic => 4,
    };
    let corner = vec![taps_per_axis; r];
    for b in 0..nb {
        for o in 0..osz {
            let point = &gv[(b * osz + o) * r..(b * osz + o + 1) * r];
            // point[0] is x, the last spatial axis.
            let taps: Vec<Vec<(Option<usize>, f64)>> = axes
                .iter()
                .enumerate()
                .map(|(d, a)| a.taps(a.denormalize(point[r - 1 - d]), mode))
                .collect();
            // The flat input offsets and weights of every tap combination.
            let mut reads: Vec<(usize, f64)> = Vec::new();
            for_each_index(&corner, |k| {
                let mut off = 0;
                let mut w = 1.0;
                for d in 0..r {
                    match taps[d][k[d]] {
                        (Some(p), wd) => {
                            off += p * in_strides[d];
                            w *= wd;
                        }
                        (None, _) => return,
                    }
                }
                reads.push((off, w));
            });
            for ch in 0..c {
                let plane = &xv[(b * c + ch) * isz..(b * c + ch + 1) * isz];
                out[(b * c + ch) * osz + o] = reads.iter().map(|&(p, w)| w * plane[p]).sum();
            }
        }
    }
    let mut shape = vec![nb, c];
    shape.extend(out_spatial);
    one(from_f64(x.elem_type(), &shape, out)?)
}

/// The normalised coordinates of `len` pixel centres along one axis.
fn base_coordinates(len: usize, align_corners: bool) -> Vec<f64> {
    let n = len as f64;
    (0..len)
        .map(|i| {
            let i = i as f64;
            if align_corners {
                // The schema's function body steps by 2 / (len - 1) from -1,
                // so a single pixel sits at -1 (PyTorch puts it at 0).
                if len > 1 {
                    2.0 * i / (n - 1.0) - 1.0
                } else {
                    -1.0
                }
            } else {
                (2.0 * i + 1.0) / n - 1.0
            }
        })
        .collect()
}

fn affine_grid(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (theta, size) = (i.tensor(0)?, i.tensor(1)?);
    need_float(theta, "AffineGrid")?;
    let size = ints(size)?;
    let r = match size.len() {
        4 => 2,
        5 => 3,
        k => {
            return Err(OpError::new(format!(
                "AffineGrid size has {k} values, expected 4 (N, C, H, W) or 5 (N, C, D, H, W)"
            )))
        }
    };
    if size.iter().any(|&s| s < 0) {
        return Err(OpError::new(format!(
            "AffineGrid size {size:?} is negative"
        )));
    }
    let nb = size[0] as usize;
    if theta.shape() != [nb, r, r + 1] {
        return Err(OpError::new(format!(
            "AffineGrid theta {:?} does not fit size {size:?}: expected [{nb}, {r}, {}]",
            theta.shape(),
            r + 1
        )));
    }
    let align_corners = n.attrs.int("align_corners", 0)? != 0;
    let spatial: Vec<usize> = size[2..].iter().map(|&s| s as usize).collect();
    let total = spatial
        .iter()
        .try_fold(nb * r, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| OpError::new(format!("AffineGrid size {size:?} is too large")))?;
    // Per grid component (x, y, z): the coordinates along its tensor axis.
    let base: Vec<Vec<f64>> = (0..r)
        .map(|j| base_coordinates(spatial[r - 1 - j], align_corners))
        .collect();
    let tv = theta.to_f64_vec()?;
    let mut out = Vec::with_capacity(total);
    for b in 0..nb {
        let m = &tv[b * r * (r + 1)..(b + 1) * r * (r + 1)];
        for_each_index(&spatial, |idx| {
            for row in 0..r {
                let coeffs = &m[row * (r + 1)..(row + 1) * (r + 1)];
                let mut v = coeffs[r];
                for (j, axis) in base.iter().enumerate() {
                    v += coeffs[j] * axis[idx[r - 1 - j]];
                }
                out.push(v);
            }
        });
    }
    let mut shape = vec![nb];
    shape.extend(&spatial);
    shape.push(r);
    one(from_f64(theta.elem_type(), &shape, out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Attr;
    use crate::tensor::Tensor;

    fn call(k: Kernel, attrs: &[(&str, Attr)], ts: Vec<Tensor>) -> Result<Tensor, OpError> {
        crate::ops::testing::call(k, 22, attrs, ts)
    }

    fn s(v: &str) -> Attr {
        Attr::String(v.to_owned())
    }

    fn image() -> Tensor {
        Tensor::from_f32(&[1, 1, 2, 2], vec![1., 2., 3., 4.]).unwrap()
    }

    #[test]
    fn grid_sample_defaults_to_bilinear_without_aligned_corners() {
        // The centre of a 2x2 image averages all four pixels; (-0.5, -0.5) is
        // the top-left pixel centre when corners are not aligned.
        let grid = Tensor::from_f32(&[1, 1, 2, 2], vec![0., 0., -0.5, -0.5]).unwrap();
        let y = call(grid_sample, &[], vec![image(), grid]).unwrap();
        assert_eq!(y.shape(), &[1, 1, 1, 2]);
        assert_eq!(y.to_f32_vec().unwrap(), vec![2.5, 1.0]);
    }

    #[test]
    fn grid_sample_reads_x_as_the_last_axis() {
        // x = 1 (right), y = -1 (top) with aligned corners is pixel (0, 1).
        let grid = Tensor::from_f32(&[1, 1, 1, 2], vec![1., -1.]).unwrap();
        let attrs = [("align_corners", Attr::Int(1)), ("mode", s("nearest"))];
        let y = call(grid_sample, &attrs, vec![image(), grid]).unwrap();
        assert_eq!(y.to_f32_vec().unwrap(), vec![2.0]);
    }

    #[test]
    fn grid_sample_padding_modes_differ_outside_the_input() {
        let grid = || Tensor::from_f32(&[1, 1, 1, 2], vec![-3., -1.]).unwrap();
        let run = |p: &str| {
            call(
                grid_sample,
                &[("padding_mode", s(p)), ("align_corners", Attr::Int(1))],
                vec![image(), grid()],
            )
            .unwrap()
            .to_f32_vec()
            .unwrap()
        };
        assert_eq!(run("zeros"), vec![0.0]);
        assert_eq!(run("border"), vec![1.0]);
        // x = -3 is pixel -1 with aligned corners, reflected to pixel 1.
        assert_eq!(run("reflection"), vec![2.0]);
    }

    #[test]
    fn grid_sample_cubic_reproduces_pixels_at_their_centres() {
        let grid = Tensor::from_f32(&[1, 1, 1, 2], vec![1., 1.]).unwrap();
        let attrs = [("align_corners", Attr::Int(1)), ("mode", s("bicubic"))];
        let y = call(grid_sample, &attrs, vec![image(), grid]).unwrap();
        assert!((y.to_f32_vec().unwrap()[0] - 4.0).abs() < 1e-6);
    }

    #[test]
    fn grid_sample_rejects_a_grid_of_the_wrong_shape() {
        let grid = Tensor::from_f32(&[1, 1, 1, 3], vec![0., 0., 0.]).unwrap();
        let err = call(grid_sample, &[], vec![image(), grid]).unwrap_err();
        assert!(err.message.contains("does not fit"), "{err}");
    }

    #[test]
    fn grid_sample_rejects_an_unknown_mode() {
        let grid = Tensor::from_f32(&[1, 1, 1, 2], vec![0., 0.]).unwrap();
        assert!(call(grid_sample, &[("mode", s("area"))], vec![image(), grid]).is_err());
    }

    #[test]
    fn reflection_folds_back_and_forth() {
        assert_eq!(reflect(-1.0, 0.0, 3.0), 1.0);
        assert_eq!(reflect(4.0, 0.0, 3.0), 2.0);
        assert_eq!(reflect(7.0, 0.0, 3.0), 1.0);
        assert_eq!(reflect(1.5, 0.0, 3.0), 1.5);
    }

    #[test]
    fn affine_grid_identity_gives_pixel_centres() {
        let theta = Tensor::from_f32(&[1, 2, 3], vec![1., 0., 0., 0., 1., 0.]).unwrap();
        let size = Tensor::from_i64(&[4], vec![1, 1, 1, 2]).unwrap();
        let y = call(affine_grid, &[], vec![theta, size]).unwrap();
        assert_eq!(y.shape(), &[1, 1, 2, 2]);
        assert_eq!(y.to_f32_vec().unwrap(), vec![-0.5, 0.0, 0.5, 0.0]);
    }

    #[test]
    fn affine_grid_with_aligned_corners_spans_minus_one_to_one() {
        let theta = Tensor::from_f32(&[1, 2, 3], vec![1., 0., 0., 0., 1., 0.5]).unwrap();
        let size = Tensor::from_i64(&[4], vec![1, 1, 2, 2]).unwrap();
        let y = call(
            affine_grid,
            &[("align_corners", Attr::Int(1))],
            vec![theta, size],
        )
        .unwrap();
        assert_eq!(
            y.to_f32_vec().unwrap(),
            vec![-1.0, -0.5, 1.0, -0.5, -1.0, 1.5, 1.0, 1.5]
        );
    }

    #[test]
    fn affine_grid_rejects_a_size_whose_element_count_overflows() {
        let theta = Tensor::from_f32(&[1, 2, 3], vec![0.; 6]).unwrap();
        let size = Tensor::from_i64(&[4], vec![1, 1, 1 << 40, 1 << 40]).unwrap();
        let err = call(affine_grid, &[], vec![theta, size]).unwrap_err();
        assert!(err.message.contains("too large"), "{err}");
    }

    #[test]
    fn grid_sample_far_outside_reads_zero_without_overflow() {
        let grid = Tensor::from_f32(&[1, 1, 1, 2], vec![1e30, -1e30]).unwrap();
        let y = call(grid_sample, &[("mode", s("cubic"))], vec![image(), grid]).unwrap();
        assert_eq!(y.to_f32_vec().unwrap(), vec![0.0]);
    }

    #[test]
    fn affine_grid_rejects_theta_that_does_not_fit_size() {
        let theta = Tensor::from_f32(&[1, 2, 3], vec![0.; 6]).unwrap();
        let size = Tensor::from_i64(&[5], vec![1, 1, 2, 2, 2]).unwrap();
        assert!(call(affine_grid, &[], vec![theta, size]).is_err());
    }
}
