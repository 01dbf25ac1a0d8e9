//! [`ChunkWriter`]: chunk writes off the event loop.
//!
//! A fetch used to write each burst of verified chunks on the event loop, so
//! receiving, hashing and writing took turns. The writer is one thread that
//! owns the writes: the loop hands it batches and goes on; the thread writes
//! whatever has queued up (chunk files, `store/chunks.rs`).
//!
//! Ordering: the loop calls [`ChunkWriter::flush`] before any action that
//! reads the chunk store or makes the reconciler's record durable (a query,
//! staging, a `Persist`, garbage collection), so the store answers as if the
//! writes had been made in place. A failed write is reported by the next
//! flush (the event loop stops on it, as it did for an inline write).
//!
//! Memory: at most [`QUEUED_BYTES`] of chunk bytes wait for the thread; the
//! loop waits for room beyond that (backpressure on the fetch).

use std::sync::Arc;

use flotilla_protocol::digest::{HashedBytes, Sha256Digest};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::store::AgentStore;

/// Most chunk bytes queued for the writer thread at once.
pub(crate) const QUEUED_BYTES: usize = 64 << 20;

type Batch = Vec<(Sha256Digest, HashedBytes)>;

enum Msg {
    Write(Batch, u32),
    Flush(oneshot::Sender<Result<(), String>>),
}

/// The handle the event loop holds.
#[derive(Debug)]
pub(crate) struct ChunkWriter {
    tx: mpsc::UnboundedSender<Msg>,
    room: Arc<Semaphore>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Write(b, _) => write!(f, "Write({} chunks)", b.len()),
            Self::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl ChunkWriter {
    /// Starts the writer thread on `store`. It ends when the handle is dropped.
    pub(crate) fn start(store: Arc<AgentStore>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(QUEUED_BYTES));
        let r = Arc::clone(&room);
        std::thread::Builder::new()
            .name("chunk-writer".into())
            .spawn(move || run(&store, rx, &r))?;
        Ok(Self { tx, room })
    }

    /// Queues `batch` (taken from the vector) for writing; waits only while
    /// [`QUEUED_BYTES`] are already queued.
    pub(crate) async fn write(&self, batch: &mut Batch) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let bytes: usize = batch.iter().map(|(_, b)| b.len()).sum();
        // A batch larger than the whole budget waits for an empty queue.
        let permits = u32::try_from(bytes.min(QUEUED_BYTES)).unwrap_or(u32::MAX);
        let permit = self
            .room
            .acquire_many(permits)
            .await
            .map_err(|_| anyhow::anyhow!("the chunk writer stopped"))?;
        permit.forget();
        self.tx
            .send(Msg::Write(std::mem::take(batch), permits))
            .map_err(|_| anyhow::anyhow!("the chunk writer stopped"))
    }

    /// Waits until everything queued before is committed; the error of any
    /// write that failed since the last flush.
    pub(crate) async fn flush(&self) -> anyhow::Result<()> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Msg::Flush(done))
            .map_err(|_| anyhow::anyhow!("the chunk writer stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the chunk writer stopped"))?
            .map_err(|e| anyhow::anyhow!(e))
    }
}

fn run(store: &AgentStore, mut rx: mpsc::UnboundedReceiver<Msg>, room: &Semaphore) {
    let mut failed: Option<String> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut batch: Batch = Vec::new();
        let mut permits = 0u32;
        let mut flushes = Vec::new();
        let mut next = Some(first);
        // Take everything queued, up to the first flush.
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write(b, p) => {
                    batch.extend(b);
                    permits = permits.saturating_add(p);
                    next = rx.try_recv().ok();
                }
                Msg::Flush(done) => flushes.push(done),
            }
        }
        if !batch.is_empty() {
            if let Err(e) = store.put_hashed_chunks(&batch) {
                tracing::error!(error = %e, chunks = batch.len(), "writing chunks failed");
                failed.get_or_insert_with(|| e.to_string());
            }
            drop(batch);
            room.add_permits(permits as usize);
        }
        for done in flushes {
            let _ = done.send(failed.take().map_or(Ok(()), Err));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_are_visible_after_a_flush_and_batches_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(AgentStore::open(&dir.path().join("agent.redb")).unwrap());
        let w = ChunkWriter::start(Arc::clone(&store)).unwrap();
        let mut all = Vec::new();
        for i in 0..50u32 {
            let bytes = HashedBytes::new(vec![i as u8; 1000 + i as usize]);
            let d = bytes.sha256();
            all.push(d);
            let mut batch = vec![(d, bytes)];
            w.write(&mut batch).await.unwrap();
            assert!(batch.is_empty(), "the batch is handed over");
        }
        w.flush().await.unwrap();
        let (present, absent) = store.has_chunks(&all).unwrap();
        assert_eq!(present.len(), 50);
        assert!(absent.is_empty());
        assert_eq!(store.chunk_stats().unwrap().0, 50);
        // All the room is given back.
        assert_eq!(w.room.available_permits(), QUEUED_BYTES);
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_budget_is_still_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(AgentStore::open(&dir.path().join("agent.redb")).unwrap());
        let w = ChunkWriter::start(Arc::clone(&store)).unwrap();
        let mut batch: Batch = (0..3u8)
            .map(|i| {
                let b = HashedBytes::new(vec![i; QUEUED_BYTES / 2]);
                (b.sha256(), b)
            })
            .collect();
        let digests: Vec<_> = batch.iter().map(|(d, _)| *d).collect();
        w.write(&mut batch).await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(store.has_chunks(&digests).unwrap().0.len(), 3);
        assert_eq!(w.room.available_permits(), QUEUED_BYTES);
    }
}
