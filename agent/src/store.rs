//! [`AgentStore`]: the agent's one redb file, `DATA/agent.redb`.
//!
//! It holds three things, each in its own table:
//!
//! - the reconciler's [`AgentRecord`], one key, replaced whole by each `Persist`;
//! - the trusted TUF metadata and director document ([`TrustDocs`]), replaced
//!   together in one transaction so that a crash never leaves a mix of two updates;
//! - the telemetry outbox: encoded windows by first sequence number, and the
//!   outbox's meta record (epoch, next sequence number, dropped count) in
//!   `state`, changed together by [`AgentStore::apply_outbox`].
//!
//! Beside it, in `DATA/chunks/`, the content-addressed chunk store (SHA-256
//! digest → bytes), shared by every version of every deployment: append-only
//! pack files with an index rebuilt at open ([`chunks`] says why neither redb
//! values nor a file per chunk). This type owns both; the redb file's lock
//! keeps a second agent out of both.
//!
//! Design: chunk writes are not fsynced one by one. [`AgentStore::save_record`]
//! (the driver's `Persist`) first makes every chunk written so far durable (one
//! `fdatasync` per pack written), then commits the record durably; the reconciler emits a `Persist`
//! after a fetch's `WriteChunk`s and before any record that relies on those
//! chunks surviving a crash (a `staged`, `active` or `previous` slot, whose
//! chunks must all be in the store). Reads in this process see chunks at once,
//! so `Stage` may run before that `Persist`. A crash before it loses at most
//! chunks of a fetch still `pending` in the last durable record, which the
//! restored reconciler asks the store about again. A data dir from before the
//! chunk packs (chunks in a redb table) is migrated at open, and so is
//! one with a file per chunk.
//!
//! It does not verify chunk bytes against their digests (the reconciler does that
//! before it asks for a write, and staging checks again on the way out), decode
//! TUF metadata, or decide what to keep (the reconciler's `CollectGarbage` does).

use std::path::{Path, PathBuf};

use flotilla_protocol::digest::{HashedBytes, Sha256Digest};
use flotilla_protocol::reconcile::{AgentRecord, ReconcileError};
use flotilla_protocol::telemetry::{OutboxChange, OutboxMeta};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

mod chunks;

use chunks::ChunkPacks;

/// redb's page cache for the agent's file. redb's default (1 GiB) keeps
/// every chunk of a fetch resident; chunks are written once and read once
/// (at staging), so a small cache costs nothing and bounds the agent's memory
/// during a fetch (50 agents pulling a 100 MiB model each ran this machine out
/// of memory with the default).
const CACHE_BYTES: usize = 32 << 20;

/// File name of the store inside the agent's data directory.
pub const STORE_FILE: &str = "agent.redb";

/// Dir of the chunk files inside the agent's data directory.
pub const CHUNKS_DIR: &str = "chunks";

/// Chunk digest → chunk bytes, where data dirs before the chunk files kept
/// them; read once by the migration at open, then deleted.
const LEGACY_CHUNKS: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("chunks");
/// Running totals of [`LEGACY_CHUNKS`]; deleted with it.
const LEGACY_CHUNK_TOTALS: TableDefinition<'_, &str, u64> = TableDefinition::new("chunk_totals");
/// The reconciler record, under [`RECORD_KEY`].
const STATE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("state");
/// Trusted metadata documents by role name.
const TRUST: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("trust");

/// Telemetry windows waiting for the hub's ack, by first sequence number.
const OUTBOX: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("telemetry_outbox");

const RECORD_KEY: &str = "record";
const OUTBOX_META_KEY: &str = "telemetry_outbox_meta";

/// The telemetry outbox as stored: its meta record and `(first_seq, encoded
/// window)` rows.
pub type StoredOutbox = (OutboxMeta, Vec<(u64, Vec<u8>)>);

/// The signed documents the agent trusts, as raw bytes (verified again by
/// `TrustedSet::restore` after a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDocs {
    /// The newest trusted root metadata.
    pub root: Vec<u8>,
    /// Trusted timestamp metadata, once an update succeeded.
    pub timestamp: Option<Vec<u8>>,
    /// Trusted snapshot metadata, once an update succeeded.
    pub snapshot: Option<Vec<u8>>,
    /// Trusted targets metadata, once an update succeeded.
    pub targets: Option<Vec<u8>>,
    /// The director document applied last.
    pub director: Option<Vec<u8>>,
}

