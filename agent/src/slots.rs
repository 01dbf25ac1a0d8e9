//! Bundles on disk: staging a verified bundle from the chunk store into
//! `DATA/deployments/`, and retiring and pruning what is no longer needed.
//!
//! Layout: `DEPLOY_ROOT/{endpoint}/{deployment}/{version}/`, where `{version}` is
//! the first 16 hex digits of the SHA-256 of the bundle's TUF target path
//! ([`version_dir_name`]) and the endpoint and deployment names are used as they
//! are when they are plain names, hashed otherwise ([`deployment_dir`]). A version
//! dir holds the manifest's files at their relative paths and the signed manifest
//! bytes as [`MANIFEST_FILE`].
//!
//! Design: staging is atomic. Files are assembled into a hidden sibling dir,
//! every chunk re-verified on the way out of the store, fsynced, and the dir is
//! renamed into place, so a version dir exists only when complete; a crash leaves
//! at worst a hidden staging dir, which the next stage of that version (or a
//! prune) removes. The driver performs one action at a time, so one deployment
//! is never staged, retired or pruned by two callers at once.
//!
//! It does not load or run models (that is [`trial`]), decide which versions to
//! keep (the reconciler does), or touch what is serving: staging a new version
//! never writes into an existing version dir.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flotilla_protocol::digest::{AnyDigest, AnyHasher, Sha256Digest};
use flotilla_protocol::manifest::{BundleManifest, ManifestFile};
use flotilla_protocol::reconcile::{DeploymentKey, Slot};

use crate::store::{AgentStore, StoreError};

mod trial;

pub use trial::{load, trial, LoadedModel, TrialReport, MAX_SELF_TEST_ELEMENTS};

/// Name of the signed manifest bytes inside a version dir.
pub const MANIFEST_FILE: &str = "manifest.cbor";
/// Suffix of the hidden dir a version is assembled in.
const STAGING_SUFFIX: &str = ".staging";

/// Why a bundle could not be staged, retired or pruned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// A manifest file path is absolute, contains `..` or `.`, is empty, or
    /// names the manifest file itself.
    #[error("bundle file path {path:?} is not a safe relative path")]
    UnsafePath {
        /// The offending file path.
        path: String,
    },
    /// A chunk the manifest lists is not in the store.
    #[error("chunk {digest} of bundle file {path} is not in the chunk store")]
    MissingChunk {
        /// The file it belongs to.
        path: String,
        /// The chunk.
        digest: Sha256Digest,
    },
    /// A stored chunk does not match its signed entry (length, and BLAKE3
    /// where the manifest lists one, else SHA-256).
    #[error("chunk {digest} of bundle file {path} is corrupt in the chunk store: {actual_len} bytes hashing to {actual}, expected {expected_len} bytes")]
    CorruptChunk {
        /// The file it belongs to.
        path: String,
        /// The chunk's address.
        digest: Sha256Digest,
        /// The signed length.
        expected_len: u32,
        /// Bytes found.
        actual_len: usize,
        /// Their digest, of the kind checked.
        actual: AnyDigest,
    },
    /// An assembled file does not have the size and digest (BLAKE3 where
    /// listed, else SHA-256) the manifest signs.
    #[error("bundle file {path} assembled to {actual_len} bytes hashing to {actual}, the manifest says {expected_len} bytes hashing to {expected}")]
    FileMismatch {
        /// The file.
        path: String,
        /// The signed size.
        expected_len: u64,
        /// The signed digest.
        expected: AnyDigest,
        /// Bytes written.
        actual_len: u64,
        /// Their digest, of the same kind.
        actual: AnyDigest,
    },
    /// Reading a chunk from the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`create`, `write`, `rename` …).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// The dir of one deployment's versions.
pub fn deployment_dir(deploy_root: &Path, key: &DeploymentKey) -> PathBuf {
    deploy_root
        .join(name_segment(&key.endpoint))
        .join(name_segment(&key.deployment))
}

/// The dir version `target` of deployment `key` is staged in.
pub fn bundle_dir(deploy_root: &Path, key: &DeploymentKey, target: &str) -> PathBuf {
    deployment_dir(deploy_root, key).join(version_dir_name(target))
}

/// The name of a version dir: the first 16 hex digits of SHA-256(`target`).
pub fn version_dir_name(target: &str) -> String {
    let mut hex = Sha256Digest::of(target.as_bytes()).to_hex();
    hex.truncate(16);
    hex
}

