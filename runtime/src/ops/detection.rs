//! Object-detection heads: `RoiAlign` (opsets 10 to 22: `avg` and `max` modes,
//! `half_pixel` and `output_half_pixel` coordinates) and `NonMaxSuppression`
//! (opsets 10 and 11, corner and centre box formats).
//!
//! Both run on host f64 copies; they are small per-box loops, not tensor
//! arithmetic. This module does not decode anchors or boxes.

use crate::ops::common::{from_f64, i64_tensor, ints, need_float, scalar_f64, scalar_i64};
use crate::ops::{one, Inputs, Kernel, NodeInfo, OpError, OpResult};

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "RoiAlign" => roi_align,
        "NonMaxSuppression" => non_max_suppression,
        _ => return None,
    };
    Some(k)
}

/// The most bilinear samples one `RoiAlign` output bin may take: an adaptive
/// grid follows the RoI's size, which a hostile input can make enormous.
const MAX_SAMPLES_PER_BIN: usize = 1 << 16;

/// One bilinear sample of a `[h, w]` plane: four (offset, weight) corners, or
/// none when the point lies more than a pixel outside the plane.
fn bilinear_corners(y: f64, x: f64, h: usize, w: usize) -> Option<[(usize, f64); 4]> {
    let (hf, wf) = (h as f64, w as f64);
    if y < -1.0 || y > hf || x < -1.0 || x > wf {
        return None;
    }
    let (mut y, mut x) = (y.max(0.0), x.max(0.0));
    let mut y0 = y.floor() as usize;
    let mut x0 = x.floor() as usize;
    let (y1, x1);
    if y0 + 1 >= h {
        y0 = h - 1;
        y1 = h - 1;
        y = y0 as f64;
    } else {
        y1 = y0 + 1;
    }
    if x0 + 1 >= w {
        x0 = w - 1;
        x1 = w - 1;
        x = x0 as f64;
    } else {
        x1 = x0 + 1;
    }
    let (ly, lx) = (y - y0 as f64, x - x0 as f64);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    Some([
        (y0 * w + x0, hy * hx),
        (y0 * w + x1, hy * lx),
        (y1 * w + x0, ly * hx),
        (y1 * w + x1, ly * lx),
    ])
}