/// Why the agent store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create data dir {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Another process (or another store in this one) has the database open.
    #[error("an agent is already running on data dir {dir} ({path} is locked)")]
    AlreadyRunning {
        /// The data directory.
        dir: PathBuf,
        /// The database file.
        path: PathBuf,
    },
    /// The database file could not be opened or created.
    #[error("cannot open agent store {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        source: Box<redb::DatabaseError>,
    },
    /// A transaction failed.
    #[error("agent store {path}: {op}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// What redb said.
        source: Box<redb::Error>,
    },
    /// A chunk file could not be read, written or removed.
    #[error("agent chunk store {path}: {op}: {source}")]
    Chunk {
        /// The chunk dir.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The saved reconciler record does not decode.
    #[error("agent store {path}: saved reconciler record: {source}")]
    Record {
        /// The database file.
        path: PathBuf,
        /// Why it does not decode.
        source: Box<ReconcileError>,
    },
}

/// The agent's redb database. Cheap to share behind an `Arc`: every method takes
/// `&self`, and redb serialises write transactions.
#[derive(Debug)]
pub struct AgentStore {
    db: Database,
    path: PathBuf,
    chunks: ChunkPacks,
}

impl AgentStore {
    /// Opens (creating it and `data_dir` if needed) `data_dir/agent.redb`.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyRunning`] when another agent holds the file,
    /// [`StoreError::CreateDir`], [`StoreError::Open`] or [`StoreError::Db`].
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(STORE_FILE);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyRunning {
                    dir: data_dir.to_owned(),
                    path: path.clone(),
                },
                source => StoreError::Open {
                    path: path.clone(),
                    source: Box::new(source),
                },
            })?;
        let chunk_dir = data_dir.join(CHUNKS_DIR);
        let chunks = ChunkPacks::open(&chunk_dir).map_err(|source| StoreError::Chunk {
            path: chunk_dir.clone(),
            op: "open",
            source,
        })?;
        let store = Self { db, path, chunks };
        store.migrate_chunks()?;
        let tx = store.db.begin_write().map_err(store.err("create tables"))?;
        {
            tx.open_table(STATE).map_err(store.err("create tables"))?;
            tx.open_table(TRUST).map_err(store.err("create tables"))?;
            tx.open_table(OUTBOX).map_err(store.err("create tables"))?;
        }
        tx.commit().map_err(store.err("create tables"))?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Splits `digests` into those the store holds and those it lacks, each in
    /// the order given.
    ///
    /// # Errors
    ///
    /// None today (the index is in memory); kept fallible for stores that ask
    /// the disk.
    pub fn has_chunks(
        &self,
        digests: &[Sha256Digest],
    ) -> Result<(Vec<Sha256Digest>, Vec<Sha256Digest>), StoreError> {
        let mut present = Vec::new();
        let mut absent = Vec::new();
        for d in digests {
            if self.chunks.contains(d) {
                present.push(*d);
            } else {
                absent.push(*d);
            }
        }
        Ok((present, absent))
    }

    /// Stores one chunk (replacing any under the same digest), without fsync: see
    /// the module docs for when it becomes durable.
    ///
    /// # Errors
    ///
    /// [`StoreError::Chunk`].
    pub fn put_chunk(&self, digest: &Sha256Digest, bytes: &[u8]) -> Result<(), StoreError> {
        self.put_chunks(&[(*digest, bytes)])
    }

    /// Stores several chunks, without fsync. On an error the chunks before the
    /// failed one are stored.
    ///
    /// # Errors
    ///
    /// [`StoreError::Chunk`].
    pub fn put_chunks(&self, chunks: &[(Sha256Digest, &[u8])]) -> Result<(), StoreError> {
        for (digest, data) in chunks {
            self.chunks
                .put(digest, data)
                .map_err(self.chunk_err("write chunk"))?;
        }
        Ok(())
    }

    /// Stores several chunks as received (written from their pieces, not
    /// gathered first), without fsync. On an error the chunks before the
    /// failed one are stored.
    ///
    /// # Errors
    ///
    /// [`StoreError::Chunk`].
    pub fn put_hashed_chunks(
        &self,
        chunks: &[(Sha256Digest, HashedBytes)],
    ) -> Result<(), StoreError> {
        let mut pieces: Vec<&[u8]> = Vec::new();
        for (digest, bytes) in chunks {
            pieces.clear();
            pieces.extend(bytes.pieces().iter().map(|p| &p[..]));
            self.chunks
                .put_pieces(digest, &pieces)
                .map_err(self.chunk_err("write chunk"))?;
        }
        Ok(())
    }

    /// The bytes of chunk `digest`, if held.
    ///
    /// # Errors
    ///
    /// [`StoreError::Chunk`].
    pub fn get_chunk(&self, digest: &Sha256Digest) -> Result<Option<Vec<u8>>, StoreError> {
        self.chunks
            .get(digest)
            .map_err(self.chunk_err("read chunk"))
    }

    /// Deletes these chunks (those not held are skipped); returns how many were
    /// deleted.
    ///
    /// # Errors
    ///
    /// [`StoreError::Chunk`]; the chunks before the failed one are deleted.
    pub fn remove_chunks(&self, digests: &[Sha256Digest]) -> Result<usize, StoreError> {
        let mut removed = 0usize;
        for d in digests {
            if self
                .chunks
                .remove(d)
                .map_err(self.chunk_err("remove chunk"))?
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// How many chunks the store holds and their total size in bytes.
    ///
    /// # Errors
    ///
    /// None today; kept fallible for stores that count on disk.
    pub fn chunk_stats(&self) -> Result<(u64, u64), StoreError> {
        Ok(self.chunks.totals())
    }

    /// Moves chunks a data dir from before the chunk files holds in redb into
    /// chunk files, makes them durable, then deletes the redb tables. A crash
    /// midway repeats it at the next open (writing a chunk again is harmless).
    fn migrate_chunks(&self) -> Result<(), StoreError> {
        const OP: &str = "migrate chunks";
        let tx = self.db.begin_read().map_err(self.err(OP))?;
        let table = match tx.open_table(LEGACY_CHUNKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(self.err(OP)(e)),
        };
        let mut moved = 0u64;
        for row in table.iter().map_err(self.err(OP))? {
            let (k, v) = row.map_err(self.err(OP))?;
            self.chunks
                .put(&Sha256Digest(k.value()), v.value())
                .map_err(self.chunk_err(OP))?;
            moved += 1;
        }
        drop(table);
        drop(tx);
        self.chunks.sync().map_err(self.chunk_err(OP))?;
        let mut tx = self.db.begin_write().map_err(self.err(OP))?;
        tx.set_durability(Durability::Immediate)
            .map_err(self.err(OP))?;
        tx.delete_table(LEGACY_CHUNKS).map_err(self.err(OP))?;
        tx.delete_table(LEGACY_CHUNK_TOTALS).map_err(self.err(OP))?;
        tx.commit().map_err(self.err(OP))?;
        tracing::info!(chunks = moved, dir = %self.chunks.dir().display(), "moved stored chunks out of the redb file into chunk files");
        Ok(())
    }

    /// Replaces the reconciler record, durably (fsync before returning), after
    /// making every chunk written so far durable.
    ///
    /// # Errors
    ///
    /// [`StoreError::Chunk`] (nothing is saved then) or [`StoreError::Db`].
    pub fn save_record(&self, record: &AgentRecord) -> Result<(), StoreError> {
        const OP: &str = "save record";
        self.chunks.sync().map_err(self.chunk_err(OP))?;
        let mut tx = self.db.begin_write().map_err(self.err(OP))?;
        tx.set_durability(Durability::Immediate)
            .map_err(self.err(OP))?;
        {
            let mut table = tx.open_table(STATE).map_err(self.err(OP))?;
            table
                .insert(RECORD_KEY, record.encode().as_slice())
                .map_err(self.err(OP))?;
        }
        tx.commit().map_err(self.err(OP))
    }

    /// The reconciler record saved last, if any.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`], or [`StoreError::Record`] when it does not decode.
    pub fn load_record(&self) -> Result<Option<AgentRecord>, StoreError> {
        const OP: &str = "load record";
        let tx = self.db.begin_read().map_err(self.err(OP))?;
        let table = tx.open_table(STATE).map_err(self.err(OP))?;
        let Some(raw) = table.get(RECORD_KEY).map_err(self.err(OP))? else {
            return Ok(None);
        };
        AgentRecord::decode(raw.value())
            .map(Some)
            .map_err(|source| StoreError::Record {
                path: self.path.clone(),
                source: Box::new(source),
            })
    }

    /// The telemetry outbox as stored: its meta record and every window, or
    /// `None` before the first window was ever stored. A meta record that does
    /// not decode counts as none (the outbox starts a new epoch).
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub fn load_outbox(&self) -> Result<Option<StoredOutbox>, StoreError> {
        const OP: &str = "load telemetry outbox";
        let tx = self.db.begin_read().map_err(self.err(OP))?;
        let state = tx.open_table(STATE).map_err(self.err(OP))?;
        let meta = state
            .get(OUTBOX_META_KEY)
            .map_err(self.err(OP))?
            .and_then(|raw| decode_meta(raw.value()));
        let Some(meta) = meta else {
            return Ok(None);
        };
        let table = tx.open_table(OUTBOX).map_err(self.err(OP))?;
        let mut windows = Vec::new();
        for row in table.iter().map_err(self.err(OP))? {
            let (k, v) = row.map_err(self.err(OP))?;
            windows.push((k.value(), v.value().to_vec()));
        }
        Ok(Some((meta, windows)))
    }

    /// Applies an outbox mutation's changes in one durable transaction.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`]; nothing is applied then.
    pub fn apply_outbox(&self, changes: &[OutboxChange]) -> Result<(), StoreError> {
        const OP: &str = "write telemetry outbox";
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().map_err(self.err(OP))?;
        tx.set_durability(Durability::Immediate)
            .map_err(self.err(OP))?;
        {
            let mut table = tx.open_table(OUTBOX).map_err(self.err(OP))?;
            let mut state = tx.open_table(STATE).map_err(self.err(OP))?;
            for c in changes {
                match c {
                    OutboxChange::Put { seq, bytes } => {
                        table.insert(*seq, bytes.as_slice()).map_err(self.err(OP))?;
                    }
                    OutboxChange::Delete { seq } => {
                        table.remove(*seq).map_err(self.err(OP))?;
                    }
                    OutboxChange::Meta(m) => {
                        state
                            .insert(OUTBOX_META_KEY, encode_meta(m).as_slice())
                            .map_err(self.err(OP))?;
                    }
                }
            }
        }
        tx.commit().map_err(self.err(OP))
    }

    /// Replaces every trusted document at once, durably: a `None` field deletes
    /// what was saved for it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub fn save_trust(&self, docs: &TrustDocs) -> Result<(), StoreError> {
        const OP: &str = "save trusted metadata";
        let mut tx = self.db.begin_write().map_err(self.err(OP))?;
        tx.set_durability(Durability::Immediate)
            .map_err(self.err(OP))?;
        {
            let mut table = tx.open_table(TRUST).map_err(self.err(OP))?;
            let entries = [
                ("root", Some(&docs.root)),
                ("timestamp", docs.timestamp.as_ref()),
                ("snapshot", docs.snapshot.as_ref()),
                ("targets", docs.targets.as_ref()),
                ("director", docs.director.as_ref()),
            ];
            for (role, doc) in entries {
                match doc {
                    Some(bytes) => {
                        table.insert(role, bytes.as_slice()).map_err(self.err(OP))?;
                    }
                    None => {
                        table.remove(role).map_err(self.err(OP))?;
                    }
                }
            }
        }
        tx.commit().map_err(self.err(OP))
    }

    /// The trusted documents saved last; `None` before the first
    /// [`AgentStore::save_trust`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub fn load_trust(&self) -> Result<Option<TrustDocs>, StoreError> {
        const OP: &str = "load trusted metadata";
        let tx = self.db.begin_read().map_err(self.err(OP))?;
        let table = tx.open_table(TRUST).map_err(self.err(OP))?;
        let get = |role: &str| -> Result<Option<Vec<u8>>, StoreError> {
            let v = table.get(role).map_err(self.err(OP))?;
            Ok(v.map(|v| v.value().to_vec()))
        };
        let Some(root) = get("root")? else {
            return Ok(None);
        };
        Ok(Some(TrustDocs {
            root,
            timestamp: get("timestamp")?,
            snapshot: get("snapshot")?,
            targets: get("targets")?,
            director: get("director")?,
        }))
    }

    /// Maps an I/O error on the chunk files to [`StoreError::Chunk`].
    fn chunk_err(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Chunk {
            path: self.chunks.dir().to_owned(),
            op,
            source,
        }
    }

    /// Maps a redb error to [`StoreError::Db`] for operation `op`.
    fn err<E: Into<redb::Error>>(&self, op: &'static str) -> impl FnOnce(E) -> StoreError + '_ {
        move |e| StoreError::Db {
            path: self.path.clone(),
            op,
            source: Box::new(e.into()),
        }
    }
}

