//! Reductions: the `Reduce*` family (axes as attribute or input, `keepdims`,
//! `noop_with_empty_axes`), `ArgMax`/`ArgMin`, `CumSum`, `TopK`.
//!
//! The reduced axes are permuted to the end with candle, then each row is reduced
//! on the host: in f64 for floats, in i64 for integers (so int64 sums stay exact).

use crate::ops::common::{axis_in, from_f64, from_i64, i64_tensor, ints, like, numel, scalar_i64};
use crate::ops::shape::permuted;
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::Tensor;
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "ReduceSum" => |n, i| reduce(n, i, Red::Sum, 13),
        "ReduceMean" => |n, i| reduce(n, i, Red::Mean, 18),
        "ReduceMax" => |n, i| reduce(n, i, Red::Max, 18),
        "ReduceMin" => |n, i| reduce(n, i, Red::Min, 18),
        "ReduceProd" => |n, i| reduce(n, i, Red::Prod, 18),
        "ReduceL1" => |n, i| reduce(n, i, Red::L1, 18),
        "ReduceL2" => |n, i| reduce(n, i, Red::L2, 18),
        "ReduceLogSum" => |n, i| reduce(n, i, Red::LogSum, 18),
        "ReduceLogSumExp" => |n, i| reduce(n, i, Red::LogSumExp, 18),
        "ReduceSumSquare" => |n, i| reduce(n, i, Red::SumSquare, 18),
        "ArgMax" => |n, i| arg(n, i, true),
        "ArgMin" => |n, i| arg(n, i, false),
        "CumSum" => cumsum,
        "TopK" => topk,
        _ => return None,
    };
    Some(k)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Red {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    LogSum,
    LogSumExp,
    SumSquare,
}

/// `x` with `axes` moved last, as (rows, row length, kept shape with 1s, kept
/// shape without).
pub(crate) fn rows(
    x: &Tensor,
    axes: &[usize],
) -> Result<(Tensor, usize, Vec<usize>, Vec<usize>), OpError> {
    let r = x.rank();
    let kept: Vec<usize> = (0..r).filter(|d| !axes.contains(d)).collect();
    let mut perm = kept.clone();
    perm.extend(axes);
    let t = permuted(x, &perm)?;
    let inner = axes.iter().map(|&a| x.shape()[a]).product();
    let keep1: Vec<usize> = (0..r)
        .map(|d| if axes.contains(&d) { 1 } else { x.shape()[d] })
        .collect();
    let squeezed: Vec<usize> = kept.iter().map(|&d| x.shape()[d]).collect();
    Ok((t, inner, keep1, squeezed))
}

