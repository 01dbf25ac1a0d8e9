//! The node-side process of Flotilla.
//!
//! The agent will sync signed bundles from the hub, verify and stage them, serve
//! them through the Open Inference Protocol and publish telemetry (issues 4, 6, 7).
//! Today it holds the conformance runner for the ONNX executor of
//! `flotilla-runtime`: the command that proves the executor against the ONNX
//! project's own backend test data.
//!
//! It does not implement operators (that is `flotilla-runtime`).
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap derive) and what each subcommand does.
//! - [`conformance`]: finds ONNX backend test folders, runs them, compares outputs,
//!   writes reports and checks pass counts against a floor file.

pub mod cli;
pub mod conformance;
