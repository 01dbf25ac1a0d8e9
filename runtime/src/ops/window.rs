//! Sliding-window geometry shared by convolution and pooling: kernel shape,
//! strides, dilations and pads (explicit or `auto_pad`), and output sizes.
//!
//! Defaults follow the operator schemas: strides and dilations 1, pads 0,
//! `auto_pad` NOTSET. This module computes sizes only; it touches no data.

use crate::ops::{NodeInfo, OpError};

/// The resolved geometry of a windowed operator over `k` spatial dims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) kernel: Vec<usize>,
    pub(crate) strides: Vec<usize>,
    pub(crate) dilations: Vec<usize>,
    /// Padding before each spatial dim.
    pub(crate) pad_begin: Vec<usize>,
    /// Padding after each spatial dim.
    pub(crate) pad_end: Vec<usize>,
    /// Output spatial sizes.
    pub(crate) out: Vec<usize>,
}

fn list(n: &NodeInfo, name: &str, k: usize, default: usize) -> Result<Vec<usize>, OpError> {
    match n.attrs.ints(name)? {
        Some(v) if v.len() == k => v
            .iter()
            .map(|&x| usize::try_from(x).map_err(|_| OpError::new(format!("negative {name}"))))
            .collect(),
        Some([]) => Ok(vec![default; k]),
        Some(v) => Err(OpError::new(format!(
            "{name} has {} values for {k} spatial dims",
            v.len()
        ))),
        None => Ok(vec![default; k]),
    }
}

impl Window {
    /// Geometry for input spatial sizes `input` and the given kernel shape;
    /// `ceil_mode` rounds output sizes up (pooling).
    pub(crate) fn new(
        n: &NodeInfo,
        input: &[usize],
        kernel: Vec<usize>,
        ceil_mode: bool,
    ) -> Result<Self, OpError> {
        let k = input.len();
        if kernel.len() != k {
            return Err(OpError::new("kernel rank does not match the input"));
        }
        let strides = list(n, "strides", k, 1)?;
        let dilations = list(n, "dilations", k, 1)?;
        if strides.contains(&0) || dilations.contains(&0) {
            return Err(OpError::new("strides and dilations must be positive"));
        }
        let auto_pad = n.attrs.string("auto_pad", "NOTSET")?;
        let mut pad_begin = vec![0; k];
        let mut pad_end = vec![0; k];
        let mut out = vec![0; k];
        for d in 0..k {
            let eff = (kernel[d].max(1) - 1) * dilations[d] + 1;
            match auto_pad {
                "SAME_UPPER" | "SAME_LOWER" => {
                    let o = input[d].div_ceil(strides[d]);
                    let total = ((o.max(1) - 1) * strides[d] + eff).saturating_sub(input[d]);
                    let small = total / 2;
                    if auto_pad == "SAME_UPPER" {
                        pad_begin[d] = small;
                        pad_end[d] = total - small;
                    } else {
                        pad_begin[d] = total - small;
                        pad_end[d] = small;
                    }
                    out[d] = o;
                }
                "VALID" => {
                    out[d] = if input[d] >= eff {
                        (input[d] - eff) / strides[d] + 1
                    } else {
                        0
                    };
                }
                _ => {
                    let pads = list(n, "pads", 2 * k, 0)?;
                    pad_begin[d] = pads[d];
                    pad_end[d] = pads[d + k];
                    let padded = input[d] + pad_begin[d] + pad_end[d];
                    out[d] = if padded < eff {
                        0
                    } else if ceil_mode {
                        let mut o = (padded - eff).div_ceil(strides[d]) + 1;
                        // The last window must start inside the input or left pad.
                        if (o - 1) * strides[d] >= input[d] + pad_begin[d] {
                            o -= 1;
                        }
                        o
                    } else {
                        (padded - eff) / strides[d] + 1
                    };
                }
            }
        }
        Ok(Self {
            kernel,
            strides,
            dilations,
            pad_begin,
            pad_end,
            out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attrs::Attrs;

    fn info() -> NodeInfo {
        NodeInfo {
            attrs: Attrs::default(),
            opset: 17,
            outputs: 1,
        }
    }

    #[test]
    fn strides_default_to_one_and_pads_to_zero() {
        let w = Window::new(&info(), &[5, 5], vec![3, 3], false).unwrap();
        assert_eq!(w.strides, vec![1, 1]);
        assert_eq!(w.out, vec![3, 3]);
    }
}
