//! Bounds on every size that comes from an untrusted peer or file.
//!
//! Design: like tough's `Limits`, hostile-input bounds are data, passed to every
//! parser, so that a hub, an agent and a fuzzer can each pick theirs and tests can
//! shrink them. Nothing here is enforced by type; each parser checks the field it
//! consumes *before* it allocates for it.

/// Upper bounds on untrusted input. [`Limits::default`] fits models up to
/// 64 GiB with 1 MiB average chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `root.json` accepted, in bytes (TUF 5.3.3 "up to some limit").
    pub max_root_bytes: u64,
    /// Largest `timestamp.json`, in bytes (TUF 5.4.1).
    pub max_timestamp_bytes: u64,
    /// Largest `snapshot.json` when timestamp names no length (TUF 5.5.1).
    pub max_snapshot_bytes: u64,
    /// Largest `targets.json` when snapshot names no length (TUF 5.6.1).
    pub max_targets_bytes: u64,
    /// Largest director document, in bytes.
    pub max_director_bytes: u64,
    /// Most root versions walked in one update (TUF 5.3.3 fixed maximum).
    pub max_root_rotations: u64,
    /// Largest encoded bundle manifest (CBOR), in bytes.
    pub max_manifest_bytes: u64,
    /// Most files one manifest may list.
    pub max_files: usize,
    /// Most chunks one manifest may list, over all its files.
    pub max_chunks: usize,
    /// Largest single chunk, in bytes. Must be at least the chunker's maximum.
    pub max_chunk_bytes: u64,
    /// Largest single file in a manifest, in bytes.
    pub max_file_bytes: u64,
    /// Longest path or name string accepted in a manifest or document.
    pub max_name_len: usize,
    /// Most signatures on one metadata document considered before giving up.
    pub max_signatures: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_root_bytes: 512 * 1024,
            max_timestamp_bytes: 64 * 1024,
            max_snapshot_bytes: 8 * 1024 * 1024,
            max_targets_bytes: 32 * 1024 * 1024,
            max_director_bytes: 1024 * 1024,
            max_root_rotations: 1024,
            max_manifest_bytes: 16 * 1024 * 1024,
            max_files: 1024,
            max_chunks: 256 * 1024,
            max_chunk_bytes: crate::chunking::MAX_CHUNK as u64,
            max_file_bytes: 64 * 1024 * 1024 * 1024,
            max_name_len: 1024,
            max_signatures: 64,
        }
    }
}
