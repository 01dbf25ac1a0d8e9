//! Reads the test data files of an ONNX backend test: `input_J.pb` and
//! `output_J.pb`, serialized `TensorProto`, `SequenceProto` or `OptionalProto`.
//!
//! `SequenceProto` and `OptionalProto` come from ONNX's `onnx-data.proto`, which the
//! runtime's generated schema does not include; the two messages are declared here
//! by hand with the same field numbers. Maps and sparse tensors are not read.

use std::path::Path;

use flotilla_runtime::onnx::TensorProto;
use flotilla_runtime::{decode_tensor, ElemType, ModelError, Value, ValueKind};
use prost::Message;

/// `onnx.SequenceProto`, the fields the runner reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SequenceProto {
    /// Name of the value.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// `SequenceProto.DataType`: 1 tensor, 2 sparse, 3 sequence, 4 map, 5 optional.
    #[prost(int32, optional, tag = "2")]
    pub elem_type: Option<i32>,
    /// The tensors of a tensor sequence.
    #[prost(message, repeated, tag = "3")]
    pub tensor_values: Vec<TensorProto>,
}

/// `onnx.OptionalProto`, the fields the runner reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OptionalProto {
    /// Name of the value.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// `OptionalProto.DataType`: 0 undefined (empty), 1 tensor, 3 sequence.
    #[prost(int32, optional, tag = "2")]
    pub elem_type: Option<i32>,
    /// The tensor, when the optional holds one.
    #[prost(message, optional, tag = "3")]
    pub tensor_value: Option<TensorProto>,
    /// The sequence, when the optional holds one.
    #[prost(message, optional, tag = "5")]
    pub sequence_value: Option<SequenceProto>,
}

/// Why a data file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not the expected protobuf message.
    #[error("decoding {path}: {message}")]
    Decode {
        /// The file.
        path: String,
        /// prost's message.
        message: String,
    },
    /// The tensor could not be turned into a runtime tensor.
    #[error("{path}: {source}")]
    Tensor {
        /// The file.
        path: String,
        /// The runtime's error.
        source: ModelError,
    },
}

impl DataError {
    /// True when the data uses an element type the executor does not hold.
    pub fn is_unsupported_type(&self) -> bool {
        matches!(
            self,
            Self::Tensor {
                source: ModelError::UnsupportedElementType { .. },
                ..
            }
        )
    }
}

/// Reads one data file as a value of `kind`; returns the name stored in it (may be
/// empty) and the value.
pub fn read_value(path: &Path, kind: ValueKind) -> Result<(String, Value), DataError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: p.clone(),
        source,
    })?;
    let decode_err = |e: prost::DecodeError| DataError::Decode {
        path: p.clone(),
        message: e.to_string(),
    };
    let tensor = |t: &TensorProto| {
        decode_tensor(t, None).map_err(|source| DataError::Tensor {
            path: p.clone(),
            source,
        })
    };
    let sequence = |s: &SequenceProto| -> Result<Value, DataError> {
        let items = s
            .tensor_values
            .iter()
            .map(tensor)
            .collect::<Result<Vec<_>, _>>()?;
        let elem = items.first().map_or(ElemType::F32, |t| t.elem_type());
        Ok(Value::Sequence(elem, items))
    };
    match kind {
        ValueKind::Sequence => {
            let s = SequenceProto::decode(&*bytes).map_err(decode_err)?;
            Ok((s.name.clone().unwrap_or_default(), sequence(&s)?))
        }
        ValueKind::Optional => {
            let o = OptionalProto::decode(&*bytes).map_err(decode_err)?;
            let name = o.name.clone().unwrap_or_default();
            let v = if let Some(t) = &o.tensor_value {
                Value::Tensor(tensor(t)?)
            } else if let Some(s) = &o.sequence_value {
                sequence(s)?
            } else {
                Value::None
            };
            Ok((name, v))
        }
        _ => {
            let t = TensorProto::decode(&*bytes).map_err(decode_err)?;
            Ok((
                t.name.clone().unwrap_or_default(),
                Value::Tensor(tensor(&t)?),
            ))
        }
    }
}
