//! The trust chain: TUF 1.0 metadata, its verification, and the client update
//! workflow of the TUF specification, section 5, as a sans-IO state machine.
//!
//! # Layout
//! - [`canonical`]: canonical JSON, the bytes signatures cover.
//! - [`keys`]: ed25519 keys and key ids (ring).
//! - [`metadata`]: root, targets, snapshot, timestamp bodies and the envelope.
//! - [`verify`]: thresholds, hashes, lengths.
//! - [`client`]: the update workflow (5.1–5.7) over fetched bytes.
//!
//! Off-spec: delegated targets roles are not supported (Flotilla's targets role
//! signs every bundle itself), and a fifth top-level role, `director`, signs the
//! per-device director documents (see [`crate::director`]).

pub mod canonical;
pub mod client;
pub mod keys;
pub mod metadata;
pub mod repo;
pub mod verify;

pub use client::{Fetch, TrustedSet, Updater};
pub use keys::{KeyId, PublicKey, SigningKey};
pub use metadata::{Envelope, MetaFile, Role, Root, Snapshot, TargetFile, Targets, Timestamp};

use crate::time::UtcTime;

/// Why metadata or a target was not trusted. Every variant names the role or file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TufError {
    /// The document is larger than its limit.
    #[error("{role} metadata is {actual} bytes, limit is {limit}")]
    TooLarge {
        /// The role.
        role: Role,
        /// Size received.
        actual: u64,
        /// The limit.
        limit: u64,
    },
    /// The document is not well-formed.
    #[error("{role} metadata is malformed: {reason}")]
    Parse {
        /// The role.
        role: Role,
        /// What the parser said.
        reason: String,
    },
    /// `_type` names another role (a document served in place of another).
    #[error("{role} metadata has _type {found:?}")]
    WrongType {
        /// The role expected.
        role: Role,
        /// The `_type` found.
        found: String,
    },
    /// Root does not list the role.
    #[error("root does not define the {0} role")]
    MissingRole(Role),
    /// A role's threshold is zero.
    #[error("root gives the {0} role a threshold of 0")]
    ZeroThreshold(Role),
    /// A role has fewer keys than its threshold.
    #[error("root gives the {role} role threshold {threshold} but only {keys} keys")]
    UnreachableThreshold {
        /// The role.
        role: Role,
        /// Distinct known keys.
        keys: u64,
        /// Its threshold.
        threshold: u64,
    },
    /// A key id is not the hash of the key it names.
    #[error("root lists key id {keyid} for a key with a different id")]
    KeyIdMismatch {
        /// The offending id.
        keyid: KeyId,
    },
    /// Too few distinct authorised keys signed.
    #[error(
        "{role} metadata: signature threshold not met ({valid} valid of {threshold} required)"
    )]
    Threshold {
        /// The role.
        role: Role,
        /// Distinct valid signatures from authorised keys.
        valid: u64,
        /// The threshold.
        threshold: u64,
    },
    /// A new root's version is not the trusted version plus one.
    #[error("{role} metadata has version {found}, expected {expected}")]
    VersionMismatch {
        /// The role.
        role: Role,
        /// The version required.
        expected: u64,
        /// The version found.
        found: u64,
    },
    /// The document is older than what is already trusted.
    #[error("rollback of {role} metadata: trusted version {trusted}, offered {offered}")]
    Rollback {
        /// The role.
        role: Role,
        /// Version already trusted.
        trusted: u64,
        /// Version offered.
        offered: u64,
    },
    /// The document has expired (freeze attack or stale repository).
    #[error("{role} metadata expired at {expires} (now {now})")]
    Expired {
        /// The role.
        role: Role,
        /// Its expiry.
        expires: UtcTime,
        /// The update's fixed start time.
        now: UtcTime,
    },
    /// A referring document does not list what it must.
    #[error("{role} metadata does not list {what}")]
    MissingMeta {
        /// The referring role.
        role: Role,
        /// What is missing.
        what: String,
    },
    /// Bytes do not have the signed length.
    #[error("{what}: length mismatch: expected {expected} bytes, got {actual}")]
    LengthMismatch {
        /// What was checked.
        what: String,
        /// Signed length.
        expected: u64,
        /// Actual length.
        actual: u64,
    },
    /// Bytes do not have the signed SHA-256.
    #[error("{what}: sha256 mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        /// What was checked.
        what: String,
        /// Signed digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// Hashes are given but without `sha256`.
    #[error("{what}: no sha256 hash is given")]
    MissingSha256 {
        /// What was checked.
        what: String,
    },
    /// The update walked more root versions than the limit allows.
    #[error("more than {0} root rotations in one update")]
    TooManyRotations(u64),
    /// A document the workflow needs was not available.
    #[error("{0} metadata is not available")]
    NotFound(Role),
    /// The target is not listed in trusted targets metadata.
    #[error("target {0} is not listed in trusted targets metadata")]
    UnknownTarget(String),
    /// The workflow was driven out of order (a caller bug).
    #[error("update workflow misuse: {0}")]
    Misuse(&'static str),
}
