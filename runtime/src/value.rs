//! [`Value`]: what flows along a graph edge: a tensor, a sequence of tensors, or an
//! empty optional.
//!
//! Most models only ever pass tensors; sequences and optionals exist for the
//! sequence and optional operators. This module holds no operator logic.

use crate::tensor::{ElemType, Tensor};

/// A value on a graph edge.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Value {
    /// A dense tensor.
    Tensor(Tensor),
    /// An ONNX sequence: tensors of one element type (the type is kept so that an
    /// empty sequence still has one).
    Sequence(ElemType, Vec<Tensor>),
    /// An optional with no value (`OptionalProto` without a value).
    None,
}

impl Value {
    /// The tensor, if this is one.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Self::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tensor(_) => "tensor",
            Self::Sequence(..) => "sequence",
            Self::None => "empty optional",
        }
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Self {
        Self::Tensor(t)
    }
}
