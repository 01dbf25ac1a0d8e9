//! Length-prefixed framing: a big-endian `u32` length, then CBOR.
//!
//! [`FrameDecoder`] takes bytes as the transport reads them (half a frame, three
//! frames and a bit, one byte at a time) and yields whole frames. It holds at
//! most one unfinished frame, never more than its limit, and checks the length
//! prefix before buffering anything. Decoding never panics on any input (see the
//! property tests in `props.rs` and the fuzz target).

use std::marker::PhantomData;

use serde::de::{DeserializeOwned, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

use super::{Frame, WireError, LENGTH_PREFIX_BYTES, WIRE_SCHEMA_VERSION};
use crate::limits::Limits;

/// Deepest CBOR nesting accepted; frames nest about five levels. Bounds the
/// decoder's recursion (and so its stack) on hostile input.
const MAX_NESTING: usize = 32;

/// Encodes `frame` with its length prefix. Fails with
/// [`WireError::FrameTooLarge`] when the encoding exceeds `max_frame_bytes`, the
/// limit the receiving side will apply (never send what the peer must refuse).
pub fn encode_frame<F: Frame>(frame: &F, max_frame_bytes: u64) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; LENGTH_PREFIX_BYTES];
    // Serialising plain data into a Vec cannot fail.
    if let Err(e) = ciborium::into_writer(&(WIRE_SCHEMA_VERSION, frame), &mut out) {
        unreachable!("CBOR encoding into memory failed: {e}");
    }
    let len = (out.len() - LENGTH_PREFIX_BYTES) as u64;
    let limit = max_frame_bytes.min(u64::from(u32::MAX));
    let Ok(prefix) = u32::try_from(len) else {
        return Err(WireError::FrameTooLarge {
            announced: len,
            limit,
        });
    };
    if len > limit {
        return Err(WireError::FrameTooLarge {
            announced: len,
            limit,
        });
    }
    out[..LENGTH_PREFIX_BYTES].copy_from_slice(&prefix.to_be_bytes());
    Ok(out)
}

/// Decodes one frame body (the bytes after the prefix) and validates it.
pub fn decode_body<F: Frame>(body: &[u8], limits: &Limits) -> Result<F, WireError> {
    let mut rest = body;
    let versioned: Versioned<F> =
        ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_NESTING)
            .map_err(|e| WireError::Decode(e.to_string()))?;
    let frame = match versioned {
        Versioned::Known(f) => f,
        Versioned::Unknown(v) => return Err(WireError::UnsupportedSchema(v)),
    };
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes { extra: rest.len() });
    }
    frame.validate(limits)?;
    Ok(frame)
}

/// A streaming decoder for one stream's frames of type `F`.
pub struct FrameDecoder<F> {
    /// The unfinished frame: prefix bytes, then body bytes.
    // invariant: never longer than LENGTH_PREFIX_BYTES + max_frame_bytes.
    buf: Vec<u8>,
    max_frame_bytes: u64,
    limits: Limits,
    failed: bool,
    _frame: PhantomData<fn() -> F>,
}

impl<F> std::fmt::Debug for FrameDecoder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered", &self.buf.len())
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("failed", &self.failed)
            .finish()
    }
}

impl<F: Frame> FrameDecoder<F> {
    /// A decoder accepting frames up to `max_frame_bytes` (pick the stream's
    /// limit from [`Limits`]), checking their contents against `limits`.
    pub fn new(max_frame_bytes: u64, limits: Limits) -> Self {
        Self {
            buf: Vec::new(),
            max_frame_bytes: max_frame_bytes.min(u64::from(u32::MAX)),
            limits,
            failed: false,
            _frame: PhantomData,
        }
    }

    /// Consumes bytes from the front of `input` until one frame is complete (and
    /// returns it) or `input` is used up (and returns `None`). Call it in a loop
    /// until it returns `None`: several frames may sit in one read.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<F>, WireError> {
        if self.failed {
            return Err(WireError::Poisoned);
        }
        let r = self.decode_inner(input);
        if r.is_err() {
            self.failed = true;
            self.buf = Vec::new();
        }
        r
    }

    /// Checks that the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), WireError> {
        match (self.failed, self.buf.len()) {
            (true, _) => Err(WireError::Poisoned),
            (false, 0) => Ok(()),
            (false, buffered) => Err(WireError::Truncated { buffered }),
        }
    }

    /// Bytes of an unfinished frame held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn decode_inner(&mut self, input: &mut &[u8]) -> Result<Option<F>, WireError> {
        // Fast path: a whole frame at the front of the input, nothing buffered.
        if self.buf.is_empty() && input.len() >= LENGTH_PREFIX_BYTES {
            let len = self.body_len(&input[..LENGTH_PREFIX_BYTES])?;
            if input.len() - LENGTH_PREFIX_BYTES >= len {
                let (frame, rest) = input[LENGTH_PREFIX_BYTES..].split_at(len);
                *input = rest;
                return decode_body(frame, &self.limits).map(Some);
            }
        }
        // Slow path: gather the prefix, then the body, into the buffer.
        if self.buf.len() < LENGTH_PREFIX_BYTES {
            let take = (LENGTH_PREFIX_BYTES - self.buf.len()).min(input.len());
            self.take(input, take);
            if self.buf.len() < LENGTH_PREFIX_BYTES {
                return Ok(None);
            }
        }
        let len = self.body_len(&self.buf[..LENGTH_PREFIX_BYTES])?;
        let have = self.buf.len() - LENGTH_PREFIX_BYTES;
        let take = (len - have).min(input.len());
        self.take(input, take);
        if self.buf.len() - LENGTH_PREFIX_BYTES < len {
            return Ok(None);
        }
        let buf = std::mem::take(&mut self.buf);
        decode_body(&buf[LENGTH_PREFIX_BYTES..], &self.limits).map(Some)
    }

    fn take(&mut self, input: &mut &[u8], n: usize) {
        let (head, rest) = input.split_at(n);
        self.buf.extend_from_slice(head);
        *input = rest;
    }

    /// Reads the length prefix and checks it against the limit.
    fn body_len(&self, prefix: &[u8]) -> Result<usize, WireError> {
        let mut p = [0u8; LENGTH_PREFIX_BYTES];
        p.copy_from_slice(prefix);
        let announced = u64::from(u32::from_be_bytes(p));
        if announced > self.max_frame_bytes {
            return Err(WireError::FrameTooLarge {
                announced,
                limit: self.max_frame_bytes,
            });
        }
        usize::try_from(announced).map_err(|_| WireError::FrameTooLarge {
            announced,
            limit: self.max_frame_bytes,
        })
    }
}

/// `[schema_version, frame]`, or the version alone when this build does not
/// speak it (the frame is then not decoded at all).
enum Versioned<F> {
    Known(F),
    Unknown(u64),
}

impl<'de, F: DeserializeOwned> Deserialize<'de> for Versioned<F> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<F>(PhantomData<F>);
        impl<'de, F: DeserializeOwned> Visitor<'de> for V<F> {
            type Value = Versioned<F>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a [schema_version, frame] array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                use serde::de::Error;
                let version: u64 = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                if version != u64::from(WIRE_SCHEMA_VERSION) {
                    return Ok(Versioned::Unknown(version));
                }
                let frame: F = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(3, &self));
                }
                Ok(Versioned::Known(frame))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}
