//! The hub<->agent QUIC transport: TLS configuration on ring, the pinned and
//! revocation-aware certificate verifiers, framed streams over quinn, bandwidth
//! limits and reconnect backoff.
//!
//! A crate of its own because the hub and the agent both need exactly this and
//! `flotilla-protocol` must stay sans-IO (DESIGN.md): the frames and what they
//! mean live in the protocol crate; how they cross a QUIC connection lives here.
//!
//! # Layout
//! - [`tls`]: server and client configurations, the enrolment pin, revocation.
//! - [`framed`]: length-prefixed CBOR frames on quinn streams, with limits.
//! - [`rate`]: a token-bucket bandwidth limiter (global and per connection).
//! - [`backoff`]: exponential reconnect backoff with full jitter.
//! - [`udp`]: endpoint sockets with buffers sized for bulk transfer.
//!
//! Every connection is TLS 1.3 with the ring provider only. ALPN tells the two
//! kinds of connection apart: [`ALPN_SYNC`] (mTLS with a device certificate)
//! and [`ALPN_ENROL`] (no client certificate yet; the agent pins the hub's CA).

pub mod backoff;
pub mod framed;
pub mod rate;
pub mod signal;
pub mod tls;
pub mod udp;

pub use backoff::Backoff;
pub use framed::{FramedRecv, FramedSend};
pub use rate::Bandwidth;

/// ALPN of the sync connection (DESIGN.md: `flotilla/1`).
pub const ALPN_SYNC: &[u8] = b"flotilla/1";
/// ALPN of the enrolment connection.
pub const ALPN_ENROL: &[u8] = b"flotilla-enrol/1";
/// The name the hub's certificate carries and agents verify, whatever address
/// they dial (the CA, not DNS, is what they trust).
pub const HUB_SERVER_NAME: &str = "flotilla-hub";

/// QUIC application error codes on connection close.
pub mod close {
    /// Normal shutdown.
    pub const NORMAL: u32 = 0;
    /// The peer broke the protocol (bad frame, wrong order, limit exceeded).
    pub const PROTOCOL: u32 = 1;
    /// The device was revoked.
    pub const REVOKED: u32 = 2;
    /// The hub is at its connection limit; try again later.
    pub const BUSY: u32 = 3;
    /// The device connected again; this older connection is replaced.
    pub const REPLACED: u32 = 4;
    /// The hub is shutting down.
    pub const SHUTDOWN: u32 = 5;
}

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The TLS configuration could not be built (bad key or certificate).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Dialling failed before a connection existed.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// Writing to a stream failed.
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from a stream failed.
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadError),
    /// The peer's bytes are not frames of this stream.
    #[error("bad frame from peer: {0}")]
    Wire(#[from] flotilla_protocol::wire::WireError),
    /// The peer said nothing for too long.
    #[error("peer silent for {0:?}")]
    Timeout(std::time::Duration),
    /// A socket could not be opened.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}