/// Stages `slot`'s bundle for `key` from `store`; returns its version dir. See
/// [`stage_manifest`].
///
/// # Errors
///
/// As [`stage_manifest`].
pub fn stage(
    deploy_root: &Path,
    key: &DeploymentKey,
    slot: &Slot,
    store: &AgentStore,
) -> Result<PathBuf, SlotError> {
    stage_manifest(
        deploy_root,
        key,
        slot.target(),
        slot.manifest(),
        slot.manifest_bytes(),
        store,
    )
}

/// Materialises the bundle `manifest` (signed as `manifest_bytes`, at TUF path
/// `target`) for `key`: every file is assembled from its chunks in `store`, each
/// chunk's length and SHA-256 and each file's size and SHA-256 checked again,
/// into a hidden dir that is fsynced and then renamed to
/// [`bundle_dir`]`(deploy_root, key, target)`. If that dir already holds this
/// manifest, nothing is written.
///
/// # Errors
///
/// [`SlotError::UnsafePath`] (before anything is written),
/// [`SlotError::MissingChunk`], [`SlotError::CorruptChunk`],
/// [`SlotError::FileMismatch`], [`SlotError::Store`], [`SlotError::Io`]. On any
/// error the version dir does not exist and the hidden dir is removed.
pub fn stage_manifest(
    deploy_root: &Path,
    key: &DeploymentKey,
    target: &str,
    manifest: &BundleManifest,
    manifest_bytes: &[u8],
    store: &AgentStore,
) -> Result<PathBuf, SlotError> {
    for f in &manifest.files {
        if !is_safe_relative_path(&f.path) || f.path == MANIFEST_FILE {
            return Err(SlotError::UnsafePath {
                path: f.path.clone(),
            });
        }
    }
    let parent = deployment_dir(deploy_root, key);
    let name = version_dir_name(target);
    let final_dir = parent.join(&name);
    if fs::read(final_dir.join(MANIFEST_FILE)).is_ok_and(|b| b == manifest_bytes) {
        return Ok(final_dir);
    }
    // Something else sits where this version goes (another manifest for the same
    // target path, or a non-dir): it is not serving this version, so replace it.
    remove_any(&final_dir)?;
    create_dir_all(&parent)?;
    let staging = parent.join(format!(".{name}{STAGING_SUFFIX}"));
    remove_any(&staging)?;
    let result = assemble(&staging, manifest, manifest_bytes, store).and_then(|()| {
        fs::rename(&staging, &final_dir).map_err(io_err("rename into place", &final_dir))?;
        sync_dir(&parent)
    });
    if result.is_err() {
        // Best effort: the next stage or prune removes it otherwise.
        let _ = fs::remove_dir_all(&staging);
    }
    result.map(|()| final_dir)
}

/// Removes every version of deployment `key` (and its endpoint dir when that
/// was the last deployment in it).
///
/// # Errors
///
/// [`SlotError::Io`].
pub fn retire(deploy_root: &Path, key: &DeploymentKey) -> Result<(), SlotError> {
    let dir = deployment_dir(deploy_root, key);
    remove_any(&dir)?;
    if let Some(endpoint) = dir.parent() {
        // Fails (and is meant to) while other deployments of the endpoint remain.
        let _ = fs::remove_dir(endpoint);
    }
    Ok(())
}

/// Removes every entry of deployment `key`'s dir that is not the version dir of
/// a target in `keep` (other versions and leftover staging dirs); returns how
/// many were removed.
///
/// # Errors
///
/// [`SlotError::Io`].
pub fn prune(deploy_root: &Path, key: &DeploymentKey, keep: &[&str]) -> Result<usize, SlotError> {
    let dir = deployment_dir(deploy_root, key);
    let keep: BTreeSet<String> = keep.iter().map(|t| version_dir_name(t)).collect();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io_err("list", &dir))?;
        if keep.contains(entry.file_name().to_string_lossy().as_ref()) {
            continue;
        }
        remove_any(&entry.path())?;
        removed += 1;
    }
    Ok(removed)
}

/// Writes the bundle's files and manifest into the new dir `staging`, fsyncing
/// every file and dir.
fn assemble(
    staging: &Path,
    manifest: &BundleManifest,
    manifest_bytes: &[u8],
    store: &AgentStore,
) -> Result<(), SlotError> {
    fs::create_dir(staging).map_err(io_err("create", staging))?;
    let mut dirs = BTreeSet::from([staging.to_owned()]);
    for f in &manifest.files {
        let path = staging.join(&f.path);
        if let Some(parent) = path.parent() {
            if !dirs.contains(parent) {
                create_dir_all(parent)?;
                for d in parent.ancestors().take_while(|d| *d != staging) {
                    dirs.insert(d.to_owned());
                }
            }
        }
        write_file(&path, f, store)?;
    }
    let path = staging.join(MANIFEST_FILE);
    let mut out = File::create(&path).map_err(io_err("create", &path))?;
    out.write_all(manifest_bytes)
        .map_err(io_err("write", &path))?;
    out.sync_all().map_err(io_err("fsync", &path))?;
    // Children before parents, so each dir's entries are durable first.
    for d in dirs.iter().rev() {
        sync_dir(d)?;
    }
    Ok(())
}

