//! Compares an output value with the expected one: kind, element type, shape, then
//! values within [`Tolerance`] for floats and exactly for integers and bools.
//!
//! This module only compares; it does not read files or run models.

use flotilla_runtime::{Tensor, Value};
use serde::Serialize;

/// How close float values must be: `|actual - expected| <= atol + rtol * |expected|`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerance {
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self {
            rtol: 1e-3,
            atol: 1e-4,
        }
    }
}

/// `Ok` when `actual` matches `expected`, else a one-line reason.
pub fn compare(actual: &Value, expected: &Value, tol: Tolerance) -> Result<(), String> {
    match (actual, expected) {
        (Value::Tensor(a), Value::Tensor(e)) => compare_tensors(a, e, tol),
        (Value::Sequence(_, a), Value::Sequence(_, e)) => {
            if a.len() != e.len() {
                return Err(format!(
                    "sequence has {} tensors, expected {}",
                    a.len(),
                    e.len()
                ));
            }
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                compare_tensors(a, e, tol).map_err(|m| format!("sequence item {i}: {m}"))?;
            }
            Ok(())
        }
        (Value::None, Value::None) => Ok(()),
        (a, e) => Err(format!("got a {}, expected a {}", a.kind(), e.kind())),
    }
}

fn compare_tensors(a: &Tensor, e: &Tensor, tol: Tolerance) -> Result<(), String> {
    if a.elem_type() != e.elem_type() {
        return Err(format!(
            "element type {}, expected {}",
            a.elem_type(),
            e.elem_type()
        ));
    }
    if a.shape() != e.shape() {
        return Err(format!("shape {:?}, expected {:?}", a.shape(), e.shape()));
    }
    if e.elem_type().is_float() {
        let av = a.to_f64_vec().map_err(|x| x.to_string())?;
        let ev = e.to_f64_vec().map_err(|x| x.to_string())?;
        let mut bad = 0usize;
        let mut first = None;
        for (i, (&x, &y)) in av.iter().zip(&ev).enumerate() {
            let ok = if y.is_nan() {
                x.is_nan()
            } else if y.is_infinite() {
                x == y
            } else {
                (x - y).abs() <= tol.atol + tol.rtol * y.abs()
            };
            if !ok {
                bad += 1;
                first.get_or_insert((i, x, y));
            }
        }
        if let Some((i, x, y)) = first {
            return Err(format!(
                "{bad} of {} values differ; first at {i}: {x} vs expected {y}",
                ev.len()
            ));
        }
    } else {
        let av = a.to_i64_vec().map_err(|x| x.to_string())?;
        let ev = e.to_i64_vec().map_err(|x| x.to_string())?;
        if let Some(i) = av.iter().zip(&ev).position(|(x, y)| x != y) {
            let bad = av.iter().zip(&ev).filter(|(x, y)| x != y).count();
            return Err(format!(
                "{bad} of {} values differ; first at {i}: {} vs expected {}",
                ev.len(),
                av[i],
                ev[i]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: Vec<f32>) -> Value {
        let n = v.len();
        Value::Tensor(Tensor::from_f32(&[n], v).unwrap())
    }

    #[test]
    fn floats_within_tolerance_match() {
        let tol = Tolerance::default();
        assert!(compare(&f(vec![1.0005, 0.00005]), &f(vec![1.0, 0.0]), tol).is_ok());
        assert!(compare(&f(vec![1.01]), &f(vec![1.0]), tol).is_err());
    }

    #[test]
    fn nan_matches_nan_only() {
        let tol = Tolerance::default();
        assert!(compare(&f(vec![f32::NAN]), &f(vec![f32::NAN]), tol).is_ok());
        assert!(compare(&f(vec![0.0]), &f(vec![f32::NAN]), tol).is_err());
    }

    #[test]
    fn shapes_must_agree_exactly() {
        let a = Value::Tensor(Tensor::from_f32(&[1, 2], vec![1.0, 2.0]).unwrap());
        assert!(compare(&a, &f(vec![1.0, 2.0]), Tolerance::default()).is_err());
    }

    #[test]
    fn integers_compare_exactly() {
        let a = Value::Tensor(Tensor::from_i64(&[1], vec![3]).unwrap());
        let e = Value::Tensor(Tensor::from_i64(&[1], vec![4]).unwrap());
        assert!(compare(&a, &e, Tolerance::default()).is_err());
    }
}