fn roi_align(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (x, rois, batch) = (i.tensor(0)?, i.tensor(1)?, i.tensor(2)?);
    need_float(x, "RoiAlign")?;
    if x.rank() != 4 {
        return Err(OpError::new(format!(
            "RoiAlign needs X of shape [N, C, H, W], got {:?}",
            x.shape()
        )));
    }
    let (nb, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let k = batch.len();
    if rois.shape() != [k, 4] || batch.rank() != 1 {
        return Err(OpError::new(format!(
            "RoiAlign rois {:?} and batch_indices {:?} should be [K, 4] and [K]",
            rois.shape(),
            batch.shape()
        )));
    }
    let positive = |name: &str, v: i64| {
        usize::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| OpError::new(format!("RoiAlign {name} must be positive, is {v}")))
    };
    let oh = positive("output_height", n.attrs.int("output_height", 1)?)?;
    let ow = positive("output_width", n.attrs.int("output_width", 1)?)?;
    let sampling = n.attrs.int("sampling_ratio", 0)?;
    if sampling < 0 {
        return Err(OpError::new(format!(
            "RoiAlign sampling_ratio must not be negative, is {sampling}"
        )));
    }
    let scale = f64::from(n.attrs.float("spatial_scale", 1.0)?);
    let max_mode = match n.attrs.string("mode", "avg")? {
        "avg" => false,
        "max" => true,
        other => return Err(OpError::new(format!("unknown RoiAlign mode {other:?}"))),
    };
    // Opset 10 had no attribute and behaved as `output_half_pixel`.
    let default_coord = if n.opset < 16 {
        "output_half_pixel"
    } else {
        "half_pixel"
    };
    let half_pixel = match n
        .attrs
        .string("coordinate_transformation_mode", default_coord)?
    {
        "half_pixel" => true,
        "output_half_pixel" => false,
        other => {
            return Err(OpError::new(format!(
                "unknown RoiAlign coordinate_transformation_mode {other:?}"
            )))
        }
    };
    let xv = x.to_f64_vec()?;
    let rv = rois.to_f64_vec()?;
    let bv = ints(batch)?;
    let plane = h * w;
    let len = [k, c, oh, ow]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| OpError::new("RoiAlign output is too large"))?;
    let mut out = vec![0f64; len];
    if plane == 0 {
        return one(from_f64(x.elem_type(), &[k, c, oh, ow], out)?);
    }
    let offset = if half_pixel { 0.5 } else { 0.0 };
    for r in 0..k {
        let b = usize::try_from(bv[r])
            .ok()
            .filter(|&b| b < nb)
            .ok_or_else(|| {
                OpError::new(format!(
                    "RoiAlign batch index {} out of range for {nb} images",
                    bv[r]
                ))
            })?;
        let roi = &rv[r * 4..r * 4 + 4];
        let (x0, y0) = (roi[0] * scale - offset, roi[1] * scale - offset);
        let (mut rw, mut rh) = (roi[2] * scale - offset - x0, roi[3] * scale - offset - y0);
        if !half_pixel {
            // The legacy mode forces every RoI to at least one pixel.
            rw = rw.max(1.0);
            rh = rh.max(1.0);
        }
        let (bin_h, bin_w) = (rh / oh as f64, rw / ow as f64);
        let grid_h = if sampling > 0 {
            sampling as usize
        } else {
            bin_h.ceil().max(0.0) as usize
        };
        let grid_w = if sampling > 0 {
            sampling as usize
        } else {
            bin_w.ceil().max(0.0) as usize
        };
        let samples_per_bin = grid_h
            .checked_mul(grid_w)
            .filter(|&s| s <= MAX_SAMPLES_PER_BIN)
            .ok_or_else(|| {
                OpError::new(format!(
                    "RoiAlign RoI {r} needs a {grid_h}x{grid_w} sampling grid per bin, \
                     more than {MAX_SAMPLES_PER_BIN} samples"
                ))
            })?;
        let count = samples_per_bin.max(1) as f64;
        for ph in 0..oh {
            for pw in 0..ow {
                // The sample points of this bin, shared by all channels.
                let mut samples = Vec::with_capacity(samples_per_bin);
                for iy in 0..grid_h {
                    let yy = y0 + ph as f64 * bin_h + (iy as f64 + 0.5) * bin_h / grid_h as f64;
                    for ix in 0..grid_w {
                        let xx = x0 + pw as f64 * bin_w + (ix as f64 + 0.5) * bin_w / grid_w as f64;
                        samples.push(bilinear_corners(yy, xx, h, w));
                    }
                }
                for ch in 0..c {
                    let p = &xv[(b * c + ch) * plane..(b * c + ch + 1) * plane];
                    let v = if max_mode {
                        // Off-spec in spirit, on the reference: the maximum is
                        // taken over weighted corners, not interpolated values.
                        let mut best: Option<f64> = None;
                        for s in &samples {
                            let v = match s {
                                Some(cs) => cs
                                    .iter()
                                    .map(|&(o, wt)| wt * p[o])
                                    .fold(f64::NEG_INFINITY, f64::max),
                                None => 0.0,
                            };
                            best = Some(best.map_or(v, |b| b.max(v)));
                        }
                        best.unwrap_or(0.0)
                    } else {
                        let sum: f64 = samples
                            .iter()
                            .flatten()
                            .map(|cs| cs.iter().map(|&(o, wt)| wt * p[o]).sum::<f64>())
                            .sum();
                        sum / count
                    };
                    out[((r * c + ch) * oh + ph) * ow + pw] = v;
                }
            }
        }
    }
    one(from_f64(x.elem_type(), &[k, c, oh, ow], out)?)
}

/// A box as (y_min, x_min, y_max, x_max), whichever corners it was given as.
type Corners = [f64; 4];

fn corners(b: &[f64], center_point: bool) -> Corners {
    if center_point {
        // [x_center, y_center, width, height]
        let (xc, yc, w, h) = (b[0], b[1], b[2], b[3]);
        [yc - h / 2.0, xc - w / 2.0, yc + h / 2.0, xc + w / 2.0]
    } else {
        // [y1, x1, y2, x2], either diagonal.
        [
            b[0].min(b[2]),
            b[1].min(b[3]),
            b[0].max(b[2]),
            b[1].max(b[3]),
        ]
    }
}

