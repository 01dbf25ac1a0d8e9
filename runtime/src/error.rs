//! [`ModelError`]: why a byte string could not be read or rewritten as an ONNX model.
//!
//! One enum for the whole model layer (decoding, signature extraction and the test
//! model builders). It carries context (tensor names, type codes, counts) but no
//! I/O errors: nothing in this crate reads files yet.

use thiserror::Error;

/// A model's bytes could not be decoded, or describe something this runtime does not
/// support.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The bytes are not a valid protobuf encoding of an ONNX `ModelProto`.
    #[error("model is not a valid ONNX protobuf: {message}")]
    Decode {
        /// prost's description of the decode failure.
        message: String,
    },
    /// The model has no main graph (`ModelProto.graph` is absent).
    #[error("model has no graph")]
    NoGraph,
    /// A graph input or output is a tensor of an element type Flotilla does not serve
    /// (complex, 8/6/4/2-bit floats and ints, or `UNDEFINED`).
    #[error("tensor {tensor:?} has unsupported ONNX element type code {code}")]
    UnsupportedElementType {
        /// Name of the graph input or output.
        tensor: String,
        /// The ONNX `TensorProto.DataType` code found (0 when absent).
        code: i32,
    },
    /// A graph input or output is not a dense tensor (a sequence, map, optional,
    /// sparse tensor or opaque value).
    #[error("graph value {name:?} is a {kind}, not a tensor")]
    NonTensorValue {
        /// Name of the graph input or output.
        name: String,
        /// What it is instead: "sequence", "map", "optional", "sparse tensor" or "opaque".
        kind: &'static str,
    },
    /// A graph input or output has no type information.
    #[error("graph value {name:?} has no type")]
    MissingType {
        /// Name of the graph input or output.
        name: String,
    },
    /// The graph declares more inputs or outputs than
    /// [`MAX_SIGNATURE_VALUES`](crate::signature::MAX_SIGNATURE_VALUES).
    #[error("graph declares {count} {role}, more than the limit of {limit}")]
    TooManyValues {
        /// "inputs" or "outputs".
        role: &'static str,
        /// How many the graph declares.
        count: usize,
        /// The limit in force.
        limit: usize,
    },
    /// No initializer of the graph has the requested name.
    #[error("graph has no initializer named {name:?}")]
    InitializerNotFound {
        /// The name asked for.
        name: String,
    },
    /// The initializer exists but cannot be regenerated in place.
    #[error("initializer {name:?} cannot be regenerated: {reason}")]
    UnsupportedInitializer {
        /// Name of the initializer.
        name: String,
        /// Why not (not float32, external data, dims that disagree with the data).
        reason: &'static str,
    },
}
