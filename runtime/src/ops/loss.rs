//! Training losses that inference graphs still carry: `NegativeLogLikelihoodLoss`
//! and `SoftmaxCrossEntropyLoss` (with its optional `log_prob` output).
//!
//! Both work on host f64 copies and return the input's float type. The class axis
//! is axis 1 of an `(N, C, d1, ..., dk)` input; targets are `(N, d1, ..., dk)`.
//! This module computes no gradients.

use crate::ops::common::{from_f64, need_float, numel};
use crate::ops::{Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::{ElemType, Tensor};
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "NegativeLogLikelihoodLoss" => nll_loss,
        "SoftmaxCrossEntropyLoss" => softmax_cross_entropy,
        _ => return None,
    };
    Some(k)
}

/// How per-sample losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reduction {
    None,
    Sum,
    /// Divided by the summed weights of the targets that are not ignored.
    Mean,
}

impl Reduction {
    fn from_attrs(n: &NodeInfo) -> Result<Self, OpError> {
        match n.attrs.string("reduction", "mean")? {
            "none" => Ok(Self::None),
            "sum" => Ok(Self::Sum),
            "mean" => Ok(Self::Mean),
            r => Err(OpError::new(format!(
                "reduction must be none, sum or mean, got {r:?}"
            ))),
        }
    }
}

/// The validated operands of a loss: log-probabilities `(N, C, D)` flattened, the
/// targets `(N, D)` flattened, and the optional class weights.
struct LossInput {
    log_prob: Vec<f64>,
    classes: usize,
    /// Product of the dims after the class axis (1 for a 2-D input).
    inner: usize,
    targets: Vec<i64>,
    /// The target's shape: the per-sample loss shape.
    target_shape: Vec<usize>,
    weights: Option<Vec<f64>>,
    /// `ignore_index`, when the attribute is present (it has no default).
    ignore: Option<i64>,
}

impl LossInput {
    fn new(
        n: &NodeInfo,
        input: &Tensor,
        log_prob: Vec<f64>,
        target: &Tensor,
        weight: Option<&Tensor>,
    ) -> Result<Self, OpError> {
        need_float(input, "the loss input")?;
        let shape = input.shape();
        if shape.len() < 2 {
            return Err(OpError::new(format!(
                "the loss input must be (N, C, ...), got shape {shape:?}"
            )));
        }
        if target.elem_type().is_float() {
            return Err(OpError::new("the target must hold integer class indices"));
        }
        let mut want = vec![shape[0]];
        want.extend(&shape[2..]);
        if target.shape() != want.as_slice() {
            return Err(OpError::new(format!(
                "target shape {:?} does not match input shape {shape:?} (expected {want:?})",
                target.shape()
            )));
        }
        let classes = shape[1];
        let weights = match weight {
            Some(w) if w.shape() != [classes] => {
                return Err(OpError::new(format!(
                    "weight shape {:?} should be [{classes}]",
                    w.shape()
                )))
            }
            Some(w) => Some(w.to_f64_vec()?),
            None => None,
        };
        Ok(Self {
            log_prob,
            classes,
            inner: numel(&shape[2..]),
            targets: target.to_i64_vec()?,
            target_shape: want,
            weights,
            ignore: n.attrs.opt_int("ignore_index")?,
        })
    }

    /// Per-sample losses and the summed weights of the samples that count.
    fn per_sample(&self) -> Result<(Vec<f64>, f64), OpError> {
        let mut loss = Vec::with_capacity(self.targets.len());
        let mut weight_total = 0.0;
        for (k, &t) in self.targets.iter().enumerate() {
            if self.ignore == Some(t) {
                loss.push(0.0);
                continue;
            }
            let c = usize::try_from(t)
                .ok()
                .filter(|&c| c < self.classes)
                .ok_or_else(|| {
                    OpError::new(format!(
                        "target {t} at {k} is outside [0, {}) and not the ignore_index",
                        self.classes
                    ))
                })?;
            let (sample, d) = (k / self.inner, k % self.inner);
            let x = self.log_prob[(sample * self.classes + c) * self.inner + d];
            let w = self.weights.as_ref().map_or(1.0, |w| w[c]);
            loss.push(-x * w);
            weight_total += w;
        }
        Ok((loss, weight_total))
    }

    fn reduce(&self, red: Reduction, elem: ElemType) -> Result<Tensor, OpError> {
        let (loss, weight_total) = self.per_sample()?;
        match red {
            Reduction::None => from_f64(elem, &self.target_shape, loss),
            Reduction::Sum => from_f64(elem, &[], vec![loss.iter().sum()]),
            // 0 / 0 (every target ignored) is NaN, as in the frameworks the spec cites.
            Reduction::Mean => from_f64(elem, &[], vec![loss.iter().sum::<f64>() / weight_total]),
        }
    }
}

fn nll_loss(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let input = i.tensor(0)?;
    let red = Reduction::from_attrs(n)?;
    let values = input.to_f64_vec()?;
    let loss = LossInput::new(n, input, values, i.tensor(1)?, i.opt(2)?)?;
    Ok(vec![Value::Tensor(loss.reduce(red, input.elem_type())?)])
}

/// Log-softmax over axis 1 of `(N, C, D)` values.
fn log_softmax_classes(v: &[f64], classes: usize, inner: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    let samples = v.len().checked_div(classes * inner).unwrap_or(0);
    for s in 0..samples {
        for d in 0..inner {
            let at = |c: usize| (s * classes + c) * inner + d;
            let max = (0..classes)
                .map(|c| v[at(c)])
                .fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..classes).map(|c| (v[at(c)] - max).exp()).sum();
            let log_sum = max + sum.ln();
            for c in 0..classes {
                out[at(c)] = v[at(c)] - log_sum;
            }
        }
    }
    out
}

