//! `DeformConv` (opsets 19 and 22) over two spatial dims: a convolution whose
//! every kernel tap reads the input at a learned offset (bilinear, zero outside),
//! optionally scaled by a mask, with groups and offset groups.
//!
//! Design: the deformed im2col is built on the host in f64 per batch item, then
//! each output channel is a dot product over its group's columns. It is a direct
//! loop, not the GEMM path [`crate::ops::conv`] takes; deformable layers are rare
//! and small in the models this runtime serves. 1-D and 3-D inputs are rejected.

use crate::ops::common::{from_f64, need_float};
use crate::ops::window::Window;
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "DeformConv" => deform_conv,
        _ => return None,
    };
    Some(k)
}

/// `plane` ([h, w]) at the fractional point (y, x), reading zero outside.
fn bilinear(plane: &[f64], h: usize, w: usize, y: f64, x: f64) -> f64 {
    let (hf, wf) = (h as f64, w as f64);
    if y <= -1.0 || y >= hf || x <= -1.0 || x >= wf {
        return 0.0;
    }
    let (y0, x0) = (y.floor(), x.floor());
    let (ly, lx) = (y - y0, x - x0);
    let at = |yy: f64, xx: f64| -> f64 {
        if yy < 0.0 || xx < 0.0 || yy >= hf || xx >= wf {
            0.0
        } else {
            plane[yy as usize * w + xx as usize]
        }
    };
    (1.0 - ly) * (1.0 - lx) * at(y0, x0)
        + (1.0 - ly) * lx * at(y0, x0 + 1.0)
        + ly * (1.0 - lx) * at(y0 + 1.0, x0)
        + ly * lx * at(y0 + 1.0, x0 + 1.0)
}

/// A positive int attribute.
fn positive(n: &NodeInfo, name: &str) -> Result<usize, OpError> {
    let v = n.attrs.int(name, 1)?;
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| OpError::new(format!("DeformConv {name} must be positive, is {v}")))
}

