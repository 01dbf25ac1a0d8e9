//! Frames on quinn streams: [`FramedSend`] writes length-prefixed CBOR frames,
//! [`FramedRecv`] reads them through the protocol's streaming decoder, so every
//! frame is bounded and validated before anyone sees it.

use std::time::Duration;

use flotilla_protocol::digest::{HashedBytes, HashedBytesBuilder, Sha256Digest};
use flotilla_protocol::limits::Limits;
use flotilla_protocol::wire::{
    encode_frame, parse_chunk_data_head, ChunkFrame, ChunkHead, Frame, FrameDecoder, WireError,
};

use crate::NetError;

/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 256 * 1024;

/// The receiving half of a stream, yielding frames of type `F`.
#[derive(Debug)]
pub struct FramedRecv<F> {
    recv: quinn::RecvStream,
    decoder: FrameDecoder<F>,
    pending: bytes_buf::Pending,
    max_frame_bytes: u64,
    limits: Limits,
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
            max_frame_bytes,
            limits,
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

/// What [`FramedRecv::next_chunk`] yields.
#[derive(Debug)]
pub enum ChunkItem {
    /// A chunk's bytes with the digest the frame names, hashed (not yet
    /// compared with that digest: the receiver does that).
    Data(Sha256Digest, HashedBytes),
    /// Any other frame (never a `ChunkData`).
    Frame(ChunkFrame),
}

impl FramedRecv<ChunkFrame> {
    /// The next frame of a chunk stream, like [`FramedRecv::next`], but a
    /// `ChunkData` frame laid out as the hub sends it
    /// ([`flotilla_protocol::wire::chunk_data_head`]) is taken apart as it
    /// arrives: its bytes stay in the transport's buffers (the pieces of a
    /// [`HashedBytes`]), hashed as each arrives, and are not copied until they
    /// are written to the store. Through [`FramedRecv::next`] the
    /// same bytes were copied three times (read buffer, frame buffer, decoded
    /// frame) and hashed afterwards, which cost the agent's fetch about a
    /// tenth of its CPU. Any other frame, or one over the limits, goes
    /// through the general decoder and gets the same answers and errors (a
    /// chunk it decodes is hashed after and still comes back as
    /// [`ChunkItem::Data`]).
    pub async fn next_chunk(&mut self) -> Result<Option<ChunkItem>, NetError> {
        loop {
            if self.decoder.buffered() != 0 {
                break;
            }
            let avail = &self.pending.data[self.pending.pos..];
            match parse_chunk_data_head(avail, self.max_frame_bytes, &self.limits) {
                ChunkHead::Data {
                    digest,
                    len,
                    head_len,
                } => {
                    self.pending.pos += head_len;
                    let mut chunk = HashedBytesBuilder::with_capacity(len);
                    let here = len.min(self.pending.data.len() - self.pending.pos);
                    chunk.extend(&self.pending.data[self.pending.pos..self.pending.pos + here]);
                    self.pending.pos += here;
                    while chunk.len() < len {
                        match self.recv.read_chunk(len - chunk.len(), true).await? {
                            // Hashed, and kept as quinn hands it over unless
                            // short (`MIN_SHARED_PIECE`).
                            Some(c) => chunk.push(c.bytes),
                            None => {
                                return Err(WireError::Truncated {
                                    buffered: head_len + chunk.len(),
                                }
                                .into())
                            }
                        }
                    }
                    return Ok(Some(ChunkItem::Data(digest, chunk.finish())));
                }
                ChunkHead::NeedMore(_) => {
                    // The frame is known to be at least that long, so this
                    // read cannot wait for bytes the peer will not send.
                    self.pending.data.drain(..self.pending.pos);
                    self.pending.pos = 0;
                    match self.recv.read_chunk(READ_CHUNK, true).await? {
                        Some(c) => self.pending.data.extend_from_slice(&c.bytes),
                        None => break,
                    }
                }
                ChunkHead::Other => break,
            }
        }
        // The general decoder takes over with whatever is pending (a stream
        // that ended inside a frame is reported by it as truncated). A chunk
        // it decodes is hashed here, so callers see every chunk one way.
        Ok(self.next().await?.map(|f| match f {
            ChunkFrame::ChunkData { digest, bytes } => {
                ChunkItem::Data(digest, HashedBytes::new(bytes.into_vec()))
            }
            other => ChunkItem::Frame(other),
        }))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flotilla_protocol::wire::{chunk_data_head, ByteBuf};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;
    use crate::tls::{self, DeviceCheck, HubIdentity, TransportSettings};

    #[derive(Debug)]
    struct AnyDevice;

    impl DeviceCheck for AnyDevice {
        fn check(&self, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
    }

    /// A real QUIC connection over loopback; returns both endpoints (kept
    /// alive) and the two connection ends.
    async fn pair() -> (
        quinn::Endpoint,
        quinn::Endpoint,
        quinn::Connection,
        quinn::Connection,
    ) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![crate::HUB_SERVER_NAME.to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let ca_der = CertificateDer::from(ca.der().to_vec());
        let pin: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, ca_der.as_ref())
            .as_ref()
            .try_into()
            .unwrap();
        let id = HubIdentity {
            chain: vec![CertificateDer::from(leaf.der().to_vec()), ca_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            ca: ca_der,
        };
        let settings = TransportSettings::default();
        let server_cfg = tls::server_config(id, Arc::new(AnyDevice), &settings).unwrap();
        let server =
            crate::udp::endpoint("127.0.0.1:0".parse().unwrap(), Some(server_cfg)).unwrap();
        let mut client = crate::udp::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
        client.set_default_client_config(tls::enrol_client_config(pin, &settings).unwrap());
        let addr = server.local_addr().unwrap();
        let connecting = client.connect(addr, crate::HUB_SERVER_NAME).unwrap();
        let (c, s) = tokio::join!(connecting, async {
            server.accept().await.unwrap().await.unwrap()
        });
        (server, client, c.unwrap(), s)
    }

    fn limits() -> Limits {
        Limits::default()
    }

    /// Opens a chunk stream as the agent does and writes a first frame (a
    /// stream is announced to the peer only once it carries data).
    async fn open_chunk_stream(
        client: &quinn::Connection,
    ) -> (quinn::SendStream, FramedRecv<ChunkFrame>) {
        let l = limits();
        let (mut send, recv) = client.open_bi().await.unwrap();
        send.write_all(
            &encode_frame(&ChunkFrame::ChunkRequest { digests: vec![] }, u64::MAX).unwrap(),
        )
        .await
        .unwrap();
        (send, FramedRecv::new(recv, l.max_chunk_frame_bytes, l))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunk_frames_in_any_layout_arrive_whole_and_hashed() {
        let (_s, _c, client, server) = pair().await;
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 + 7) as u8).collect();
        let small = b"tiny".to_vec();
        let d_big = Sha256Digest::of(&big);
        let d_small = Sha256Digest::of(&small);
        let missing = Sha256Digest::of(b"nope");
        let writer = {
            let (big, small) = (big.clone(), small.clone());
            tokio::spawn(async move {
                let (mut send, _recv) = server.accept_bi().await.unwrap();
                // The hub's layout (head + bytes), a generically encoded
                // frame, another frame, an empty chunk, then the hub's
                // layout again split into small writes.
                send.write_all(&chunk_data_head(d_big, big.len(), u64::MAX).unwrap())
                    .await
                    .unwrap();
                send.write_all(&big).await.unwrap();
                let generic = ChunkFrame::ChunkData {
                    digest: d_small,
                    bytes: ByteBuf(small.clone()),
                };
                send.write_all(&encode_frame(&generic, u64::MAX).unwrap())
                    .await
                    .unwrap();
                send.write_all(
                    &encode_frame(&ChunkFrame::ChunkMissing { digest: missing }, u64::MAX).unwrap(),
                )
                .await
                .unwrap();
                let empty = Sha256Digest::of(b"");
                send.write_all(&chunk_data_head(empty, 0, u64::MAX).unwrap())
                    .await
                    .unwrap();
                let mut whole = chunk_data_head(d_small, small.len(), u64::MAX).unwrap();
                whole.extend_from_slice(&small);
                for piece in whole.chunks(3) {
                    send.write_all(piece).await.unwrap();
                }
                send.finish().unwrap();
                let _ = send.stopped().await;
            })
        };
        let (_send, mut rx) = open_chunk_stream(&client).await;
        let mut seen = Vec::new();
        while let Some(item) = rx.next_chunk().await.unwrap() {
            seen.push(match item {
                ChunkItem::Data(d, b) => {
                    let sha = b.sha256();
                    let v = b.into_vec();
                    assert_eq!(sha, Sha256Digest::of(&v));
                    (true, d, v)
                }
                ChunkItem::Frame(ChunkFrame::ChunkMissing { digest }) => (false, digest, vec![]),
                ChunkItem::Frame(other) => panic!("unexpected {other:?}"),
            });
        }
        writer.await.unwrap();
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[0], (true, d_big, big));
        // The generic encoding is the same bytes as the hub's layout, so the
        // fast path takes it too.
        assert_eq!(seen[1], (true, d_small, small.clone()));
        assert_eq!(seen[2], (false, missing, vec![]));
        assert_eq!(seen[3], (true, Sha256Digest::of(b""), vec![]));
        assert_eq!(seen[4], (true, d_small, small));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_that_ends_inside_a_chunk_is_an_error() {
        let (_s, _c, client, server) = pair().await;
        let writer = tokio::spawn(async move {
            let (mut send, _recv) = server.accept_bi().await.unwrap();
            let d = Sha256Digest::of(b"whatever");
            send.write_all(&chunk_data_head(d, 10_000, u64::MAX).unwrap())
                .await
                .unwrap();
            send.write_all(&[1u8; 4000]).await.unwrap();
            send.finish().unwrap();
            let _ = send.stopped().await;
        });
        let (_send, mut rx) = open_chunk_stream(&client).await;
        let err = rx.next_chunk().await.unwrap_err();
        assert!(
            matches!(err, NetError::Wire(WireError::Truncated { .. })),
            "{err}"
        );
        writer.await.unwrap();
    }

    /// Path-MTU discovery on loopback must reach the GSO-safe bound: with a
    /// bound whose 10-packet GSO batches exceed 64 KiB, the kernel refused
    /// every batch of probe-sized packets, quinn counted them lost and fell
    /// back to 1200-byte packets.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_transfer_on_loopback_uses_large_packets() {
        let (_s, _c, client, server) = pair().await;
        let payload = vec![7u8; 1 << 20];
        let writer = tokio::spawn(async move {
            let (mut send, _recv) = server.accept_bi().await.unwrap();
            for _ in 0..48 {
                send.write_all(&payload).await.unwrap();
            }
            send.finish().unwrap();
            let _ = send.stopped().await;
            server
        });
        let (mut send, mut recv) = client.open_bi().await.unwrap();
        send.write_all(b"go").await.unwrap();
        let mut got = 0usize;
        while let Some(c) = recv.read_chunk(1 << 20, true).await.unwrap() {
            got += c.bytes.len();
        }
        let server = writer.await.unwrap();
        assert_eq!(got, 48 << 20);
        let path = server.stats().path;
        assert_eq!(
            path.current_mtu,
            crate::tls::MAX_GSO_UDP_PAYLOAD,
            "the sender's path MTU after 48 MiB: {path:?}"
        );
        // Some loss is legitimate on a loaded machine (the receiver's socket
        // buffer overruns while it is descheduled); the bug's mark was a
        // black hole: every batch of large packets lost.
        assert_eq!(path.black_holes_detected, 0, "{path:?}");
    }
}
