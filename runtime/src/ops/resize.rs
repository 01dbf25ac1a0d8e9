//! `Resize` (opsets 10 to 19: nearest, linear and cubic modes, every coordinate
//! transformation mode, `axes`, `keep_aspect_ratio_policy`, `exclude_outside`,
//! extrapolation) and the deprecated `Upsample`.
//!
//! Interpolation is separable: each resized axis gets a table of (input index,
//! weight) taps per output index, applied one axis at a time on host f64 values,
//! which matches the ONNX reference's per-axis recursion. `antialias` (opset 18)
//! widens the linear and cubic filters when downscaling; nearest ignores it.

use crate::ops::common::{axis_in, bool_tensor, from_f64, full, ints, like, numel};
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "Resize" => resize,
        "Upsample" => upsample,
        _ => return None,
    };
    Some(k)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Nearest,
    Linear,
    Cubic,
}

/// Settings shared by all axes.
struct Settings<'a> {
    mode: Mode,
    coord: &'a str,
    nearest: &'a str,
    cubic_a: f64,
    exclude_outside: bool,
    /// Stretch the linear and cubic filters by `1 / scale` when downscaling.
    antialias: bool,
}

/// Taps for one output index: (input index, weight); `None` when the source
/// coordinate falls outside the crop (tf_crop_and_resize).
type Taps = Option<Vec<(usize, f64)>>;

fn taps_for_axis(
    s: &Settings<'_>,
    input: usize,
    output: usize,
    scale: f64,
    roi: (f64, f64),
) -> Vec<Taps> {
    // The reference uses the unrounded output length `scale * input`.
    let (i_f, o_f) = (input as f64, scale * input as f64);
    (0..output)
        .map(|x| {
            let xf = x as f64;
            let orig = match s.coord {
                "asymmetric" => xf / scale,
                "align_corners" => {
                    if output == 1 {
                        0.0
                    } else {
                        xf * (i_f - 1.0) / (o_f - 1.0)
                    }
                }
                "pytorch_half_pixel" => {
                    if output > 1 {
                        (xf + 0.5) / scale - 0.5
                    } else {
                        0.0
                    }
                }
                "tf_crop_and_resize" => {
                    if output > 1 {
                        roi.0 * (i_f - 1.0) + xf * (roi.1 - roi.0) * (i_f - 1.0) / (o_f - 1.0)
                    } else {
                        0.5 * (roi.0 + roi.1) * (i_f - 1.0)
                    }
                }
                "half_pixel_symmetric" => {
                    let adjustment = output as f64 / o_f;
                    let center = i_f / 2.0;
                    let offset = center * (1.0 - adjustment);
                    offset + (xf + 0.5) / scale - 0.5
                }
                _ => (xf + 0.5) / scale - 0.5,
            };
            if s.coord == "tf_crop_and_resize" && (orig < 0.0 || orig > i_f - 1.0) {
                return None;
            }
            let clamp = |v: i64| v.clamp(0, input as i64 - 1) as usize;
            Some(match s.mode {
                Mode::Nearest => {
                    let fl = orig.floor();
                    let frac = orig - fl;
                    let v = match s.nearest {
                        "floor" => fl,
                        "ceil" => orig.ceil(),
                        "round_prefer_ceil" => {
                            if frac == 0.5 {
                                fl + 1.0
                            } else {
                                orig.round()
                            }
                        }
                        _ => {
                            if frac == 0.5 {
                                fl
                            } else {
                                orig.round()
                            }
                        }
                    };
                    vec![(clamp(v as i64), 1.0)]
                }
                Mode::Linear if s.antialias => {
                    let mut t = stretched(orig, scale, 1.0, |d| (1.0 - d.abs()).max(0.0));
                    finish(&mut t, input, s.exclude_outside)
                }
                Mode::Linear => {
                    let x0 = orig.floor();
                    let r = orig - x0;
                    let x0 = x0 as i64;
                    let mut t = vec![(x0, 1.0 - r), (x0 + 1, r)];
                    finish(&mut t, input, s.exclude_outside)
                }
                Mode::Cubic if s.antialias => {
                    let mut t = stretched(orig, scale, 2.0, |d| cubic(s.cubic_a, d));
                    finish(&mut t, input, s.exclude_outside)
                }
                Mode::Cubic => {
                    let a = s.cubic_a;
                    let x0 = orig.floor();
                    let r = orig - x0;
                    let x0 = x0 as i64;
                    let w = |d: f64| cubic(a, d);
                    let mut t = vec![
                        (x0 - 1, w(r + 1.0)),
                        (x0, w(r)),
                        (x0 + 1, w(1.0 - r)),
                        (x0 + 2, w(2.0 - r)),
                    ];
                    finish(&mut t, input, s.exclude_outside)
                }
            })
        })
        .collect()
}

