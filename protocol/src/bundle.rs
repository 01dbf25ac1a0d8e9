//! The bundle file: a self-contained, signed model version for offline and
//! air-gapped transfer, as a plain tar archive anyone can inspect with `tar tvf`.
//!
//! Layout, in this order (the verifier streams and relies on it):
//! ```text
//! metadata/root/1.root.json … N.root.json   the root chain
//! metadata/timestamp.json, snapshot.json, targets.json
//! targets/models/NAME/VERSION/manifest.cbor the manifest, at its TUF target path
//! chunks/SHA256HEX …                        every file's chunks in file order
//! ```
//! Chunks appear in file order, repeats included, so that verification is one
//! streaming pass with memory bounded by one chunk whatever the model size.
//!
//! This module reads and writes through `std::io::{Read, Write}`; it never opens
//! files.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use crate::digest::{Sha256Digest, Sha256Hasher};
use crate::limits::Limits;
use crate::manifest::{BundleManifest, ChunkRef, ManifestError};
use crate::time::UtcTime;
use crate::tuf::{Fetch, TrustedSet, TufError, Updater};

/// Folder of the root chain.
pub const ROOT_DIR: &str = "metadata/root/";
/// Path of timestamp metadata.
pub const TIMESTAMP_PATH: &str = "metadata/timestamp.json";
/// Path of snapshot metadata.
pub const SNAPSHOT_PATH: &str = "metadata/snapshot.json";
/// Path of targets metadata.
pub const TARGETS_PATH: &str = "metadata/targets.json";
/// Folder holding the manifest at its target path.
pub const TARGETS_DIR: &str = "targets/";
/// Folder of chunks, named by their SHA-256 hex.
pub const CHUNK_DIR: &str = "chunks/";

/// Why a bundle failed to read or verify. The message names the role, file or
/// chunk at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Reading or writing the archive failed.
    #[error("bundle I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The archive does not have the bundle layout.
    #[error("bundle layout: {0}")]
    Layout(String),
    /// Trust metadata failed verification.
    #[error(transparent)]
    Tuf(#[from] TufError),
    /// The manifest is malformed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A chunk's bytes do not hash to the digest the manifest signs.
    #[error("file {file}: chunk {index} sha256 mismatch: expected {expected}, got {actual}")]
    ChunkDigest {
        /// The file.
        file: String,
        /// Chunk index in the file.
        index: usize,
        /// Signed digest.
        expected: Sha256Digest,
        /// Actual digest.
        actual: Sha256Digest,
    },
    /// A chunk entry is not the next chunk the manifest lists, or has the wrong length.
    #[error("file {file}: chunk {index}: expected {expected_digest} of {expected_len} bytes, found entry {found} of {found_len} bytes")]
    ChunkOrder {
        /// The file.
        file: String,
        /// Chunk index in the file.
        index: usize,
        /// Digest expected next.
        expected_digest: Sha256Digest,
        /// Length expected.
        expected_len: u32,
        /// Entry path found.
        found: String,
        /// Entry length found.
        found_len: u64,
    },
    /// A whole file does not hash to its signed digest.
    #[error("file {file}: sha256 mismatch: expected {expected}, got {actual}")]
    FileDigest {
        /// The file.
        file: String,
        /// Signed digest.
        expected: Sha256Digest,
        /// Actual digest.
        actual: Sha256Digest,
    },
    /// The archive ended before every chunk arrived.
    #[error("file {file}: bundle ends after {present} of {expected} chunks")]
    Truncated {
        /// The file.
        file: String,
        /// Chunks present.
        present: usize,
        /// Chunks the manifest lists.
        expected: usize,
    },
}

fn layout(msg: impl Into<String>) -> BundleError {
    BundleError::Layout(msg.into())
}

/// Writes a bundle archive with deterministic headers.
pub struct BundleWriter<W: Write> {
    tar: tar::Builder<W>,
}

impl<W: Write> std::fmt::Debug for BundleWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BundleWriter")
    }
}

impl<W: Write> BundleWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        Self {
            tar: tar::Builder::new(out),
        }
    }

    fn append(&mut self, path: &str, data: &[u8]) -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        self.tar.append_data(&mut h, path, data)
    }

    /// Appends root metadata of `version`.
    pub fn root(&mut self, version: u64, raw: &[u8]) -> std::io::Result<()> {
        self.append(&format!("{ROOT_DIR}{version}.root.json"), raw)
    }

    /// Appends timestamp, snapshot and targets metadata.
    pub fn metadata(
        &mut self,
        timestamp: &[u8],
        snapshot: &[u8],
        targets: &[u8],
    ) -> std::io::Result<()> {
        self.append(TIMESTAMP_PATH, timestamp)?;
        self.append(SNAPSHOT_PATH, snapshot)?;
        self.append(TARGETS_PATH, targets)
    }

    /// Appends the manifest at its target path.
    pub fn manifest(&mut self, target_path: &str, raw: &[u8]) -> std::io::Result<()> {
        self.append(&format!("{TARGETS_DIR}{target_path}"), raw)
    }

    /// Appends the next chunk, in file order.
    pub fn chunk(&mut self, digest: &Sha256Digest, data: &[u8]) -> std::io::Result<()> {
        self.append(&format!("{CHUNK_DIR}{}", digest.to_hex()), data)
    }

    /// Finishes the archive and returns the writer.
    pub fn finish(self) -> std::io::Result<W> {
        self.tar.into_inner()
    }
}

