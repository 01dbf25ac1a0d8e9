//! What the reconciler asks its driver (the agent's async glue) to do.
//!
//! The driver polls actions one at a time and performs them in order. A
//! [`Action::Persist`] must be durable before the next action is performed; an
//! action that fails on I/O is reported at once with
//! [`super::Reconciler::handle_action_failed`], before polling the next one.

use super::desired::DeploymentKey;
use super::record::{AgentRecord, Slot};
use crate::digest::Sha256Digest;
use crate::wire::DeploymentStatus;

/// One step for the driver.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Ask the chunk store which of these it holds; answer with
    /// [`super::Reconciler::handle_store_answer`].
    QueryStore {
        /// Digests to look up.
        digests: Vec<Sha256Digest>,
    },
    /// Request these chunks from the hub (one `ChunkRequest`, on any chunk
    /// stream); feed what comes back to `handle_chunk` / `handle_chunk_missing`.
    FetchChunks {
        /// Digests wanted.
        // invariant: at most `Limits::max_digests_per_request`.
        digests: Vec<Sha256Digest>,
    },
    /// Write these verified bytes to the content-addressed store.
    WriteChunk {
        /// Their digest, checked.
        digest: Sha256Digest,
        /// The bytes, with the digest they were hashed to.
        bytes: crate::digest::HashedBytes,
    },
    /// Materialise `slot`'s bundle from the store next to the active version,
    /// without touching what serves. Every chunk is in the store.
    Stage {
        /// The deployment.
        key: DeploymentKey,
        /// The bundle to stage (boxed: a manifest is large next to the other
        /// actions).
        slot: Box<Slot>,
    },
    /// Serve `target` for `key` from now on. The record already says so (a
    /// `Persist` came first); the previous version stays on disk. Also sent for
    /// every active version after [`super::Reconciler::restore`], to (re)load it.
    Activate {
        /// The deployment.
        key: DeploymentKey,
        /// The target to serve.
        target: String,
    },
    /// Load the active version and run its self-test; answer with
    /// [`super::Reconciler::handle_trial_result`].
    RunTrial {
        /// The deployment.
        key: DeploymentKey,
        /// The target on trial.
        target: String,
    },
    /// The trial passed: `target` stays.
    Commit {
        /// The deployment.
        key: DeploymentKey,
        /// The target committed.
        target: String,
    },
    /// `from` failed: serve `to` again (or nothing, when there was no earlier
    /// version). The record already says so.
    RollBack {
        /// The deployment.
        key: DeploymentKey,
        /// The target that failed.
        from: String,
        /// The target served again.
        to: Option<String>,
        /// Why.
        reason: String,
    },
    /// The director no longer names `key`: stop serving it and drop its files.
    Retire {
        /// The deployment.
        key: DeploymentKey,
    },
    /// Write this record durably (replacing the last) before any later action.
    Persist(AgentRecord),
    /// Send this status to the hub on the control stream.
    Report(DeploymentStatus),
    /// These chunks are referenced by no slot and no fetch any more. The driver
    /// may delete them whenever it likes, after checking
    /// [`super::Reconciler::is_referenced`] again at that time.
    CollectGarbage {
        /// Candidates for deletion.
        digests: Vec<Sha256Digest>,
    },
}
