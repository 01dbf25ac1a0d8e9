//! Telemetry: what an agent publishes per window over MQTT, how windows merge,
//! the drift statistics the hub derives from them, and the agent's outbox policy.
//!
//! Every record here is CBOR with a `schema_version` first, like the manifest,
//! and is decoded only through a `decode(bytes, &Limits)` that bounds every
//! count and length. Everything that aggregates is *mergeable*: latency
//! histograms over fixed buckets, drift counts over the baseline's bins,
//! counters that add. That is what lets the agent's outbox compact old windows
//! instead of dropping them, and the hub build fleet views by merging windows
//! across devices.
//!
//! This module opens no socket, reads no clock and touches no file: the agent's
//! MQTT publisher and redb outbox table and the hub's ingest and store move the
//! bytes and apply the [`outbox::OutboxChange`]s; time comes in as
//! [`crate::time::UtcTime`] fields set by the caller.
//!
//! # Layout
//! - [`histogram`]: the mergeable log-bucketed histogram (latencies, batch sizes).
//! - [`drift`]: per-feature counts over the baseline's bins; `drift/stats.rs`:
//!   PSI, JS, KS and the rates.
//! - [`window`]: [`TelemetryWindow`], the per-window record, and its merge;
//!   `window/validate.rs`: its invariants and limits.
//! - [`ack`]: [`WindowAck`], the hub's end-to-end acknowledgement.
//! - [`event`]: [`Event`], the lifecycle event record on the events topic.
//! - [`topics`]: the MQTT topic names, and their validation and parsing.
//! - [`outbox`]: the agent's bounded outbox as a sans-IO model (compaction, acks).
//! - [`dedupe`]: the hub's per-device deduplication by sequence range.
//! - `codec`: the shared CBOR encode and schema-first decode.

pub mod ack;
mod codec;
pub mod dedupe;
pub mod drift;
pub mod event;
pub mod histogram;
pub mod outbox;
pub mod topics;
pub mod window;

#[cfg(test)]
mod testutil;

pub use ack::WindowAck;
pub use dedupe::{Dedupe, Verdict};
pub use drift::{
    DriftError, FeatureCounts, FeatureDrift, FeatureRecorder, FeatureValue, ObservedFeature,
};
pub use event::Event;
pub use histogram::Histogram;
pub use outbox::{Outbox, OutboxChange, OutboxError, OutboxMeta, PendingWindow};
pub use topics::TopicError;
pub use window::{
    AcceleratorStats, AgentStats, DriftObservation, EndpointStats, MergeError, SystemStats,
    TelemetryWindow, WindowKey,
};

/// Telemetry schema this code writes and reads: windows, acks and events.
pub const TELEMETRY_SCHEMA_VERSION: u32 = 1;

/// Bytes from a peer that are not a valid telemetry record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The encoded record is larger than its limit.
    #[error("{what} is {actual} bytes, limit is {limit}")]
    TooLarge {
        /// Which record.
        what: &'static str,
        /// Encoded size.
        actual: u64,
        /// The limit.
        limit: u64,
    },
    /// The bytes are not CBOR of the expected shape.
    #[error("{what} is not valid CBOR: {reason}")]
    Decode {
        /// Which record.
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The record was written by a schema this build does not read.
    #[error("{what} schema version {version} is not supported (this build reads {TELEMETRY_SCHEMA_VERSION})")]
    UnsupportedSchema {
        /// Which record.
        what: &'static str,
        /// The version found.
        version: u64,
    },
    /// Bytes follow the record's CBOR value.
    #[error("{extra} bytes follow the {what}'s CBOR value")]
    TrailingBytes {
        /// Which record.
        what: &'static str,
        /// How many.
        extra: usize,
    },
    /// A count or length inside the record is above its limit.
    #[error("{what} is {actual}, limit is {limit}")]
    LimitExceeded {
        /// What was counted.
        what: &'static str,
        /// The value found.
        actual: u64,
        /// The limit.
        limit: u64,
    },
    /// A field breaks an invariant of the record.
    #[error("{what}: {detail}")]
    Invalid {
        /// Which field.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

/// A count above `limit` is a [`TelemetryError::LimitExceeded`].
pub(crate) fn check_count(
    what: &'static str,
    n: usize,
    limit: usize,
) -> Result<(), TelemetryError> {
    if n > limit {
        return Err(TelemetryError::LimitExceeded {
            what,
            actual: n as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}

/// A name must be non-empty and at most `limit` bytes.
pub(crate) fn check_name(what: &'static str, s: &str, limit: usize) -> Result<(), TelemetryError> {
    if s.is_empty() {
        return Err(invalid(what, "is empty"));
    }
    check_count(what, s.len(), limit)
}

/// A [`TelemetryError::Invalid`].
pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> TelemetryError {
    TelemetryError::Invalid {
        what,
        detail: detail.into(),
    }
}
