//! `Softmax`, `LogSoftmax` and `Hardmax`.
//!
//! Before opset 13 these flatten the input to 2-D at `axis` (default 1) and
//! normalise each row; from opset 13 they normalise along the single `axis`
//! (default -1). f32 rows that are contiguous (opset < 13, or the last axis)
//! are computed in f32 with [`fastmath`]'s exp; other rows on the host in f64,
//! max-subtracted; a
//! Softmax of float16/bfloat16 rounds to its type after every step (subtract,
//! exponentiate, each addition of the sum, divide), which is what models
//! exported in half precision were checked against.

use crate::ops::common::{axis_in, from_f64, map_rows_f32, numel};
use crate::ops::precision::softmax_in;
use crate::ops::reduce::rows;
use crate::ops::shape::permuted;
use crate::ops::simd;
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpResult};
use crate::tensor::{ElemType, Tensor};

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "Softmax" => |n, i| softmax(n, i, Kind::Soft),
        "LogSoftmax" => |n, i| softmax(n, i, Kind::Log),
        "Hardmax" => |n, i| softmax(n, i, Kind::Hard),
        _ => return None,
    };
    Some(k)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Soft,
    Log,
    Hard,
}

fn normalise(row: &mut [f64], kind: Kind, elem: ElemType) {
    if kind == Kind::Soft && matches!(elem, ElemType::F16 | ElemType::BF16) {
        softmax_in(elem, row);
        return;
    }
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match kind {
        Kind::Hard => {
            let first = row.iter().position(|&v| v == m);
            for (k, v) in row.iter_mut().enumerate() {
                *v = if Some(k) == first { 1.0 } else { 0.0 };
            }
        }
        Kind::Soft | Kind::Log => {
            let sum: f64 = row.iter().map(|v| (v - m).exp()).sum();
            for v in row.iter_mut() {
                *v = if kind == Kind::Soft {
                    (*v - m).exp() / sum
                } else {
                    *v - m - sum.ln()
                };
            }
        }
    }
}

/// Normalises contiguous f32 rows in f32: the common case (an f32 input and
/// rows that are the innermost axis) without a permute or an f64 round trip.
fn normalise_f32(row: &mut [f32], kind: Kind) {
    let max = |row: &[f32]| row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match kind {
        Kind::Hard => {
            let m = max(row);
            let first = row.iter().position(|&v| v == m);
            for (k, v) in row.iter_mut().enumerate() {
                *v = if Some(k) == first { 1.0 } else { 0.0 };
            }
        }
        Kind::Soft => simd::softmax_row(row),
        Kind::Log => {
            let m = max(row);
            let sum: f64 = row.iter().map(|&v| f64::from((v - m).exp())).sum();
            let shift = m + sum.ln() as f32;
            for v in row.iter_mut() {
                *v -= shift;
            }
        }
    }
}

/// The f32 fast path when each row is `inner` contiguous values of `x`; rows go
/// to separate threads when there are enough of them.
fn rows_f32(x: &Tensor, inner: usize, kind: Kind) -> OpResult {
    let mut v = x.to_f32_vec()?;
    map_rows_f32(&mut v, inner, |row| normalise_f32(row, kind));
    one(Tensor::from_f32(x.shape(), v)?)
}

