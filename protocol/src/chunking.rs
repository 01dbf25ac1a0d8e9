//! Content-defined chunking of model files (FastCDC, 2020 variant).
//!
//! Design: chunk boundaries depend on content, not offsets, so two versions of a
//! model that share most tensors share most chunks and an agent fetches only what
//! changed. Parameters are fixed protocol constants: changing them changes every
//! chunk address in the fleet, so they are versioned with the manifest schema.
//!
//! This module reads from any [`std::io::Read`] and never opens files itself.

use std::io::Read;

use crate::digest::{Blake3Digest, Sha256Digest};

/// Smallest chunk FastCDC cuts (except a file's last chunk).
pub const MIN_CHUNK: u32 = 256 * 1024;
/// Target average chunk size.
pub const AVG_CHUNK: u32 = 1024 * 1024;
/// Largest chunk FastCDC cuts.
pub const MAX_CHUNK: u32 = 4 * 1024 * 1024;

/// One chunk of a file: where it lies and what it hashes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// SHA-256 of the chunk's bytes.
    pub digest: Sha256Digest,
    /// BLAKE3 of the chunk's bytes (what receivers verify it by).
    pub blake3: Blake3Digest,
}

/// Chunking failed because the reader failed.
#[derive(Debug, thiserror::Error)]
#[error("reading data to chunk: {0}")]
pub struct ChunkingError(#[from] pub std::io::Error);

/// Cuts an in-memory buffer into chunks.
pub fn chunk_bytes(data: &[u8]) -> Vec<Chunk> {
    fastcdc::v2020::FastCDC::new(data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
        .map(|c| Chunk {
            offset: c.offset as u64,
            len: c.length as u32,
            digest: Sha256Digest::of(&data[c.offset..c.offset + c.length]),
            blake3: Blake3Digest::of(&data[c.offset..c.offset + c.length]),
        })
        .collect()
}

/// Streams `reader` through the chunker, handing each chunk with its bytes to
/// `sink`; memory stays bounded by [`MAX_CHUNK`] whatever the input size.
pub fn chunk_stream<R: Read>(
    reader: R,
    mut sink: impl FnMut(&Chunk, &[u8]) -> std::io::Result<()>,
) -> Result<Vec<Chunk>, ChunkingError> {
    let mut out = Vec::new();
    for c in fastcdc::v2020::StreamCDC::new(reader, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
        let c = c.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => ChunkingError(io),
            other => ChunkingError(std::io::Error::other(other.to_string())),
        })?;
        let chunk = Chunk {
            offset: c.offset,
            len: c.length as u32,
            digest: Sha256Digest::of(&c.data),
            blake3: Blake3Digest::of(&c.data),
        };
        sink(&chunk, &c.data)?;
        out.push(chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    #[test]
    fn an_insertion_near_the_start_keeps_later_chunks() {
        let a = noise(16 << 20, 7);
        let mut b = a.clone();
        b.splice(1000..1000, [1u8, 2, 3]);
        let ca: std::collections::HashSet<_> =
            chunk_bytes(&a).into_iter().map(|c| c.digest).collect();
        let cb = chunk_bytes(&b);
        let shared = cb.iter().filter(|c| ca.contains(&c.digest)).count();
        assert!(shared + 2 >= cb.len(), "{shared} of {} shared", cb.len());
    }

    #[test]
    fn streaming_and_in_memory_chunking_agree() {
        let data = noise(9 << 20, 3);
        let mut seen = Vec::new();
        let streamed = chunk_stream(&data[..], |c, bytes| {
            assert_eq!(Sha256Digest::of(bytes), c.digest);
            assert_eq!(Blake3Digest::of(bytes), c.blake3);
            seen.extend_from_slice(bytes);
            Ok(())
        })
        .unwrap();
        assert_eq!(streamed, chunk_bytes(&data));
        assert_eq!(seen, data);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn chunks_tile_the_input_within_bounds(len in 0usize..(10 << 20), seed in any::<u64>()) {
            let data = noise(len, seed | 1);
            let chunks = chunk_bytes(&data);
            let mut next = 0u64;
            for (i, c) in chunks.iter().enumerate() {
                prop_assert_eq!(c.offset, next);
                prop_assert!(c.len <= MAX_CHUNK);
                if i + 1 < chunks.len() { prop_assert!(c.len >= MIN_CHUNK); }
                next += u64::from(c.len);
            }
            prop_assert_eq!(next, len as u64);
        }
    }
}