/// The metadata section of a bundle, as found (nothing verified).
#[derive(Debug, Default, Clone)]
pub struct BundleMetadata {
    /// Root metadata by version.
    pub roots: BTreeMap<u64, Vec<u8>>,
    /// timestamp.json.
    pub timestamp: Option<Vec<u8>>,
    /// snapshot.json.
    pub snapshot: Option<Vec<u8>>,
    /// targets.json.
    pub targets: Option<Vec<u8>>,
    /// Target path and bytes of the manifest.
    pub manifest: Option<(String, Vec<u8>)>,
}

/// A bundle that verified.
#[derive(Debug)]
pub struct VerifiedBundle {
    /// Trust metadata after the update workflow.
    pub trusted: TrustedSet,
    /// The verified manifest.
    pub manifest: BundleManifest,
    /// The manifest's exact bytes.
    pub manifest_bytes: Vec<u8>,
    /// Chunks verified.
    pub chunks: u64,
    /// Payload bytes verified.
    pub bytes: u64,
}

/// What an unverified look at a bundle found (for `bundle inspect`).
#[derive(Debug)]
pub struct BundleSummary {
    /// The metadata section.
    pub metadata: BundleMetadata,
    /// The manifest, if it decoded.
    pub manifest: Option<Result<BundleManifest, ManifestError>>,
    /// Chunk entries present.
    pub chunk_entries: u64,
    /// Chunk bytes present.
    pub chunk_bytes: u64,
}

