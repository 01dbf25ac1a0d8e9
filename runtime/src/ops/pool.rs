//! Pooling: `MaxPool` (with optional indices), `AveragePool`, `LpPool` (any
//! number of spatial dims, strides default 1, pads, dilations, `ceil_mode`,
//! `auto_pad`, `count_include_pad`), and the global variants.
//!
//! Windows are walked on host copies in f64; results return in the input's
//! element type.

use rayon::prelude::*;

use crate::ops::common::{for_each_index, from_f64, i64_tensor, numel, strides};
use crate::ops::fused::with_f32;
use crate::ops::window::Window;
use crate::ops::{Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::{ElemType, Tensor};
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "MaxPool" => |n, i| pool(n, i, Mode::Max),
        "AveragePool" => |n, i| pool(n, i, Mode::Average),
        "LpPool" => |n, i| pool(n, i, Mode::Lp),
        "GlobalMaxPool" => |_, i| global(i, Mode::Max, 2.0),
        "GlobalAveragePool" => |_, i| global(i, Mode::Average, 2.0),
        "GlobalLpPool" => |n, i| global(i, Mode::Lp, n.attrs.int("p", 2)? as f64),
        _ => return None,
    };
    Some(k)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Max,
    Average,
    Lp,
}

/// `MaxPool` over two spatial dims of an f32 tensor without the indices output:
/// plain loops over each plane, the window clipped to the input once per output
/// row and column, and a branch-free maximum (NaN is tracked on the side so that
/// it still wins, as in the general path). A 2x2 window at stride 2 that never
/// leaves the input (the common downsampling) has its own loop. Planes are split
/// over rayon's threads when there is enough work.
fn max_pool_2d(x: &Tensor, win: &Window) -> Result<Tensor, OpError> {
    let (nb, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (oh, ow) = (win.out[0], win.out[1]);
    // The input positions each output row / column reads, in the input.
    let taps = |d: usize, o: usize, len: usize| -> Vec<Vec<usize>> {
        (0..o)
            .map(|oi| {
                (0..win.kernel[d])
                    .filter_map(|k| {
                        let p = (oi * win.strides[d] + k * win.dilations[d]) as i64
                            - win.pad_begin[d] as i64;
                        (p >= 0 && (p as usize) < len).then_some(p as usize)
                    })
                    .collect()
            })
            .collect()
    };
    let (rows, cols) = (taps(0, oh, h), taps(1, ow, w));
    let two_by_two = win.kernel == [2, 2]
        && win.strides == [2, 2]
        && win.dilations == [1, 1]
        && win.pad_begin == [0, 0]
        && 2 * oh <= h
        && 2 * ow <= w;
    let plane = |src: &[f32], dst: &mut [f32]| {
        if two_by_two {
            max_pool_2x2(src, dst, w, ow);
        } else {
            max_pool_plane(src, dst, w, &rows, &cols);
        }
    };
    let mut out = vec![0f32; nb * c * oh * ow];
    let (isz, osz) = (h * w, oh * ow);
    if osz > 0 && isz > 0 {
        with_f32(x.candle(), |xv| {
            if xv.len() != nb * c * isz {
                return Err(OpError::new("internal: MaxPool input size"));
            }
            if out.len() >= PARALLEL_MIN && rayon::current_num_threads() > 1 {
                out.par_chunks_mut(osz)
                    .zip(xv.par_chunks(isz))
                    .for_each(|(dst, src)| plane(src, dst));
            } else {
                for (dst, src) in out.chunks_mut(osz).zip(xv.chunks(isz)) {
                    plane(src, dst);
                }
            }
            Ok(())
        })?;
    }
    let mut shape = vec![nb, c];
    shape.extend(&win.out);
    Ok(Tensor::from_f32(&shape, out)?)
}

/// Output values below which pooling stays on the calling thread.
const PARALLEL_MIN: usize = 64 * 1024;

/// One plane of a clipped-window maximum (see [`max_pool_2d`]).
fn max_pool_plane(
    src: &[f32],
    dst: &mut [f32],
    w: usize,
    rows: &[Vec<usize>],
    cols: &[Vec<usize>],
) {
    let mut o = dst.iter_mut();
    for ys in rows {
        for xs in cols {
            let mut acc = f32::NEG_INFINITY;
            let mut nan = false;
            for &iy in ys {
                let row = &src[iy * w..(iy + 1) * w];
                for &ix in xs {
                    let v = row[ix];
                    acc = if v > acc { v } else { acc };
                    nan |= v.is_nan();
                }
            }
            if let Some(d) = o.next() {
                *d = if nan { f32::NAN } else { acc };
            }
        }
    }
}

/// One plane of a 2x2, stride-2 maximum whose windows all lie inside the input.
fn max_pool_2x2(src: &[f32], dst: &mut [f32], w: usize, ow: usize) {
    max_pool_2x2_then(src, dst, w, ow, |v| v);
}

/// [`max_pool_2x2`] with `then` applied to each maximum as it is written (a
/// fused conv's bias and activation, which commute with the maximum: both are
/// monotonic, as is float rounding).
#[inline(always)]
pub(crate) fn max_pool_2x2_then(
    src: &[f32],
    dst: &mut [f32],
    w: usize,
    ow: usize,
    then: impl Fn(f32) -> f32,
) {
    let max = |a: f32, b: f32| if b > a { b } else { a };
    for (oy, out) in dst.chunks_exact_mut(ow).enumerate() {
        let r0 = &src[2 * oy * w..2 * oy * w + 2 * ow];
        let r1 = &src[(2 * oy + 1) * w..(2 * oy + 1) * w + 2 * ow];
        for ((d, p), q) in out
            .iter_mut()
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
        {
            let m = max(max(p[0], p[1]), max(q[0], q[1]));
            let nan = p[0].is_nan() | p[1].is_nan() | q[0].is_nan() | q[1].is_nan();
            *d = then(if nan { f32::NAN } else { m });
        }
    }
}

fn pool(n: &NodeInfo, i: &Inputs<'_>, mode: Mode) -> OpResult {
    let x = i.tensor(0)?;
    if x.rank() < 3 {
        return Err(OpError::new("pooling needs rank >= 3"));
    }
    let (nb, c) = (x.shape()[0], x.shape()[1]);
    let spatial = x.shape()[2..].to_vec();
    let kernel: Vec<usize> = n
        .attrs
        .ints("kernel_shape")?
        .ok_or_else(|| OpError::new("kernel_shape is required"))?
        .iter()
        .map(|&v| usize::try_from(v).map_err(|_| OpError::new("negative kernel_shape")))
        .collect::<Result<_, _>>()?;
    let ceil = n.attrs.int("ceil_mode", 0)? != 0;
    let win = Window::new(n, &spatial, kernel, ceil)?;
    let include_pad = n.attrs.int("count_include_pad", 0)? != 0;
    let p = n.attrs.int("p", 2)? as f64;
    let column_major = n.attrs.int("storage_order", 0)? != 0;
    if mode == Mode::Max && n.outputs < 2 && spatial.len() == 2 && x.elem_type() == ElemType::F32 {
        let y = max_pool_2d(x, &win)?;
        return Ok(vec![Value::Tensor(y)]);
    }
    let xv = x.to_f64_vec()?;
    let isz = numel(&spatial);
    let osz = numel(&win.out);
    let in_strides = strides(&spatial);
    // Strides for the Indices output: row-major, or column-major over spatial dims.
    let idx_strides: Vec<usize> = if column_major {
        let mut s = vec![1; spatial.len()];
        for d in 1..spatial.len() {
            s[d] = s[d - 1] * spatial[d - 1];
        }
        s
    } else {
        in_strides.clone()
    };
    let k = spatial.len();
    let mut out = vec![0f64; nb * c * osz];
    let mut arg = vec![0i64; nb * c * osz];
    for plane in 0..nb * c {
        let base = plane * isz;
        let mut o = 0;
        for_each_index(&win.out, |oidx| {
            let mut acc = match mode {
                Mode::Max => f64::NEG_INFINITY,
                _ => 0.0,
            };
            let mut best = 0usize;
            let mut count = 0usize;
            let mut padded_count = 1usize;
            for d in 0..k {
                // Window extent clipped to the padded input (ONNX Runtime's rule).
                let start = (oidx[d] * win.strides[d]) as i64 - win.pad_begin[d] as i64;
                let limit = (spatial[d] + win.pad_end[d]) as i64;
                let mut len = 0;
                for kk in 0..win.kernel[d] {
                    let pos = start + (kk * win.dilations[d]) as i64;
                    if pos < limit {
                        len += 1;
                    }
                }
                padded_count *= len;
            }
            for_each_index(&win.kernel, |kidx| {
                let mut off = 0usize;
                let mut ioff = 0usize;
                for d in 0..k {
                    let pos = (oidx[d] * win.strides[d] + kidx[d] * win.dilations[d]) as i64
                        - win.pad_begin[d] as i64;
                    if pos < 0 || pos as usize >= spatial[d] {
                        return;
                    }
                    off += pos as usize * in_strides[d];
                    ioff += pos as usize * idx_strides[d];
                }
                let v = xv[base + off];
                count += 1;
                match mode {
                    Mode::Max => {
                        if v > acc || (v.is_nan() && !acc.is_nan()) {
                            acc = v;
                            best = ioff;
                        }
                    }
                    Mode::Average => acc += v,
                    Mode::Lp => acc += v.abs().powf(p),
                }
            });
            out[plane * osz + o] = match mode {
                Mode::Max => acc,
                Mode::Average => {
                    let div = if include_pad { padded_count } else { count };
                    if div == 0 {
                        f64::NAN
                    } else {
                        acc / div as f64
                    }
                }
                Mode::Lp => acc.powf(1.0 / p),
            };
            arg[plane * osz + o] = (base + best) as i64;
            o += 1;
        });
    }
    let mut shape = vec![nb, c];
    shape.extend(&win.out);
    let y = from_f64(x.elem_type(), &shape, out)?;
    let mut outs = vec![Value::Tensor(y)];
    if mode == Mode::Max && n.outputs > 1 {
        outs.push(Value::Tensor(i64_tensor(&shape, arg)?));
    }
    Ok(outs)
}

fn global(i: &Inputs<'_>, mode: Mode, p: f64) -> OpResult {
    let x = i.tensor(0)?;
    if x.rank() < 2 {
        return Err(OpError::new("global pooling needs rank >= 2"));
    }
    let (nb, c) = (x.shape()[0], x.shape()[1]);
    let isz = numel(&x.shape()[2..]);
    let xv = x.to_f64_vec()?;
    let out: Vec<f64> = (0..nb * c)
        .map(|plane| {
            let vals = &xv[plane * isz..(plane + 1) * isz];
            match mode {
                Mode::Max => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                Mode::Average => vals.iter().sum::<f64>() / isz as f64,
                Mode::Lp => vals
                    .iter()
                    .map(|v| v.abs().powf(p))
                    .sum::<f64>()
                    .powf(1.0 / p),
            }
        })
        .collect();
    let mut shape = vec![nb, c];
    shape.extend(std::iter::repeat_n(1, x.rank() - 2));
    Ok(vec![Value::Tensor(from_f64(x.elem_type(), &shape, out)?)])
}

/// A pooled tensor, for tests.
#[cfg(test)]
fn run(attrs: &[(&str, Vec<i64>)], x: crate::tensor::Tensor, mode: Mode) -> crate::tensor::Tensor {
    use crate::onnx::AttributeProto;
    let protos: Vec<AttributeProto> = attrs
        .iter()
        .map(|(k, v)| AttributeProto {
            name: Some((*k).to_owned()),
            r#type: Some(7),
            ints: v.clone(),
            ..Default::default()
        })
        .collect();
    let info = NodeInfo {
        attrs: crate::ops::attrs::Attrs::decode(&protos, None).unwrap(),
        opset: 12,
        outputs: 1,
    };
    let vals = [Value::Tensor(x)];
    let out = pool(
        &info,
        &Inputs {
            values: vals.iter().map(Some).collect(),
        },
        mode,
    )
    .unwrap();
    out[0].as_tensor().unwrap().clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    #[test]
    fn max_pool_strides_default_to_one() {
        let x = Tensor::from_f32(&[1, 1, 3, 3], (1..=9).map(|v| v as f32).collect()).unwrap();
        let y = run(&[("kernel_shape", vec![2, 2])], x, Mode::Max);
        assert_eq!(y.shape(), &[1, 1, 2, 2]);
        assert_eq!(y.to_f32_vec().unwrap(), vec![5., 6., 8., 9.]);
    }

    #[test]
    fn average_pool_excludes_padding_by_default() {
        let x = Tensor::from_f32(&[1, 1, 2, 2], vec![1., 2., 3., 4.]).unwrap();
        let y = run(
            &[("kernel_shape", vec![2, 2]), ("pads", vec![1, 1, 0, 0])],
            x,
            Mode::Average,
        );
        assert_eq!(y.to_f32_vec().unwrap(), vec![1., 1.5, 2., 2.5]);
    }

    #[test]
    fn max_pool_2d_fast_paths_match_the_general_f64_path() {
        let mut seed = 7u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) * 4.0 - 2.0
        };
        type Case<'a> = (&'a [usize], &'a [(&'a str, Vec<i64>)]);
        let cases: &[Case<'_>] = &[
            (
                &[2, 3, 8, 10],
                &[("kernel_shape", vec![2, 2]), ("strides", vec![2, 2])],
            ),
            (
                &[1, 2, 7, 9],
                &[("kernel_shape", vec![2, 2]), ("strides", vec![2, 2])],
            ),
            (
                &[1, 2, 7, 9],
                &[
                    ("kernel_shape", vec![3, 2]),
                    ("strides", vec![2, 1]),
                    ("pads", vec![1, 0, 1, 1]),
                ],
            ),
            (
                &[1, 1, 6, 6],
                &[("kernel_shape", vec![2, 2]), ("dilations", vec![2, 1])],
            ),
        ];
        for (shape, attrs) in cases {
            let n: usize = shape.iter().product();
            let mut v: Vec<f64> = (0..n).map(|_| f64::from(rnd() as f32)).collect();
            v[3] = f64::NAN;
            let x32 = Tensor::from_f32(shape, v.iter().map(|&x| x as f32).collect()).unwrap();
            let x64 = crate::ops::common::from_f64(ElemType::F64, shape, v).unwrap();
            let fast = run(attrs, x32, Mode::Max);
            let general = run(attrs, x64, Mode::Max);
            assert_eq!(fast.shape(), general.shape());
            let (a, b) = (fast.to_f64_vec().unwrap(), general.to_f64_vec().unwrap());
            for (p, q) in a.iter().zip(&b) {
                assert!(
                    p == q || (p.is_nan() && q.is_nan()),
                    "{shape:?} {attrs:?}: {p} vs {q}"
                );
            }
        }
    }
}
