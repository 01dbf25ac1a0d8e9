//! Signal processing: the window generators `HannWindow`, `HammingWindow`,
//! `BlackmanWindow`, `MelWeightMatrix`, and the transforms `DFT` and `STFT`.
//!
//! Everything is computed on the host in f64 and cast to the requested type at the
//! end. The transforms are direct O(n²) sums over a twiddle table, which is exact
//! enough and fast for the frame sizes edge models use; this module has no FFT.
//! Complex values live in a trailing dimension of 2 (real, imaginary), real ones in
//! a trailing dimension of 1, as the operator schemas lay them out.
//! (Unrelated to [`crate::ops::window`], which is convolution geometry.)

use std::f64::consts::PI;

use crate::ops::common::{
    axis_in, checked_numel, from_f64, need_float, numel, scalar_f64, scalar_i64,
};
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::ElemType;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "HannWindow" => |n, i| window(n, i, &[0.5, 0.5]),
        // a0 = 25/46, a1 = 21/46: the "optimal" Hamming coefficients.
        "HammingWindow" => |n, i| window(n, i, &[25.0 / 46.0, 21.0 / 46.0]),
        "BlackmanWindow" => |n, i| window(n, i, &[0.42, 0.5, 0.08]),
        "MelWeightMatrix" => mel_weight_matrix,
        "DFT" => dft,
        "STFT" => stft,
        _ => return None,
    };
    Some(k)
}

/// The element type named by `output_datatype` (default float).
fn output_type(n: &NodeInfo) -> Result<ElemType, OpError> {
    let code = n.attrs.int("output_datatype", 1)?;
    i32::try_from(code)
        .ok()
        .and_then(ElemType::from_onnx)
        .ok_or_else(|| OpError::new(format!("unsupported output_datatype {code}")))
}

/// A non-negative scalar size input.
fn size_input(i: &Inputs<'_>, k: usize, what: &str) -> Result<usize, OpError> {
    let v = scalar_i64(i.tensor(k)?)?;
    let n =
        usize::try_from(v).map_err(|_| OpError::new(format!("{what} must be >= 0, got {v}")))?;
    checked_numel(&[n], what)
}

/// A generalised cosine window: `w[n] = sum_k (-1)^k a_k cos(2 pi k n / N)`, with
/// `N = size` when periodic and `size - 1` when symmetric.
fn window(n: &NodeInfo, i: &Inputs<'_>, coeffs: &[f64]) -> OpResult {
    let size = size_input(i, 0, "size")?;
    let periodic = n.attrs.int("periodic", 1)? != 0;
    let denom = if periodic {
        size
    } else {
        size.saturating_sub(1)
    };
    let v = (0..size)
        .map(|k| {
            // Off-spec: a symmetric window of one sample would divide by zero; it is
            // [1], as numpy's windows give.
            if denom == 0 {
                return 1.0;
            }
            let phase = 2.0 * PI * k as f64 / denom as f64;
            coeffs
                .iter()
                .enumerate()
                .map(|(j, a)| {
                    let sign = if j % 2 == 0 { 1.0 } else { -1.0 };
                    sign * a * (phase * j as f64).cos()
                })
                .sum()
        })
        .collect();
    one(from_f64(output_type(n)?, &[size], v)?)
}

fn hz_to_mel(f: f64) -> f64 {
    2595.0 * (1.0 + f / 700.0).log10()
}

fn mel_to_hz(m: f64) -> f64 {
    700.0 * (10f64.powf(m / 2595.0) - 1.0)
}

