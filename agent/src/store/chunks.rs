//! [`ChunkPacks`]: the content-addressed chunk store as append-only pack
//! files, `DATA/chunks/{sequence:08}.pack`.
//!
//! Design: chunks were values in the agent's redb file first (copy-on-write:
//! a 1 GiB fetch wrote ~2 GB), then one file each. A file per chunk cost the
//! fetch more than the bytes did: creating an inode costs ~0.4 ms of kernel
//! CPU on the ext4 the benchmarks run on (the allocator scans the inode
//! bitmap and checks recently deleted inodes), so writing 1,000 chunk files
//! of 1 MiB took 2-2.5x the CPU of writing the same bytes to one file, about
//! a tenth of all the CPU a 1 GiB fetch used. Chunks are written once, read at
//! staging and removed by garbage collection, which an append-only log with
//! an in-memory index does with one `pwritev` per chunk.
//!
//! A pack is an 8-byte file magic, then records: a 48-byte head (record
//! magic, state byte, length, a check over magic, length and digest, the
//! digest) and the chunk's bytes. The index (digest → pack, offset, length)
//! is rebuilt at open by reading the heads; nothing else is stored.
//!
//! - A write appends to the current pack; a pack takes new records until it
//!   passes [`PACK_TARGET`] bytes.
//! - A crash mid-write leaves a torn tail: the scan at open stops at the
//!   first head that is incomplete, fails its check or claims bytes past the
//!   end, and truncates the pack there. Writes are not fsynced one by one;
//!   [`ChunkPacks::sync`] makes every write since the last one durable (one
//!   `fdatasync` per pack written, and the dir when packs came or went), and
//!   the agent store calls it before each durable save of the reconciler
//!   record (the only record that relies on chunks surviving a power loss).
//!   Records after the last sync may be lost, never those before it.
//! - Removing a chunk sets its state byte to removed and punches its bytes
//!   out of the file (`fallocate(PUNCH_HOLE)`), so garbage collection frees
//!   space at once, as deleting a chunk file did; a pack left without live
//!   chunks is deleted. On a filesystem without hole punching the space of a
//!   removed chunk comes back only with its whole pack.
//! - A chunk that comes back damaged after a power loss (say a removal whose
//!   hole reached the disk before its state byte did) is caught by staging,
//!   which re-hashes every chunk and drops a bad one so that it is fetched
//!   again.
//! - Chunk files from the previous layout (`DATA/chunks/xx/DIGEST`) are
//!   moved into a pack at open.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use flotilla_protocol::digest::Sha256Digest;

/// A pack takes records until it is this large.
pub(crate) const PACK_TARGET: u64 = 256 << 20;

/// Suffix of a pack file.
const PACK_SUFFIX: &str = ".pack";
/// First bytes of every pack file.
const FILE_MAGIC: [u8; 8] = *b"FLOTPK01";
/// First bytes of every record head.
const RECORD_MAGIC: [u8; 4] = *b"FLCK";
/// Bytes of a record head.
const HEAD_LEN: u64 = 48;
/// State byte of a live record.
const LIVE: u8 = 1;
/// State byte of a removed record.
const REMOVED: u8 = 0;
/// Offset of the state byte in a record head.
const STATE_AT: u64 = 4;
/// Suffix of a chunk file of the previous layout still being written.
const LEGACY_TMP_SUFFIX: &str = ".tmp";

/// Where a chunk's record is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    pack: u32,
    /// Offset of the record head.
    offset: u64,
    len: u32,
}

#[derive(Debug)]
struct Pack {
    file: Arc<File>,
    /// Where the next record goes (the end of the last complete one).
    end: u64,
    /// Live records in it.
    live: u64,
}

#[derive(Debug, Default)]
struct State {
    // invariant: every entry points at a live record of a pack in `packs`,
    // and `bytes` is the sum of their lengths.
    index: HashMap<Sha256Digest, Loc>,
    packs: BTreeMap<u32, Pack>,
    /// The pack appended to.
    current: Option<u32>,
    next_seq: u32,
    bytes: u64,
    /// Packs written since the last sync.
    dirty: BTreeSet<u32>,
    /// A pack was created or deleted since the last sync.
    dir_dirty: bool,
}

