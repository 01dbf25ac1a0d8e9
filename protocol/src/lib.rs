//! The contract between Flotilla's hub and its agents, and nothing else.
//!
//! Pure logic over bytes: no sockets, no clocks, no files. Time comes in as a
//! [`time::UtcTime`] argument; bytes come in through slices or `std::io::Read`.
//! Both the hub (which builds and signs) and the agent (which verifies) link it.
//!
//! # Layout
//! - [`limits`]: bounds on every untrusted size.
//! - [`digest`]: SHA-256 content addresses.
//! - [`chunking`]: FastCDC content-defined chunking.
//! - [`manifest`]: the bundle manifest (CBOR) and the model signature types.
//! - [`tuf`]: TUF 1.0 metadata, verification, and the section 5 client workflow.
//! - [`director`]: the per-device director document.
//! - [`bundle`]: the self-contained bundle file (tar) and its streaming verifier.
//! - [`time`]: TUF's UTC timestamps.
//! - [`reconcile`]: the agent's sync-and-activation state machine (sans-IO).
//! - [`wire`]: the hub<->agent frames and their length-prefixed CBOR codec.
//! - [`telemetry`]: telemetry windows, mergeable histograms, drift statistics,
//!   the agent's outbox policy and the hub's deduplication (sans-IO).

pub mod bundle;
pub mod chunking;
pub mod digest;
pub mod director;
pub mod limits;
pub mod manifest;
pub mod reconcile;
pub mod telemetry;
pub mod time;
pub mod tuf;
pub mod wire;

pub use limits::Limits;