/// Writes one file from its chunks, checking each chunk and the whole file.
fn write_file(path: &Path, file: &ManifestFile, store: &AgentStore) -> Result<(), SlotError> {
    let mut out = File::create(path).map_err(io_err("create", path))?;
    // The file is checked by its BLAKE3 where the manifest lists one (about
    // a fifth of SHA-256's cost), else by its SHA-256.
    let expected = file.checked_digest();
    let mut hasher = AnyHasher::like(&expected);
    let mut written = 0u64;
    for c in &file.chunks {
        let bytes = store
            .get_chunk(&c.digest)
            .map_err(SlotError::Store)?
            .ok_or_else(|| SlotError::MissingChunk {
                path: file.path.clone(),
                digest: c.digest,
            })?;
        if let Err(actual) = c.verify_slice(&bytes) {
            // Dropped so that the next fetch of a version with this chunk
            // asks the hub for it again instead of finding it "present".
            if let Err(e) = store.remove_chunks(&[c.digest]) {
                tracing::warn!(digest = %c.digest, error = %e, "could not drop a corrupt chunk");
            }
            return Err(SlotError::CorruptChunk {
                path: file.path.clone(),
                digest: c.digest,
                expected_len: c.size,
                actual_len: bytes.len(),
                actual,
            });
        }
        hasher.update(&bytes);
        out.write_all(&bytes).map_err(io_err("write", path))?;
        written += bytes.len() as u64;
    }
    let actual = hasher.finish();
    if written != file.size || actual != expected {
        return Err(SlotError::FileMismatch {
            path: file.path.clone(),
            expected_len: file.size,
            expected,
            actual_len: written,
            actual,
        });
    }
    out.sync_all().map_err(io_err("fsync", path))
}

/// A bundle-relative `/`-separated path that stays inside the bundle dir.
///
/// Design: the manifest decoder already enforces this; it is checked again here
/// because this is where a path turns into a file write.
pub(crate) fn is_safe_relative_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains(['\\', '\0'])
        && p.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// An endpoint or deployment name as a dir name: itself when it is a plain name
/// (ASCII letters, digits, `-`, `_`, `.`, not starting with `.`, at most 64
/// bytes), else `~` and the first 16 hex digits of its SHA-256 (`~` never
/// appears in a plain name, so the mapping is one-to-one in practice).
fn name_segment(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        return name.to_owned();
    }
    let mut hex = Sha256Digest::of(name.as_bytes()).to_hex();
    hex.truncate(16);
    format!("~{hex}")
}

/// Removes a dir tree or a file; absent is fine.
fn remove_any(path: &Path) -> Result<(), SlotError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

fn create_dir_all(path: &Path) -> Result<(), SlotError> {
    fs::create_dir_all(path).map_err(io_err("create", path))
}

