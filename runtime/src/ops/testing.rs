//! Helpers for the kernels' unit tests: a node's info from attributes, and a
//! kernel call that returns its first output as a tensor.

use crate::ops::{Attr, Attrs, Inputs, Kernel, NodeInfo, OpError};
use crate::tensor::Tensor;
use crate::value::Value;

/// A node at `opset` declaring `outputs` outputs, with these attributes.
pub(crate) fn info_with(opset: i64, outputs: usize, attrs: &[(&str, Attr)]) -> NodeInfo {
    let mut a = Attrs::default();
    for (k, v) in attrs {
        a.set(k, v.clone());
    }
    NodeInfo {
        attrs: a,
        opset,
        outputs,
    }
}

/// Runs `k` on `vals` (all present) and returns its first output, which must
/// be a tensor.
pub(crate) fn run(k: Kernel, n: &NodeInfo, vals: &[Value]) -> Result<Tensor, OpError> {
    let out = k(
        n,
        &Inputs {
            values: vals.iter().map(Some).collect(),
        },
    )?;
    out.first()
        .and_then(Value::as_tensor)
        .cloned()
        .ok_or_else(|| OpError::new("the kernel's first output is not a tensor"))
}

/// [`run`] of a one-output node at `opset` on tensors.
pub(crate) fn call(
    k: Kernel,
    opset: i64,
    attrs: &[(&str, Attr)],
    ts: Vec<Tensor>,
) -> Result<Tensor, OpError> {
    let vals: Vec<Value> = ts.into_iter().map(Value::Tensor).collect();
    run(k, &info_with(opset, 1, attrs), &vals)
}