fn softmax_cross_entropy(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let scores = i.tensor(0)?;
    let red = Reduction::from_attrs(n)?;
    need_float(scores, "SoftmaxCrossEntropyLoss")?;
    let shape = scores.shape();
    if shape.len() < 2 {
        return Err(OpError::new(format!(
            "scores must be (N, C, ...), got shape {shape:?}"
        )));
    }
    let log_prob = log_softmax_classes(&scores.to_f64_vec()?, shape[1], numel(&shape[2..]));
    let loss = LossInput::new(n, scores, log_prob, i.tensor(1)?, i.opt(2)?)?;
    let elem = scores.elem_type();
    let mut out = vec![Value::Tensor(loss.reduce(red, elem)?)];
    if n.outputs > 1 {
        out.push(Value::Tensor(from_f64(elem, shape, loss.log_prob)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attrs::{Attr, Attrs};

    fn info(attrs: &[(&str, Attr)], outputs: usize) -> NodeInfo {
        let mut a = Attrs::default();
        for (k, v) in attrs {
            a.set(k, v.clone());
        }
        NodeInfo {
            attrs: a,
            opset: 22,
            outputs,
        }
    }

    fn run(k: Kernel, n: &NodeInfo, vals: &[Value]) -> OpResult {
        k(
            n,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
        )
    }

    fn scalar(out: &[Value]) -> f32 {
        out[0].as_tensor().unwrap().to_f32_vec().unwrap()[0]
    }

    // The spec's examples: N=2, C=3, d1=2.
    fn example() -> (Value, Value, Value) {
        let input = Tensor::from_f32(
            &[2, 3, 2],
            vec![1., 2., 2., 2., 3., 2., 0., 1., 2., 2., 1., 2.],
        )
        .unwrap();
        let target = Tensor::from_i64(&[2, 2], vec![2, 1, 0, 2]).unwrap();
        let weight = Tensor::from_f32(&[3], vec![0.2, 0.3, 0.1]).unwrap();
        (
            Value::Tensor(input),
            Value::Tensor(target),
            Value::Tensor(weight),
        )
    }

    #[test]
    fn nll_without_reduction_negates_the_target_log_probabilities() {
        let (x, t, _) = example();
        let n = info(&[("reduction", Attr::String("none".into()))], 1);
        let out = run(nll_loss, &n, &[x, t]).unwrap();
        let y = out[0].as_tensor().unwrap();
        assert_eq!(y.shape(), &[2, 2]);
        assert_eq!(y.to_f32_vec().unwrap(), vec![-3., -2., -0., -2.]);
    }

    #[test]
    fn nll_weighted_sum_and_mean_match_the_spec_examples() {
        let (x, t, w) = example();
        let n = info(&[("reduction", Attr::String("sum".into()))], 1);
        let out = run(nll_loss, &n, &[x.clone(), t.clone(), w.clone()]).unwrap();
        assert!((scalar(&out) + 1.1).abs() < 1e-6);
        // Mean is the default reduction.
        let out = run(nll_loss, &info(&[], 1), &[x, t, w]).unwrap();
        // The spec prints -1.57: -1.1 over the weights 0.1 + 0.3 + 0.2 + 0.1.
        assert!((scalar(&out) + 1.1 / 0.7).abs() < 1e-6);
    }

    #[test]
    fn nll_mean_skips_ignored_targets_in_the_denominator() {
        let (x, t, _) = example();
        let n = info(&[("ignore_index", Attr::Int(2))], 1);
        let out = run(nll_loss, &n, &[x, t]).unwrap();
        // Only (0, d1=1) -> -2 and (1, d1=0) -> -0 count.
        assert_eq!(scalar(&out), -1.0);
    }

    #[test]
    fn nll_rejects_an_out_of_range_target() {
        let (x, _, _) = example();
        let t = Value::Tensor(Tensor::from_i64(&[2, 2], vec![2, 3, 0, 2]).unwrap());
        let err = run(nll_loss, &info(&[], 1), &[x, t]).unwrap_err();
        assert!(err.message.contains("outside [0, 3)"), "{err}");
    }

    #[test]
    fn nll_rejects_a_target_of_the_wrong_shape() {
        let (x, _, _) = example();
        let t = Value::Tensor(Tensor::from_i64(&[2], vec![0, 1]).unwrap());
        assert!(run(nll_loss, &info(&[], 1), &[x, t]).is_err());
    }

    #[test]
    fn cross_entropy_returns_loss_and_log_probabilities() {
        let x = Value::Tensor(Tensor::from_f32(&[1, 2], vec![0., 0.]).unwrap());
        let t = Value::Tensor(Tensor::from_i64(&[1], vec![1]).unwrap());
        let out = run(softmax_cross_entropy, &info(&[], 2), &[x, t]).unwrap();
        let ln2 = std::f32::consts::LN_2;
        assert!((scalar(&out) - ln2).abs() < 1e-6);
        let lp = out[1].as_tensor().unwrap().to_f32_vec().unwrap();
        assert!(lp.iter().all(|v| (v + ln2).abs() < 1e-6));
    }

    #[test]
    fn cross_entropy_rejects_an_unknown_reduction() {
        let x = Value::Tensor(Tensor::from_f32(&[1, 2], vec![0., 0.]).unwrap());
        let t = Value::Tensor(Tensor::from_i64(&[1], vec![1]).unwrap());
        let n = info(&[("reduction", Attr::String("max".into()))], 1);
        assert!(run(softmax_cross_entropy, &n, &[x, t]).is_err());
    }
}
