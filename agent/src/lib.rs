//! The node-side process of Flotilla.
//!
//! The agent enrols with a hub (`enroll`), holds a QUIC connection to it
//! (`run`), fetches only the chunks it lacks, verifies everything against its
//! pinned TUF root, stages bundles, activates them atomically, runs a trial and
//! rolls back on its own when the trial fails. It also holds the conformance
//! runner for the ONNX executor of `flotilla-runtime`, and the scoring server
//! applications on the node call (Open Inference Protocol v2). Telemetry comes
//! with issue 7.
//!
//! It does not implement operators (that is `flotilla-runtime`).
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap derive) and what each subcommand does.
//! - [`conformance`]: finds ONNX backend test folders, runs them, compares outputs,
//!   writes reports and checks pass counts against a floor file.
//! - [`config`]: `agent.toml`, environment overrides, the data dir's files.
//! - [`enrol`]: `enroll`: device key, CSR, pinned CA, certificate, pinned root.
//! - [`sync`]: `run`: the event loop driving the protocol's `Reconciler`.
//! - [`store`]: the agent's redb file: chunks, record, trusted metadata.
//! - [`slots`]: staging bundles on disk atomically, and trials.
//! - [`inventory`]: CPUs, memory and accelerators for the hello.
//! - [`serve`]: the scoring server: Open Inference Protocol v2 over HTTP, traffic
//!   split, mirror, backpressure, batching, metrics; `serve` for local debugging.

pub mod batch;
pub mod cli;
pub mod config;
pub mod conformance;
pub mod enrol;
pub mod inventory;
pub mod serve;
pub mod slots;
pub mod store;
pub mod sync;
pub mod telemetry;
