//! Shared pieces of Flotilla's fuzz targets: the genuine material they compare
//! against and the way a fuzz input becomes the bytes under test.
//!
//! It holds no target itself (those are the binaries in `fuzz_targets/`) and
//! checks nothing: each target states and asserts its own property.
//!
//! # Layout
//! - [`genuine`]: a small signed repository, manifest and bundle, built once per
//!   process from fixed key seeds.
//! - [`input`]: splits a fuzz input into a mode byte and either raw bytes or an
//!   edit of a genuine document.

#![forbid(unsafe_code)]

pub mod genuine;
pub mod input;
