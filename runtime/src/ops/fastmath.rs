//! Branch-free f32 `exp`, `sigmoid` and `tanh` over slices, and lane-wise sums, written so that the
//! compiler vectorises the loops (no calls into libm per element).
//!
//! Design: the recurrent cells spend most of their time on these three functions
//! at batch 1; libm's scalar `expf`/`tanhf` cannot be vectorised. The
//! approximations are Cephes' (`expf`: range reduction by ln 2 in two parts and a
//! degree-6 polynomial; `tanhf`: an odd polynomial below 0.625, `1 - 2/(e^{2x}+1)`
//! above), accurate to a few f32 ulps (relative error below 1e-6 where the result
//! is a normal number); NaN stays NaN. The unit tests check that bound against
//! f64 over the whole useful range.
//!
//! This module does not handle f64 or half types; callers keep libm for those.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that `n * LN2_HI` is exact for the n that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2^23: adding and subtracting it rounds an f32 to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// e^x: 0 below -87.5 (where e^x is subnormal or 0 anyway), about 1.6e38
/// above 88 (never inf), a normal f32 in between.
#[inline(always)]
fn exp1(x: f32) -> f32 {
    let nan = x.is_nan();
    let underflow = x < -87.5;
    let x = x.clamp(-87.5, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    // n lies in [-126, 127], so the biased exponent is in [1, 254].
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
    if nan {
        f32::NAN
    } else if underflow {
        0.0
    } else {
        y * scale
    }
}

#[inline(always)]
fn sigmoid1(x: f32) -> f32 {
    1.0 / (1.0 + exp1(-x))
}

#[inline(always)]
fn tanh1(x: f32) -> f32 {
    let ax = x.abs();
    // Small |x|: Cephes' odd polynomial, accurate relative to x itself.
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3f32 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328e-1)
            * z
            * x
            + x;
    // Large |x|: 1 - 2 / (e^{2|x|} + 1), with the sign put back.
    let e = exp1(2.0 * ax.min(44.0));
    let large = (1.0 - 2.0 / (e + 1.0)).copysign(x);
    // NaN keeps the polynomial's NaN.
    if ax < 0.625 || x.is_nan() {
        small
    } else {
        large
    }
}

/// The sum of `f(v[k])` over `v`, in eight f32 lanes (which the compiler
/// vectorises), added up at the end.
#[inline(always)]
pub(crate) fn sum_by(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += f(x);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `v[k] = e^{v[k]}` for every element (0 below -87.5; inputs above 88 saturate
/// at about 1.6e38).
pub(crate) fn exp_in_place(v: &mut [f32]) {
    for x in v {
        *x = exp1(*x);
    }
}

/// `v[k] = 1 / (1 + e^{-v[k]})` for every element.
pub(crate) fn sigmoid_in_place(v: &mut [f32]) {
    for x in v {
        *x = sigmoid1(*x);
    }
}

/// `v[k] = tanh(v[k])` for every element.
pub(crate) fn tanh_in_place(v: &mut [f32]) {
    for x in v {
        *x = tanh1(*x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep() -> impl Iterator<Item = f32> {
        (-200_000..=200_000).map(|k| k as f32 * 1e-4).chain([
            -100.0, -90.0, -88.5, 88.5, 100.0, 1e-30, -1e-30, 0.0, -0.0, 3e-5, -3e-5,
        ])
    }

    fn rel(got: f32, want: f64) -> f64 {
        let g = f64::from(got);
        if want == 0.0 {
            g.abs()
        } else {
            ((g - want) / want).abs()
        }
    }

    #[test]
    fn exp_is_within_a_millionth_relative_of_f64_where_normal() {
        let mut v: Vec<f32> = sweep()
            .map(|x| x * 4.3)
            .filter(|x| x.abs() < 87.0)
            .collect();
        let want: Vec<f64> = v.iter().map(|&x| f64::from(x).exp()).collect();
        exp_in_place(&mut v);
        for (k, (&g, &w)) in v.iter().zip(&want).enumerate() {
            assert!(rel(g, w) < 1e-6, "exp #{k}: {g} vs {w}");
        }
    }

    #[test]
    fn tanh_is_within_a_millionth_relative_of_f64_everywhere() {
        let mut v: Vec<f32> = sweep().collect();
        let want: Vec<f64> = v.iter().map(|&x| f64::from(x).tanh()).collect();
        tanh_in_place(&mut v);
        for (k, (&g, &w)) in v.iter().zip(&want).enumerate() {
            assert!(rel(g, w) < 1e-6, "tanh #{k}: {g} vs {w}");
        }
    }

    #[test]
    fn sigmoid_is_within_a_millionth_relative_of_f64_where_normal() {
        let mut v: Vec<f32> = sweep().collect();
        let want: Vec<f64> = v
            .iter()
            .map(|&x| 1.0 / (1.0 + (-f64::from(x)).exp()))
            .collect();
        sigmoid_in_place(&mut v);
        for (k, (&g, &w)) in v.iter().zip(&want).enumerate() {
            if w > 1e-37 {
                assert!(rel(g, w) < 1e-6, "sigmoid #{k}: {g} vs {w}");
            } else {
                assert!(f64::from(g).abs() < 1e-37, "sigmoid #{k}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn nan_stays_nan_and_infinities_saturate() {
        let mut v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        tanh_in_place(&mut v);
        assert!(v[0].is_nan());
        assert_eq!(&v[1..], &[1.0, -1.0]);
        let mut v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        sigmoid_in_place(&mut v);
        assert!(v[0].is_nan());
        assert_eq!(v[1], 1.0);
        assert!(v[2] < 1e-37);
        let mut v = [f32::NEG_INFINITY, -100.0, 0.0];
        exp_in_place(&mut v);
        assert_eq!(v, [0.0, 0.0, 1.0]);
    }
}
