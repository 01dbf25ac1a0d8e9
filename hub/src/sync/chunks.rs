//! Chunk streams: every bidirectional stream after the control stream. The
//! agent sends `ChunkRequest`s; the hub answers each digest, in order, with
//! `ChunkData` (a chunk, or a manifest whose SHA-256 is that digest) or
//! `ChunkMissing`.
//!
//! Limits: at most the transport's stream limit of streams per connection
//! are served at once; every payload waits for the connection's and the
//! hub-wide bandwidth; a stream silent (or unread) for `sync.stall_timeout`
//! is dropped. Bytes are read off the async runtime. Nothing here checks that
//! the device is meant to run what it asks for: digests are unguessable, and
//! the agent verifies every byte against signed metadata.

use std::sync::Arc;

use flotilla_net::{framed, Bandwidth, NetError};
use flotilla_protocol::digest::Sha256Digest;
use flotilla_protocol::wire::{chunk_data_head, ChunkFrame};
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::{protocol_close, Shared};
use crate::registry::RegistryError;

/// Accepts the chunk streams of one connection until it ends.
pub(super) async fn accept(shared: Arc<Shared>, conn: quinn::Connection, device: String) {
    let slots = Arc::new(Semaphore::new(shared.timing.max_streams as usize));
    let bandwidth = Arc::new(Bandwidth::new(shared.timing.connection_bandwidth));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let bi = match conn.accept_bi().await {
            Ok(bi) => bi,
            Err(_) => return,
        };
        let (shared, conn, bandwidth) = (shared.clone(), conn.clone(), bandwidth.clone());
        tokio::spawn(
            async move {
                serve(&shared, &conn, &bandwidth, bi).await;
                drop(slot);
            }
            .instrument(tracing::info_span!("chunks", device = %device)),
        );
    }
}

/// What a digest names.
enum Content {
    /// A chunk of a model file.
    Chunk(Vec<u8>),
    /// A bundle manifest listed in current targets.
    Manifest(Vec<u8>),
}

/// The bytes stored under `digest`: a chunk, else a manifest of the current
/// targets with that SHA-256.
fn content(shared: &Shared, digest: &Sha256Digest) -> Result<Option<Content>, RegistryError> {
    if let Some(bytes) = shared.registry.chunk_if_present(digest)? {
        return Ok(Some(Content::Chunk(bytes)));
    }
    let target = shared
        .feed
        .borrow()
        .trust
        .as_ref()
        .and_then(|t| t.manifests.get(digest).cloned());
    let Some(target) = target else {
        return Ok(None);
    };
    let manifest = shared.registry.store().manifest(&target)?;
    // The store and targets agree unless the version was deleted meanwhile.
    Ok(manifest
        .filter(|m| Sha256Digest::of(m) == *digest)
        .map(Content::Manifest))
}

async fn lookup(shared: &Arc<Shared>, digest: Sha256Digest) -> Option<Content> {
    let s = shared.clone();
    match tokio::task::spawn_blocking(move || content(&s, &digest)).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::error!(%digest, error = %e, "could not read a chunk");
            None
        }
        Err(e) => {
            tracing::error!(%digest, error = %e, "chunk reader failed");
            None
        }
    }
}

/// Serves one chunk stream.
async fn serve(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    bandwidth: &Bandwidth,
    bi: (quinn::SendStream, quinn::RecvStream),
) {
    let limits = shared.limits;
    let stall = shared.timing.stall_timeout;
    let (mut tx, mut rx) = framed::split::<ChunkFrame, ChunkFrame>(
        bi,
        limits.max_chunk_frame_bytes,
        limits.max_agent_frame_bytes,
        limits,
    );
    loop {
        let digests = match rx.next_within(stall).await {
            Ok(Some(ChunkFrame::ChunkRequest { digests })) => digests,
            Ok(Some(_)) => return protocol_close(conn, "agents only request chunks"),
            Ok(None) => {
                tx.finish();
                return;
            }
            Err(NetError::Timeout(_)) => {
                tracing::debug!("chunk stream silent too long; dropping it");
                rx.stop(0);
                tx.finish();
                return;
            }
            Err(NetError::Wire(e)) => {
                return protocol_close(conn, &format!("bad chunk frame: {e}"))
            }
            Err(e) => {
                tracing::debug!(error = %e, "chunk stream ended");
                return;
            }
        };
        for digest in digests {
            let sent = match lookup(shared, digest).await {
                Some(content) => {
                    let bytes = match content {
                        Content::Chunk(mut bytes) => {
                            if shared.faults.corrupt(&mut bytes) {
                                tracing::warn!(%digest, "TEST FAULT corrupt-chunks: sending a corrupted chunk");
                            }
                            bytes
                        }
                        Content::Manifest(bytes) => bytes,
                    };
                    let n = bytes.len() as u64;
                    match chunk_data_head(digest, bytes.len(), limits.max_chunk_frame_bytes) {
                        Ok(head) => {
                            bandwidth.acquire(n).await;
                            shared.bandwidth.acquire(n).await;
                            tracing::debug!(%digest, bytes = n, "chunk sent");
                            // The chunk goes to quinn as read, not copied into
                            // an encoded frame.
                            tokio::time::timeout(stall, tx.send_head_and_payload(&head, bytes))
                                .await
                        }
                        Err(e) => {
                            tracing::error!(%digest, error = %e, "chunk too large to send; reporting it missing");
                            tokio::time::timeout(
                                stall,
                                tx.send(&ChunkFrame::ChunkMissing { digest }),
                            )
                            .await
                        }
                    }
                }
                None => {
                    tracing::debug!(%digest, "chunk missing");
                    tokio::time::timeout(stall, tx.send(&ChunkFrame::ChunkMissing { digest })).await
                }
            };
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "chunk stream write failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("agent stopped reading a chunk stream; dropping it");
                    rx.stop(0);
                    return;
                }
            }
        }
    }
}