/// The chunk packs under one dir.
#[derive(Debug)]
pub(crate) struct ChunkPacks {
    dir: PathBuf,
    target: u64,
    state: Mutex<State>,
    /// Whether the filesystem refused a hole punch (logged once).
    no_punch: AtomicBool,
}

impl ChunkPacks {
    /// Opens (creating it if needed) the chunk dir `dir`: scans the packs,
    /// truncates a torn tail, deletes packs without live chunks and moves
    /// chunk files of the previous layout into a pack.
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        Self::open_with_target(dir, PACK_TARGET)
    }

    fn open_with_target(dir: &Path, target: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut seqs = Vec::new();
        let mut legacy = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(PACK_SUFFIX)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u32>().ok())
            {
                seqs.push(seq);
            } else if name.len() == 2
                && name.bytes().all(|b| b.is_ascii_hexdigit())
                && entry.file_type()?.is_dir()
            {
                legacy.push(entry.path());
            }
        }
        seqs.sort_unstable();
        let packs = Self {
            dir: dir.to_owned(),
            target,
            state: Mutex::new(State::default()),
            no_punch: AtomicBool::new(false),
        };
        {
            let mut st = packs.lock();
            for seq in seqs {
                packs.scan(&mut st, seq)?;
            }
            let last = st.packs.keys().next_back().copied();
            // Packs left without live chunks go, except the newest, which
            // takes the next records.
            let empty: Vec<u32> = st
                .packs
                .iter()
                .filter(|(s, p)| p.live == 0 && Some(**s) != last)
                .map(|(s, _)| *s)
                .collect();
            for seq in empty {
                fs::remove_file(packs.pack_path(seq))?;
                st.packs.remove(&seq);
                st.dir_dirty = true;
            }
            st.next_seq = last.map_or(0, |s| s.saturating_add(1));
            st.current = last.filter(|s| st.packs.get(s).is_some_and(|p| p.end < target));
        }
        if !legacy.is_empty() {
            packs.migrate_files(&legacy)?;
        }
        Ok(packs)
    }

    /// The dir.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether chunk `digest` is held.
    pub(crate) fn contains(&self, digest: &Sha256Digest) -> bool {
        self.lock().index.contains_key(digest)
    }

    /// Stores chunk `digest` (replacing any record under that digest),
    /// without fsync.
    pub(crate) fn put(&self, digest: &Sha256Digest, data: &[u8]) -> io::Result<()> {
        self.put_pieces(digest, &[data])
    }

    /// [`ChunkPacks::put`] for a chunk given as pieces, written with one
    /// `pwritev` (per [`IOV_MAX`] pieces) straight from them.
    pub(crate) fn put_pieces(&self, digest: &Sha256Digest, pieces: &[&[u8]]) -> io::Result<()> {
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        let len = u32::try_from(total).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("chunk {digest} is {total} bytes, over 4 GiB"),
            )
        })?;
        let mut st = self.lock();
        // A record already there is replaced.
        self.remove_locked(&mut st, digest)?;
        let seq = match st.current {
            Some(seq) => seq,
            None => self.create_pack(&mut st)?,
        };
        let Some(pack) = st.packs.get_mut(&seq) else {
            return Err(io::Error::other("the current pack is not open"));
        };
        let offset = pack.end;
        let head = head(digest, len, LIVE);
        let mut all = Vec::with_capacity(pieces.len() + 1);
        all.push(head.as_slice());
        all.extend_from_slice(pieces);
        if let Err(e) = write_all_vectored_at(&pack.file, &all, offset) {
            // Nothing after `end` counts; cut what part of the record made it.
            let _ = pack.file.set_len(offset);
            return Err(e);
        }
        pack.end = offset + HEAD_LEN + u64::from(len);
        pack.live += 1;
        let full = pack.end >= self.target;
        st.index.insert(
            *digest,
            Loc {
                pack: seq,
                offset,
                len,
            },
        );
        st.bytes += u64::from(len);
        st.dirty.insert(seq);
        if full {
            st.current = None;
        }
        Ok(())
    }

    /// The bytes of chunk `digest`, if held.
    pub(crate) fn get(&self, digest: &Sha256Digest) -> io::Result<Option<Vec<u8>>> {
        let (loc, file) = {
            let st = self.lock();
            let Some(loc) = st.index.get(digest).copied() else {
                return Ok(None);
            };
            let Some(pack) = st.packs.get(&loc.pack) else {
                return Err(io::Error::other("a chunk's pack is not open"));
            };
            (loc, Arc::clone(&pack.file))
        };
        let mut bytes = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut bytes, loc.offset + HEAD_LEN)?;
        Ok(Some(bytes))
    }

    /// Removes chunk `digest`; whether it was held.
    pub(crate) fn remove(&self, digest: &Sha256Digest) -> io::Result<bool> {
        let mut st = self.lock();
        if !st.index.contains_key(digest) {
            return Ok(false);
        }
        self.remove_locked(&mut st, digest)?;
        Ok(true)
    }

    /// How many chunks are held and their total size.
    pub(crate) fn totals(&self) -> (u64, u64) {
        let st = self.lock();
        (st.index.len() as u64, st.bytes)
    }

    /// Makes every write and removal so far durable (`fdatasync` of each pack
    /// written since the last sync, then of the dir if packs came or went).
    pub(crate) fn sync(&self) -> io::Result<()> {
        let (dirty, dir_dirty) = {
            let mut st = self.lock();
            let seqs = std::mem::take(&mut st.dirty);
            let files: Vec<(u32, Arc<File>)> = seqs
                .iter()
                .filter_map(|s| st.packs.get(s).map(|p| (*s, Arc::clone(&p.file))))
                .collect();
            (files, std::mem::take(&mut st.dir_dirty))
        };
        let mut failed = None;
        for (seq, file) in &dirty {
            if let Err(e) = file.sync_data() {
                self.lock().dirty.insert(*seq);
                failed.get_or_insert(e);
            }
        }
        if dir_dirty {
            if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                self.lock().dir_dirty = true;
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn pack_path(&self, seq: u32) -> PathBuf {
        self.dir.join(format!("{seq:08}{PACK_SUFFIX}"))
    }

    fn create_pack(&self, st: &mut State) -> io::Result<u32> {
        let seq = st.next_seq;
        st.next_seq = seq
            .checked_add(1)
            .ok_or_else(|| io::Error::other("pack sequence numbers exhausted"))?;
        let path = self.pack_path(seq);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        if let Err(e) = file.write_all_at(&FILE_MAGIC, 0) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        st.packs.insert(
            seq,
            Pack {
                file: Arc::new(file),
                end: FILE_MAGIC.len() as u64,
                live: 0,
            },
        );
        st.current = Some(seq);
        st.dirty.insert(seq);
        st.dir_dirty = true;
        Ok(seq)
    }

    /// Marks the record of `digest` (which the index holds) removed, punches
    /// its bytes out and deletes its pack if nothing live is left in it.
    fn remove_locked(&self, st: &mut State, digest: &Sha256Digest) -> io::Result<()> {
        let Some(loc) = st.index.get(digest).copied() else {
            return Ok(());
        };
        let Some(pack) = st.packs.get_mut(&loc.pack) else {
            return Err(io::Error::other("a chunk's pack is not open"));
        };
        pack.file.write_all_at(&[REMOVED], loc.offset + STATE_AT)?;
        self.punch(&pack.file, loc.offset + HEAD_LEN, u64::from(loc.len));
        pack.live = pack.live.saturating_sub(1);
        let gone = pack.live == 0 && st.current != Some(loc.pack);
        st.index.remove(digest);
        st.bytes = st.bytes.saturating_sub(u64::from(loc.len));
        if gone {
            st.packs.remove(&loc.pack);
            st.dirty.remove(&loc.pack);
            st.dir_dirty = true;
            fs::remove_file(self.pack_path(loc.pack))?;
        } else {
            st.dirty.insert(loc.pack);
        }
        Ok(())
    }

    /// Frees `len` bytes at `offset` of `file`, where the filesystem can.
    fn punch(&self, file: &File, offset: u64, len: u64) {
        if len == 0 || self.no_punch.load(Ordering::Relaxed) {
            return;
        }
        let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        if let Err(e) = rustix::fs::fallocate(file, flags, offset, len) {
            if !self.no_punch.swap(true, Ordering::Relaxed) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "the filesystem does not punch holes; a removed chunk's space comes back only with its whole pack");
            }
        }
    }

    /// Reads the record heads of pack `seq` into the index; truncates a torn
    /// tail.
    fn scan(&self, st: &mut State, seq: u32) -> io::Result<()> {
        let path = self.pack_path(seq);
        let file = fs::OpenOptions::new().read(true).write(true).open(&path)?;
        let size = file.metadata()?.len();
        let mut magic = [0u8; 8];
        let have = size.min(FILE_MAGIC.len() as u64) as usize;
        file.read_exact_at(&mut magic[..have], 0)?;
        if have < FILE_MAGIC.len() && FILE_MAGIC.starts_with(&magic[..have]) {
            // Created, magic not yet written: a crash right after creation.
            drop(file);
            fs::remove_file(&path)?;
            st.dir_dirty = true;
            return Ok(());
        }
        if magic != FILE_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a chunk pack (bad magic)", path.display()),
            ));
        }
        let file = Arc::new(file);
        st.packs.insert(
            seq,
            Pack {
                file: Arc::clone(&file),
                end: FILE_MAGIC.len() as u64,
                live: 0,
            },
        );
        // The pack being scanned counts as the current one, so a replacement
        // found in it never deletes it (`remove_locked`); `open` picks the
        // real current pack after the scan.
        st.current = Some(seq);
        let mut offset = FILE_MAGIC.len() as u64;
        let mut buf = [0u8; HEAD_LEN as usize];
        while offset < size {
            let whole = size - offset >= HEAD_LEN && file.read_exact_at(&mut buf, offset).is_ok();
            let parsed = if whole { parse_head(&buf) } else { None };
            let Some((state, len, digest)) =
                parsed.filter(|(_, len, _)| offset + HEAD_LEN + u64::from(*len) <= size)
            else {
                tracing::warn!(pack = %path.display(), at = offset, dropped = size - offset, "truncating a torn chunk pack tail (a write a crash interrupted)");
                file.set_len(offset)?;
                st.dirty.insert(seq);
                break;
            };
            if state == LIVE {
                // Written again later (a replacement): the later one counts.
                self.remove_locked(st, &digest)?;
                st.index.insert(
                    digest,
                    Loc {
                        pack: seq,
                        offset,
                        len,
                    },
                );
                st.bytes += u64::from(len);
                if let Some(p) = st.packs.get_mut(&seq) {
                    p.live += 1;
                }
            }
            offset += HEAD_LEN + u64::from(len);
        }
        if let Some(p) = st.packs.get_mut(&seq) {
            p.end = offset.min(size);
        }
        Ok(())
    }

    /// Moves chunk files of the previous layout (`xx/DIGEST` under the dir)
    /// into a pack, makes it durable, then deletes the files.
    fn migrate_files(&self, shards: &[PathBuf]) -> io::Result<()> {
        let mut moved = Vec::new();
        for shard in shards {
            for entry in fs::read_dir(shard)? {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(LEGACY_TMP_SUFFIX) {
                    fs::remove_file(entry.path())?;
                } else if let Some(digest) = Sha256Digest::from_hex(&name) {
                    let bytes = fs::read(entry.path())?;
                    self.put(&digest, &bytes)?;
                    moved.push(entry.path());
                }
            }
        }
        self.sync()?;
        for path in &moved {
            fs::remove_file(path)?;
        }
        for shard in shards {
            // A shard with something else in it stays.
            let _ = fs::remove_dir(shard);
        }
        tracing::info!(chunks = moved.len(), dir = %self.dir.display(), "moved chunk files into chunk packs");
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change to the state is made after the I/O it records
        // succeeded, so a panic elsewhere cannot leave it half-updated in a
        // way worse than the poison itself.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Most pieces one `pwritev` takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Writes `pieces` one after another at `offset`, all of them.
fn write_all_vectored_at(file: &File, pieces: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let (mut i, mut skip) = (0usize, 0usize);
    while i < pieces.len() {
        if pieces[i].len() == skip {
            (i, skip) = (i + 1, 0);
            continue;
        }
        let slices: Vec<io::IoSlice<'_>> = std::iter::once(&pieces[i][skip..])
            .chain(pieces[i + 1..].iter().copied())
            .take(IOV_MAX)
            .map(io::IoSlice::new)
            .collect();
        let mut n = match rustix::io::pwritev(file, &slices, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        offset += n as u64;
        while n > 0 {
            let rest = pieces[i].len() - skip;
            if n >= rest {
                n -= rest;
                (i, skip) = (i + 1, 0);
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// The check a record head carries: the first 4 bytes of SHA-256 over the
/// record magic, the length and the digest.
fn check(len: u32, digest: &Sha256Digest) -> [u8; 4] {
    let mut h = flotilla_protocol::digest::Sha256Hasher::default();
    h.update(&RECORD_MAGIC);
    h.update(&len.to_le_bytes());
    h.update(&digest.0);
    let d = h.finish();
    [d.0[0], d.0[1], d.0[2], d.0[3]]
}

/// A record head.
fn head(digest: &Sha256Digest, len: u32, state: u8) -> [u8; HEAD_LEN as usize] {
    let mut h = [0u8; HEAD_LEN as usize];
    h[..4].copy_from_slice(&RECORD_MAGIC);
    h[STATE_AT as usize] = state;
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h[12..16].copy_from_slice(&check(len, digest));
    h[16..48].copy_from_slice(&digest.0);
    h
}

/// `(state, length, digest)` of a record head, or `None` when it is not one.
fn parse_head(h: &[u8; HEAD_LEN as usize]) -> Option<(u8, u32, Sha256Digest)> {
    if h[..4] != RECORD_MAGIC || h[5..8] != [0, 0, 0] {
        return None;
    }
    let state = h[STATE_AT as usize];
    if state != LIVE && state != REMOVED {
        return None;
    }
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let mut d = [0u8; 32];
    d.copy_from_slice(&h[16..48]);
    let digest = Sha256Digest(d);
    (h[12..16] == check(len, &digest)).then_some((state, len, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Sha256Digest {
        Sha256Digest::of(&[n])
    }

    fn packs_in(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "pack"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn chunks_survive_a_reopen_and_a_removal_stays_removed() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkPacks::open(dir.path()).unwrap();
        c.put(&d(1), b"abc").unwrap();
        c.put(&d(2), b"defgh").unwrap();
        c.put(&d(3), b"ij").unwrap();
        assert!(c.remove(&d(2)).unwrap());
        assert!(!c.remove(&d(2)).unwrap(), "a second removal finds nothing");
        c.sync().unwrap();
        drop(c);

        let c = ChunkPacks::open(dir.path()).unwrap();
        assert_eq!(c.totals(), (2, 5));
        assert_eq!(c.get(&d(1)).unwrap().unwrap(), b"abc");
        assert_eq!(c.get(&d(3)).unwrap().unwrap(), b"ij");
        assert!(!c.contains(&d(2)));
        assert_eq!(c.get(&d(2)).unwrap(), None);
        // New writes go on after what was there.
        c.put(&d(4), b"klmn").unwrap();
        drop(c);
        let c = ChunkPacks::open(dir.path()).unwrap();
        assert_eq!(c.totals(), (3, 9));
        assert_eq!(c.get(&d(4)).unwrap().unwrap(), b"klmn");
        assert_eq!(packs_in(dir.path()).len(), 1);
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_chunks_before_it_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkPacks::open(dir.path()).unwrap();
        c.put(&d(1), b"first chunk").unwrap();
        c.put(&d(2), b"second chunk").unwrap();
        c.sync().unwrap();
        drop(c);
        let pack = packs_in(dir.path()).remove(0);
        let whole = fs::read(&pack).unwrap();
        let first_end = 8 + HEAD_LEN as usize + 11;

        // Each way a crash can leave the second record: part of its head,
        // all of its head and part of its bytes, a head of garbage.
        let mut garbage = whole[..first_end].to_vec();
        garbage.extend_from_slice(&[0xAB; 60]);
        for (what, bytes) in [
            ("half a head", whole[..first_end + 20].to_vec()),
            ("head, half the bytes", whole[..whole.len() - 5].to_vec()),
            ("garbage", garbage),
        ] {
            fs::write(&pack, &bytes).unwrap();
            let c = ChunkPacks::open(dir.path()).unwrap();
            assert_eq!(c.totals(), (1, 11), "{what}");
            assert_eq!(c.get(&d(1)).unwrap().unwrap(), b"first chunk", "{what}");
            assert!(!c.contains(&d(2)), "{what}");
            assert_eq!(
                fs::metadata(&pack).unwrap().len(),
                first_end as u64,
                "{what}: the tail is cut"
            );
            // The pack takes records again where the good ones end.
            c.put(&d(2), b"second chunk").unwrap();
            drop(c);
            let c = ChunkPacks::open(dir.path()).unwrap();
            assert_eq!(c.get(&d(2)).unwrap().unwrap(), b"second chunk", "{what}");
        }
    }

    #[test]
    fn a_file_that_is_not_a_pack_is_an_error_not_data_loss() {
        let dir = tempfile::tempdir().unwrap();
        let stranger = dir.path().join("00000000.pack");
        fs::write(&stranger, b"someone else's file, not ours").unwrap();
        let err = ChunkPacks::open(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("not a chunk pack"), "{err}");
        assert_eq!(
            fs::read(&stranger).unwrap(),
            b"someone else's file, not ours",
            "left as it was"
        );
        // A pack a crash left before its magic was written is removed.
        fs::write(&stranger, b"FLOT").unwrap();
        let c = ChunkPacks::open(dir.path()).unwrap();
        assert_eq!(c.totals(), (0, 0));
        assert!(!stranger.exists());
    }

    #[test]
    fn packs_roll_over_and_a_pack_without_live_chunks_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkPacks::open_with_target(dir.path(), 200).unwrap();
        let blob = [7u8; 100];
        for i in 0..6 {
            c.put(&d(i), &blob).unwrap();
        }
        // 8 + 2 * 148 passes 200: two records a pack.
        assert_eq!(packs_in(dir.path()).len(), 3);
        c.remove(&d(0)).unwrap();
        assert_eq!(packs_in(dir.path()).len(), 3, "one chunk still lives there");
        c.remove(&d(1)).unwrap();
        assert_eq!(packs_in(dir.path()).len(), 2, "the first pack is gone");
        c.sync().unwrap();
        drop(c);
        let c = ChunkPacks::open_with_target(dir.path(), 200).unwrap();
        assert_eq!(c.totals(), (4, 400));
        for i in 2..6 {
            assert_eq!(c.get(&d(i)).unwrap().unwrap(), blob);
        }
        c.put(&d(9), b"x").unwrap();
        assert_eq!(
            packs_in(dir.path()).len(),
            3,
            "a full last pack is not appended to"
        );
    }

    #[test]
    fn a_chunk_in_more_pieces_than_one_pwritev_takes_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkPacks::open(dir.path()).unwrap();
        let whole: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        // 3000 one-byte pieces and some empty ones: three pwritev calls.
        let mut pieces: Vec<&[u8]> = whole.chunks(1).collect();
        pieces.insert(7, &[]);
        pieces.push(&[]);
        c.put_pieces(&d(1), &pieces).unwrap();
        c.put(&d(2), b"after").unwrap();
        drop(c);
        let c = ChunkPacks::open(dir.path()).unwrap();
        assert_eq!(c.get(&d(1)).unwrap().unwrap(), whole);
        assert_eq!(c.get(&d(2)).unwrap().unwrap(), b"after");
    }

    #[test]
    fn writing_a_chunk_again_replaces_it_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkPacks::open(dir.path()).unwrap();
        c.put(&d(1), b"damaged").unwrap();
        c.put(&d(1), b"repaired!").unwrap();
        assert_eq!(c.totals(), (1, 9));
        assert_eq!(c.get(&d(1)).unwrap().unwrap(), b"repaired!");
        drop(c);
        let c = ChunkPacks::open(dir.path()).unwrap();
        assert_eq!(c.totals(), (1, 9));
        assert_eq!(c.get(&d(1)).unwrap().unwrap(), b"repaired!");
    }

    #[test]
    fn a_replacement_whose_removal_mark_was_lost_still_wins_at_open() {
        // A crash can persist the new record but not the old one's removed
        // byte; the scan then finds two live records of one digest, in one
        // pack (a large target) or in two (a target of ~2 records).
        let first_state_byte = FILE_MAGIC.len() as u64 + STATE_AT;
        for target in [PACK_TARGET, 120] {
            let dir = tempfile::tempdir().unwrap();
            let c = ChunkPacks::open_with_target(dir.path(), target).unwrap();
            c.put(&d(1), b"damaged").unwrap();
            c.put(&d(2), b"x").unwrap();
            c.put(&d(3), b"yy").unwrap();
            c.put(&d(1), b"repaired!").unwrap();
            let packs = packs_in(dir.path()).len();
            drop(c);
            let first = packs_in(dir.path()).remove(0);
            File::options()
                .write(true)
                .open(&first)
                .unwrap()
                .write_all_at(&[LIVE], first_state_byte)
                .unwrap();
            for round in 0..2 {
                let c = ChunkPacks::open_with_target(dir.path(), target).unwrap();
                assert_eq!(c.totals(), (3, 12), "target {target}, open {round}");
                assert_eq!(c.get(&d(1)).unwrap().unwrap(), b"repaired!");
                assert_eq!(c.get(&d(3)).unwrap().unwrap(), b"yy");
                assert_eq!(packs_in(dir.path()).len(), packs, "target {target}");
            }
        }
    }

    #[test]
    fn removing_a_chunk_frees_its_space_where_holes_can_be_punched() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkPacks::open(dir.path()).unwrap();
        let big = vec![5u8; 4 << 20];
        c.put(&d(1), &big).unwrap();
        c.put(&d(2), b"keeps the pack alive").unwrap();
        c.sync().unwrap();
        let pack = packs_in(dir.path()).remove(0);
        let before = fs::metadata(&pack).unwrap().blocks();
        c.remove(&d(1)).unwrap();
        c.sync().unwrap();
        let after = fs::metadata(&pack).unwrap().blocks();
        if c.no_punch.load(Ordering::Relaxed) {
            eprintln!("this filesystem does not punch holes; space check skipped");
        } else {
            // 4 MiB is 8192 blocks of 512 bytes; all but the edges are freed.
            assert!(
                before - after >= 8000,
                "blocks before {before}, after {after}"
            );
        }
        assert_eq!(c.get(&d(2)).unwrap().unwrap(), b"keeps the pack alive");
    }

    #[test]
    fn chunk_files_of_the_previous_layout_are_moved_into_a_pack() {
        let dir = tempfile::tempdir().unwrap();
        for (n, bytes) in [(1u8, b"one".as_slice()), (2, b"twotwo")] {
            let hex = d(n).to_hex();
            let shard = dir.path().join(&hex[..2]);
            fs::create_dir_all(&shard).unwrap();
            fs::write(shard.join(&hex), bytes).unwrap();
            fs::write(shard.join(format!("{hex}.3.tmp")), b"half").unwrap();
        }
        let c = ChunkPacks::open(dir.path()).unwrap();
        assert_eq!(c.totals(), (2, 9));
        assert_eq!(c.get(&d(2)).unwrap().unwrap(), b"twotwo");
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            vec!["00000000.pack".to_string()],
            "the shard dirs are gone"
        );
        drop(c);
        let c = ChunkPacks::open(dir.path()).unwrap();
        assert_eq!(c.get(&d(1)).unwrap().unwrap(), b"one");
    }

    #[test]
    fn a_write_into_a_read_only_dir_is_an_error_and_counts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkPacks::open(dir.path()).unwrap();
        // A dir where the first pack file should be.
        fs::create_dir(dir.path().join("00000000.pack")).unwrap();
        let err = c.put(&d(1), b"abc");
        assert!(err.is_err());
        assert_eq!(c.totals(), (0, 0));
        assert!(!c.contains(&d(1)));
    }
}
