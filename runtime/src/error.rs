//! [`ModelError`]: why a byte string could not be read or rewritten as an ONNX model.
//!
//! One enum for the whole model layer (decoding, signature extraction, loading and
//! planning an executable [`Model`](crate::Model), and the test model builders), and
//! one for the execution layer ([`RunError`]). Both carry context (tensor and node
//! names, type codes, counts); I/O failures (external tensor data) are kept as
//! messages so that the enums stay `Clone` and comparable.

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
    /// A node uses an operator this executor does not implement (or a domain it does
    /// not know).
    #[error("unsupported operator {domain}{op_type} (opset {opset}) in node {node:?}")]
    UnsupportedOperator {
        /// The node's `op_type`.
        op_type: String,
        /// The node's domain followed by a dot, or empty for the default ONNX domain.
        domain: String,
        /// The opset version the model imports for that domain (0 when not imported).
        opset: i64,
        /// The node's name (may be empty: names are optional in ONNX).
        node: String,
    },
    /// A `Gradient` node (`ai.onnx.preview.training`) asks for a derivative
    /// this executor cannot build at load time.
    #[error("Gradient node {node:?}: {reason}")]
    UnsupportedGradient {
        /// The node's name (may be empty).
        node: String,
        /// What stops it.
        reason: String,
    },
    /// The model imports an opset version of the default domain outside what this
    /// executor implements.
    #[error("unsupported ONNX opset {opset} (supported: {min} to {max})")]
    UnsupportedOpset {
        /// The version the model imports.
        opset: i64,
        /// Oldest supported version.
        min: i64,
        /// Newest supported version.
        max: i64,
    },
    /// The graph is not well formed: a value used but never produced, a value
    /// produced twice, a cycle, a tensor whose data disagrees with its dims, ...
    #[error("malformed graph: {reason}")]
    Malformed {
        /// What is wrong, naming the node or value concerned.
        reason: String,
    },
    /// A node attribute is missing, of the wrong type or out of range.
    #[error("node {node:?} ({op_type}): attribute {attribute:?}: {reason}")]
    BadAttribute {
        /// The node's name.
        node: String,
        /// The node's `op_type`.
        op_type: String,
        /// The attribute's name.
        attribute: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor's data lives in an external file that could not be read.
    #[error("external data of tensor {tensor:?} at {location:?}: {reason}")]
    ExternalData {
        /// Name of the tensor.
        tensor: String,
        /// The `location` entry, as written in the model.
        location: String,
        /// Why it could not be read (missing base directory, path escapes it, I/O
        /// error, range past the end of the file).
        reason: String,
    },
}

/// A loaded model could not be run on the given inputs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RunError {
    /// A graph input was not supplied.
    #[error("missing input {name:?}")]
    MissingInput {
        /// Name of the graph input.
        name: String,
    },
    /// A supplied input is not an input of the graph.
    #[error("unknown input {name:?}")]
    UnknownInput {
        /// The name supplied.
        name: String,
    },
    /// A supplied input has another element type than the graph declares.
    #[error("input {name:?} has element type {actual}, the graph declares {expected}")]
    InputType {
        /// Name of the graph input.
        name: String,
        /// The declared element type.
        expected: String,
        /// The supplied element type.
        actual: String,
    },
    /// A supplied input's shape contradicts the graph's declared rank or fixed dims.
    #[error("input {name:?} has shape {actual:?}, the graph declares {expected}")]
    InputShape {
        /// Name of the graph input.
        name: String,
        /// The declared shape, as text (symbolic dims by name).
        expected: String,
        /// The supplied shape.
        actual: Vec<usize>,
    },
    /// A supplied input is a tensor where the graph wants a sequence, or the reverse.
    #[error("input {name:?}: expected a {expected}")]
    InputKind {
        /// Name of the graph input.
        name: String,
        /// "tensor" or "sequence".
        expected: &'static str,
    },
    /// A node failed while running (shapes that do not agree, an index out of range,
    /// an element type the kernel does not handle, ...).
    #[error("node {node:?} ({op_type}): {message}")]
    Node {
        /// The node's name.
        node: String,
        /// The node's `op_type`.
        op_type: String,
        /// What went wrong.
        message: String,
    },
    /// A graph output was never produced (the graph names an output no node writes).
    #[error("output {name:?} was not produced")]
    MissingOutput {
        /// Name of the graph output.
        name: String,
    },
}