fn softmax(n: &NodeInfo, i: &Inputs<'_>, kind: Kind) -> OpResult {
    let x = i.tensor(0)?;
    let r = x.rank();
    let is_f32 = x.elem_type() == ElemType::F32;
    if n.opset < 13 {
        let a = axis_in(n.attrs.int("axis", 1)?, r.max(1))?;
        let inner = numel(&x.shape()[a.min(r)..]);
        if is_f32 {
            return rows_f32(x, inner, kind);
        }
        let a = axis_in(n.attrs.int("axis", 1)?, r.max(1))?;
        let inner = numel(&x.shape()[a.min(r)..]);
        let mut v = x.to_f64_vec()?;
        if inner > 0 {
            for row in v.chunks_mut(inner) {
                normalise(row, kind, x.elem_type());
            }
        }
        return one(from_f64(x.elem_type(), x.shape(), v)?);
    }
    let a = axis_in(n.attrs.int("axis", -1)?, r)?;
    if is_f32 && a + 1 == r {
        return rows_f32(x, x.shape()[a], kind);
    }
    let (t, inner, _, _) = rows(x, &[a])?;
    let mut v = t.to_f64_vec()?;
    if inner > 0 {
        for row in v.chunks_mut(inner) {
            normalise(row, kind, x.elem_type());
        }
    }
    let mut perm: Vec<usize> = (0..r).filter(|&d| d != a).collect();
    perm.push(a);
    let mut inv = vec![0; r];
    for (k, &p) in perm.iter().enumerate() {
        inv[p] = k;
    }
    let row_shape: Vec<usize> = perm.iter().map(|&d| x.shape()[d]).collect();
    let y = from_f64(x.elem_type(), &row_shape, v)?;
    one(permuted(&y, &inv)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attrs::Attrs;
    use crate::value::Value;

    fn run(x: &Tensor, opset: i64, axis: Option<i64>, kind: Kind) -> Tensor {
        let mut attrs = Attrs::default();
        if let Some(a) = axis {
            attrs.set("axis", crate::ops::Attr::Int(a));
        }
        let info = NodeInfo {
            attrs,
            opset,
            outputs: 1,
        };
        let vals = [Value::Tensor(x.clone())];
        let out = softmax(
            &info,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
            kind,
        )
        .unwrap();
        out[0].as_tensor().unwrap().clone()
    }

    #[test]
    fn rows_split_over_threads_give_the_one_thread_result() {
        let shape = [4usize, 64, 64];
        let v: Vec<f32> = (0..4 * 64 * 64)
            .map(|k| ((k * 13) % 29) as f32 * 0.3 - 4.0)
            .collect();
        let x = Tensor::from_f32(&shape, v).unwrap();
        for kind in [Kind::Soft, Kind::Log, Kind::Hard] {
            let on = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| run(&x, 13, None, kind).to_f32_vec().unwrap())
            };
            assert_eq!(on(2), on(1));
            assert_eq!(on(3), on(1));
        }
    }

    #[test]
    fn the_f32_row_path_matches_the_f64_path_for_every_axis_and_kind() {
        let shape = [2usize, 3, 5];
        let v: Vec<f32> = (0..30).map(|k| ((k * 7) % 11) as f32 * 0.7 - 3.0).collect();
        let x32 = Tensor::from_f32(&shape, v.clone()).unwrap();
        let x64 = Tensor::from_f64_as(
            ElemType::F64,
            &shape,
            v.iter().map(|&f| f64::from(f)).collect(),
        )
        .unwrap();
        for kind in [Kind::Soft, Kind::Log, Kind::Hard] {
            for (opset, axis) in [
                (13, None),
                (13, Some(1)),
                (13, Some(-1)),
                (11, None),
                (11, Some(2)),
                (11, Some(0)),
            ] {
                let got = run(&x32, opset, axis, kind).to_f64_vec().unwrap();
                let want = run(&x64, opset, axis, kind).to_f64_vec().unwrap();
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 1e-5,
                        "{kind:?} {opset} {axis:?}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn softmax_13_defaults_to_the_last_axis() {
        let x = Tensor::from_f32(&[2, 2], vec![0., 0., 1., 1.]).unwrap();
        let vals = [Value::Tensor(x)];
        let info = NodeInfo {
            attrs: Attrs::default(),
            opset: 13,
            outputs: 1,
        };
        let out = softmax(
            &info,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
            Kind::Soft,
        )
        .unwrap();
        assert_eq!(
            out[0].as_tensor().unwrap().to_f32_vec().unwrap(),
            vec![0.5; 4]
        );
    }
}
