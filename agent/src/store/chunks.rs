//! [`ChunkFiles`]: the content-addressed chunk store as plain files,
//! `DATA/chunks/{first two hex digits}/{64 hex digits}`.
//!
//! Design: chunks used to be values in the agent's redb file. redb is
//! copy-on-write, so a 1 GiB fetch wrote ~2 GB (new leaf pages for every
//! large value), and the agent's fetch was bound by those writes. A chunk is
//! written once and never changed, so the filesystem is the better home: one
//! `write` per chunk, no amplification, and removing a chunk frees its space
//! at once.
//!
//! A chunk file appears only complete: it is written under a temporary name
//! in its shard dir and renamed into place, so a crash leaves at worst a
//! `.tmp` file, which the next open removes. Writes are not fsynced one by
//! one; [`ChunkFiles::sync`] makes every write since the last one durable
//! with one `syncfs` of the store's filesystem, and the agent store calls it
//! before each durable save of the reconciler record (the only record that
//! relies on chunks surviving a power loss). A chunk that still comes back
//! damaged after a power loss (a filesystem that does not honour `syncfs`) is
//! caught by staging, which re-hashes every chunk and drops a bad one so that
//! it is fetched again.
//!
//! The running totals are counted by scanning the shard dirs at open (one
//! `stat` per chunk) and kept in memory after.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use flotilla_protocol::digest::Sha256Digest;

/// Suffix of a chunk file still being written.
const TMP_SUFFIX: &str = ".tmp";

/// The chunk files under one dir.
#[derive(Debug)]
pub(crate) struct ChunkFiles {
    dir: PathBuf,
    /// `(count, bytes)` of the chunk files.
    // invariant: equals the number and total length of the chunk files, as
    // long as only this process changes the dir (the redb lock ensures it).
    totals: Mutex<(u64, u64)>,
    /// Whether a chunk was written since the last [`ChunkFiles::sync`].
    dirty: AtomicBool,
    /// Makes temporary names unique when two threads write one chunk.
    tmp_seq: AtomicU64,
}

impl ChunkFiles {
    /// Opens (creating it if needed) the chunk dir `dir`: removes temporary
    /// files a crash left and counts the chunks.
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let (mut count, mut bytes) = (0u64, 0u64);
        for shard in fs::read_dir(dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(TMP_SUFFIX) {
                    fs::remove_file(entry.path())?;
                } else if parse_name(&name).is_some() {
                    count += 1;
                    bytes += entry.metadata()?.len();
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            totals: Mutex::new((count, bytes)),
            dirty: AtomicBool::new(false),
            tmp_seq: AtomicU64::new(0),
        })
    }

    /// The dir.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where chunk `digest` lives.
    pub(crate) fn path_of(&self, digest: &Sha256Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Whether chunk `digest` is held.
    pub(crate) fn contains(&self, digest: &Sha256Digest) -> io::Result<bool> {
        match fs::metadata(self.path_of(digest)) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stores chunk `digest` (replacing any file under that name), without
    /// fsync.
    pub(crate) fn put(&self, digest: &Sha256Digest, data: &[u8]) -> io::Result<()> {
        let path = self.path_of(digest);
        let Some(shard) = path.parent() else {
            return Err(io::Error::other("chunk path has no parent"));
        };
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = shard.join(format!("{}.{seq}{TMP_SUFFIX}", digest.to_hex()));
        let mut file = match fs::File::create(&tmp) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(shard)?;
                fs::File::create(&tmp)?
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = file.write_all(data) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        drop(file);
        let old = match fs::metadata(&path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // Marked after the rename: a `sync` that clears the flag before this
        // line runs its `syncfs` after the rename (so covers the chunk), and
        // the flag set here makes the next one sync again; set before the
        // write, a `sync` in between could clear it with the bytes unwritten.
        self.dirty.store(true, Ordering::Release);
        let mut t = self.lock_totals();
        match old {
            Some(len) => t.1 = t.1.saturating_sub(len),
            None => t.0 += 1,
        }
        t.1 += data.len() as u64;
        Ok(())
    }

    /// The bytes of chunk `digest`, if held.
    pub(crate) fn get(&self, digest: &Sha256Digest) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path_of(digest)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes chunk `digest`; whether it was held.
    pub(crate) fn remove(&self, digest: &Sha256Digest) -> io::Result<bool> {
        let path = self.path_of(digest);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        let mut t = self.lock_totals();
        t.0 = t.0.saturating_sub(1);
        t.1 = t.1.saturating_sub(len);
        Ok(true)
    }

    /// How many chunks are held and their total size.
    pub(crate) fn totals(&self) -> (u64, u64) {
        *self.lock_totals()
    }

    /// Makes every chunk written so far durable (one `syncfs` of the dir's
    /// filesystem, skipped when nothing was written since the last one).
    pub(crate) fn sync(&self) -> io::Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let dir = fs::File::open(&self.dir)?;
        if let Err(e) = rustix::fs::syncfs(&dir) {
            self.dirty.store(true, Ordering::Release);
            return Err(e.into());
        }
        Ok(())
    }

    fn lock_totals(&self) -> std::sync::MutexGuard<'_, (u64, u64)> {
        // The totals are two integers; a panic elsewhere cannot leave them
        // half-updated in a way worse than the poison itself.
        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The digest a chunk file name spells, if it is one.
fn parse_name(name: &str) -> Option<Sha256Digest> {
    Sha256Digest::from_hex(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Sha256Digest {
        Sha256Digest::of(&[n])
    }

    #[test]
    fn a_crash_leftover_is_removed_and_chunks_are_counted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkFiles::open(dir.path()).unwrap();
        c.put(&d(1), b"abc").unwrap();
        c.put(&d(2), b"defgh").unwrap();
        c.sync().unwrap();
        let shard = c.path_of(&d(1)).parent().unwrap().to_owned();
        let leftover = shard.join(format!("{}.7{TMP_SUFFIX}", d(3).to_hex()));
        fs::write(&leftover, b"half a chu").unwrap();
        drop(c);

        let c = ChunkFiles::open(dir.path()).unwrap();
        assert_eq!(c.totals(), (2, 8));
        assert!(!leftover.exists(), "a half-written chunk is removed");
        assert!(!c.contains(&d(3)).unwrap());
        assert_eq!(c.get(&d(2)).unwrap().unwrap(), b"defgh");
    }

    #[test]
    fn a_write_into_a_read_only_dir_is_an_error_and_counts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkFiles::open(dir.path()).unwrap();
        // A file where the shard dir should be.
        let shard = c.path_of(&d(1)).parent().unwrap().to_owned();
        fs::write(&shard, b"not a dir").unwrap();
        assert!(c.put(&d(1), b"abc").is_err());
        assert_eq!(c.totals(), (0, 0));
        assert!(!c.contains(&d(1)).unwrap_or(false));
    }
}
