//! Flotilla's model runtime: reads ONNX models and executes them on candle-core.
//!
//! It is a crate of its own because both deployables need it: the hub validates
//! models and extracts their signatures when they are registered, and the agent
//! serves them. A [`Model`] is loaded and planned once (weights decoded to tensors,
//! nodes ordered, dead nodes dropped, constants folded, intermediates freed after
//! their last use) and then run any number of times, from any number of threads.
//!
//! It does not fetch, store or verify model bytes (that is the bundle and chunk
//! machinery of `flotilla-protocol`), and its only I/O is reading external tensor
//! data that a model names, relative to the directory the caller gives.
//!
//! # Layout
//!
//! - [`onnx`]: the ONNX protobuf schema as prost types, generated once and committed.
//! - [`signature`]: [`model_signature`], a model's input/output signature as a
//!   [`ModelSignature`](flotilla_protocol::manifest::ModelSignature).
//! - [`generate`]: seeded model builders ([`generate::mlp`],
//!   [`generate::with_replaced_initializer`]) for demos, tests and benches.
//! - [`model`]: [`Model`], loading and running; [`ValueSpec`] describes its inputs
//!   and outputs.
//! - [`tensor`]: [`Tensor`] and [`ElemType`], ONNX element types over candle tensors.
//! - [`value`]: [`Value`], a tensor, a sequence or an empty optional.
//! - [`tensor_io`]: [`decode_tensor`], `TensorProto` to [`Tensor`] (raw, typed and
//!   external data).
//! - `plan` (private): the execution plan built once per load.
//! - `exec` (private): runs a plan with per-run slots.
//! - `ops` (private): the kernels by operator family and the registry.
//! - [`error`]: [`ModelError`] (loading) and [`RunError`] (running).

pub mod error;
mod exec;
pub mod generate;
pub(crate) mod gradient;
pub mod model;
pub mod onnx;
mod ops;
mod plan;
pub mod pool;
pub mod signature;
pub mod tensor;
pub mod tensor_io;
pub mod value;

pub use error::{ModelError, RunError};
pub use model::{DimSpec, Model, ValueKind, ValueSpec};
pub use signature::{model_signature, MAX_SIGNATURE_VALUES};
pub use tensor::{ElemType, Tensor};
pub use tensor_io::decode_tensor;
pub use value::Value;
