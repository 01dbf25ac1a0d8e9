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
    let y = exp_in_range(x.clamp(-87.5, 88.0));
    if nan {
        f32::NAN
    } else if underflow {
        0.0
    } else {
        y
    }
}

/// e^x for x in [-87.5, 88] (NaN gives NaN); the core of [`exp1`], for callers
/// that keep their argument in range and need no special cases.
#[inline(always)]
fn exp_in_range(x: f32) -> f32 {
    // Adding ROUND leaves round(x / ln 2) in the low mantissa bits of `shifted`,
    // so n's integer value is read from the bits rather than with an `as i32`
    // cast, which SSE2 cannot vectorise (it saturates).
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    // n lies in [-126, 127], so the biased exponent n + 127 is in [1, 254]; the
    // bits of `shifted` are those of ROUND plus n (two's complement, wrapping).
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    let scale = f32::from_bits(biased << 23);
    y * scale
}

#[inline(always)]
fn sigmoid1(x: f32) -> f32 {
    // Below -88 this divides by about 1.6e38 (a result under 1e-38, as the exact
    // value); above 87.5 e^-x is about 1e-38 and the result rounds to 1; NaN
    // stays NaN through the polynomial.
    1.0 / (1.0 + exp_in_range((-x).clamp(-87.5, 88.0)))
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
    // 2|x| is in [0, 88] (a NaN x takes the other branch).
    let e = exp_in_range(2.0 * ax.min(44.0));
    let large = (1.0 - 2.0 / (e + 1.0)).copysign(x);
    // NaN keeps the polynomial's NaN.
    if ax < 0.625 || x.is_nan() {
        small
    } else {
        large
    }
}

/// The LSTM cell with the default activations (sigmoid, tanh, tanh) for one batch
/// item (or a range of its hidden units): `gates` holds the pre-activations of the
/// gates i, o, f and c (ONNX order), as long as `c` each, and is overwritten with
/// the activations; `c` (the cell state) is updated in place and `h` overwritten:
/// `c = σ(f)·c + σ(i)·tanh(g)`, `h = σ(o)·tanh(c)`. Whole-slice passes, each a
/// simple loop the compiler vectorises (faster than one fused loop, which runs
/// out of SSE registers).
#[inline(always)]
pub(crate) fn lstm_cell(gates: [&mut [f32]; 4], c: &mut [f32], h: &mut [f32]) {
    let n = c.len();
    let [i, o, f, g] = gates.map(|v| &mut v[..n]);
    let h = &mut h[..n];
    sigmoid_in_place(i);
    sigmoid_in_place(o);
    sigmoid_in_place(f);
    tanh_in_place(g);
    for ((((c, h), &i), &f), &g) in c.iter_mut().zip(h.iter_mut()).zip(&*i).zip(&*f).zip(&*g) {
        *c = f * *c + i * g;
        *h = *c;
    }
    tanh_in_place(h);
    for (h, &o) in h.iter_mut().zip(&*o) {
        *h *= o;
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

/// The dot product of `a` and `b` (as long as the shorter), in eight f32 lanes
/// added up at the end.
pub(crate) fn sum_by_pairs(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0f32; 8];
    let full = n - n % 8;
    for (ca, cb) in a[..full].chunks_exact(8).zip(b[..full].chunks_exact(8)) {
        for ((l, &x), &y) in lanes.iter_mut().zip(ca).zip(cb) {
            *l += x * y;
        }
    }
    let tail: f32 = a[full..].iter().zip(&b[full..]).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// `v[k] = e^{v[k]}` for every element (0 below -87.5; inputs above 88 saturate
/// at about 1.6e38).
#[inline(always)]
pub(crate) fn exp_in_place(v: &mut [f32]) {
    for x in v {
        *x = exp1(*x);
    }
}

/// `v[k] = 1 / (1 + e^{-v[k]})` for every element.
#[inline(always)]
pub(crate) fn sigmoid_in_place(v: &mut [f32]) {
    for x in v {
        *x = sigmoid1(*x);
    }
}

/// `v[k] = tanh(v[k])` for every element.
#[inline(always)]
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