/// The cubic convolution kernel with coefficient `a` at distance `d`.
fn cubic(a: f64, d: f64) -> f64 {
    let d = d.abs();
    if d <= 1.0 {
        ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
    } else if d < 2.0 {
        ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
    } else {
        0.0
    }
}

/// Antialiased taps around source coordinate `orig`: a filter of half-width
/// `support` stretched by `1 / scale` when downscaling (scale < 1), its weights
/// normalised to sum to one. At scale >= 1 these are the plain taps.
fn stretched(orig: f64, scale: f64, support: f64, kernel: impl Fn(f64) -> f64) -> Vec<(i64, f64)> {
    let s = scale.min(1.0);
    let x0 = orig.floor();
    let r = orig - x0;
    let x0 = x0 as i64;
    // Offsets from x0 whose stretched distance can fall inside the support.
    let first = (-support / s).floor() as i64 + 1;
    let last = 1 - first;
    let mut t: Vec<(i64, f64)> = (first..=last)
        .map(|k| (x0 + k, kernel((k as f64 - r) * s)))
        .collect();
    let sum: f64 = t.iter().map(|(_, w)| w).sum();
    if sum != 0.0 {
        for (_, w) in &mut t {
            *w /= sum;
        }
    }
    t
}

/// Clamps tap indices to the input (edge padding), or with `exclude` drops the
/// taps outside and renormalises.
fn finish(t: &mut [(i64, f64)], input: usize, exclude: bool) -> Vec<(usize, f64)> {
    let n = input as i64;
    if exclude {
        let kept: Vec<(usize, f64)> = t
            .iter()
            .filter(|(i, _)| (0..n).contains(i))
            .map(|&(i, w)| (i as usize, w))
            .collect();
        let sum: f64 = kept.iter().map(|(_, w)| w).sum();
        return kept
            .into_iter()
            .map(|(i, w)| (i, if sum != 0.0 { w / sum } else { w }))
            .collect();
    }
    t.iter()
        .map(|&(i, w)| (i.clamp(0, n - 1) as usize, w))
        .collect()
}

