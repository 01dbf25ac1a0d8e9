//! Flotilla's model runtime.
//!
//! This crate will hold the ONNX executor (on candle-core, to come). It is a crate of
//! its own because both deployables need it: the hub validates models and extracts
//! their signatures when they are registered, and the agent serves them. Today it
//! reads ONNX models and builds small deterministic ones for tests and demos.
//!
//! It does not fetch, store or verify model bytes (that is the bundle and chunk
//! machinery of `flotilla-protocol`), and it has no I/O of its own.
//!
//! # Layout
//!
//! - [`onnx`]: the ONNX protobuf schema as prost types, generated once and committed.
//! - [`signature`]: [`model_signature`], a model's input/output signature as a
//!   [`ModelSignature`](flotilla_protocol::manifest::ModelSignature).
//! - [`generate`]: seeded model builders ([`generate::mlp`],
//!   [`generate::with_replaced_initializer`]) for demos, tests and benches.
//! - [`error`]: [`ModelError`], the one error type of the layer.

pub mod error;
pub mod generate;
pub mod onnx;
pub mod signature;

pub use error::ModelError;
pub use signature::{model_signature, MAX_SIGNATURE_VALUES};