fn iou(a: &Corners, b: &Corners) -> f64 {
    let area = |c: &Corners| (c[2] - c[0]) * (c[3] - c[1]);
    let (aa, ab) = (area(a), area(b));
    if aa <= 0.0 || ab <= 0.0 {
        return 0.0;
    }
    let ih = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let iw = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ih * iw;
    let union = aa + ab - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

fn non_max_suppression(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (boxes, scores) = (i.tensor(0)?, i.tensor(1)?);
    if boxes.rank() != 3 || boxes.shape()[2] != 4 {
        return Err(OpError::new(format!(
            "NonMaxSuppression boxes should be [batch, boxes, 4], got {:?}",
            boxes.shape()
        )));
    }
    let (nb, nbox) = (boxes.shape()[0], boxes.shape()[1]);
    if scores.rank() != 3 || scores.shape()[0] != nb || scores.shape()[2] != nbox {
        return Err(OpError::new(format!(
            "NonMaxSuppression scores {:?} do not fit boxes {:?}",
            scores.shape(),
            boxes.shape()
        )));
    }
    let classes = scores.shape()[1];
    let max_out = match i.opt(2)? {
        Some(t) if !t.is_empty() => scalar_i64(t)?.max(0) as usize,
        _ => 0,
    };
    let iou_threshold = match i.opt(3)? {
        Some(t) if !t.is_empty() => scalar_f64(t)?,
        _ => 0.0,
    };
    if !(0.0..=1.0).contains(&iou_threshold) {
        return Err(OpError::new(format!(
            "NonMaxSuppression iou_threshold {iou_threshold} is outside [0, 1]"
        )));
    }
    let score_threshold = match i.opt(4)? {
        Some(t) if !t.is_empty() => Some(scalar_f64(t)?),
        _ => None,
    };
    let center_point = match n.attrs.int("center_point_box", 0)? {
        0 => false,
        1 => true,
        v => {
            return Err(OpError::new(format!(
                "NonMaxSuppression center_point_box must be 0 or 1, is {v}"
            )))
        }
    };
    let bv = boxes.to_f64_vec()?;
    let sv = scores.to_f64_vec()?;
    let mut selected: Vec<i64> = Vec::new();
    for b in 0..nb {
        let cs: Vec<Corners> = (0..nbox)
            .map(|k| {
                corners(
                    &bv[(b * nbox + k) * 4..(b * nbox + k) * 4 + 4],
                    center_point,
                )
            })
            .collect();
        for cl in 0..classes {
            let s = &sv[(b * classes + cl) * nbox..(b * classes + cl + 1) * nbox];
            let mut order: Vec<usize> = (0..nbox)
                .filter(|&k| score_threshold.is_none_or(|t| s[k] > t))
                .collect();
            // Highest score first; ties keep the lower index first.
            order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
            let mut kept: Vec<usize> = Vec::new();
            for k in order {
                if kept.len() >= max_out {
                    break;
                }
                if kept.iter().all(|&j| iou(&cs[j], &cs[k]) <= iou_threshold) {
                    kept.push(k);
                }
            }
            for k in kept {
                selected.extend([b as i64, cl as i64, k as i64]);
            }
        }
    }
    let rows = selected.len() / 3;
    one(i64_tensor(&[rows, 3], selected)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Attr;
    use crate::tensor::Tensor;

    fn call(k: Kernel, attrs: &[(&str, Attr)], ts: Vec<Tensor>) -> Result<Tensor, OpError> {
        crate::ops::testing::call(k, 22, attrs, ts)
    }

    fn ramp() -> Tensor {
        Tensor::from_f32(&[1, 1, 4, 4], (0..16).map(|v| v as f32).collect()).unwrap()
    }

    #[test]
    fn roi_align_defaults_to_one_averaged_bin() {
        // With half_pixel, the RoI [0.5, 0.5, 2.5, 2.5] spans pixels 0 to 2 and
        // takes two samples per axis, at 0.5 and 1.5.
        let rois = Tensor::from_f32(&[1, 4], vec![0.5, 0.5, 2.5, 2.5]).unwrap();
        let idx = Tensor::from_i64(&[1], vec![0]).unwrap();
        let y = call(roi_align, &[], vec![ramp(), rois, idx]).unwrap();
        assert_eq!(y.shape(), &[1, 1, 1, 1]);
        // The ramp is 4 * row + col: samples 2.5, 3.5, 6.5 and 7.5, mean 5.
        assert!((y.to_f32_vec().unwrap()[0] - 5.0).abs() < 1e-6);
    }

    #[test]
    fn roi_align_max_mode_takes_the_largest_weighted_corner() {
        let rois = Tensor::from_f32(&[1, 4], vec![1.0, 1.0, 2.0, 2.0]).unwrap();
        let idx = Tensor::from_i64(&[1], vec![0]).unwrap();
        let attrs = [
            ("mode", Attr::String("max".into())),
            ("sampling_ratio", Attr::Int(1)),
            (
                "coordinate_transformation_mode",
                Attr::String("output_half_pixel".into()),
            ),
        ];
        let y = call(roi_align, &attrs, vec![ramp(), rois, idx]).unwrap();
        // One sample at (1.5, 1.5): corners 5, 6, 9, 10 each weighted 0.25.
        assert!((y.to_f32_vec().unwrap()[0] - 2.5).abs() < 1e-6);
    }

    #[test]
    fn roi_align_rejects_an_adaptive_grid_too_large_to_sample() {
        let rois = Tensor::from_f32(&[1, 4], vec![0., 0., 1e12, 1e12]).unwrap();
        let idx = Tensor::from_i64(&[1], vec![0]).unwrap();
        let err = call(roi_align, &[], vec![ramp(), rois, idx]).unwrap_err();
        assert!(err.message.contains("sampling grid"), "{err}");
    }

    #[test]
    fn roi_align_rejects_a_batch_index_out_of_range() {
        let rois = Tensor::from_f32(&[1, 4], vec![0., 0., 1., 1.]).unwrap();
        let idx = Tensor::from_i64(&[1], vec![3]).unwrap();
        let err = call(roi_align, &[], vec![ramp(), rois, idx]).unwrap_err();
        assert!(err.message.contains("batch index"), "{err}");
    }

    fn nms(
        attrs: &[(&str, Attr)],
        boxes: Vec<f32>,
        scores: Vec<f32>,
        extra: Vec<Tensor>,
    ) -> Vec<i64> {
        let k = scores.len();
        let mut ts = vec![
            Tensor::from_f32(&[1, k, 4], boxes).unwrap(),
            Tensor::from_f32(&[1, 1, k], scores).unwrap(),
        ];
        ts.extend(extra);
        call(non_max_suppression, attrs, ts)
            .unwrap()
            .to_i64_vec()
            .unwrap()
    }

    fn limits(max: i64, iou: f32) -> Vec<Tensor> {
        vec![
            Tensor::from_i64(&[1], vec![max]).unwrap(),
            Tensor::from_f32(&[1], vec![iou]).unwrap(),
        ]
    }

    #[test]
    fn nms_selects_nothing_without_max_output_boxes() {
        let out = nms(&[], vec![0., 0., 1., 1.], vec![0.9], vec![]);
        assert!(out.is_empty());
    }

    #[test]
    fn nms_drops_overlapping_boxes_by_score() {
        let boxes = vec![0., 0., 1., 1., 0., 0.1, 1., 1.1, 0., 5., 1., 6.];
        let out = nms(&[], boxes, vec![0.8, 0.9, 0.7], limits(10, 0.5));
        assert_eq!(out, vec![0, 0, 1, 0, 0, 2]);
    }

    #[test]
    fn nms_reads_centre_point_boxes() {
        // Two unit boxes centred 0.1 apart overlap; one far away does not.
        let boxes = vec![0.5, 0.5, 1., 1., 0.6, 0.5, 1., 1., 5.5, 0.5, 1., 1.];
        let attrs = [("center_point_box", Attr::Int(1))];
        let out = nms(&attrs, boxes, vec![0.9, 0.8, 0.7], limits(10, 0.5));
        assert_eq!(out, vec![0, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn nms_rejects_scores_that_do_not_fit_boxes() {
        let ts = vec![
            Tensor::from_f32(&[1, 2, 4], vec![0.; 8]).unwrap(),
            Tensor::from_f32(&[1, 1, 3], vec![0.; 3]).unwrap(),
        ];
        assert!(call(non_max_suppression, &[], ts).is_err());
    }
}
