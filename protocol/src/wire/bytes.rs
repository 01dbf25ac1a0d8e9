//! Opaque byte strings on the wire: CBOR byte strings, not arrays of integers.
//!
//! Design: serde writes a `Vec<u8>` as an array of small integers (up to twice
//! the size, and slow to decode); chunk data and TUF documents travel as CBOR
//! byte strings (major type 2) instead. Decoding grows the buffer only as bytes
//! are actually read, so a header announcing a huge length allocates nothing.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes that travel as one CBOR byte string.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ByteBuf(pub Vec<u8>);

impl ByteBuf {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// Gives the bytes back.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl From<Vec<u8>> for ByteBuf {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl From<&[u8]> for ByteBuf {
    fn from(v: &[u8]) -> Self {
        Self(v.to_vec())
    }
}

// Design: a chunk is megabytes; logs and test failures show its length only.
impl fmt::Debug for ByteBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ByteBuf({} bytes)", self.0.len())
    }
}

impl Serialize for ByteBuf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_encode_as_one_cbor_byte_string() {
        let mut out = Vec::new();
        ciborium::into_writer(&ByteBuf(vec![0xff; 300]), &mut out).unwrap();
        // Major type 2, two-byte length, then the bytes themselves.
        assert_eq!(&out[..3], &[0x59, 0x01, 0x2c]);
        assert_eq!(out.len(), 303);
        let back: ByteBuf = ciborium::from_reader(&out[..]).unwrap();
        assert_eq!(back, ByteBuf(vec![0xff; 300]));
    }

    #[test]
    fn a_huge_announced_length_without_bytes_fails_without_allocating_it() {
        // Byte string header announcing 2^62 bytes, followed by nothing.
        let bytes = [0x5b, 0x40, 0, 0, 0, 0, 0, 0, 0];
        assert!(ciborium::from_reader::<ByteBuf, _>(&bytes[..]).is_err());
    }
}