/// The outbox meta record: epoch, next sequence number, dropped, as
/// little-endian u64s.
fn encode_meta(m: &OutboxMeta) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&m.epoch.to_le_bytes());
    out[8..16].copy_from_slice(&m.next_seq.to_le_bytes());
    out[16..].copy_from_slice(&m.dropped.to_le_bytes());
    out
}

fn decode_meta(raw: &[u8]) -> Option<OutboxMeta> {
    let word =
        |i: usize| -> Option<u64> { Some(u64::from_le_bytes(raw.get(i..i + 8)?.try_into().ok()?)) };
    (raw.len() == 24).then_some(())?;
    Some(OutboxMeta {
        epoch: word(0)?,
        next_seq: word(8)?,
        dropped: word(16)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::reconcile::{DeploymentKey, DeploymentRecord};

    fn d(n: u8) -> Sha256Digest {
        Sha256Digest::of(&[n])
    }

    fn record() -> AgentRecord {
        AgentRecord {
            schema_version: flotilla_protocol::reconcile::record::RECORD_SCHEMA_VERSION,
            director_version: Some(7),
            deployments: vec![DeploymentRecord {
                key: DeploymentKey::new("fraud", "blue"),
                active: None,
                trial: None,
                previous: None,
                staged: None,
                pending: None,
                rejected: None,
            }],
        }
    }

    fn trust() -> TrustDocs {
        TrustDocs {
            root: b"root".to_vec(),
            timestamp: Some(b"ts".to_vec()),
            snapshot: Some(b"snap".to_vec()),
            targets: Some(b"targets".to_vec()),
            director: Some(b"director".to_vec()),
        }
    }

    #[test]
    fn chunks_round_trip_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = AgentStore::open(dir.path()).unwrap();
        assert_eq!(store.chunk_stats().unwrap(), (0, 0));
        store.put_chunk(&d(1), b"one").unwrap();
        store
            .put_chunks(&[(d(2), b"two!".as_slice()), (d(3), b"three".as_slice())])
            .unwrap();
        // Writing a chunk again replaces it without counting it twice.
        store.put_chunk(&d(1), b"one").unwrap();
        assert_eq!(store.get_chunk(&d(2)).unwrap().unwrap(), b"two!");
        assert_eq!(store.get_chunk(&d(9)).unwrap(), None);
        assert_eq!(store.chunk_stats().unwrap(), (3, 12));

        let (present, absent) = store.has_chunks(&[d(3), d(9), d(1)]).unwrap();
        assert_eq!(present, vec![d(3), d(1)]);
        assert_eq!(absent, vec![d(9)]);

        assert_eq!(store.remove_chunks(&[d(1), d(9), d(3)]).unwrap(), 2);
        assert_eq!(store.chunk_stats().unwrap(), (1, 4));
        assert_eq!(store.get_chunk(&d(1)).unwrap(), None);
    }

    #[test]
    fn chunks_stored_in_redb_by_an_older_agent_are_moved_into_chunk_files() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(STORE_FILE)).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(LEGACY_CHUNKS).unwrap();
                t.insert(&d(1).0, b"one".as_slice()).unwrap();
                t.insert(&d(2).0, b"twotwo".as_slice()).unwrap();
                let mut totals = tx.open_table(LEGACY_CHUNK_TOTALS).unwrap();
                totals.insert("count", 2).unwrap();
            }
            tx.commit().unwrap();
        }
        let store = AgentStore::open(dir.path()).unwrap();
        assert_eq!(store.chunk_stats().unwrap(), (2, 9));
        assert_eq!(store.get_chunk(&d(2)).unwrap().unwrap(), b"twotwo");
        assert!(dir.path().join(CHUNKS_DIR).is_dir());
        let tx = store.db.begin_read().unwrap();
        assert!(
            matches!(
                tx.open_table(LEGACY_CHUNKS),
                Err(redb::TableError::TableDoesNotExist(_))
            ),
            "the redb table is gone once moved"
        );
        drop(tx);
        drop(store);
        // A second open finds nothing to move and keeps the chunks.
        let store = AgentStore::open(dir.path()).unwrap();
        assert_eq!(store.chunk_stats().unwrap(), (2, 9));
        assert_eq!(store.get_chunk(&d(1)).unwrap().unwrap(), b"one");
    }

    #[test]
    fn record_round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = AgentStore::open(dir.path()).unwrap();
        assert_eq!(store.load_record().unwrap(), None);
        store.save_record(&record()).unwrap();
        assert_eq!(store.load_record().unwrap(), Some(record()));
    }

    #[test]
    fn trust_documents_are_replaced_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = AgentStore::open(dir.path()).unwrap();
        assert_eq!(store.load_trust().unwrap(), None);
        store.save_trust(&trust()).unwrap();
        assert_eq!(store.load_trust().unwrap(), Some(trust()));
        let root_only = TrustDocs {
            root: b"root v2".to_vec(),
            timestamp: None,
            snapshot: None,
            targets: None,
            director: None,
        };
        store.save_trust(&root_only).unwrap();
        assert_eq!(store.load_trust().unwrap(), Some(root_only));
    }

    #[test]
    fn reopening_keeps_chunks_record_and_trust() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = AgentStore::open(dir.path()).unwrap();
            store
                .put_chunk(&d(1), b"non-durable until the record")
                .unwrap();
            store.save_record(&record()).unwrap();
            store.save_trust(&trust()).unwrap();
        }
        let store = AgentStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get_chunk(&d(1)).unwrap().unwrap(),
            b"non-durable until the record"
        );
        assert_eq!(store.chunk_stats().unwrap(), (1, 28));
        assert_eq!(store.load_record().unwrap(), Some(record()));
        assert_eq!(store.load_trust().unwrap(), Some(trust()));
    }

    #[test]
    fn opening_a_store_twice_says_an_agent_is_already_running() {
        let dir = tempfile::tempdir().unwrap();
        let _first = AgentStore::open(dir.path()).unwrap();
        let err = AgentStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyRunning { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("already running"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }

    #[test]
    fn a_garbled_record_gets_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = AgentStore::open(dir.path()).unwrap();
        let tx = store.db.begin_write().unwrap();
        tx.open_table(STATE)
            .unwrap()
            .insert(RECORD_KEY, b"\xff garbage".as_slice())
            .unwrap();
        tx.commit().unwrap();
        let err = store.load_record().unwrap_err();
        assert!(matches!(err, StoreError::Record { .. }), "{err:?}");
    }

    #[test]
    fn a_data_dir_that_cannot_be_created_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = AgentStore::open(&file.join("data")).unwrap_err();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    #[test]
    fn the_outbox_survives_a_reopen_and_applies_deletes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = AgentStore::open(dir.path()).unwrap();
            assert!(store.load_outbox().unwrap().is_none());
            let meta = OutboxMeta {
                epoch: 42,
                next_seq: 3,
                dropped: 1,
            };
            store
                .apply_outbox(&[
                    OutboxChange::Put {
                        seq: 1,
                        bytes: b"one".to_vec(),
                    },
                    OutboxChange::Put {
                        seq: 2,
                        bytes: b"two".to_vec(),
                    },
                    OutboxChange::Meta(meta),
                ])
                .unwrap();
            store
                .apply_outbox(&[OutboxChange::Delete { seq: 1 }])
                .unwrap();
        }
        let store = AgentStore::open(dir.path()).unwrap();
        let (meta, windows) = store.load_outbox().unwrap().unwrap();
        assert_eq!((meta.epoch, meta.next_seq, meta.dropped), (42, 3, 1));
        assert_eq!(windows, vec![(2, b"two".to_vec())]);
        assert_eq!(decode_meta(b"short"), None);
    }
}
