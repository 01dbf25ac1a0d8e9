//! The reconciler's persisted record, and the slot it is made of.
//!
//! One [`AgentRecord`] holds everything the reconciler must remember across a
//! crash: per deployment the active, previous, staged and being-fetched bundles
//! (manifest bytes included, so a restart needs no network), the trial in
//! progress and the last rejected version. It is CBOR with a schema version,
//! written whole by the agent into one redb key. Chunk presence is not in it:
//! the chunk store is the truth, and a restored fetch asks it again.

use serde::{Deserialize, Serialize};

use super::desired::DeploymentKey;
use super::ReconcileError;
use crate::digest::Sha256Digest;
use crate::limits::Limits;
use crate::manifest::{BundleManifest, ChunkRef};
use crate::time::UtcTime;
use crate::wire::ByteBuf;

/// Record schema this code writes and reads.
pub const RECORD_SCHEMA_VERSION: u32 = 1;

/// A verified bundle bound to a slot: its target path, its signed manifest
/// bytes and their decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    target: String,
    raw: Vec<u8>,
    manifest: BundleManifest,
}

impl Slot {
    /// Decodes manifest bytes for `target`, checking that the manifest is the
    /// one of the model name and version the target path names. Signature
    /// checks are the caller's (see [`super::DesiredState::from_verified`]).
    pub(crate) fn decode(
        target: &str,
        raw: Vec<u8>,
        limits: &Limits,
    ) -> Result<Self, ReconcileError> {
        let manifest =
            BundleManifest::decode(&raw, limits).map_err(|source| ReconcileError::Manifest {
                target: target.into(),
                source,
            })?;
        let manifest_path = manifest.target_path();
        if manifest_path != target {
            return Err(ReconcileError::TargetMismatch {
                target: target.into(),
                manifest_path,
            });
        }
        Ok(Self {
            target: target.into(),
            raw,
            manifest,
        })
    }

    /// TUF target path of the manifest.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The decoded manifest.
    pub fn manifest(&self) -> &BundleManifest {
        &self.manifest
    }

    /// The manifest bytes as signed.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Every distinct chunk of the bundle.
    pub fn chunks(&self) -> Vec<ChunkRef> {
        self.manifest.unique_chunks()
    }

    /// Whether the bundle contains chunk `digest`.
    pub fn contains(&self, digest: &Sha256Digest) -> bool {
        self.manifest
            .files
            .iter()
            .any(|f| f.chunks.iter().any(|c| c.digest == *digest))
    }

    pub(crate) fn to_record(&self) -> SlotRecord {
        SlotRecord {
            target: self.target.clone(),
            manifest: ByteBuf(self.raw.clone()),
        }
    }
}

/// A slot as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// TUF target path.
    pub target: String,
    /// The manifest bytes as signed.
    pub manifest: ByteBuf,
}

impl SlotRecord {
    pub(crate) fn to_slot(&self, limits: &Limits) -> Result<Slot, ReconcileError> {
        Slot::decode(&self.target, self.manifest.0.clone(), limits)
    }
}

/// A trial in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// Trial runs started for this activation, including the current one.
    pub attempts: u32,
    /// When the first run started.
    pub started: UtcTime,
}

/// A version that failed on a deployment and is not tried again until the
/// director names another one in between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The target that failed.
    pub target: String,
    /// Why.
    pub reason: String,
    /// Whether it had gone live and was rolled back (else it never went live).
    pub rolled_back: bool,
}

/// One deployment's slots as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// Endpoint and deployment names.
    pub key: DeploymentKey,
    /// The version serving traffic: the activation pointer.
    pub active: Option<SlotRecord>,
    /// Set while `active` is on trial.
    pub trial: Option<TrialRecord>,
    /// The version before `active`, kept for rollback.
    // invariant: its chunks are all in the store.
    pub previous: Option<SlotRecord>,
    /// Complete and staged, waiting for `active`'s trial to end.
    // invariant: its chunks are all in the store.
    pub staged: Option<SlotRecord>,
    /// Being fetched.
    pub pending: Option<SlotRecord>,
    /// The last version that failed here.
    pub rejected: Option<Rejection>,
}

/// Everything the reconciler persists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Always [`RECORD_SCHEMA_VERSION`] for records this code accepts.
    pub schema_version: u32,
    /// Director document version applied last.
    pub director_version: Option<u64>,
    /// One entry per deployment.
    pub deployments: Vec<DeploymentRecord>,
}

impl AgentRecord {
    /// Encodes to CBOR.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Serialising plain data into a Vec cannot fail.
        if let Err(e) = ciborium::into_writer(self, &mut out) {
            unreachable!("CBOR encoding into memory failed: {e}");
        }
        out
    }

    /// Decodes CBOR, checking the schema version first.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReconcileError> {
        #[derive(Deserialize)]
        struct Probe {
            schema_version: u32,
        }
        let probe: Probe = ciborium::from_reader(bytes)
            .map_err(|e| ReconcileError::RecordDecode(e.to_string()))?;
        if probe.schema_version != RECORD_SCHEMA_VERSION {
            return Err(ReconcileError::UnsupportedRecordSchema(
                probe.schema_version,
            ));
        }
        ciborium::from_reader(bytes).map_err(|e| ReconcileError::RecordDecode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_from_a_future_schema_gets_a_clear_error() {
        let r = AgentRecord {
            schema_version: 2,
            director_version: None,
            deployments: vec![],
        };
        assert_eq!(
            AgentRecord::decode(&r.encode()),
            Err(ReconcileError::UnsupportedRecordSchema(2))
        );
    }

    #[test]
    fn garbage_is_not_a_record() {
        assert!(matches!(
            AgentRecord::decode(b"\xff\x00garbage"),
            Err(ReconcileError::RecordDecode(_))
        ));
    }
}