/// `[dft_length / 2 + 1, num_mel_bins]` triangles with peak 1. The band edges are
/// `num_mel_bins + 2` points a mel step of `(high - low) / (num_mel_bins + 2)` apart,
/// mapped to spectrogram bins `floor((dft_length + 1) * hz / sample_rate)`.
fn mel_weight_matrix(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let mel_bins = size_input(i, 0, "num_mel_bins")?;
    let dft_length = size_input(i, 1, "dft_length")?;
    let sample_rate = scalar_i64(i.tensor(2)?)?;
    let low = scalar_f64(i.tensor(3)?)?;
    let high = scalar_f64(i.tensor(4)?)?;
    if sample_rate <= 0 {
        return Err(OpError::new(format!(
            "sample_rate must be positive, got {sample_rate}"
        )));
    }
    if !(low >= 0.0 && high >= low) {
        return Err(OpError::new(format!(
            "need 0 <= lower_edge_hertz <= upper_edge_hertz, got {low} and {high}"
        )));
    }
    let spectrogram_bins = dft_length / 2 + 1;
    checked_numel(&[spectrogram_bins, mel_bins], "MelWeightMatrix output")?;
    let (low_mel, high_mel) = (hz_to_mel(low), hz_to_mel(high));
    let step = (high_mel - low_mel) / (mel_bins as f64 + 2.0);
    let edges: Vec<usize> = (0..mel_bins.saturating_add(2))
        .map(|k| {
            let hz = mel_to_hz(low_mel + step * k as f64);
            ((dft_length + 1) as f64 * hz / sample_rate as f64).floor() as usize
        })
        .collect();
    let cells = spectrogram_bins
        .checked_mul(mel_bins)
        .ok_or_else(|| OpError::new("MelWeightMatrix output is too large"))?;
    let mut out = vec![0.0; cells];
    let mut put = |row: usize, col: usize, v: f64| {
        // Edges past the spectrogram (upper edge above Nyquist) have no row.
        if row < spectrogram_bins {
            out[row * mel_bins + col] = v;
        }
    };
    for m in 0..mel_bins {
        let (lo, mid, hi) = (edges[m], edges[m + 1], edges[m + 2]);
        if mid == lo {
            put(mid, m, 1.0);
        } else {
            for j in lo..=mid.min(spectrogram_bins) {
                put(j, m, (j - lo) as f64 / (mid - lo) as f64);
            }
        }
        for j in mid..hi.min(spectrogram_bins) {
            put(j, m, (hi - j) as f64 / (hi - mid) as f64);
        }
    }
    one(from_f64(
        output_type(n)?,
        &[spectrogram_bins, mel_bins],
        out,
    )?)
}

/// One complex sequence transformed: `len` outputs of the DFT of `x` (missing
/// inputs read as zero), inverse with the 1/n scale when `inverse`.
fn transform(x: &[(f64, f64)], n: usize, len: usize, inverse: bool) -> Vec<(f64, f64)> {
    let sign = if inverse { 1.0 } else { -1.0 };
    let twiddle: Vec<(f64, f64)> = (0..n)
        .map(|k| {
            let a = sign * 2.0 * PI * k as f64 / n as f64;
            (a.cos(), a.sin())
        })
        .collect();
    let scale = if inverse { 1.0 / n as f64 } else { 1.0 };
    (0..len)
        .map(|k| {
            let (mut re, mut im) = (0.0, 0.0);
            for (t, &(xr, xi)) in x.iter().take(n).enumerate() {
                let (c, s) = twiddle[(k * t) % n];
                re += xr * c - xi * s;
                im += xr * s + xi * c;
            }
            (re * scale, im * scale)
        })
        .collect()
}

fn dft(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    need_float(x, "DFT")?;
    let inverse = n.attrs.int("inverse", 0)? != 0;
    let onesided = n.attrs.int("onesided", 0)? != 0;
    let shape = x.shape();
    let r = shape.len();
    let parts = shape.last().copied().unwrap_or(0);
    if r < 2 || !(parts == 1 || parts == 2) {
        return Err(OpError::new(format!(
            "DFT input must end in a dimension of 1 (real) or 2 (complex), got {shape:?}"
        )));
    }
    // Opset 20 moved the axis from an attribute (default 1) to an input (default -2).
    let axis = if n.opset >= 20 {
        match i.opt(2)? {
            Some(t) => scalar_i64(t)?,
            None => -2,
        }
    } else {
        n.attrs.int("axis", 1)?
    };
    let axis = axis_in(axis, r)
        .ok()
        .filter(|&a| a < r - 1)
        .ok_or_else(|| OpError::new(format!("DFT axis {axis} out of range for {shape:?}")))?;
    let m = shape[axis];
    let irfft = onesided && inverse;
    if irfft && parts != 2 {
        return Err(OpError::new("an inverse one-sided DFT needs complex input"));
    }
    let len = match i.opt(1)? {
        Some(t) => {
            let v = scalar_i64(t)?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| OpError::new(format!("dft_length must be positive, got {v}")))?
        }
        None if irfft => 2 * m.saturating_sub(1),
        None => m,
    };
    if len == 0 {
        return Err(OpError::new("DFT over an empty axis"));
    }
    checked_numel(&[len], "dft_length")?;
    let out_len = if onesided && !inverse {
        len / 2 + 1
    } else {
        len
    };
    let out_parts = if irfft { 1 } else { 2 };
    let outer = numel(&shape[..axis]);
    let inner = numel(&shape[axis + 1..r - 1]);
    let v = x.to_f64_vec()?;
    let mut out = vec![0.0; outer * out_len * inner * out_parts];
    for o in 0..outer {
        for d in 0..inner {
            let at = |k: usize| ((o * m + k) * inner + d) * parts;
            let read = |k: usize| (v[at(k)], if parts == 2 { v[at(k) + 1] } else { 0.0 });
            let seq: Vec<(f64, f64)> = if irfft {
                // Rebuild the full spectrum from its conjugate-symmetric half.
                (0..len)
                    .map(|k| {
                        let (src, conj) = if k <= len / 2 {
                            (k, false)
                        } else {
                            (len - k, true)
                        };
                        let (re, im) = if src < m { read(src) } else { (0.0, 0.0) };
                        (re, if conj { -im } else { im })
                    })
                    .collect()
            } else {
                (0..m.min(len)).map(read).collect()
            };
            let y = transform(&seq, len, out_len, inverse);
            for (k, (re, im)) in y.into_iter().enumerate() {
                let base = ((o * out_len + k) * inner + d) * out_parts;
                out[base] = re;
                if out_parts == 2 {
                    out[base + 1] = im;
                }
            }
        }
    }
    let mut out_shape = shape.to_vec();
    out_shape[axis] = out_len;
    out_shape[r - 1] = out_parts;
    one(from_f64(x.elem_type(), &out_shape, out)?)
}

