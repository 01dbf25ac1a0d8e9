//! Flotilla's hub: it holds the model registry, packages model versions into
//! signed bundles, and serves the fleet over QUIC (enrolment, metadata push,
//! chunks) and REST (operators).
//!
//! It provides the signing side of the trust chain, the device CA and the
//! `flotilla` operator CLI. It does not verify bundles the way an agent must (that logic is
//! in `flotilla-protocol`, which the CLI calls), and it never needs root's
//! private keys except in `keys` commands run offline.
//!
//! # Layout
//! - [`keystore`]: the keys directory: offline root keys, online role keys, the
//!   root chain and the latest published metadata.
//! - [`packer`]: model file → manifest → signed bundle file.
//! - [`cli`]: the `flotilla` command line.
//! - [`sync`]: the QUIC endpoint agents enrol and sync with.
//! - [`server`]: start-up, listeners and shutdown.
//! - [`telemetry`]: MQTT broker and client, ingest, the telemetry store,
//!   events delivery, fleet views.
//! - [`alerts`]: alert rules and their evaluator (sans-IO).
//! - [`webhooks`]: signed event delivery with retries.

pub mod alerts;
pub mod api;
pub mod audit;
pub mod blobs;
pub mod cli;
pub mod config;
pub mod devices;
pub mod events;
pub mod keystore;
pub mod packer;
pub mod registry;
pub mod server;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tokens;
pub mod webhooks;

/// The current time from the system clock, as the protocol crate takes it.
pub fn now() -> flotilla_protocol::time::UtcTime {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    flotilla_protocol::time::UtcTime(secs)
}

/// Structured logs to stderr, filtered by `FLOTILLA_LOG` (default `default`).
pub fn init_logging(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
