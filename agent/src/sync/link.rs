//! One live QUIC connection to the hub: the control stream and the chunk
//! streams, each driven by its own reader and writer task. Frames read go to
//! the agent's event loop as [`Event`]s; frames to send go through channels, so
//! the event loop never waits on the network.

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_net::framed::{self, ChunkItem};
use flotilla_net::HUB_SERVER_NAME;
use flotilla_protocol::digest::Sha256Digest;
use flotilla_protocol::limits::Limits;
use flotilla_protocol::wire::{AgentHello, ChunkFrame, ControlFrame};
use tokio::sync::mpsc;

use super::Event;

/// How long dialling and the hello may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected hub.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) generation: u64,
    conn: quinn::Connection,
    control: mpsc::UnboundedSender<ControlFrame>,
    chunks: Vec<mpsc::UnboundedSender<Vec<Sha256Digest>>>,
    next: usize,
}

impl Link {
    /// Queues a control frame.
    pub(crate) fn send(&self, frame: ControlFrame) {
        let _ = self.control.send(frame);
    }

    /// Queues a chunk request on the next chunk stream, round robin.
    pub(crate) fn request(&mut self, digests: Vec<Sha256Digest>, max_per_request: usize) {
        for part in digests.chunks(max_per_request.max(1)) {
            let i = self.next % self.chunks.len().max(1);
            self.next = self.next.wrapping_add(1);
            if let Some(tx) = self.chunks.get(i) {
                let _ = tx.send(part.to_vec());
            }
        }
    }

    /// Closes the connection.
    pub(crate) fn close(&self, reason: &str) {
        self.conn.close(
            quinn::VarInt::from_u32(flotilla_net::close::NORMAL),
            reason.as_bytes(),
        );
    }
}

/// What a dial needs.
#[derive(Debug)]
pub(crate) struct Dial<'a> {
    pub(crate) endpoint: &'a quinn::Endpoint,
    pub(crate) config: quinn::ClientConfig,
    pub(crate) addr: SocketAddr,
    pub(crate) hello: AgentHello,
    pub(crate) streams: usize,
    pub(crate) generation: u64,
    pub(crate) limits: Limits,
    pub(crate) events: mpsc::Sender<Event>,
}

/// Dials the hub, sends the hello and starts the stream tasks. The whole
/// dial is bounded by [`CONNECT_TIMEOUT`] twice over: a hub that completes
/// the handshake and then stalls (no stream credit, no flow control) must not
/// leave the agent dialling forever.
pub(crate) async fn connect(d: Dial<'_>) -> Result<Link, String> {
    tokio::time::timeout(2 * CONNECT_TIMEOUT, connect_inner(d))
        .await
        .map_err(|_| {
            format!(
                "the hub did not take the hello within {}s",
                2 * CONNECT_TIMEOUT.as_secs()
            )
        })?
}

async fn connect_inner(d: Dial<'_>) -> Result<Link, String> {
    let Dial {
        endpoint,
        config,
        addr,
        hello,
        streams,
        generation,
        limits,
        events,
    } = d;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, async {
        endpoint
            .connect_with(config, addr, HUB_SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| format!("no handshake within {}s", CONNECT_TIMEOUT.as_secs()))??;

    let bi = conn.open_bi().await.map_err(|e| e.to_string())?;
    let (mut tx, mut rx) = framed::split::<ControlFrame, ControlFrame>(
        bi,
        limits.max_agent_frame_bytes,
        limits.max_control_frame_bytes,
        limits,
    );
    tx.send(&ControlFrame::AgentHello(hello))
        .await
        .map_err(|e| e.to_string())?;
    let (control, mut control_rx) = mpsc::unbounded_channel::<ControlFrame>();
    tokio::spawn(async move {
        while let Some(f) = control_rx.recv().await {
            if tx.send(&f).await.is_err() {
                break;
            }
        }
    });
    let ev = events.clone();
    tokio::spawn(async move {
        let why = loop {
            match rx.next().await {
                Ok(Some(f)) => {
                    if ev.send(Event::Control(generation, f)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break "the hub closed the control stream".to_string(),
                Err(e) => break e.to_string(),
            }
        };
        let _ = ev.send(Event::LinkLost(generation, why)).await;
    });

    let mut chunks = Vec::with_capacity(streams);
    for _ in 0..streams.max(1) {
        let bi = conn.open_bi().await.map_err(|e| e.to_string())?;
        let (mut tx, mut rx) = framed::split::<ChunkFrame, ChunkFrame>(
            bi,
            limits.max_agent_frame_bytes,
            limits.max_chunk_frame_bytes,
            limits,
        );
        let (req_tx, mut req_rx) = mpsc::unbounded_channel::<Vec<Sha256Digest>>();
        tokio::spawn(async move {
            while let Some(digests) = req_rx.recv().await {
                if tx
                    .send(&ChunkFrame::ChunkRequest { digests })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let ev = events.clone();
        tokio::spawn(async move {
            loop {
                match rx.next_chunk().await {
                    // Hashed on the stream's own task as the bytes arrive,
                    // so the streams hash in parallel and the event loop
                    // only compares digests.
                    Ok(Some(ChunkItem::Data(digest, bytes))) => {
                        if ev
                            .send(Event::ChunkData(generation, digest, bytes))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(Some(ChunkItem::Frame(f))) => {
                        if ev.send(Event::Chunk(generation, f)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = ev
                            .send(Event::LinkLost(generation, format!("chunk stream: {e}")))
                            .await;
                        return;
                    }
                }
            }
        });
        chunks.push(req_tx);
    }
    Ok(Link {
        generation,
        conn,
        control,
        chunks,
        next: 0,
    })
}
