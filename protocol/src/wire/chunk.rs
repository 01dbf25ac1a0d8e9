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

/// The encoding of a [`ChunkFrame::ChunkData`] frame of `len` chunk bytes, up
/// to where those bytes start: the whole frame is this head followed by the
/// bytes themselves, so a sender can hand the chunk to its transport as it is
/// instead of copying it into an encoded frame. The result equals
/// [`super::encode_frame`] of the same frame minus its last `len` bytes.
///
/// # Errors
///
/// [`WireError::FrameTooLarge`] when the whole frame would exceed
/// `max_frame_bytes`.
pub fn chunk_data_head(
    digest: Sha256Digest,
    len: usize,
    max_frame_bytes: u64,
) -> Result<Vec<u8>, WireError> {
    let empty = ChunkFrame::ChunkData {
        digest,
        bytes: ByteBuf(Vec::new()),
    };
    let mut head = super::encode_frame(&empty, u64::MAX)?;
    // `bytes` is the frame's last field and CBOR lengths are definite, so the
    // empty encoding ends with the empty byte string's one-byte header.
    debug_assert_eq!(head.last(), Some(&0x40));
    head.pop();
    let n = len as u64;
    match n {
        0..=23 => head.push(0x40 | n as u8),
        24..=0xff => head.extend_from_slice(&[0x58, n as u8]),
        0x100..=0xffff => {
            head.push(0x59);
            head.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            head.push(0x5a);
            head.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            head.push(0x5b);
            head.extend_from_slice(&n.to_be_bytes());
        }
    }
    let body = (head.len() - super::LENGTH_PREFIX_BYTES) as u64 + n;
    let limit = max_frame_bytes.min(u64::from(u32::MAX));
    let prefix =
        u32::try_from(body)
            .ok()
            .filter(|_| body <= limit)
            .ok_or(WireError::FrameTooLarge {
                announced: body,
                limit,
            })?;
    head[..super::LENGTH_PREFIX_BYTES].copy_from_slice(&prefix.to_be_bytes());
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_data_head_plus_the_bytes_is_the_encoded_frame() {
        for len in [0usize, 1, 23, 24, 255, 256, 65_535, 65_536, 300_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let digest = Sha256Digest::of(&bytes);
            let whole = super::super::encode_frame(
                &ChunkFrame::ChunkData {
                    digest,
                    bytes: ByteBuf(bytes.clone()),
                },
                u64::MAX,
            )
            .unwrap();
            let mut parts = chunk_data_head(digest, len, u64::MAX).unwrap();
            parts.extend_from_slice(&bytes);
            assert_eq!(parts, whole, "length {len}");
        }
    }

    #[test]
    fn a_chunk_data_head_respects_the_frame_limit() {
        let d = Sha256Digest::of(b"x");
        let head = chunk_data_head(d, 1000, 2000).unwrap();
        let body = u32::from_be_bytes(head[..4].try_into().unwrap());
        assert_eq!(body as usize, head.len() - 4 + 1000);
        assert!(matches!(
            chunk_data_head(d, 2000, 2000),
            Err(WireError::FrameTooLarge { .. })
        ));
    }

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
