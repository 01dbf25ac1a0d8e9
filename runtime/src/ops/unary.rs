//! Element-wise unary operators: activations (Relu, Sigmoid, Gelu, Elu, ...), math
//! functions (Exp, Log, trigonometry, rounding), `Clip`, `Not`, `IsNaN`/`IsInf`.
//!
//! Hot activations run on candle's kernels for float32; the rest map host copies
//! through f64 and back to the input's element type.

use candle_core::DType;

use crate::ops::common::{bool_tensor, like, map_f64, map_i64, need_float, scalar_f64};
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpResult};
use crate::tensor::Tensor;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "Relu" => relu,
        "Sigmoid" => sigmoid,
        "Tanh" => tanh,
        "Exp" => exp,
        "Log" => |_, i| float_map(i, f64::ln),
        "Sqrt" => |_, i| float_map(i, f64::sqrt),
        "Abs" => abs,
        "Neg" => neg,
        "Sign" => sign,
        "Reciprocal" => |_, i| float_map(i, |x| 1.0 / x),
        "Floor" => |_, i| float_map(i, f64::floor),
        "Ceil" => |_, i| float_map(i, f64::ceil),
        "Round" => |_, i| float_map(i, f64::round_ties_even),
        "Erf" => |_, i| float_map(i, erf),
        "Sin" => |_, i| float_map(i, f64::sin),
        "Cos" => |_, i| float_map(i, f64::cos),
        "Tan" => |_, i| float_map(i, f64::tan),
        "Asin" => |_, i| float_map(i, f64::asin),
        "Acos" => |_, i| float_map(i, f64::acos),
        "Atan" => |_, i| float_map(i, f64::atan),
        "Sinh" => |_, i| float_map(i, f64::sinh),
        "Cosh" => |_, i| float_map(i, f64::cosh),
        "Asinh" => |_, i| float_map(i, f64::asinh),
        "Acosh" => |_, i| float_map(i, f64::acosh),
        "Atanh" => |_, i| float_map(i, f64::atanh),
        "Softplus" => |_, i| float_map(i, |x| if x > 30.0 { x } else { x.exp().ln_1p() }),
        "Softsign" => |_, i| float_map(i, |x| x / (1.0 + x.abs())),
        "Mish" => |_, i| float_map(i, |x| x * x.exp().ln_1p().tanh()),
        "Elu" => elu,
        "Celu" => celu,
        "Selu" => selu,
        "LeakyRelu" => leaky_relu,
        "ThresholdedRelu" => thresholded_relu,
        "HardSigmoid" => hard_sigmoid,
        "HardSwish" => |_, i| float_map(i, |x| x * (x / 6.0 + 0.5).clamp(0.0, 1.0)),
        "Swish" => swish,
        "Gelu" => gelu,
        "Shrink" => shrink,
        "Clip" => clip,
        "Not" => |_, i| one(map_i64(i.tensor(0)?, |x| i64::from(x == 0))?),
        "BitwiseNot" => |_, i| one(map_i64(i.tensor(0)?, |x| !x)?),
        "IsNaN" => is_nan,
        "IsInf" => is_inf,
        _ => return None,
    };
    Some(k)
}

fn float_map(i: &Inputs<'_>, f: fn(f64) -> f64) -> OpResult {
    let x = i.tensor(0)?;
    need_float(x, "this operator")?;
    one(map_f64(x, f)?)
}

fn f32_or(
    x: &Tensor,
    fast: impl FnOnce(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>,
    slow: fn(f64) -> f64,
) -> OpResult {
    if x.candle().dtype() == DType::F32 {
        return one(like(x, fast(x.candle())?)?);
    }
    need_float(x, "this operator")?;
    one(map_f64(x, slow)?)
}

fn relu(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    if x.elem_type().is_float() {
        return f32_or(x, |c| c.relu(), |v| v.max(0.0));
    }
    one(map_i64(x, |v| v.max(0))?)
}

fn sigmoid(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    f32_or(
        i.tensor(0)?,
        |c| {
            let e = c.neg()?.exp()?;
            (e + 1.0)?.recip()
        },
        |v| 1.0 / (1.0 + (-v).exp()),
    )
}

fn tanh(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    f32_or(i.tensor(0)?, |c| c.tanh(), f64::tanh)
}

fn exp(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    f32_or(i.tensor(0)?, |c| c.exp(), f64::exp)
}

fn abs(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    if x.elem_type().is_float() {
        return one(map_f64(x, f64::abs)?);
    }
    one(map_i64(x, i64::wrapping_abs)?)
}

fn neg(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    if x.elem_type().is_float() {
        return one(map_f64(x, |v| -v)?);
    }
    one(map_i64(x, i64::wrapping_neg)?)
}

fn sign(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    if x.elem_type().is_float() {
        return one(map_f64(x, |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        })?);
    }
    one(map_i64(x, i64::signum)?)
}

fn elu(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let a = f64::from(n.attrs.float("alpha", 1.0)?);
    let x = i.tensor(0)?;
    need_float(x, "Elu")?;
    one(map_f64(
        x,
        |v| if v < 0.0 { a * (v.exp() - 1.0) } else { v },
    )?)
}

fn celu(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let a = f64::from(n.attrs.float("alpha", 1.0)?);
    let x = i.tensor(0)?;
    need_float(x, "Celu")?;
    one(map_f64(x, |v| {
        v.max(0.0) + (a * ((v / a).exp() - 1.0)).min(0.0)
    })?)
}