/// fsyncs a dir so that the entries created or renamed in it are durable.
fn sync_dir(path: &Path) -> Result<(), SlotError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", path))
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SlotError {
    let path = path.to_owned();
    move |source| SlotError::Io { op, path, source }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flotilla_protocol::chunking::chunk_bytes;
    use flotilla_protocol::manifest::{
        Accelerator, ChunkRef, ChunkingParams, Flavor, Lineage, ModelSignature,
        RuntimeRequirements, MANIFEST_SCHEMA_VERSION,
    };

    /// A manifest of `files` (path, bytes), the first being the entrypoint, with
    /// its chunks written to `store`.
    pub(crate) fn manifest_in_store(
        files: &[(&str, &[u8])],
        signature: ModelSignature,
        store: &AgentStore,
    ) -> BundleManifest {
        let mut out = Vec::new();
        for (path, data) in files {
            let chunks = chunk_bytes(data);
            let mut refs = Vec::new();
            for c in &chunks {
                let start = c.offset as usize;
                let bytes = &data[start..start + c.len as usize];
                store.put_chunk(&c.digest, bytes).unwrap();
                refs.push(ChunkRef::from(c));
            }
            out.push(ManifestFile::describing(*path, data, refs));
        }
        BundleManifest {
            schema_version: MANIFEST_SCHEMA_VERSION,
            name: "fraud".into(),
            version: 1,
            flavor: Flavor::Onnx,
            entrypoint: files[0].0.into(),
            files: out,
            chunking: ChunkingParams::default(),
            signature,
            drift_baseline: None,
            requirements: RuntimeRequirements {
                min_agent_version: "0.1.0".into(),
                accelerator: Accelerator::Cpu,
                min_memory_bytes: 0,
            },
            lineage: Lineage::default(),
            tags: Default::default(),
        }
    }

    /// Pseudo-random bytes (xorshift), enough to cut several chunks.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    struct Env {
        _dir: tempfile::TempDir,
        root: PathBuf,
        store: AgentStore,
        key: DeploymentKey,
    }

    fn env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = AgentStore::open(dir.path()).unwrap();
        Env {
            root: dir.path().join("deployments"),
            _dir: dir,
            store,
            key: DeploymentKey::new("fraud", "blue"),
        }
    }

    const TARGET: &str = "models/fraud/1/manifest.cbor";

    #[test]
    fn staging_writes_the_exact_bytes_and_the_manifest() {
        let e = env();
        let big = noise(3 << 20, 7);
        let small = b"{\"labels\": [\"ok\", \"fraud\"]}".to_vec();
        let m = manifest_in_store(
            &[("model.onnx", &big), ("extra/labels.json", &small)],
            ModelSignature::default(),
            &e.store,
        );
        assert!(m.files[0].chunks.len() > 1, "want several chunks");
        let raw = m.encode();
        let dir = stage_manifest(&e.root, &e.key, TARGET, &m, &raw, &e.store).unwrap();
        assert_eq!(dir, bundle_dir(&e.root, &e.key, TARGET));
        assert_eq!(
            dir,
            e.root.join("fraud/blue").join(version_dir_name(TARGET))
        );
        assert_eq!(fs::read(dir.join("model.onnx")).unwrap(), big);
        assert_eq!(fs::read(dir.join("extra/labels.json")).unwrap(), small);
        assert_eq!(fs::read(dir.join(MANIFEST_FILE)).unwrap(), raw);
        // Only the version dir is left in the deployment dir.
        let names: Vec<_> = fs::read_dir(e.root.join("fraud/blue"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(version_dir_name(TARGET))]
        );
    }

    #[test]
    fn restaging_a_complete_version_is_a_no_op() {
        let e = env();
        let m = manifest_in_store(&[("model.onnx", b"abc")], Default::default(), &e.store);
        let raw = m.encode();
        let dir = stage_manifest(&e.root, &e.key, TARGET, &m, &raw, &e.store).unwrap();
        let marker = dir.join("marker");
        fs::write(&marker, b"left alone").unwrap();
        // Chunks may already be collected: a no-op needs none of them.
        e.store
            .remove_chunks(&[m.files[0].chunks[0].digest])
            .unwrap();
        let again = stage_manifest(&e.root, &e.key, TARGET, &m, &raw, &e.store).unwrap();
        assert_eq!(again, dir);
        assert!(marker.exists());
    }

    #[test]
    fn a_corrupt_chunk_fails_staging_and_leaves_no_version_dir() {
        let e = env();
        let data = noise(3 << 20, 9);
        let m = manifest_in_store(&[("model.onnx", &data)], Default::default(), &e.store);
        let last = *m.files[0].chunks.last().unwrap();
        e.store
            .put_chunk(&last.digest, &vec![0u8; last.size as usize])
            .unwrap();
        let err = stage_manifest(&e.root, &e.key, TARGET, &m, &m.encode(), &e.store).unwrap_err();
        assert!(
            matches!(err, SlotError::CorruptChunk { digest, .. } if digest == last.digest),
            "{err}"
        );
        assert_eq!(
            e.store.has_chunks(&[last.digest]).unwrap().1,
            vec![last.digest],
            "the corrupt chunk is dropped so that it is fetched again"
        );
        assert!(!bundle_dir(&e.root, &e.key, TARGET).exists());
        let left: Vec<_> = fs::read_dir(e.root.join("fraud/blue")).unwrap().collect();
        assert!(left.is_empty(), "staging dir left behind: {left:?}");
    }

    #[test]
    fn a_missing_chunk_fails_staging() {
        let e = env();
        let m = manifest_in_store(&[("model.onnx", b"abc")], Default::default(), &e.store);
        e.store
            .remove_chunks(&[m.files[0].chunks[0].digest])
            .unwrap();
        let err = stage_manifest(&e.root, &e.key, TARGET, &m, &m.encode(), &e.store).unwrap_err();
        assert!(matches!(err, SlotError::MissingChunk { .. }), "{err}");
        assert!(!bundle_dir(&e.root, &e.key, TARGET).exists());
    }

    #[test]
    fn a_file_whose_digest_disagrees_with_the_manifest_fails_staging() {
        let e = env();
        let good = manifest_in_store(&[("model.onnx", b"abc")], Default::default(), &e.store);
        // The file's BLAKE3 is what is checked where the manifest lists it ...
        let mut m = good.clone();
        m.files[0].blake3 = Some(flotilla_protocol::digest::Blake3Digest::of(
            b"something else",
        ));
        let err = stage_manifest(&e.root, &e.key, TARGET, &m, &m.encode(), &e.store).unwrap_err();
        assert!(
            matches!(
                err,
                SlotError::FileMismatch {
                    actual: AnyDigest::Blake3(_),
                    ..
                }
            ),
            "{err}"
        );
        assert!(!bundle_dir(&e.root, &e.key, TARGET).exists());
        // ... and its SHA-256 where it does not (older manifests).
        let mut m = good;
        m.files[0].blake3 = None;
        m.files[0].sha256 = Sha256Digest::of(b"something else");
        let err = stage_manifest(&e.root, &e.key, TARGET, &m, &m.encode(), &e.store).unwrap_err();
        assert!(
            matches!(
                err,
                SlotError::FileMismatch {
                    actual: AnyDigest::Sha256(_),
                    ..
                }
            ),
            "{err}"
        );
        assert!(!bundle_dir(&e.root, &e.key, TARGET).exists());
    }

    #[test]
    fn paths_that_escape_the_bundle_dir_are_rejected_before_writing() {
        for bad in [
            "../evil",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "./a",
            "",
            MANIFEST_FILE,
        ] {
            let e = env();
            let mut m = manifest_in_store(
                &[("model.onnx", b"abc"), ("other", b"def")],
                Default::default(),
                &e.store,
            );
            m.files[1].path = bad.into();
            let err =
                stage_manifest(&e.root, &e.key, TARGET, &m, &m.encode(), &e.store).unwrap_err();
            assert!(
                matches!(&err, SlotError::UnsafePath { path, .. } if path == bad),
                "{bad}: {err}"
            );
            assert!(!e.root.exists(), "{bad}: something was written");
        }
    }

    #[test]
    fn hostile_deployment_names_stay_inside_the_deploy_root() {
        let root = Path::new("/data/deployments");
        let key = DeploymentKey::new("..", "../../etc");
        let dir = bundle_dir(root, &key, TARGET);
        assert!(dir.starts_with(root));
        assert!(dir
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir)));
        assert_ne!(
            deployment_dir(root, &DeploymentKey::new("a", "b")),
            deployment_dir(root, &DeploymentKey::new("a/b", ""))
        );
    }

    #[test]
    fn prune_keeps_named_versions_and_retire_removes_the_deployment() {
        let e = env();
        let m = manifest_in_store(&[("model.onnx", b"abc")], Default::default(), &e.store);
        let raw = m.encode();
        let targets = [
            "models/fraud/1/manifest.cbor",
            "models/fraud/2/manifest.cbor",
        ];
        for t in targets {
            stage_manifest(&e.root, &e.key, t, &m, &raw, &e.store).unwrap();
        }
        let other = DeploymentKey::new("fraud", "green");
        stage_manifest(&e.root, &other, targets[0], &m, &raw, &e.store).unwrap();
        let stale = deployment_dir(&e.root, &e.key).join(".deadbeef.staging");
        fs::create_dir(&stale).unwrap();

        assert_eq!(prune(&e.root, &e.key, &[targets[1]]).unwrap(), 2);
        assert!(!bundle_dir(&e.root, &e.key, targets[0]).exists());
        assert!(bundle_dir(&e.root, &e.key, targets[1]).exists());
        assert!(bundle_dir(&e.root, &other, targets[0]).exists());

        retire(&e.root, &e.key).unwrap();
        assert!(!deployment_dir(&e.root, &e.key).exists());
        assert!(bundle_dir(&e.root, &other, targets[0]).exists());
        retire(&e.root, &other).unwrap();
        assert!(!e.root.join("fraud").exists());
        // Retiring or pruning what is gone is fine.
        retire(&e.root, &other).unwrap();
        assert_eq!(prune(&e.root, &other, &[]).unwrap(), 0);
    }
}
