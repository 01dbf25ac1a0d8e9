//! `Col2Im` (opset 18): the inverse of the im2col rearrangement that
//! [`crate::ops::conv`] builds, summing every sliding block back into an image of
//! any number of spatial dims (strides, pads, dilations).
//!
//! The scatter-add runs on a host f64 copy; the result comes back in the input's
//! element type. The block geometry is the one convolution uses ([`Window`]).

use crate::ops::common::{checked_numel, for_each_index, from_f64, ints, numel, strides};
use crate::ops::window::Window;
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "Col2Im" => col2im,
        _ => return None,
    };
    Some(k)
}

/// A shape input as sizes; every entry must be positive.
fn sizes(t: &crate::tensor::Tensor, what: &str) -> Result<Vec<usize>, OpError> {
    ints(t)?
        .iter()
        .map(|&v| {
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| OpError::new(format!("Col2Im {what} must be positive, has {v}")))
        })
        .collect()
}

fn col2im(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let image = sizes(i.tensor(1)?, "image_shape")?;
    let block = sizes(i.tensor(2)?, "block_shape")?;
    if image.len() != block.len() || image.is_empty() {
        return Err(OpError::new(format!(
            "Col2Im image_shape {image:?} and block_shape {block:?} need the same, non-zero length"
        )));
    }
    if x.rank() != 3 {
        return Err(OpError::new(format!(
            "Col2Im needs input of shape [N, C * prod(block_shape), L], got {:?}",
            x.shape()
        )));
    }
    let (nb, ck, l) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let ksz = checked_numel(&block, "Col2Im block_shape")?;
    if ck % ksz != 0 {
        return Err(OpError::new(format!(
            "Col2Im input has {ck} rows, not a multiple of the block size {ksz}"
        )));
    }
    let c = ck / ksz;
    let win = Window::new(n, &image, block, false)?;
    let osz = numel(&win.out);
    if osz != l {
        return Err(OpError::new(format!(
            "Col2Im input has {l} blocks, the geometry gives {:?} = {osz}",
            win.out
        )));
    }
    let isz = checked_numel(&image, "Col2Im image_shape")?;
    let total = isz
        .checked_mul(nb * c)
        .ok_or_else(|| OpError::new(format!("Col2Im image_shape {image:?} is too large")))?;
    let img_strides = strides(&image);
    let r = image.len();
    // For every (kernel position, block position), the image offset it adds to.
    let mut targets: Vec<Option<usize>> = Vec::with_capacity(ksz * osz);
    for_each_index(&win.kernel, |kidx| {
        for_each_index(&win.out, |oidx| {
            let mut off = 0;
            for d in 0..r {
                let p = (oidx[d] * win.strides[d] + kidx[d] * win.dilations[d]) as i64
                    - win.pad_begin[d] as i64;
                if p < 0 || p as usize >= image[d] {
                    targets.push(None);
                    return;
                }
                off += p as usize * img_strides[d];
            }
            targets.push(Some(off));
        });
    });
    let xv = x.to_f64_vec()?;
    let mut out = vec![0f64; total];
    for b in 0..nb {
        for ch in 0..c {
            let img = &mut out[(b * c + ch) * isz..(b * c + ch + 1) * isz];
            let cols = &xv[(b * c + ch) * ksz * osz..(b * c + ch + 1) * ksz * osz];
            for (v, t) in cols.iter().zip(&targets) {
                if let Some(p) = t {
                    img[*p] += v;
                }
            }
        }
    }
    let mut shape = vec![nb, c];
    shape.extend(&image);
    one(from_f64(x.elem_type(), &shape, out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Attr, Attrs};
    use crate::tensor::Tensor;
    use crate::value::Value;

    fn run(attrs: &[(&str, Vec<i64>)], x: Tensor, image: &[i64], block: &[i64]) -> OpResult {
        let mut a = Attrs::default();
        for (name, v) in attrs {
            a.set(name, Attr::Ints(v.clone()));
        }
        let info = NodeInfo {
            attrs: a,
            opset: 18,
            outputs: 1,
        };
        let vals = [
            Value::Tensor(x),
            Value::Tensor(Tensor::from_i64(&[image.len()], image.to_vec()).unwrap()),
            Value::Tensor(Tensor::from_i64(&[block.len()], block.to_vec()).unwrap()),
        ];
        col2im(
            &info,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
    }

    #[test]
    fn overlapping_blocks_sum_with_default_strides() {
        // A 1x3 image from two 1x2 blocks at stride 1: the middle pixel gets both.
        let x = Tensor::from_f32(&[1, 2, 2], vec![1., 10., 2., 20.]).unwrap();
        let y = run(&[], x, &[1, 3], &[1, 2]).unwrap();
        let t = y[0].as_tensor().unwrap();
        assert_eq!(t.shape(), &[1, 1, 1, 3]);
        assert_eq!(t.to_f32_vec().unwrap(), vec![1., 12., 20.]);
    }

    #[test]
    fn padded_positions_are_dropped() {
        let x = Tensor::from_f32(&[1, 1, 3], vec![1., 2., 3.]).unwrap();
        let y = run(&[("pads", vec![0, 1, 0, 0])], x, &[1, 2], &[1, 1]).unwrap();
        assert_eq!(
            y[0].as_tensor().unwrap().to_f32_vec().unwrap(),
            vec![2., 3.]
        );
    }

    #[test]
    fn a_block_count_that_does_not_fit_is_rejected() {
        let x = Tensor::from_f32(&[1, 2, 3], vec![0.; 6]).unwrap();
        let err = run(&[], x, &[1, 3], &[1, 2]).unwrap_err();
        assert!(err.message.contains("blocks"), "{err}");
    }

    #[test]
    fn a_zero_block_shape_is_rejected() {
        let x = Tensor::from_f32(&[1, 2, 3], vec![0.; 6]).unwrap();
        assert!(run(&[], x, &[1, 3], &[0, 2]).is_err());
    }
}
