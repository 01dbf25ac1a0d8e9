//! Frames on quinn streams: [`FramedSend`] writes length-prefixed CBOR frames,
//! [`FramedRecv`] reads them through the protocol's streaming decoder, so every
//! frame is bounded and validated before anyone sees it.

use std::time::Duration;

use flotilla_protocol::limits::Limits;
use flotilla_protocol::wire::{encode_frame, Frame, FrameDecoder};

use crate::NetError;

/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 256 * 1024;

/// The receiving half of a stream, yielding frames of type `F`.
#[derive(Debug)]
pub struct FramedRecv<F> {
    recv: quinn::RecvStream,
    decoder: FrameDecoder<F>,
    pending: bytes_buf::Pending,
}

mod bytes_buf {
    /// Bytes read but not yet decoded.
    #[derive(Debug, Default)]
    pub(super) struct Pending {
        pub(super) data: Vec<u8>,
        pub(super) pos: usize,
    }
}

impl<F: Frame> FramedRecv<F> {
    /// Frames of at most `max_frame_bytes`, checked against `limits`.
    pub fn new(recv: quinn::RecvStream, max_frame_bytes: u64, limits: Limits) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(max_frame_bytes, limits),
            pending: bytes_buf::Pending::default(),
        }
    }

    /// The next frame, or `None` when the peer finished the stream on a frame
    /// boundary. A stream that ends inside a frame is an error.
    pub async fn next(&mut self) -> Result<Option<F>, NetError> {
        loop {
            let mut input = &self.pending.data[self.pending.pos..];
            let before = input.len();
            let frame = self.decoder.decode(&mut input)?;
            self.pending.pos += before - input.len();
            if let Some(f) = frame {
                return Ok(Some(f));
            }
            match self.recv.read_chunk(READ_CHUNK, true).await? {
                Some(chunk) => {
                    self.pending.data.clear();
                    self.pending.data.extend_from_slice(&chunk.bytes);
                    self.pending.pos = 0;
                }
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }

    /// Like [`FramedRecv::next`], but a peer silent for `limit` is an error
    /// (a stalled stream must not hold resources forever).
    pub async fn next_within(&mut self, limit: Duration) -> Result<Option<F>, NetError> {
        match tokio::time::timeout(limit, self.next()).await {
            Ok(r) => r,
            Err(_) => Err(NetError::Timeout(limit)),
        }
    }

    /// Tells the peer to stop sending on this stream.
    pub fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(quinn::VarInt::from_u32(code));
    }
}

/// The sending half of a stream, writing frames of type `F`.
#[derive(Debug)]
pub struct FramedSend<F> {
    send: quinn::SendStream,
    max_frame_bytes: u64,
    _frame: std::marker::PhantomData<fn(F)>,
}

impl<F: Frame> FramedSend<F> {
    /// Frames of at most `max_frame_bytes` (the limit the peer applies).
    pub fn new(send: quinn::SendStream, max_frame_bytes: u64) -> Self {
        Self {
            send,
            max_frame_bytes,
            _frame: std::marker::PhantomData,
        }
    }

    /// Encodes and writes one frame.
    pub async fn send(&mut self, frame: &F) -> Result<(), NetError> {
        let bytes = encode_frame(frame, self.max_frame_bytes)?;
        self.send.write_all(&bytes).await?;
        Ok(())
    }

    /// Writes already encoded bytes (one or more whole frames).
    pub async fn send_encoded(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// Writes one frame given as its encoded head and a payload that follows
    /// it (see `flotilla_protocol::wire::chunk_data_head`): the payload goes
    /// to quinn as it is, without being copied into an encoded frame.
    pub async fn send_head_and_payload(
        &mut self,
        head: &[u8],
        payload: Vec<u8>,
    ) -> Result<(), NetError> {
        self.send.write_all(head).await?;
        self.send.write_chunk(bytes::Bytes::from(payload)).await?;
        Ok(())
    }

    /// Finishes the stream: the peer reads to the end of what was written.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

/// Opens both halves of a bidirectional stream as framed halves.
pub fn split<S: Frame, R: Frame>(
    (send, recv): (quinn::SendStream, quinn::RecvStream),
    max_send: u64,
    max_recv: u64,
    limits: Limits,
) -> (FramedSend<S>, FramedRecv<R>) {
    (
        FramedSend::new(send, max_send),
        FramedRecv::new(recv, max_recv, limits),
    )
}
