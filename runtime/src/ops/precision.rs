//! Rounding host values to an ONNX float type, for kernels that compute in f64 on
//! the host but must round where a reference computing in the tensor's own type
//! rounds (after each elementwise step, once after each accumulation).
//!
//! Nothing here is an operator.

use half::{bf16, f16};

use crate::ops::OpError;
use crate::tensor::ElemType;

/// `x` rounded (to nearest, ties to even) to the precision of `elem`; doubles and
/// non-float types pass through.
///
/// Half types round through f32, as a reference that computes each step in f32
/// and stores the half result does.
pub(crate) fn round_to(elem: ElemType, x: f64) -> f64 {
    match elem {
        ElemType::F32 => f64::from(x as f32),
        ElemType::F16 => f16::from_f32(x as f32).to_f64(),
        ElemType::BF16 => bf16::from_f32(x as f32).to_f64(),
        _ => x,
    }
}

/// Sums `values` in `elem`: bfloat16 adds one value at a time, rounding after
/// each addition; the other types add in wide precision and round once.
pub(crate) fn sum_in(elem: ElemType, values: impl Iterator<Item = f64>) -> f64 {
    if elem == ElemType::BF16 {
        values.fold(0.0, |acc, v| round_to(elem, acc + v))
    } else {
        round_to(elem, values.sum())
    }
}

/// Softmax of `row` in place, computed in `elem` step by step (subtract the max,
/// exponentiate, sum, divide), rounding after each; an all `-inf` row becomes zeros.
pub(crate) fn softmax_in(elem: ElemType, row: &mut [f64]) {
    let r = |v: f64| round_to(elem, v);
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        row.iter_mut().for_each(|x| *x = 0.0);
        return;
    }
    for x in row.iter_mut() {
        *x = r(r(*x - m).exp());
    }
    let mut sum = sum_in(elem, row.iter().copied());
    if sum == 0.0 {
        sum = 1.0;
    }
    for x in row.iter_mut() {
        *x = r(*x / sum);
    }
}

/// The float type an ONNX `*_precision` attribute code names.
pub(crate) fn float_type(code: i64, what: &str) -> Result<ElemType, OpError> {
    match i32::try_from(code).ok().and_then(ElemType::from_onnx) {
        Some(t) if t.is_float() => Ok(t),
        _ => Err(OpError::new(format!(
            "{what} {code} is not a float element type"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_breaks_ties_to_even() {
        // 1 + 2^-8 lies halfway between two bf16 values; the even one is 1.
        assert_eq!(round_to(ElemType::BF16, 1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_to(ElemType::F64, 0.1), 0.1);
        assert_eq!(round_to(ElemType::F32, 0.1), f64::from(0.1f32));
    }

    #[test]
    fn bf16_sums_round_after_each_addition() {
        let many = std::iter::repeat_n(1.0, 300);
        assert_eq!(sum_in(ElemType::BF16, many.clone()), 256.0);
        assert_eq!(sum_in(ElemType::F32, many), 300.0);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_masked_rows_are_zero() {
        let mut row = [0.0, f64::NEG_INFINITY, 0.0];
        softmax_in(ElemType::F64, &mut row);
        assert_eq!(row, [0.5, 0.0, 0.5]);
        let mut masked = [f64::NEG_INFINITY; 2];
        softmax_in(ElemType::BF16, &mut masked);
        assert_eq!(masked, [0.0, 0.0]);
    }

    #[test]
    fn precision_codes_must_name_float_types() {
        assert_eq!(float_type(1, "p").unwrap(), ElemType::F32);
        assert!(float_type(7, "p").is_err());
        assert!(float_type(1 << 40, "p").is_err());
    }
}