fn resize(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let r = x.rank();
    let axes: Vec<usize> = match n.attrs.ints("axes")? {
        Some(a) => a.iter().map(|&a| axis_in(a, r)).collect::<Result<_, _>>()?,
        None => (0..r).collect(),
    };
    let (roi_t, scales_t, sizes_t) = if n.opset < 11 {
        (None, i.opt(1)?, None)
    } else {
        (i.opt(1)?, i.opt(2)?, i.opt(3)?)
    };
    let in_shape = x.shape().to_vec();
    let mut scales = vec![1.0f64; r];
    let mut out_shape = in_shape.clone();
    if let Some(st) = scales_t.filter(|t| !t.is_empty()) {
        let v = st.to_f64_vec()?;
        if v.len() != axes.len() {
            return Err(OpError::new("scales do not match the axes"));
        }
        for (k, &a) in axes.iter().enumerate() {
            scales[a] = v[k];
            out_shape[a] = (in_shape[a] as f64 * v[k]) as usize;
        }
    } else if let Some(sz) = sizes_t.filter(|t| !t.is_empty()) {
        let v = ints(sz)?;
        if v.len() != axes.len() {
            return Err(OpError::new("sizes do not match the axes"));
        }
        let policy = n.attrs.string("keep_aspect_ratio_policy", "stretch")?;
        let ratios: Vec<f64> = axes
            .iter()
            .zip(&v)
            .map(|(&a, &s)| s as f64 / in_shape[a] as f64)
            .collect();
        let common = match policy {
            "not_larger" => Some(ratios.iter().copied().fold(f64::INFINITY, f64::min)),
            "not_smaller" => Some(ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
            _ => None,
        };
        for (k, &a) in axes.iter().enumerate() {
            match common {
                Some(c) => {
                    scales[a] = c;
                    out_shape[a] = (c * in_shape[a] as f64).round_ties_even() as usize;
                }
                None => {
                    scales[a] = ratios[k];
                    out_shape[a] = v[k].max(0) as usize;
                }
            }
        }
    } else {
        return Err(OpError::new("Resize needs scales or sizes"));
    }
    let mode = match n.attrs.string("mode", "nearest")? {
        "linear" | "bilinear" => Mode::Linear,
        "cubic" | "bicubic" => Mode::Cubic,
        _ => Mode::Nearest,
    };
    let default_coord = if n.opset < 11 {
        "asymmetric"
    } else {
        "half_pixel"
    };
    let settings = Settings {
        mode,
        coord: n
            .attrs
            .string("coordinate_transformation_mode", default_coord)?,
        nearest: n.attrs.string(
            "nearest_mode",
            if n.opset < 11 {
                "floor"
            } else {
                "round_prefer_floor"
            },
        )?,
        cubic_a: f64::from(n.attrs.float("cubic_coeff_a", -0.75)?),
        exclude_outside: n.attrs.int("exclude_outside", 0)? != 0,
        antialias: n.attrs.int("antialias", 0)? != 0,
    };
    let roi: Vec<f64> = match roi_t {
        Some(t) if !t.is_empty() => t.to_f64_vec()?,
        _ => Vec::new(),
    };
    let roi_of = |a: usize| -> (f64, f64) {
        if roi.len() == 2 * axes.len() {
            let k = axes.iter().position(|&b| b == a).unwrap_or(0);
            (roi[k], roi[k + axes.len()])
        } else if roi.len() == 2 * r {
            (roi[a], roi[a + r])
        } else {
            (0.0, 1.0)
        }
    };
    let extrapolation = f64::from(n.attrs.float("extrapolation_value", 0.0)?);
    one(interpolate(
        x,
        &settings,
        &scales,
        &out_shape,
        roi_of,
        extrapolation,
    )?)
}

fn interpolate(
    x: &crate::tensor::Tensor,
    s: &Settings<'_>,
    scales: &[f64],
    out_shape: &[usize],
    roi_of: impl Fn(usize) -> (f64, f64),
    extrapolation: f64,
) -> Result<crate::tensor::Tensor, OpError> {
    let r = x.rank();
    let mut shape = x.shape().to_vec();
    let mut data = x.to_f64_vec()?;
    let mut outside_axes: Vec<(usize, Vec<bool>)> = Vec::new();
    for a in 0..r {
        if out_shape[a] == shape[a] && scales[a] == 1.0 && s.coord != "tf_crop_and_resize" {
            continue;
        }
        if shape[a] == 0 {
            return Err(OpError::new("cannot resize an empty axis"));
        }
        let taps = taps_for_axis(s, shape[a], out_shape[a], scales[a], roi_of(a));
        let outer = numel(&shape[..a]);
        let inner = numel(&shape[a + 1..]);
        let (id, od) = (shape[a], out_shape[a]);
        let mut next = vec![0f64; outer * od * inner];
        for o in 0..outer {
            for (j, t) in taps.iter().enumerate() {
                let Some(t) = t else { continue };
                for k in 0..inner {
                    let mut acc = 0.0;
                    for &(src, w) in t {
                        acc += w * data[(o * id + src) * inner + k];
                    }
                    next[(o * od + j) * inner + k] = acc;
                }
            }
        }
        outside_axes.push((a, taps.iter().map(Option::is_none).collect()));
        shape[a] = od;
        data = next;
    }
    let elem = x.elem_type();
    if !elem.is_float() {
        data = data.into_iter().map(f64::round).collect();
    }
    let y = from_f64(elem, &shape, data)?;
    if outside_axes.iter().all(|(_, o)| !o.iter().any(|&b| b)) {
        return Ok(y);
    }
    let strides = crate::ops::common::strides(&shape);
    let mut mask = vec![false; numel(&shape)];
    for (k, m) in mask.iter_mut().enumerate() {
        *m = outside_axes
            .iter()
            .any(|(a, o)| o[(k / strides[*a]) % shape[*a]]);
    }
    let m = bool_tensor(&shape, mask)?;
    let fill = full(elem, &shape, extrapolation)?;
    like(&y, m.candle().where_cond(fill.candle(), y.candle())?)
}

fn upsample(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let scales: Vec<f64> = match i.opt(1)? {
        Some(t) => t.to_f64_vec()?,
        None => n
            .attrs
            .floats("scales")?
            .ok_or_else(|| OpError::new("Upsample needs scales"))?
            .iter()
            .map(|&v| f64::from(v))
            .collect(),
    };
    if scales.len() != x.rank() {
        return Err(OpError::new("scales do not match the rank"));
    }
    let out: Vec<usize> = x
        .shape()
        .iter()
        .zip(&scales)
        .map(|(&d, &s)| (d as f64 * s) as usize)
        .collect();
    let mode = match n.attrs.string("mode", "nearest")? {
        "linear" | "bilinear" => Mode::Linear,
        _ => Mode::Nearest,
    };
    let s = Settings {
        mode,
        coord: "asymmetric",
        nearest: "floor",
        cubic_a: -0.75,
        exclude_outside: false,
        antialias: false,
    };
    one(interpolate(x, &s, &scales, &out, |_| (0.0, 1.0), 0.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Attr, Attrs};
    use crate::tensor::Tensor;
    use crate::value::Value;

    fn run(attrs: &[(&str, Attr)], x: Tensor, scales: Vec<f32>) -> OpResult {
        let mut a = Attrs::default();
        for (name, v) in attrs {
            a.set(name, v.clone());
        }
        let info = NodeInfo {
            attrs: a,
            opset: 19,
            outputs: 1,
        };
        let n = scales.len();
        let vals = [
            Value::Tensor(x),
            Value::Tensor(Tensor::from_f32(&[n], scales).unwrap()),
        ];
        resize(
            &info,
            &Inputs {
                values: vec![Some(&vals[0]), None, Some(&vals[1])],
            },
        )
    }

    fn ramp() -> Tensor {
        Tensor::from_f32(&[1, 1, 1, 4], vec![0., 1., 2., 3.]).unwrap()
    }

    #[test]
    fn antialias_widens_the_linear_filter_when_downscaling() {
        let attrs = [
            ("mode", Attr::String("linear".into())),
            ("antialias", Attr::Int(1)),
        ];
        let y = run(&attrs, ramp(), vec![1., 1., 1., 0.5]).unwrap();
        // Four taps weighted 1:3:3:1 around 0.5 and 2.5, edges clamped.
        assert_eq!(
            y[0].as_tensor().unwrap().to_f32_vec().unwrap(),
            vec![0.625, 2.375]
        );
    }

    #[test]
    fn linear_without_antialias_reads_two_taps() {
        let attrs = [("mode", Attr::String("linear".into()))];
        let y = run(&attrs, ramp(), vec![1., 1., 1., 0.5]).unwrap();
        assert_eq!(
            y[0].as_tensor().unwrap().to_f32_vec().unwrap(),
            vec![0.5, 2.5]
        );
    }

    #[test]
    fn antialias_taps_at_upscale_are_the_plain_taps() {
        let t = stretched(0.25, 2.0, 1.0, |d| (1.0 - d.abs()).max(0.0));
        assert_eq!(t, vec![(0, 0.75), (1, 0.25)]);
        let t = stretched(0.5, 1.0, 2.0, |d| cubic(-0.75, d));
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].0, -1);
    }

    #[test]
    fn resize_without_scales_or_sizes_is_rejected() {
        let info = NodeInfo {
            attrs: Attrs::default(),
            opset: 19,
            outputs: 1,
        };
        let x = Value::Tensor(ramp());
        let err = resize(
            &info,
            &Inputs {
                values: vec![Some(&x)],
            },
        )
        .unwrap_err();
        assert!(err.message.contains("scales or sizes"), "{err}");
    }
}
