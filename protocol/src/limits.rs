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
    /// Most bytes of root metadata one bundle file may carry in all (its whole
    /// root chain), so that a hostile bundle cannot make a verifier hold
    /// `max_root_rotations` full-size roots.
    pub max_root_chain_bytes: u64,
    /// Largest wire frame (CBOR, length prefix excluded) the hub accepts from an
    /// agent on any stream: hello, status, chunk requests. Agents send nothing big.
    pub max_agent_frame_bytes: u64,
    /// Largest frame an agent accepts on the control stream, where a
    /// `MetadataUpdate` carries whole TUF documents. Default: room for
    /// `max_roots_per_update` roots and every other document at its limit.
    pub max_control_frame_bytes: u64,
    /// Largest frame an agent accepts on a chunk stream: one chunk or one
    /// manifest (manifests are fetched by digest like chunks), plus framing.
    pub max_chunk_frame_bytes: u64,
    /// Most digests one `ChunkRequest` may name.
    pub max_digests_per_request: usize,
    /// Most deployments one device runs: statuses in a hello, slots in the
    /// agent's reconciler.
    pub max_deployments: usize,
    /// Most root documents one `MetadataUpdate` may carry.
    pub max_roots_per_update: usize,
    /// Most accelerators an agent's inventory may list.
    pub max_accelerators: usize,
    /// Longest free-text reason (a failure, a goodbye), in bytes.
    pub max_reason_len: usize,
    /// Largest encoded telemetry record (a window, an ack, an event) accepted
    /// from MQTT, in bytes; also the largest window an agent's outbox keeps.
    pub max_telemetry_bytes: u64,
    /// Most endpoint+deployment entries, and most drift observations, one
    /// telemetry window may carry. A merged window holds the union over its
    /// span, so this is above `max_deployments`.
    pub max_window_series: usize,
    /// Most entries in one of a window's small keyed maps: error kinds of one
    /// deployment, temperature sensors of the node.
    pub max_window_map_entries: usize,
    /// Most features (inputs plus outputs) one drift observation may carry.
    pub max_drift_features: usize,
    /// Most bins (numeric bins, or named categories) one feature's drift
    /// counts may carry.
    pub max_feature_bins: usize,
    /// Byte budget of the agent's telemetry outbox: past it the outbox merges
    /// its oldest windows (and holds this much in memory). Not a bound on
    /// peer input; here because it sizes what the agent keeps.
    pub max_outbox_bytes: u64,
    /// Longest event data (JSON text), in bytes.
    pub max_event_data_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        let max_root_bytes = 512 * KIB;
        let max_timestamp_bytes = 64 * KIB;
        let max_snapshot_bytes = 8 * MIB;
        let max_targets_bytes = 32 * MIB;
        let max_director_bytes = MIB;
        // 256 Ki chunks at ~90 bytes each (address, size, BLAKE3, CBOR keys):
        // ~23 MiB.
        let max_manifest_bytes = 32 * MIB;
        let max_chunk_bytes = crate::chunking::MAX_CHUNK as u64;
        let max_roots_per_update = 4;
        // Room for field names, CBOR headers and the schema version.
        let framing = 64 * KIB;
        Self {
            max_root_bytes,
            max_timestamp_bytes,
            max_snapshot_bytes,
            max_targets_bytes,
            max_director_bytes,
            max_root_rotations: 1024,
            max_manifest_bytes,
            max_files: 1024,
            max_chunks: 256 * 1024,
            max_chunk_bytes,
            max_file_bytes: 64 * 1024 * 1024 * 1024,
            max_name_len: 1024,
            max_signatures: 64,
            max_root_chain_bytes: 8 * 1024 * 1024,
            max_agent_frame_bytes: MIB,
            max_control_frame_bytes: max_roots_per_update as u64 * max_root_bytes
                + max_timestamp_bytes
                + max_snapshot_bytes
                + max_targets_bytes
                + max_director_bytes
                + framing,
            max_chunk_frame_bytes: max_chunk_bytes.max(max_manifest_bytes) + framing,
            max_digests_per_request: 1024,
            max_deployments: 256,
            max_roots_per_update,
            max_accelerators: 64,
            max_reason_len: 4096,
            max_telemetry_bytes: MIB,
            max_window_series: 1024,
            max_window_map_entries: 256,
            // The hub's baseline builder accepts up to 4096 columns.
            max_drift_features: 4096,
            // The hub's baselines have 10 bins or 64 categories (plus other).
            max_feature_bins: 1024,
            // Hours of 10 s windows before compaction starts, well inside the
            // agent's memory goal.
            max_outbox_bytes: 4 * MIB,
            max_event_data_bytes: 64 * KIB as usize,
        }
    }
}
