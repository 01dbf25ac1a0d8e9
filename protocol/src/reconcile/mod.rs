//! The agent's sync-and-activation logic as a sans-IO state machine.
//!
//! [`Reconciler`] takes a verified desired state ([`DesiredState`]), answers
//! from the agent's chunk store, chunks from the hub, trial results and the
//! time (`now`) through its `handle_*` methods, and says what to do next through
//! [`Reconciler::poll_action`]: query the store, fetch chunks, write verified
//! chunks, stage, activate, run a trial, commit or roll back, persist its
//! record, report a status, collect garbage. Per deployment it keeps three
//! slots, as Bottlerocket keeps A/B partitions: *active* (serving), *staged*
//! (complete, not yet serving) and *previous* (the version before active, kept
//! on disk for rollback), plus the version being fetched.
//!
//! Design: "change in memory, persist once". Every transition mutates memory and
//! queues one [`Action::Persist`] with the whole [`AgentRecord`]; the record's
//! `active` field *is* the activation pointer, so writing it (one redb
//! transaction) is the atomic switch. The driver performs actions in the order
//! polled and makes each `Persist` durable before it performs the next action.
//! After a crash at any instant, [`Reconciler::restore`] from the last record
//! serves exactly the record's active version (never a mix, never nothing once
//! something was committed) and carries on where it stood: a fetch re-asks the
//! store which chunks it holds, a trial is run again (at most
//! [`ReconcileConfig::max_trial_attempts`] times, then rolled back).
//!
//! What it does not do: open sockets or files, read clocks, run models, or
//! verify TUF metadata (that is [`crate::tuf`] and [`crate::director`], before a
//! [`DesiredState`] can be built). It verifies every chunk's digest itself.
//!
//! # Layout
//! - [`desired`]: the verified desired state and deployment keys.
//! - [`machine`]: the [`Reconciler`] and its transitions.
//! - `restore`: rebuilding a [`Reconciler`] from its record after a restart.
//! - `deployment`: one deployment's slots in memory, and its status.
//! - `fetch`: which chunks are wanted, queried, queued and in flight.
//! - [`action`]: what the reconciler asks its driver to do.
//! - [`record`]: the persisted record (CBOR, schema-versioned) and slots.

pub mod action;
mod deployment;
pub mod desired;
mod fetch;
pub mod machine;
pub mod record;
mod restore;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use action::Action;
pub use desired::{manifest_refs, DeploymentKey, DesiredState, ManifestRef};
pub use machine::Reconciler;
pub use record::{AgentRecord, DeploymentRecord, Rejection, Slot, SlotRecord, TrialRecord};

use crate::digest::Sha256Digest;
use crate::manifest::ManifestError;
use crate::tuf::TufError;

/// Tunables of the reconciler. Unlike [`crate::Limits`] these bound no hostile
/// input; they pace the agent's own work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// Seconds a trial may run before it counts as failed.
    pub trial_timeout_secs: i64,
    /// Trial runs of one activation, counting runs cut short by an agent
    /// restart, before the version is rolled back (a model that crashes the
    /// agent must not crash-loop it).
    pub max_trial_attempts: u32,
    /// Seconds before an unanswered chunk request (or one the hub said it
    /// lacks) is sent again.
    pub chunk_timeout_secs: i64,
    /// Most chunks requested and not yet arrived, over all streams.
    pub max_chunks_in_flight: usize,
    /// Least seconds between two fetch-progress reports of one deployment.
    pub progress_interval_secs: i64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            trial_timeout_secs: 120,
            max_trial_attempts: 3,
            chunk_timeout_secs: 30,
            max_chunks_in_flight: 64,
            progress_interval_secs: 5,
        }
    }
}

/// Why the reconciler refused an input. None of these changes its state except
/// [`ReconcileError::ChunkRejected`], after which the chunk is fetched again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    /// A manifest does not match what trusted targets metadata signs.
    #[error(transparent)]
    Tuf(#[from] TufError),
    /// The director names a target whose manifest bytes were not supplied.
    #[error("no manifest bytes were supplied for target {target}")]
    MissingManifest {
        /// The target path.
        target: String,
    },
    /// A manifest (signed or from the record) does not decode or validate.
    #[error("manifest of target {target}: {source}")]
    Manifest {
        /// The target path.
        target: String,
        /// What is wrong.
        source: ManifestError,
    },
    /// A signed manifest sits at a target path that is not its own name/version.
    #[error("target {target} holds the manifest of {manifest_path}")]
    TargetMismatch {
        /// The target path named.
        target: String,
        /// The path the manifest's name and version give.
        manifest_path: String,
    },
    /// The director document names a manifest digest that is not SHA-256 hex.
    #[error("target {target}: {sha256:?} is not a SHA-256 digest")]
    BadDigest {
        /// The target path.
        target: String,
        /// The string given.
        sha256: String,
    },
    /// More deployments than [`crate::Limits::max_deployments`].
    #[error("{count} deployments, limit is {limit}")]
    TooManyDeployments {
        /// Deployments named.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A desired state older than the one already applied.
    #[error(
        "desired state from director version {offered} is older than applied version {applied}"
    )]
    StaleDesired {
        /// Version applied.
        applied: u64,
        /// Version offered.
        offered: u64,
    },
    /// Chunk bytes do not hash to (or are not as long as) the digest requested.
    #[error("chunk {digest} rejected: got {actual_len} bytes hashing to {actual}, expected {expected_len} bytes")]
    ChunkRejected {
        /// The digest requested.
        digest: Sha256Digest,
        /// The signed length.
        expected_len: u32,
        /// Bytes received.
        actual_len: usize,
        /// Their digest, of the kind checked.
        actual: crate::digest::AnyDigest,
    },
    /// An input names a deployment the reconciler does not have.
    #[error("no deployment {0}")]
    UnknownDeployment(DeploymentKey),
    /// A trial result for a version that is not on trial.
    #[error("deployment {key}: {target} is not on trial")]
    UnexpectedTrialResult {
        /// The deployment.
        key: DeploymentKey,
        /// The target named.
        target: String,
    },
    /// The persisted record is not CBOR of the record's shape.
    #[error("agent record is not valid CBOR: {0}")]
    RecordDecode(String),
    /// The persisted record was written by a schema this build does not read.
    #[error("agent record schema version {0} is not supported (this build reads {current})", current = record::RECORD_SCHEMA_VERSION)]
    UnsupportedRecordSchema(u32),
}
