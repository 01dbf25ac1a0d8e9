//! Digests: SHA-256, the one content address used across Flotilla, and
//! BLAKE3, which a signed manifest may list beside a chunk's SHA-256 so that a
//! receiver can verify the chunk at a fraction of the cost.
//!
//! Design: every chunk, file, manifest and TUF document is addressed by its
//! SHA-256, as DESIGN.md says. Verifying a received chunk with SHA-256 cost
//! the agent a quarter of both cores during a fetch (SHA-NI runs at
//! 1.2 GB/s on the reference machine; BLAKE3 at 3.5-7 GB/s there). So the
//! hub lists each chunk's BLAKE3 in the manifest too, under the same
//! signature as the address, and a receiver checks that instead
//! ([`crate::manifest::ChunkRef::verify`]). A manifest without it (written
//! before) is verified by SHA-256 as before. BLAKE3's 256-bit output gives
//! the same 128-bit collision resistance as SHA-256.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! digest_type {
    ($name:ident, $label:literal, $what:literal) => {
        impl $name {
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

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, ":{}"), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!(
                            "a ",
                            $what,
                            " digest (32 bytes or 64 hex characters)"
                        ))
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                        <[u8; 32]>::try_from(v)
                            .map($name)
                            .map_err(|_| E::invalid_length(v.len(), &self))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                        $name::from_hex(v)
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
    };
}

/// A SHA-256 digest. Serialises as 32 raw bytes in CBOR and as lowercase hex in
/// human-readable formats (JSON, TOML).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

digest_type!(Sha256Digest, "sha256", "SHA-256");

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
}

/// A BLAKE3 digest (256-bit output). Serialises like [`Sha256Digest`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Blake3Digest(pub [u8; 32]);

digest_type!(Blake3Digest, "blake3", "BLAKE3");

impl Blake3Digest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }
}

/// A digest of either kind, as a check reports what it found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AnyDigest {
    /// SHA-256.
    Sha256(Sha256Digest),
    /// BLAKE3.
    Blake3(Blake3Digest),
}

impl fmt::Display for AnyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sha256(d) => write!(f, "sha256:{d}"),
            Self::Blake3(d) => write!(f, "blake3:{d}"),
        }
    }
}

/// An incremental digest of either kind, for checking data against an
/// [`AnyDigest`] of that kind.
pub enum AnyHasher {
    /// SHA-256.
    Sha256(Box<Sha256Hasher>),
    /// BLAKE3 (its state is about 2 KB).
    Blake3(Box<blake3::Hasher>),
}

impl AnyHasher {
    /// A hasher of the kind of `d`.
    pub fn like(d: &AnyDigest) -> Self {
        match d {
            AnyDigest::Sha256(_) => Self::Sha256(Box::default()),
            AnyDigest::Blake3(_) => Self::Blake3(Box::default()),
        }
    }

    /// Feeds more bytes (BLAKE3 is fast on long slices: 64 KiB or more).
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// Finishes and returns the digest.
    pub fn finish(self) -> AnyDigest {
        match self {
            Self::Sha256(h) => AnyDigest::Sha256((*h).finish()),
            Self::Blake3(h) => AnyDigest::Blake3(Blake3Digest(*h.finalize().as_bytes())),
        }
    }
}

impl fmt::Debug for AnyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sha256(_) => "AnyHasher(sha256)",
            Self::Blake3(_) => "AnyHasher(blake3)",
        })
    }
}

/// Bytes together with their BLAKE3, computed when the value is made: the
/// only ways to get one are [`HashedBytes::new`] and [`HashedBytesBuilder`]
/// (which hashes every byte it appends), so a holder can compare
/// [`HashedBytes::blake3`] with an expected digest without hashing again (a
/// receiver hashes on whichever thread read the bytes, and the code that
/// decides still does the comparing). [`HashedBytes::sha256`] hashes the
/// bytes again, for chunks whose manifest lists no BLAKE3.
///
/// The bytes are kept as the pieces they arrived in ([`bytes::Bytes`], shared,
/// not copied): a chunk received over QUIC is the transport's decrypted
/// packet payloads, written from there ([`HashedBytes::pieces`]), never
/// gathered into one buffer on the way.
#[derive(Clone)]
pub struct HashedBytes {
    pieces: Vec<bytes::Bytes>,
    len: usize,
    blake3: Blake3Digest,
}

