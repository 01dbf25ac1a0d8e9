//! Operator kernels, by family, and the registry that maps an ONNX `op_type` to its
//! kernel.
//!
//! A kernel is a plain function from a node's decoded attributes and its input
//! values to its output values. Kernels validate what they are given (shapes,
//! element types, index ranges) and return an [`OpError`], never panic. They run on
//! whatever device their input tensors live on where candle has the operation, and
//! on host copies otherwise.
//!
//! This module does not plan or schedule: [`crate::plan`] orders the nodes and
//! [`crate::exec`] calls the kernels.

mod attention;
mod attrs;
mod causal_conv;
mod col2im;
mod common;
mod constant;
pub(crate) mod control;
mod conv;
mod deform_conv;
mod detection;
mod einsum;
mod elementwise;
mod fastmath;
mod flex_attention;
mod fused;
mod gather;
mod grid;
mod linear_attention;
mod loss;
mod matmul;
pub(crate) mod matmul_bias;
mod misc;
mod norm;
mod numeric;
mod pool;
mod precision;
mod qlinear;
mod reduce;
mod resize;
mod rnn;
mod rotary;
mod select;
mod sequence;
mod sgemm;
mod shape;
mod signal;
mod simd;
mod slicing;
mod softmax;
mod swiglu;
mod tensor_scatter;
#[cfg(test)]
mod testing;
mod text;
mod unary;
mod unique;
mod unpool;
mod window;

use std::fmt;

pub(crate) use attrs::{Attr, Attrs};
pub(crate) use fused::{Activation, FUSED_ACTIVATION, FUSED_MAX_POOL, NARROW_GEMM};
pub(crate) use rnn::{pack_recurrent, R_TRANSPOSED, W_TRANSPOSED};

use crate::tensor::Tensor;
use crate::value::Value;

/// Why a kernel failed; the executor adds the node's name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpError {
    pub(crate) message: String,
}

impl OpError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<candle_core::Error> for OpError {
    fn from(e: candle_core::Error) -> Self {
        Self::new(e.to_string())
    }
}

/// What a kernel returns: one value per declared output (trailing optional outputs
/// may be left off).
pub(crate) type OpResult = Result<Vec<Value>, OpError>;

/// A kernel: attributes and the opset in force, then the inputs.
pub(crate) type Kernel = fn(&NodeInfo, &Inputs<'_>) -> OpResult;

/// What a kernel knows about its node.
#[derive(Debug, Clone)]
pub(crate) struct NodeInfo {
    /// The node's attributes.
    pub(crate) attrs: Attrs,
    /// The opset version of the node's domain that the model imports.
    pub(crate) opset: i64,
    /// How many outputs the node declares (empty names included).
    pub(crate) outputs: usize,
}

/// A node's input values; absent optional inputs are `None`.
#[derive(Debug)]
pub(crate) struct Inputs<'a> {
    pub(crate) values: Vec<Option<&'a Value>>,
}

impl<'a> Inputs<'a> {
    /// How many inputs the node declares (empty names included).
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    /// The value at `i`, if given.
    pub(crate) fn value(&self, i: usize) -> Option<&'a Value> {
        self.values.get(i).copied().flatten()
    }

    /// The tensor at `i`, which must be present.
    pub(crate) fn tensor(&self, i: usize) -> Result<&'a Tensor, OpError> {
        match self.value(i) {
            Some(Value::Tensor(t)) => Ok(t),
            Some(other) => Err(OpError::new(format!(
                "input {i} is a {}, expected a tensor",
                other.kind()
            ))),
            None => Err(OpError::new(format!("input {i} is required"))),
        }
    }

    /// The tensor at `i`, if present.
    pub(crate) fn opt(&self, i: usize) -> Result<Option<&'a Tensor>, OpError> {
        match self.value(i) {
            None => Ok(None),
            Some(_) => self.tensor(i).map(Some),
        }
    }

    /// All present tensors, in order.
    pub(crate) fn tensors(&self) -> Result<Vec<&'a Tensor>, OpError> {
        (0..self.len())
            .filter(|&i| self.value(i).is_some())
            .map(|i| self.tensor(i))
            .collect()
    }
}

/// The kernel for `op_type` in `domain` (empty or `ai.onnx` for the default domain).
pub(crate) fn lookup(domain: &str, op_type: &str) -> Option<Kernel> {
    // The preview domain has its own names; only FlexAttention is implemented.
    if domain == "ai.onnx.preview" {
        return flex_attention::lookup_preview(op_type);
    }
    if domain == crate::gradient::PRIVATE_DOMAIN {
        return crate::gradient::lookup_private(op_type);
    }
    if !(domain.is_empty() || domain == "ai.onnx") {
        return None;
    }
    let families: &[fn(&str) -> Option<Kernel>] = &[
        attention::lookup,
        qlinear::lookup,
        linear_attention::lookup,
        causal_conv::lookup,
        tensor_scatter::lookup,
        swiglu::lookup,
        rotary::lookup,
        resize::lookup,
        constant::lookup,
        slicing::lookup,
        elementwise::lookup,
        unary::lookup,
        matmul::lookup,
        conv::lookup,
        pool::lookup,
        norm::lookup,
        shape::lookup,
        reduce::lookup,
        gather::lookup,
        softmax::lookup,
        rnn::lookup,
        misc::lookup,
        control::lookup,
        sequence::lookup,
        grid::lookup,
        detection::lookup,
        col2im::lookup,
        unpool::lookup,
        deform_conv::lookup,
        loss::lookup,
        numeric::lookup,
        select::lookup,
        signal::lookup,
        text::lookup,
        unique::lookup,
        common::lookup,
    ];
    families.iter().find_map(|f| f(op_type))
}

/// True when the operator's result depends only on its inputs and attributes, so a
/// node whose inputs are all constants can be run once at load time.
pub(crate) fn is_foldable(op_type: &str) -> bool {
    !matches!(
        op_type,
        "RandomNormal"
            | "RandomUniform"
            | "RandomNormalLike"
            | "RandomUniformLike"
            | "Multinomial"
            | "Bernoulli"
            | "If"
            | "Loop"
            | "Scan"
    )
}

/// One output value.
pub(crate) fn one(t: Tensor) -> OpResult {
    Ok(vec![Value::Tensor(t)])
}