fn selu(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let a = f64::from(n.attrs.float("alpha", 1.673_263_2)?);
    let g = f64::from(n.attrs.float("gamma", 1.050_701)?);
    let x = i.tensor(0)?;
    need_float(x, "Selu")?;
    one(map_f64(x, |v| {
        if v <= 0.0 {
            g * (a * v.exp() - a)
        } else {
            g * v
        }
    })?)
}

fn leaky_relu(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let a = f64::from(n.attrs.float("alpha", 0.01)?);
    let x = i.tensor(0)?;
    need_float(x, "LeakyRelu")?;
    one(map_f64(x, |v| if v < 0.0 { a * v } else { v })?)
}

fn thresholded_relu(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let a = f64::from(n.attrs.float("alpha", 1.0)?);
    let x = i.tensor(0)?;
    need_float(x, "ThresholdedRelu")?;
    one(map_f64(x, |v| if v > a { v } else { 0.0 })?)
}

fn hard_sigmoid(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let a = f64::from(n.attrs.float("alpha", 0.2)?);
    let b = f64::from(n.attrs.float("beta", 0.5)?);
    let x = i.tensor(0)?;
    need_float(x, "HardSigmoid")?;
    one(map_f64(x, |v| (a * v + b).clamp(0.0, 1.0))?)
}

fn swish(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let a = f64::from(n.attrs.float("alpha", 1.0)?);
    let x = i.tensor(0)?;
    need_float(x, "Swish")?;
    one(map_f64(x, |v| v / (1.0 + (-a * v).exp()))?)
}

fn gelu(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    need_float(x, "Gelu")?;
    match n.attrs.string("approximate", "none")? {
        "tanh" => one(map_f64(x, |v| {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
        })?),
        _ => one(map_f64(x, |v| {
            0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2))
        })?),
    }
}

fn shrink(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let bias = f64::from(n.attrs.float("bias", 0.0)?);
    let lambd = f64::from(n.attrs.float("lambd", 0.5)?);
    let x = i.tensor(0)?;
    let f = move |v: f64| {
        if v < -lambd {
            v + bias
        } else if v > lambd {
            v - bias
        } else {
            0.0
        }
    };
    if x.elem_type().is_float() {
        return one(map_f64(x, f)?);
    }
    let v: Vec<i64> = x.to_f64_vec()?.into_iter().map(|v| f(v) as i64).collect();
    one(Tensor::from_i64_as(x.elem_type(), x.shape(), v)?)
}

fn clip(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    if n.opset < 11 {
        let lo = f64::from(n.attrs.float("min", f32::MIN)?);
        let hi = f64::from(n.attrs.float("max", f32::MAX)?);
        return one(map_f64(x, |v| v.max(lo).min(hi))?);
    }
    if x.elem_type().is_float() {
        let lo = i.opt(1)?.map(scalar_f64).transpose()?;
        let hi = i.opt(2)?.map(scalar_f64).transpose()?;
        return one(map_f64(x, |v| {
            let v = lo.map_or(v, |l| if v < l { l } else { v });
            hi.map_or(v, |h| if v > h { h } else { v })
        })?);
    }
    let lo = i.opt(1)?.map(crate::ops::common::scalar_i64).transpose()?;
    let hi = i.opt(2)?.map(crate::ops::common::scalar_i64).transpose()?;
    one(map_i64(x, |v| {
        let v = lo.map_or(v, |l| v.max(l));
        hi.map_or(v, |h| v.min(h))
    })?)
}

fn is_nan(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let v = x.to_f64_vec()?.into_iter().map(f64::is_nan).collect();
    one(bool_tensor(x.shape(), v)?)
}

fn is_inf(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let neg = n.attrs.int("detect_negative", 1)? != 0;
    let pos = n.attrs.int("detect_positive", 1)? != 0;
    let x = i.tensor(0)?;
    let v = x
        .to_f64_vec()?
        .into_iter()
        .map(|v| v.is_infinite() && ((v > 0.0 && pos) || (v < 0.0 && neg)))
        .collect();
    one(bool_tensor(x.shape(), v)?)
}

/// The error function (Abramowitz-Stegun 7.1.26 is too coarse; this is the
/// W. J. Cody rational approximation via erfc for |x| > 0.5, series below).
pub(crate) fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    let r = if ax < 0.5 {
        // Maclaurin series: erf(x) = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1)).
        let mut sum = 0.0;
        let mut term = ax;
        let x2 = ax * ax;
        for n in 0..30 {
            let t = term / (2 * n + 1) as f64;
            sum += t;
            term *= -x2 / (n + 1) as f64;
            if t.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        1.0 - erfc_cf(ax)
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

/// erfc for x >= 0.5 by Lentz's continued fraction.
fn erfc_cf(x: f64) -> f64 {
    if x > 27.0 {
        return 0.0;
    }
    // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + 2/(x + ...)))))
    let tiny = 1e-300;
    let mut f = x;
    let mut c = x;
    let mut d = 0.0;
    for n in 1..300 {
        let an = n as f64 / 2.0;
        d = x + an * d;
        if d.abs() < tiny {
            d = tiny;
        }
        c = x + an / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.3, 0.328_626_759_459_127_4),
            (1.0, 0.842_700_792_949_714_9),
            (-2.0, -0.995_322_265_018_952_7),
        ] {
            assert!((erf(x) - want).abs() < 1e-12, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn round_breaks_ties_to_even() {
        assert_eq!(2.5f64.round_ties_even(), 2.0);
        assert_eq!((-1.5f64).round_ties_even(), -2.0);
    }
}
