//! The hub<->agent wire: every frame, defined once, and the one framing codec.
//!
//! A connection carries one control stream ([`ControlFrame`]) and any number of
//! chunk streams ([`ChunkFrame`]). On every stream a frame is a big-endian `u32`
//! length followed by that many bytes of CBOR: the two-element array
//! `[schema_version, frame]`. The schema version comes first so that a frame
//! from a newer peer gets [`WireError::UnsupportedSchema`], not a field mismatch.
//!
//! This module neither opens streams nor decides what to send: the QUIC
//! transport moves bytes through [`FrameDecoder`] and [`encode_frame`]; the hub
//! and the agent's [`crate::reconcile`] decide what the frames mean.
//!
//! # Layout
//! - [`codec`]: length-prefixed framing and the streaming decoder.
//! - [`control`]: control-stream frames: hello, metadata, status, ping, goodbye.
//! - [`status`]: a deployment's status as the agent reports it.
//! - [`chunk`]: chunk-stream frames: request, data, missing.
//! - [`enrol`]: enrolment frames: token and CSR for a device certificate.
//! - [`bytes`]: opaque byte strings (chunks, signed documents).

pub mod bytes;
pub mod chunk;
pub mod codec;
pub mod control;
pub mod enrol;
pub mod status;

#[cfg(test)]
mod props;

pub use bytes::ByteBuf;
pub use chunk::{chunk_data_head, parse_chunk_data_head, ChunkFrame, ChunkHead};
pub use codec::{encode_frame, FrameDecoder};
pub use control::{
    AcceleratorInfo, AgentHello, ControlFrame, Inventory, MetadataUpdate, TrustedVersions,
};
pub use enrol::EnrolFrame;
pub use status::{DeploymentState, DeploymentStatus};

use crate::limits::Limits;

/// Wire schema this code writes and reads.
pub const WIRE_SCHEMA_VERSION: u32 = 1;

/// Bytes of the length prefix before every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// A frame type that can travel on a stream: [`ControlFrame`] or [`ChunkFrame`].
pub trait Frame: serde::Serialize + serde::de::DeserializeOwned + sealed::Sealed {
    /// Checks the counts and lengths a decoded frame must respect; the codec
    /// calls it on every frame it decodes.
    fn validate(&self, limits: &Limits) -> Result<(), WireError>;
}

pub(crate) mod sealed {
    /// Only this module's frame types are frames.
    pub trait Sealed {}
}

/// Why bytes from a peer are not a frame. After any of these the stream is out
/// of step and must be closed; the decoder refuses further input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The length prefix announces a frame above the stream's limit.
    #[error("frame of {announced} bytes announced, limit is {limit}")]
    FrameTooLarge {
        /// The announced length.
        announced: u64,
        /// The limit.
        limit: u64,
    },
    /// The frame is not CBOR, or not the shape of any frame.
    #[error("frame is not valid CBOR for this stream: {0}")]
    Decode(String),
    /// The peer writes a schema this build does not read.
    #[error("wire schema version {0} is not supported (this build speaks {WIRE_SCHEMA_VERSION})")]
    UnsupportedSchema(u64),
    /// Bytes follow the CBOR value inside the frame.
    #[error("{extra} bytes follow the frame's CBOR value")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// A count or length inside the frame is above its limit.
    #[error("frame {what} is {actual}, limit is {limit}")]
    LimitExceeded {
        /// What was counted.
        what: &'static str,
        /// The value found.
        actual: u64,
        /// The limit.
        limit: u64,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the unfinished frame received.
        buffered: usize,
    },
    /// The decoder already failed; the stream is out of step.
    #[error("decoder used after an earlier error")]
    Poisoned,
}