fn deform_conv(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, wt, offset) = (i.tensor(0)?, i.tensor(1)?, i.tensor(2)?);
    need_float(x, "DeformConv")?;
    if x.rank() != 4 || wt.rank() != 4 {
        return Err(OpError::new(format!(
            "DeformConv supports two spatial dims: X {:?}, W {:?}",
            x.shape(),
            wt.shape()
        )));
    }
    let (nb, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (m, cg) = (wt.shape()[0], wt.shape()[1]);
    let g = positive(n, "group")?;
    let og = positive(n, "offset_group")?;
    if cg * g != c || m % g != 0 {
        return Err(OpError::new(format!(
            "DeformConv channels: X has {c}, W {:?}, group {g}",
            wt.shape()
        )));
    }
    if c % og != 0 {
        return Err(OpError::new(format!(
            "DeformConv offset_group {og} does not divide {c} channels"
        )));
    }
    let kernel: Vec<usize> = match n.attrs.ints("kernel_shape")? {
        Some(k) => k.iter().map(|&v| v.max(0) as usize).collect(),
        None => wt.shape()[2..].to_vec(),
    };
    if kernel != wt.shape()[2..] {
        return Err(OpError::new("DeformConv kernel_shape does not match W"));
    }
    let win = Window::new(n, &[h, w], kernel, false)?;
    let (kh, kw) = (win.kernel[0], win.kernel[1]);
    let (oh, ow) = (win.out[0], win.out[1]);
    let (ksz, osz) = (kh * kw, oh * ow);
    if offset.shape() != [nb, og * 2 * ksz, oh, ow] {
        return Err(OpError::new(format!(
            "DeformConv offset {:?} should be [{nb}, {}, {oh}, {ow}]",
            offset.shape(),
            og * 2 * ksz
        )));
    }
    let bias = match i.opt(3)? {
        Some(b) if b.len() == m => b.to_f64_vec()?,
        Some(b) => {
            return Err(OpError::new(format!(
                "DeformConv bias has {} values for {m} channels",
                b.len()
            )))
        }
        None => vec![0.0; m],
    };
    let mask = match i.opt(4)? {
        Some(t) if t.shape() == [nb, og * ksz, oh, ow] => Some(t.to_f64_vec()?),
        Some(t) => {
            return Err(OpError::new(format!(
                "DeformConv mask {:?} should be [{nb}, {}, {oh}, {ow}]",
                t.shape(),
                og * ksz
            )))
        }
        None => None,
    };
    let xv = x.to_f64_vec()?;
    let wv = wt.to_f64_vec()?;
    let ov = offset.to_f64_vec()?;
    let plane = h * w;
    let c_per_og = c / og;
    let mg = m / g;
    let mut out = vec![0f64; nb * m * osz];
    // The deformed columns of one batch item: [c * ksz, osz].
    let mut cols = vec![0f64; c * ksz * osz];
    for b in 0..nb {
        for ch in 0..c {
            let o_grp = ch / c_per_og;
            let img = &xv[(b * c + ch) * plane..(b * c + ch + 1) * plane];
            for ky in 0..kh {
                for kx in 0..kw {
                    let kk = ky * kw + kx;
                    let dy_ch = (b * og * 2 * ksz + o_grp * 2 * ksz + 2 * kk) * osz;
                    let dx_ch = dy_ch + osz;
                    let m_ch = (b * og * ksz + o_grp * ksz + kk) * osz;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let o = oy * ow + ox;
                            let py = (oy * win.strides[0] + ky * win.dilations[0]) as f64
                                - win.pad_begin[0] as f64
                                + ov[dy_ch + o];
                            let px = (ox * win.strides[1] + kx * win.dilations[1]) as f64
                                - win.pad_begin[1] as f64
                                + ov[dx_ch + o];
                            let scale = mask.as_ref().map_or(1.0, |mv| mv[m_ch + o]);
                            cols[(ch * ksz + kk) * osz + o] = scale * bilinear(img, h, w, py, px);
                        }
                    }
                }
            }
        }
        for mo in 0..m {
            let gi = mo / mg;
            let filt = &wv[mo * cg * ksz..(mo + 1) * cg * ksz];
            let group_cols = &cols[gi * cg * ksz * osz..(gi + 1) * cg * ksz * osz];
            let dst = &mut out[(b * m + mo) * osz..(b * m + mo + 1) * osz];
            dst.fill(bias[mo]);
            for (row, &wk) in filt.iter().enumerate() {
                let src = &group_cols[row * osz..(row + 1) * osz];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += wk * s;
                }
            }
        }
    }
    let shape = [nb, m, oh, ow];
    one(from_f64(x.elem_type(), &shape, out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Attr, Attrs};
    use crate::tensor::Tensor;
    use crate::value::Value;

    fn run(attrs: &[(&str, Attr)], ts: Vec<Option<Tensor>>) -> OpResult {
        let mut a = Attrs::default();
        for (name, v) in attrs {
            a.set(name, v.clone());
        }
        let info = NodeInfo {
            attrs: a,
            opset: 22,
            outputs: 1,
        };
        let vals: Vec<Option<Value>> = ts.into_iter().map(|t| t.map(Value::Tensor)).collect();
        deform_conv(
            &info,
            &Inputs {
                values: vals.iter().map(Option::as_ref).collect(),
            },
        )
    }

    fn image() -> Tensor {
        Tensor::from_f32(&[1, 1, 3, 3], (0..9).map(|v| v as f32).collect()).unwrap()
    }

    fn ones() -> Tensor {
        Tensor::from_f32(&[1, 1, 2, 2], vec![1.; 4]).unwrap()
    }

    #[test]
    fn zero_offsets_with_default_attributes_are_a_plain_convolution() {
        let off = Tensor::from_f32(&[1, 8, 2, 2], vec![0.; 32]).unwrap();
        let y = run(&[], vec![Some(image()), Some(ones()), Some(off)]).unwrap();
        let t = y[0].as_tensor().unwrap();
        assert_eq!(t.shape(), &[1, 1, 2, 2]);
        assert_eq!(t.to_f32_vec().unwrap(), vec![8., 12., 20., 24.]);
    }

    #[test]
    fn offsets_shift_taps_and_the_mask_and_bias_apply() {
        // Every tap moves half a pixel right; the mask halves every tap.
        let mut off = vec![0f32; 32];
        for kk in 0..4 {
            for o in 0..4 {
                off[(2 * kk + 1) * 4 + o] = 0.5;
            }
        }
        let off = Tensor::from_f32(&[1, 8, 2, 2], off).unwrap();
        let bias = Tensor::from_f32(&[1], vec![1.]).unwrap();
        let mask = Tensor::from_f32(&[1, 4, 2, 2], vec![0.5; 16]).unwrap();
        let y = run(
            &[],
            vec![
                Some(image()),
                Some(ones()),
                Some(off),
                Some(bias),
                Some(mask),
            ],
        )
        .unwrap();
        // Top-left window at x + 0.5: 0.5 + 1.5 + 3.5 + 4.5 = 10, halved, plus 1.
        assert_eq!(y[0].as_tensor().unwrap().to_f32_vec().unwrap()[0], 6.0);
    }

    #[test]
    fn an_offset_of_the_wrong_shape_is_rejected() {
        let off = Tensor::from_f32(&[1, 4, 2, 2], vec![0.; 16]).unwrap();
        let err = run(&[], vec![Some(image()), Some(ones()), Some(off)]).unwrap_err();
        assert!(err.message.contains("offset"), "{err}");
    }

    #[test]
    fn an_offset_group_that_does_not_divide_channels_is_rejected() {
        let off = Tensor::from_f32(&[1, 16, 2, 2], vec![0.; 64]).unwrap();
        let attrs = [("offset_group", Attr::Int(2))];
        assert!(run(&attrs, vec![Some(image()), Some(ones()), Some(off)]).is_err());
    }
}
