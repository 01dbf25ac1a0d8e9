//! SHA-256 digests, the one content address used across Flotilla.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A SHA-256 digest. Serialises as 32 raw bytes in CBOR and as lowercase hex in
/// human-readable formats (JSON, TOML).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_ring(ring::digest::digest(&ring::digest::SHA256, data))
    }

    /// Converts a finished ring SHA-256 context output.
    pub fn from_ring(d: ring::digest::Digest) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

/// Bytes together with their SHA-256, computed when the value is made: the
/// only ways to get one are [`HashedBytes::new`] and [`HashedBytesBuilder`]
/// (which hashes every byte it appends), so a holder can compare
/// [`HashedBytes::sha256`] with an expected digest without hashing again (a
/// receiver hashes on whichever thread read the bytes, and the code that
/// decides still does the comparing).
///
/// The bytes are kept as the pieces they arrived in ([`bytes::Bytes`], shared,
/// not copied): a chunk received over QUIC is the transport's decrypted
/// packet payloads, hashed in place and written from there
/// ([`HashedBytes::pieces`]), never gathered into one buffer on the way.
#[derive(Clone)]
pub struct HashedBytes {
    pieces: Vec<bytes::Bytes>,
    len: usize,
    sha256: Sha256Digest,
}

impl HashedBytes {
    /// Hashes `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        let sha256 = Sha256Digest::of(&bytes);
        let len = bytes.len();
        Self {
            pieces: vec![bytes::Bytes::from(bytes)],
            len,
            sha256,
        }
    }

    /// The SHA-256 of the bytes.
    pub fn sha256(&self) -> Sha256Digest {
        self.sha256
    }

    /// The bytes, in order, as the pieces they arrived in.
    pub fn pieces(&self) -> &[bytes::Bytes] {
        &self.pieces
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes in one buffer (without a copy when they are one unshared
    /// piece).
    pub fn into_vec(self) -> Vec<u8> {
        if self.pieces.len() <= 1 {
            return self
                .pieces
                .into_iter()
                .next()
                .map(Vec::from)
                .unwrap_or_default();
        }
        let mut v = Vec::with_capacity(self.len);
        for p in &self.pieces {
            v.extend_from_slice(p);
        }
        v
    }
}

// Equal digests and lengths are equal bytes, however they are split.
impl PartialEq for HashedBytes {
    fn eq(&self, other: &Self) -> bool {
        self.sha256 == other.sha256 && self.len == other.len
    }
}

impl Eq for HashedBytes {}

/// Shortest piece [`HashedBytesBuilder::push`] keeps as it is; shorter ones
/// are copied.
///
/// Design: a piece shares the transport's receive buffer (quinn copies each
/// receive batch, up to 64 KiB, into one allocation and hands out slices of
/// it), so keeping a piece keeps its whole batch alive. Copying short
/// pieces bounds what a peer sending tiny stream frames can pin to 16x the
/// chunk's bytes (64 KiB / 4 KiB), and the piece list to one entry per
/// 4 KiB; packets of a 6500-byte path keep their pieces, a 1500-byte path's
/// are copied, as every chunk was before.
pub const MIN_SHARED_PIECE: usize = 4096;

/// Builds a [`HashedBytes`] from pieces, hashing each piece as it is
/// appended (while it is still in cache).
#[derive(Default)]
pub struct HashedBytesBuilder {
    pieces: Vec<bytes::Bytes>,
    /// Copied bytes not yet a piece.
    tail: Vec<u8>,
    len: usize,
    hasher: Sha256Hasher,
}

impl HashedBytesBuilder {
    /// An empty builder expecting about `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            pieces: Vec::with_capacity((n / MIN_SHARED_PIECE).clamp(1, 1024)),
            ..Self::default()
        }
    }

    /// Appends (and hashes) a copy of `data`.
    pub fn extend(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len();
        self.tail.extend_from_slice(data);
    }

    /// Appends (and hashes) `piece`, shared rather than copied when it is at
    /// least [`MIN_SHARED_PIECE`] bytes.
    pub fn push(&mut self, piece: bytes::Bytes) {
        if piece.len() < MIN_SHARED_PIECE {
            self.extend(&piece);
            return;
        }
        self.hasher.update(&piece);
        self.len += piece.len();
        self.end_tail();
        self.pieces.push(piece);
    }

    /// Bytes appended so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes with their digest.
    pub fn finish(mut self) -> HashedBytes {
        self.end_tail();
        HashedBytes {
            pieces: self.pieces,
            len: self.len,
            sha256: self.hasher.finish(),
        }
    }

    /// Makes the copied bytes so far a piece.
    fn end_tail(&mut self) {
        if !self.tail.is_empty() {
            self.pieces
                .push(bytes::Bytes::from(std::mem::take(&mut self.tail)));
        }
    }
}

impl fmt::Debug for HashedBytesBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashedBytesBuilder({} bytes)", self.len)
    }
}

// A chunk is megabytes; show its length and digest only.
impl fmt::Debug for HashedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashedBytes({} bytes, {})", self.len, self.sha256)
    }
}

/// An incremental SHA-256 over data fed in pieces.
pub struct Sha256Hasher(ring::digest::Context);

impl fmt::Debug for Sha256Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256Hasher")
    }
}

impl Default for Sha256Hasher {
    fn default() -> Self {
        Self(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Sha256Hasher {
    /// Feeds more bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// Finishes and returns the digest.
    pub fn finish(self) -> Sha256Digest {
        Sha256Digest::from_ring(self.0.finish())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Sha256Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SHA-256 digest (32 bytes or 64 hex characters)")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                <[u8; 32]>::try_from(v)
                    .map(Sha256Digest)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Sha256Digest::from_hex(v)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_kept_as_given_and_hash_like_the_whole() {
        let whole: Vec<u8> = (0..10 + MIN_SHARED_PIECE).map(|i| i as u8).collect();
        let piece = bytes::Bytes::from(whole[10..].to_vec());
        let mut b = HashedBytesBuilder::with_capacity(whole.len());
        b.extend(&whole[..10]);
        b.push(piece.clone());
        assert_eq!(b.len(), whole.len());
        let h = b.finish();
        assert_eq!(h.sha256(), Sha256Digest::of(&whole));
        assert_eq!(h.len(), whole.len());
        assert_eq!(h.pieces().len(), 2);
        assert_eq!(
            h.pieces()[1].as_ptr(),
            piece.as_ptr(),
            "a pushed piece is shared, not copied"
        );
        assert_eq!(h, HashedBytes::new(whole.clone()), "equal however split");
        assert_eq!(h.into_vec(), whole);
        assert!(HashedBytesBuilder::default().finish().is_empty());
        assert_eq!(HashedBytes::new(whole.clone()).into_vec(), whole);
    }

    #[test]
    fn short_pieces_are_copied_into_one() {
        let mut b = HashedBytesBuilder::default();
        let mut whole = Vec::new();
        for i in 0..100u8 {
            let p = vec![i; 1000];
            whole.extend_from_slice(&p);
            b.push(bytes::Bytes::from(p));
        }
        let h = b.finish();
        assert_eq!(h.pieces().len(), 1, "100 short pieces pin nothing");
        assert_eq!(h.sha256(), Sha256Digest::of(&whole));
        assert_eq!(h.into_vec(), whole);
    }
}