impl HashedBytes {
    /// Hashes `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        let blake3 = Blake3Digest::of(&bytes);
        let len = bytes.len();
        Self {
            pieces: vec![bytes::Bytes::from(bytes)],
            len,
            blake3,
        }
    }

    /// The BLAKE3 of the bytes, computed when they were appended.
    pub fn blake3(&self) -> Blake3Digest {
        self.blake3
    }

    /// The SHA-256 of the bytes. Hashes them now: about five times the cost
    /// of [`HashedBytes::blake3`]'s, on the calling thread.
    pub fn sha256(&self) -> Sha256Digest {
        let mut h = Sha256Hasher::default();
        for p in &self.pieces {
            h.update(p);
        }
        h.finish()
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
        self.blake3 == other.blake3 && self.len == other.len
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

/// Bytes [`HashedBytesBuilder`] gathers before it hashes them.
///
/// Design: BLAKE3 is fast because it hashes many 1 KiB blocks side by side
/// (16 with AVX-512), which needs them in one call. Fed the ~6.4 KB pieces
/// of a QUIC packet one by one it ran at 0.8 GB/s here, slower than
/// SHA-NI; copying them into a 64 KiB buffer that stays in cache and
/// hashing that ran at 3.5-7 GB/s, copy included.
const HASH_BATCH: usize = 64 * 1024;

/// Builds a [`HashedBytes`] from pieces, hashing the bytes as they are
/// appended (while they are still in cache).
pub struct HashedBytesBuilder {
    pieces: Vec<bytes::Bytes>,
    /// Copied bytes not yet a piece.
    tail: Vec<u8>,
    len: usize,
    hasher: blake3::Hasher,
    /// Bytes appended but not yet hashed (`batch_len` of them), allocated
    /// at the first append.
    batch: Vec<u8>,
    batch_len: usize,
}

impl Default for HashedBytesBuilder {
    fn default() -> Self {
        Self {
            pieces: Vec::new(),
            tail: Vec::new(),
            len: 0,
            hasher: blake3::Hasher::new(),
            batch: Vec::new(),
            batch_len: 0,
        }
    }
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
        self.hash(data);
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
        self.hash(&piece);
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
        self.hasher.update(&self.batch[..self.batch_len]);
        HashedBytes {
            pieces: self.pieces,
            len: self.len,
            blake3: Blake3Digest(*self.hasher.finalize().as_bytes()),
        }
    }

    /// Feeds `data` to the hasher through the batch buffer (whole batches
    /// straight from `data` when nothing is waiting).
    fn hash(&mut self, mut data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.batch.is_empty() {
            self.batch = vec![0; HASH_BATCH];
        }
        while !data.is_empty() {
            if self.batch_len == 0 && data.len() >= HASH_BATCH {
                let whole = data.len() - data.len() % HASH_BATCH;
                self.hasher.update(&data[..whole]);
                data = &data[whole..];
                continue;
            }
            let n = data.len().min(HASH_BATCH - self.batch_len);
            self.batch[self.batch_len..self.batch_len + n].copy_from_slice(&data[..n]);
            self.batch_len += n;
            data = &data[n..];
            if self.batch_len == HASH_BATCH {
                self.hasher.update(&self.batch);
                self.batch_len = 0;
            }
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
        write!(f, "HashedBytes({} bytes, {:?})", self.len, self.blake3)
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
    fn blake3_is_of_the_bytes_however_they_are_split() {
        // Lengths around the hash batch, fed in pieces of many sizes
        // (shared and copied, whole batches and tails).
        let whole: Vec<u8> = (0..3 * HASH_BATCH + 777)
            .map(|i| (i * 7 + i / 1000) as u8)
            .collect();
        let expected = Blake3Digest::of(&whole);
        assert_eq!(
            expected.0,
            *blake3::hash(&whole).as_bytes(),
            "the digest is BLAKE3's"
        );
        for step in [
            1usize,
            100,
            4095,
            4096,
            6400,
            HASH_BATCH - 1,
            HASH_BATCH,
            2 * HASH_BATCH + 5,
        ] {
            let mut b = HashedBytesBuilder::with_capacity(whole.len());
            for part in whole.chunks(step) {
                b.push(bytes::Bytes::from(part.to_vec()));
            }
            let h = b.finish();
            assert_eq!(h.blake3(), expected, "pieces of {step}");
            assert_eq!(h.sha256(), Sha256Digest::of(&whole), "pieces of {step}");
            assert_eq!(h.len(), whole.len());
            assert_eq!(h.clone().into_vec(), whole);
        }
        let mut other = whole.clone();
        other[HASH_BATCH + 3] ^= 1;
        assert_ne!(
            HashedBytes::new(other).blake3(),
            expected,
            "one bit changes it"
        );
        assert_eq!(
            HashedBytesBuilder::default().finish().blake3(),
            Blake3Digest::of(b"")
        );
    }

    #[test]
    fn digests_print_and_parse_by_kind() {
        let b = Blake3Digest::of(b"abc");
        assert_eq!(
            b.to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85",
            "BLAKE3's published test vector for \"abc\""
        );
        assert_eq!(Blake3Digest::from_hex(&b.to_hex()), Some(b));
        assert_eq!(format!("{b:?}"), format!("blake3:{}", b.to_hex()));
        assert_eq!(AnyDigest::Blake3(b).to_string(), format!("blake3:{b}"));
        let s = Sha256Digest::of(b"abc");
        assert_eq!(AnyDigest::Sha256(s).to_string(), format!("sha256:{s}"));
        for d in [AnyDigest::Blake3(b), AnyDigest::Sha256(s)] {
            let mut h = AnyHasher::like(&d);
            h.update(b"a");
            h.update(b"bc");
            assert_eq!(h.finish(), d, "incremental and of the same kind");
        }
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<Blake3Digest>(&json).unwrap(), b);
        let mut cbor = Vec::new();
        ciborium::into_writer(&b, &mut cbor).unwrap();
        assert_eq!(cbor.len(), 34, "32 raw bytes in CBOR");
        assert_eq!(
            ciborium::from_reader::<Blake3Digest, _>(&cbor[..]).unwrap(),
            b
        );
        assert!(ciborium::from_reader::<Blake3Digest, _>(&cbor[..20]).is_err());
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
