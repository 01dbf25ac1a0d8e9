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

/// What [`parse_chunk_data_head`] makes of the bytes at a frame boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkHead {
    /// Too few bytes to tell; the frame is known to hold at least this many
    /// (counted from the boundary), so waiting for them cannot stall.
    NeedMore(usize),
    /// A [`ChunkFrame::ChunkData`] frame laid out exactly as
    /// [`chunk_data_head`] writes it, within the limits: its first `head_len`
    /// bytes are the head, the next `len` bytes the chunk.
    Data {
        /// The digest the frame names.
        digest: Sha256Digest,
        /// Chunk bytes that follow the head.
        len: usize,
        /// Bytes of the head, length prefix included.
        head_len: usize,
    },
    /// Anything else (another frame, another layout, or a frame over the
    /// limits): decode it with the general decoder, which also reports errors.
    Other,
}

/// The body of an empty `ChunkData` frame without its final empty byte
/// string header, and where the digest's 32 bytes sit in it; `None` if the
/// encoding does not have the expected shape (then nothing takes the fast
/// path).
fn chunk_head_template() -> Option<&'static (Vec<u8>, usize)> {
    static TEMPLATE: std::sync::OnceLock<Option<(Vec<u8>, usize)>> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let mut head = chunk_data_head(Sha256Digest([0; 32]), 0, u64::MAX).ok()?;
            // Drop the length prefix and the empty byte string's header (0x40).
            (head.pop()? == 0x40).then_some(())?;
            let fixed = head.split_off(super::LENGTH_PREFIX_BYTES);
            // ... 0x58 0x20 <digest> 0x65 "bytes": the digest is a 32-byte
            // byte string right before the last key.
            let tail: &[u8] = &[0x65, b'b', b'y', b't', b'e', b's'];
            let at = fixed.len().checked_sub(tail.len() + 32)?;
            let shaped = fixed.ends_with(tail)
                && at >= 2
                && fixed[at - 2..at] == [0x58, 0x20]
                && fixed[at..at + 32] == [0; 32];
            shaped.then_some((fixed, at))
        })
        .as_ref()
}

/// Recognises, at a frame boundary in `buf`, the head of a
/// [`ChunkFrame::ChunkData`] frame as the hub sends it, so that a receiver
/// can take the chunk bytes straight from its transport (one copy, hashed on
/// the way) instead of buffering and decoding the whole frame.
///
/// The result is exact: `Data` only when the frame's bytes are those of
/// [`chunk_data_head`] for that digest and length, the length prefix agrees,
/// the frame fits `max_frame_bytes` and the chunk fits `limits`. Everything
/// else is `Other` and goes to [`super::FrameDecoder`], which decodes it or
/// reports what is wrong, as before.
pub fn parse_chunk_data_head(buf: &[u8], max_frame_bytes: u64, limits: &Limits) -> ChunkHead {
    const P: usize = super::LENGTH_PREFIX_BYTES;
    let Some((fixed, at)) = chunk_head_template() else {
        return ChunkHead::Other;
    };
    let Some(prefix) = buf.get(..P) else {
        return ChunkHead::NeedMore(P);
    };
    let body = u64::from(u32::from_be_bytes([
        prefix[0], prefix[1], prefix[2], prefix[3],
    ]));
    let min_body = fixed.len() as u64 + 1;
    if body < min_body || body > max_frame_bytes {
        return ChunkHead::Other;
    }
    let Some(head) = buf.get(P..P + fixed.len() + 1) else {
        return ChunkHead::NeedMore(P + fixed.len() + 1);
    };
    if head[..*at] != fixed[..*at] || head[at + 32..fixed.len()] != fixed[at + 32..] {
        return ChunkHead::Other;
    }
    let extra = match head[fixed.len()] {
        0x40..=0x57 => 0,
        0x58 => 1,
        0x59 => 2,
        0x5a => 4,
        0x5b => 8,
        _ => return ChunkHead::Other,
    };
    let head_len = P + fixed.len() + 1 + extra;
    if body < (head_len - P) as u64 {
        return ChunkHead::Other;
    }
    let Some(len_bytes) = buf.get(P + fixed.len() + 1..head_len) else {
        return ChunkHead::NeedMore(head_len);
    };
    let len = match extra {
        0 => u64::from(head[fixed.len()] - 0x40),
        _ => len_bytes
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
    };
    let max_chunk = limits.max_chunk_bytes.max(limits.max_manifest_bytes);
    if body != (head_len - P) as u64 + len || len > max_chunk {
        return ChunkHead::Other;
    }
    let Ok(len) = usize::try_from(len) else {
        return ChunkHead::Other;
    };
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&head[*at..at + 32]);
    ChunkHead::Data {
        digest: Sha256Digest(digest),
        len,
        head_len,
    }
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
    fn every_head_the_hub_writes_is_recognised_exactly() {
        let limits = Limits::default();
        for len in [0usize, 1, 23, 24, 255, 256, 65_535, 65_536, 300_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 5 + 1) as u8).collect();
            let digest = Sha256Digest::of(&bytes);
            let head = chunk_data_head(digest, len, u64::MAX).unwrap();
            let mut frame = head.clone();
            frame.extend_from_slice(&bytes);
            assert_eq!(
                parse_chunk_data_head(&frame, u64::MAX, &limits),
                ChunkHead::Data {
                    digest,
                    len,
                    head_len: head.len()
                },
                "length {len}"
            );
            // Any prefix of the head asks for more, never decides wrongly.
            for cut in 0..head.len() {
                assert!(
                    matches!(
                        parse_chunk_data_head(&frame[..cut], u64::MAX, &limits),
                        ChunkHead::NeedMore(n) if n > cut && n <= head.len()
                    ),
                    "length {len}, cut {cut}"
                );
            }
        }
    }

    #[test]
    fn other_frames_and_altered_heads_go_to_the_general_decoder() {
        let limits = Limits::default();
        let d = Sha256Digest::of(b"x");
        let missing =
            super::super::encode_frame(&ChunkFrame::ChunkMissing { digest: d }, u64::MAX).unwrap();
        assert_eq!(
            parse_chunk_data_head(&missing, u64::MAX, &limits),
            ChunkHead::Other
        );
        let request = super::super::encode_frame(
            &ChunkFrame::ChunkRequest {
                digests: vec![d; 40],
            },
            u64::MAX,
        )
        .unwrap();
        assert_eq!(
            parse_chunk_data_head(&request, u64::MAX, &limits),
            ChunkHead::Other
        );
        let mut frame = chunk_data_head(d, 1000, u64::MAX).unwrap();
        frame.extend_from_slice(&[7u8; 1000]);
        // A length prefix that disagrees with the byte string's length.
        let mut bad = frame.clone();
        bad[3] = bad[3].wrapping_add(1);
        assert_eq!(
            parse_chunk_data_head(&bad, u64::MAX, &limits),
            ChunkHead::Other
        );
        // A changed byte in the fixed part (not the digest).
        let mut bad = frame.clone();
        bad[6] ^= 0x01;
        assert_eq!(
            parse_chunk_data_head(&bad, u64::MAX, &limits),
            ChunkHead::Other
        );
        // Over the frame limit, or over the chunk limit.
        assert_eq!(
            parse_chunk_data_head(&frame, 500, &limits),
            ChunkHead::Other
        );
        let tiny = Limits {
            max_chunk_bytes: 10,
            max_manifest_bytes: 10,
            ..Limits::default()
        };
        assert_eq!(
            parse_chunk_data_head(&frame, u64::MAX, &tiny),
            ChunkHead::Other
        );
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