fn reduce(n: &NodeInfo, i: &Inputs<'_>, red: Red, axes_input_from: i64) -> OpResult {
    let x = i.tensor(0)?;
    let r = x.rank();
    let axes: Option<Vec<i64>> = if n.opset >= axes_input_from {
        i.opt(1)?.map(ints).transpose()?
    } else {
        n.attrs.ints("axes")?.map(<[i64]>::to_vec)
    };
    let axes = match axes {
        Some(a) if !a.is_empty() => a,
        _ if n.attrs.int("noop_with_empty_axes", 0)? != 0 => return one(x.clone()),
        _ => (0..r as i64).collect(),
    };
    let mut axes: Vec<usize> = axes
        .iter()
        .map(|&a| axis_in(a, r))
        .collect::<Result<_, _>>()?;
    axes.sort_unstable();
    axes.dedup();
    let keepdims = n.attrs.int("keepdims", 1)? != 0;
    let (t, inner, keep1, squeezed) = rows(x, &axes)?;
    let shape = if keepdims { keep1 } else { squeezed };
    let outer = numel(&shape);
    let exact_int = !x.elem_type().is_float()
        && matches!(
            red,
            Red::Sum | Red::Max | Red::Min | Red::Prod | Red::L1 | Red::SumSquare
        );
    if exact_int {
        let v = t.to_i64_vec()?;
        let (empty_max, empty_min) = if x.elem_type() == crate::tensor::ElemType::Bool {
            (0, 1)
        } else {
            (i64::MIN, i64::MAX)
        };
        let out = (0..outer)
            .map(|o| {
                let row = v.get(o * inner..(o + 1) * inner).unwrap_or(&[]);
                match red {
                    Red::Sum => row.iter().fold(0i64, |a, &b| a.wrapping_add(b)),
                    Red::Max => row.iter().copied().max().unwrap_or(empty_max),
                    Red::Min => row.iter().copied().min().unwrap_or(empty_min),
                    Red::Prod => row.iter().fold(1i64, |a, &b| a.wrapping_mul(b)),
                    Red::L1 => row.iter().map(|v| v.wrapping_abs()).sum(),
                    _ => row.iter().map(|v| v.wrapping_mul(*v)).sum(),
                }
            })
            .collect();
        return one(from_i64(x.elem_type(), &shape, out)?);
    }
    let v = t.to_f64_vec()?;
    let out =
        (0..outer)
            .map(|o| {
                let row = v.get(o * inner..(o + 1) * inner).unwrap_or(&[]);
                match red {
                    Red::Sum => row.iter().sum(),
                    Red::Mean => row.iter().sum::<f64>() / inner as f64,
                    Red::Max => row.iter().copied().fold(f64::NEG_INFINITY, |a, b| {
                        if b > a || b.is_nan() {
                            b
                        } else {
                            a
                        }
                    }),
                    Red::Min => row.iter().copied().fold(f64::INFINITY, |a, b| {
                        if b < a || b.is_nan() {
                            b
                        } else {
                            a
                        }
                    }),
                    Red::Prod => row.iter().product(),
                    Red::L1 => row.iter().map(|v| v.abs()).sum(),
                    Red::L2 => row.iter().map(|v| v * v).sum::<f64>().sqrt(),
                    Red::LogSum => row.iter().sum::<f64>().ln(),
                    Red::LogSumExp => {
                        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        if m.is_infinite() {
                            row.iter().map(|v| v.exp()).sum::<f64>().ln()
                        } else {
                            m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
                        }
                    }
                    Red::SumSquare => row.iter().map(|v| v * v).sum(),
                }
            })
            .collect();
    one(from_f64(x.elem_type(), &shape, out)?)
}

fn arg(n: &NodeInfo, i: &Inputs<'_>, max: bool) -> OpResult {
    let x = i.tensor(0)?;
    let a = axis_in(n.attrs.int("axis", 0)?, x.rank())?;
    let keepdims = n.attrs.int("keepdims", 1)? != 0;
    let last = n.attrs.int("select_last_index", 0)? != 0;
    let (t, inner, keep1, squeezed) = rows(x, &[a])?;
    let shape = if keepdims { keep1 } else { squeezed };
    if inner == 0 {
        return Err(OpError::new("ArgMax/ArgMin over an empty axis"));
    }
    let v = t.to_f64_vec()?;
    let out = (0..numel(&shape))
        .map(|o| {
            let row = &v[o * inner..(o + 1) * inner];
            let mut best = 0;
            for (k, &val) in row.iter().enumerate() {
                let b = row[best];
                let better = if max { val > b } else { val < b };
                if better || (last && val == b) {
                    best = k;
                }
            }
            best as i64
        })
        .collect();
    one(i64_tensor(&shape, out)?)
}

fn cumsum(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let a = axis_in(scalar_i64(i.tensor(1)?)?, x.rank())?;
    let exclusive = n.attrs.int("exclusive", 0)? != 0;
    let reverse = n.attrs.int("reverse", 0)? != 0;
    let (t, inner, _, _) = rows(x, &[a])?;
    let outer = x.len().checked_div(inner).unwrap_or(0);
    let order: Vec<usize> = if reverse {
        (0..inner).rev().collect()
    } else {
        (0..inner).collect()
    };
    // Back from rows (axis last) to the input's axis order.
    let r = x.rank();
    let mut perm: Vec<usize> = (0..r).filter(|&d| d != a).collect();
    perm.push(a);
    let mut inv = vec![0; r];
    for (k, &p) in perm.iter().enumerate() {
        inv[p] = k;
    }
    let mut row_shape: Vec<usize> = perm.iter().map(|&d| x.shape()[d]).collect();
    if row_shape.is_empty() {
        row_shape.push(1);
    }
    let result = if x.elem_type().is_float() {
        let v = t.to_f64_vec()?;
        let mut out = vec![0f64; v.len()];
        for o in 0..outer {
            let mut acc = 0.0;
            for &k in &order {
                let idx = o * inner + k;
                if exclusive {
                    out[idx] = acc;
                    acc += v[idx];
                } else {
                    acc += v[idx];
                    out[idx] = acc;
                }
            }
        }
        from_f64(x.elem_type(), &row_shape, out)?
    } else {
        let v = t.to_i64_vec()?;
        let mut out = vec![0i64; v.len()];
        for o in 0..outer {
            let mut acc = 0i64;
            for &k in &order {
                let idx = o * inner + k;
                if exclusive {
                    out[idx] = acc;
                    acc = acc.wrapping_add(v[idx]);
                } else {
                    acc = acc.wrapping_add(v[idx]);
                    out[idx] = acc;
                }
            }
        }
        from_i64(x.elem_type(), &row_shape, out)?
    };
    if r == 0 {
        return one(like(x, result.candle().reshape(())?)?);
    }
    one(permuted(&result, &inv)?)
}