fn read_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    what: &str,
    limit: u64,
) -> Result<Vec<u8>, BundleError> {
    let size = entry
        .header()
        .size()
        .map_err(|e| layout(format!("{what}: bad size: {e}")))?;
    if size > limit {
        return Err(layout(format!("{what} is {size} bytes, limit is {limit}")));
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry.take(limit + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, BundleError> {
    let path = entry.path_bytes();
    std::str::from_utf8(&path)
        .map(str::to_owned)
        .map_err(|_| layout("entry path is not UTF-8"))
}

/// Stores one metadata-section entry; returns false when `path` is not one.
fn take_metadata<R: Read>(
    md: &mut BundleMetadata,
    path: &str,
    entry: &mut tar::Entry<'_, R>,
    limits: &Limits,
) -> Result<bool, BundleError> {
    if let Some(v) = path
        .strip_prefix(ROOT_DIR)
        .and_then(|n| n.strip_suffix(".root.json"))
    {
        let version: u64 = v
            .parse()
            .map_err(|_| layout(format!("bad root file name {path}")))?;
        if md.roots.len() as u64 >= limits.max_root_rotations {
            return Err(layout("too many root versions"));
        }
        let held: u64 = md.roots.values().map(|r| r.len() as u64).sum();
        let room = limits.max_root_chain_bytes.saturating_sub(held);
        let raw = read_entry(entry, path, limits.max_root_bytes.min(room))?;
        md.roots.insert(version, raw);
    } else if path == TIMESTAMP_PATH {
        md.timestamp = Some(read_entry(entry, path, limits.max_timestamp_bytes)?);
    } else if path == SNAPSHOT_PATH {
        md.snapshot = Some(read_entry(entry, path, limits.max_snapshot_bytes)?);
    } else if path == TARGETS_PATH {
        md.targets = Some(read_entry(entry, path, limits.max_targets_bytes)?);
    } else if let Some(target) = path.strip_prefix(TARGETS_DIR) {
        if md.manifest.is_some() {
            return Err(layout("more than one manifest"));
        }
        md.manifest = Some((
            target.to_owned(),
            read_entry(entry, path, limits.max_manifest_bytes)?,
        ));
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// Verifies a bundle stream against `trusted_root` at time `now`: the TUF update
/// workflow over the bundle's metadata, the manifest as a signed target, then
/// every chunk's digest and length and every file's digest, in one pass.
/// `on_chunk` receives each chunk once its digest has verified (the agent stores
/// it); the bundle as a whole is trusted only when this returns `Ok`.
pub fn verify_bundle<R: Read>(
    reader: R,
    trusted_root: &[u8],
    now: UtcTime,
    limits: &Limits,
    mut on_chunk: impl FnMut(&ChunkRef, &[u8]) -> std::io::Result<()>,
) -> Result<VerifiedBundle, BundleError> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries()?;
    let mut md = BundleMetadata::default();
    let mut first_chunk = None;
    for entry in entries.by_ref() {
        let mut entry = entry?;
        let path = entry_path(&entry)?;
        if !take_metadata(&mut md, &path, &mut entry, limits)? {
            first_chunk = Some(entry_path(&entry).map(|p| (p, entry))?);
            break;
        }
    }

    // The TUF workflow (spec section 5) with the bundle as the repository.
    let trusted = TrustedSet::from_trusted_root(trusted_root, limits)?;
    let trusted = Updater::run(trusted, now, *limits, |f| match f {
        Fetch::Root { version, .. } => md.roots.get(&version).cloned(),
        Fetch::Timestamp { .. } => md.timestamp.clone(),
        Fetch::Snapshot { .. } => md.snapshot.clone(),
        Fetch::Targets { .. } => md.targets.clone(),
    })?;
    let (target_path, manifest_bytes) = md.manifest.take().ok_or_else(|| layout("no manifest"))?;
    trusted.verify_target(&target_path, &manifest_bytes)?;
    let manifest = BundleManifest::decode(&manifest_bytes, limits)?;
    if manifest.target_path() != target_path {
        return Err(layout(format!(
            "manifest for {}:{} is stored at target {target_path}",
            manifest.name, manifest.version
        )));
    }

    let mut buf = Vec::new();
    let (mut chunks, mut bytes) = (0u64, 0u64);
    let mut pending = first_chunk;
    for file in &manifest.files {
        let mut hasher = Sha256Hasher::default();
        for (index, expected) in file.chunks.iter().enumerate() {
            let (path, mut entry) = match pending.take() {
                Some(p) => p,
                None => match entries.next() {
                    Some(e) => {
                        let e = e?;
                        (entry_path(&e)?, e)
                    }
                    None => {
                        return Err(BundleError::Truncated {
                            file: file.path.clone(),
                            present: index,
                            expected: file.chunks.len(),
                        })
                    }
                },
            };
            let found_len = entry.header().size().unwrap_or(u64::MAX);
            let expected_path = format!("{CHUNK_DIR}{}", expected.digest.to_hex());
            if path != expected_path || found_len != u64::from(expected.size) {
                return Err(BundleError::ChunkOrder {
                    file: file.path.clone(),
                    index,
                    expected_digest: expected.digest,
                    expected_len: expected.size,
                    found: path,
                    found_len,
                });
            }
            buf.clear();
            (&mut entry)
                .take(u64::from(expected.size))
                .read_to_end(&mut buf)?;
            let actual = Sha256Digest::of(&buf);
            if actual != expected.digest || buf.len() as u64 != u64::from(expected.size) {
                return Err(BundleError::ChunkDigest {
                    file: file.path.clone(),
                    index,
                    expected: expected.digest,
                    actual,
                });
            }
            hasher.update(&buf);
            on_chunk(expected, &buf)?;
            chunks += 1;
            bytes += buf.len() as u64;
        }
        let actual = hasher.finish();
        if actual != file.sha256 {
            return Err(BundleError::FileDigest {
                file: file.path.clone(),
                expected: file.sha256,
                actual,
            });
        }
    }
    if let Some((path, _)) = pending {
        return Err(layout(format!("unexpected entry {path}")));
    }
    if let Some(extra) = entries.next() {
        let path = entry_path(&extra?)?;
        return Err(layout(format!(
            "unexpected entry {path} after the last chunk"
        )));
    }
    Ok(VerifiedBundle {
        trusted,
        manifest,
        manifest_bytes,
        chunks,
        bytes,
    })
}

/// Reads a bundle without verifying anything, for inspection.
pub fn inspect_bundle<R: Read>(reader: R, limits: &Limits) -> Result<BundleSummary, BundleError> {
    let mut archive = tar::Archive::new(reader);
    let mut md = BundleMetadata::default();
    let (mut chunk_entries, mut chunk_bytes) = (0u64, 0u64);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry_path(&entry)?;
        if !take_metadata(&mut md, &path, &mut entry, limits)? {
            if !path.starts_with(CHUNK_DIR) {
                return Err(layout(format!("unexpected entry {path}")));
            }
            chunk_entries += 1;
            chunk_bytes += entry.header().size().unwrap_or(0);
        }
    }
    let manifest = md
        .manifest
        .as_ref()
        .map(|(_, b)| BundleManifest::decode(b, limits));
    Ok(BundleSummary {
        metadata: md,
        manifest,
        chunk_entries,
        chunk_bytes,
    })
}