fn stft(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    need_float(x, "STFT")?;
    let &[batch, signal_len, parts] = x.shape() else {
        return Err(OpError::new(format!(
            "STFT signal must be [batch, length, 1 or 2], got {:?}",
            x.shape()
        )));
    };
    if !(parts == 1 || parts == 2) {
        return Err(OpError::new(
            "STFT signal must end in a dimension of 1 or 2",
        ));
    }
    let step = size_input(i, 1, "frame_step")?;
    if step == 0 {
        return Err(OpError::new("frame_step must be positive"));
    }
    let window = i.opt(2)?.map(|w| w.to_f64_vec()).transpose()?;
    let frame_len = match (i.opt(3)?, &window) {
        (Some(_), _) => size_input(i, 3, "frame_length")?,
        (None, Some(w)) => w.len(),
        (None, None) => signal_len,
    };
    if let Some(w) = &window {
        if w.len() != frame_len {
            return Err(OpError::new(format!(
                "window has {} values for frame_length {frame_len}",
                w.len()
            )));
        }
    }
    if frame_len == 0 || frame_len > signal_len {
        return Err(OpError::new(format!(
            "frame_length {frame_len} must be in [1, {signal_len}]"
        )));
    }
    let onesided = n.attrs.int("onesided", 1)? != 0;
    if onesided && parts == 2 {
        return Err(OpError::new("a one-sided STFT needs a real signal"));
    }
    let frames = (signal_len - frame_len) / step + 1;
    let bins = if onesided {
        frame_len / 2 + 1
    } else {
        frame_len
    };
    let v = x.to_f64_vec()?;
    let mut out = Vec::with_capacity(batch * frames * bins * 2);
    for b in 0..batch {
        for f in 0..frames {
            let seq: Vec<(f64, f64)> = (0..frame_len)
                .map(|k| {
                    let at = (b * signal_len + f * step + k) * parts;
                    let w = window.as_ref().map_or(1.0, |w| w[k]);
                    let im = if parts == 2 { v[at + 1] } else { 0.0 };
                    (v[at] * w, im * w)
                })
                .collect();
            for (re, im) in transform(&seq, frame_len, bins, false) {
                out.push(re);
                out.push(im);
            }
        }
    }
    one(from_f64(x.elem_type(), &[batch, frames, bins, 2], out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attrs::Attr;
    use crate::tensor::Tensor;
    use crate::value::Value;

    fn info(attrs: &[(&str, Attr)], opset: i64) -> NodeInfo {
        crate::ops::testing::info_with(opset, 1, attrs)
    }

    fn run(k: Kernel, n: &NodeInfo, vals: &[Option<Value>]) -> Result<Tensor, OpError> {
        let out = k(
            n,
            &Inputs {
                values: vals.iter().map(Option::as_ref).collect(),
            },
        )?;
        Ok(out[0].as_tensor().unwrap().clone())
    }

    fn size(v: i64) -> Option<Value> {
        Some(Value::Tensor(Tensor::from_i64(&[], vec![v]).unwrap()))
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
    }

    #[test]
    fn hann_window_is_periodic_by_default() {
        let k = lookup("HannWindow").unwrap();
        let t = run(k, &info(&[], 17), &[size(4)]).unwrap();
        assert_eq!(t.elem_type(), ElemType::F32);
        assert!(close(&t.to_f32_vec().unwrap(), &[0.0, 0.5, 1.0, 0.5]));
    }

    #[test]
    fn symmetric_hamming_window_ends_at_its_first_value() {
        let k = lookup("HammingWindow").unwrap();
        let n = info(&[("periodic", Attr::Int(0))], 17);
        let v = run(k, &n, &[size(5)]).unwrap().to_f32_vec().unwrap();
        assert!((v[0] - 4.0 / 46.0).abs() < 1e-6);
        assert!((v[4] - v[0]).abs() < 1e-6);
        assert!((v[2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn blackman_window_honours_output_datatype() {
        let k = lookup("BlackmanWindow").unwrap();
        let n = info(&[("output_datatype", Attr::Int(11))], 17);
        let t = run(k, &n, &[size(3)]).unwrap();
        assert_eq!(t.elem_type(), ElemType::F64);
        assert_eq!(t.shape(), &[3]);
    }

    #[test]
    fn a_negative_window_size_is_rejected() {
        let k = lookup("HannWindow").unwrap();
        assert!(run(k, &info(&[], 17), &[size(-1)]).is_err());
    }

    #[test]
    fn dft_of_a_real_ramp_and_its_inverse_round_trip() {
        let x = Tensor::from_f32(&[1, 4, 1], vec![0., 1., 2., 3.]).unwrap();
        let y = run(dft, &info(&[], 17), &[Some(Value::Tensor(x))]).unwrap();
        assert_eq!(y.shape(), &[1, 4, 2]);
        let want = [6., 0., -2., 2., -2., 0., -2., -2.];
        assert!(close(&y.to_f32_vec().unwrap(), &want));
        let n = info(&[("inverse", Attr::Int(1))], 17);
        let back = run(dft, &n, &[Some(Value::Tensor(y))]).unwrap();
        assert!(close(
            &back.to_f32_vec().unwrap(),
            &[0., 0., 1., 0., 2., 0., 3., 0.]
        ));
    }

    #[test]
    fn one_sided_dft_and_irfft_invert_each_other_at_opset_20() {
        let x = Tensor::from_f32(&[4, 1], vec![1., 2., 0., -1.]).unwrap();
        let n = info(&[("onesided", Attr::Int(1))], 20);
        let y = run(dft, &n, &[Some(Value::Tensor(x)), None, size(0)]).unwrap();
        assert_eq!(y.shape(), &[3, 2]);
        let n = info(&[("onesided", Attr::Int(1)), ("inverse", Attr::Int(1))], 20);
        let back = run(dft, &n, &[Some(Value::Tensor(y)), None, size(-2)]).unwrap();
        assert_eq!(back.shape(), &[4, 1]);
        assert!(close(&back.to_f32_vec().unwrap(), &[1., 2., 0., -1.]));
    }

    #[test]
    fn dft_rejects_the_complex_axis() {
        let x = Tensor::from_f32(&[2, 1], vec![1., 2.]).unwrap();
        assert!(run(
            dft,
            &info(&[], 20),
            &[Some(Value::Tensor(x)), None, size(1)]
        )
        .is_err());
    }

    #[test]
    fn stft_frames_a_signal_with_a_rectangular_window() {
        let x = Tensor::from_f32(&[1, 6, 1], vec![1.; 6]).unwrap();
        let y = run(
            stft,
            &info(&[], 17),
            &[Some(Value::Tensor(x)), size(2), None, size(4)],
        )
        .unwrap();
        assert_eq!(y.shape(), &[1, 2, 3, 2]);
        let v = y.to_f32_vec().unwrap();
        assert!(close(&v[..6], &[4., 0., 0., 0., 0., 0.]));
    }

    #[test]
    fn stft_rejects_a_window_of_the_wrong_length() {
        let x = Tensor::from_f32(&[1, 6, 1], vec![1.; 6]).unwrap();
        let w = Tensor::from_f32(&[3], vec![1.; 3]).unwrap();
        let vals = [
            Some(Value::Tensor(x)),
            size(2),
            Some(Value::Tensor(w)),
            size(4),
        ];
        assert!(run(stft, &info(&[], 17), &vals).is_err());
    }

    #[test]
    fn mel_weight_matrix_has_one_column_per_band() {
        let f = |v: f32| Some(Value::Tensor(Tensor::from_f32(&[], vec![v]).unwrap()));
        let vals = [size(8), size(16), size(8192), f(0.0), f(4096.0)];
        let t = run(mel_weight_matrix, &info(&[], 17), &vals).unwrap();
        assert_eq!(t.shape(), &[9, 8]);
        let v = t.to_f32_vec().unwrap();
        // The first two bands both peak at bin 0.
        assert_eq!(&v[..3], &[1.0, 1.0, 0.0]);
    }
}