fn topk(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let k = if n.opset < 10 {
        n.attrs.int("k", 0)?
    } else {
        scalar_i64(i.tensor(1)?)?
    };
    let a = axis_in(n.attrs.int("axis", -1)?, x.rank())?;
    let largest = n.attrs.int("largest", 1)? != 0;
    let (t, inner, _, _) = rows(x, &[a])?;
    let k = usize::try_from(k)
        .ok()
        .filter(|&k| k <= inner)
        .ok_or_else(|| OpError::new(format!("k={k} out of range for axis of {inner}")))?;
    let outer = x.len().checked_div(inner).unwrap_or(0);
    let v = t.to_f64_vec()?;
    let mut vals = Vec::with_capacity(outer * k);
    let mut idxs = Vec::with_capacity(outer * k);
    for o in 0..outer {
        let row = &v[o * inner..(o + 1) * inner];
        let mut order: Vec<usize> = (0..inner).collect();
        // Stable sort: equal values keep the lower index first.
        order.sort_by(|&p, &q| {
            let c = row[p]
                .partial_cmp(&row[q])
                .unwrap_or(std::cmp::Ordering::Equal);
            if largest {
                c.reverse()
            } else {
                c
            }
        });
        for &p in &order[..k] {
            vals.push(p);
            idxs.push(p as i64);
        }
    }
    let r = x.rank();
    let mut perm: Vec<usize> = (0..r).filter(|&d| d != a).collect();
    perm.push(a);
    let mut inv = vec![0; r];
    for (q, &p) in perm.iter().enumerate() {
        inv[p] = q;
    }
    let mut row_shape: Vec<usize> = perm.iter().map(|&d| x.shape()[d]).collect();
    if let Some(last) = row_shape.last_mut() {
        *last = k;
    }
    let flat: Vec<i64> = vals
        .iter()
        .enumerate()
        .map(|(j, &p)| ((j / k.max(1)) * inner + p) as i64)
        .collect();
    let values = crate::ops::common::take(&t, &row_shape, flat)?;
    let indices = i64_tensor(&row_shape, idxs)?;
    Ok(vec![
        Value::Tensor(permuted(&values, &inv)?),
        Value::Tensor(permuted(&indices, &inv)?),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attrs::Attrs;

    fn info(opset: i64) -> NodeInfo {
        NodeInfo {
            attrs: Attrs::default(),
            opset,
            outputs: 1,
        }
    }

    #[test]
    fn reduce_sum_without_axes_reduces_all_and_keeps_dims() {
        let x = Tensor::from_f32(&[2, 2], vec![1., 2., 3., 4.]).unwrap();
        let vals = [Value::Tensor(x)];
        let out = reduce(
            &info(13),
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
            Red::Sum,
            13,
        )
        .unwrap();
        let t = out[0].as_tensor().unwrap();
        assert_eq!(t.shape(), &[1, 1]);
        assert_eq!(t.to_f32_vec().unwrap(), vec![10.]);
    }

    #[test]
    fn reduce_mean_over_a_negative_axis() {
        let x = Tensor::from_f32(&[2, 2], vec![1., 2., 3., 4.]).unwrap();
        let a = Tensor::from_i64(&[1], vec![-1]).unwrap();
        let vals = [Value::Tensor(x), Value::Tensor(a)];
        let out = reduce(
            &info(18),
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
            Red::Mean,
            18,
        )
        .unwrap();
        assert_eq!(
            out[0].as_tensor().unwrap().to_f32_vec().unwrap(),
            vec![1.5, 3.5]
        );
    }
}
