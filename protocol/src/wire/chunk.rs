//! Chunk-stream frames: the agent asks for chunks by digest, the hub answers
//! each with its bytes or says it has none.
//!
//! Manifests travel the same way: they are content-addressed too (the director
//! names each manifest's SHA-256), so an agent fetches a manifest it lacks with
//! a [`ChunkFrame::ChunkRequest`] for that digest. Nothing here checks that bytes
//! hash to their digest: the receiver does (the agent's
//! [`crate::reconcile::Reconciler::handle_chunk`]), because only it knows what it
//! asked for.

use serde::{Deserialize, Serialize};

use super::bytes::ByteBuf;
use super::status::check_count;
use super::{Frame, WireError};
use crate::digest::Sha256Digest;
use crate::limits::Limits;

/// A frame on a chunk stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChunkFrame {
    /// Agent to hub: send these chunks (or manifests), in any order.
    // invariant: at most `Limits::max_digests_per_request` digests.
    ChunkRequest {
        /// Content addresses wanted.
        digests: Vec<Sha256Digest>,
    },
    /// Hub to agent: the bytes of one chunk.
    ChunkData {
        /// The digest requested.
        digest: Sha256Digest,
        /// Its bytes, unverified until the agent hashes them.
        bytes: ByteBuf,
    },
    /// Hub to agent: the hub does not have this chunk.
    ChunkMissing {
        /// The digest requested.
        digest: Sha256Digest,
    },
}

impl Frame for ChunkFrame {
    fn validate(&self, limits: &Limits) -> Result<(), WireError> {
        match self {
            Self::ChunkRequest { digests } => check_count(
                "digests in a chunk request",
                digests.len(),
                limits.max_digests_per_request,
            ),
            Self::ChunkData { bytes, .. } => {
                let max = limits.max_chunk_bytes.max(limits.max_manifest_bytes);
                if bytes.len() as u64 > max {
                    return Err(WireError::LimitExceeded {
                        what: "chunk data bytes",
                        actual: bytes.len() as u64,
                        limit: max,
                    });
                }
                Ok(())
            }
            Self::ChunkMissing { .. } => Ok(()),
        }
    }
}

impl super::sealed::Sealed for ChunkFrame {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_for_too_many_digests_is_rejected() {
        let limits = Limits {
            max_digests_per_request: 2,
            ..Limits::default()
        };
        let f = ChunkFrame::ChunkRequest {
            digests: vec![Sha256Digest([1; 32]); 3],
        };
        assert!(matches!(
            f.validate(&limits),
            Err(WireError::LimitExceeded { actual: 3, .. })
        ));
    }
}
