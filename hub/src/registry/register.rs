//! Registration: a completed upload becomes the next signed version of a model.
//!
//! Order matters for crash safety: chunks are written first (content-addressed,
//! harmless if orphaned and removed on failure), then one store transaction
//! assigns the version, stores the manifest and the re-signed TUF metadata, the
//! chunk references and the audit entry. Only after it commits are the upload
//! files removed.

use flotilla_protocol::chunking::chunk_bytes;
use flotilla_protocol::digest::{Blake3Digest, Sha256Digest};
use flotilla_protocol::manifest::{
    Accelerator, BundleManifest, ChunkRef, ChunkingParams, Dim, Flavor, Lineage, ManifestFile,
    RuntimeRequirements, TensorSpec, MANIFEST_SCHEMA_VERSION,
};
use flotilla_protocol::tuf::{TargetFile, Targets};

use super::{filter, internal, Registry, RegistryError};
use crate::api::types::{RegisterVersion, TensorView, VersionStatus, VersionView};
use crate::audit::AuditDraft;
use crate::store::{Registration, StoreError, TrustState};

/// Longest description or reason accepted.
pub(super) const MAX_TEXT: usize = 4096;

fn tensor_view(t: &TensorSpec) -> TensorView {
    TensorView {
        name: t.name.clone(),
        datatype: serde_json::to_value(t.elem_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        shape: t.shape.as_ref().map(|dims| {
            dims.iter()
                .map(|d| match d {
                    Dim::Fixed(n) => n.to_string(),
                    Dim::Symbolic(s) => s.clone(),
                    Dim::Unknown => "?".into(),
                })
                .collect()
        }),
    }
}

impl Registry {
    /// Registers the next version of `name` from the upload named in `req`.
    pub fn register(
        &self,
        actor: &str,
        name: &str,
        req: RegisterVersion,
    ) -> Result<VersionView, RegistryError> {
        filter::check_model_name(name).map_err(RegistryError::BadRequest)?;
        filter::check_tags(&req.tags).map_err(RegistryError::BadRequest)?;
        filter::check_metrics(&req.metrics).map_err(RegistryError::BadRequest)?;
        if req.description.len() > MAX_TEXT || req.reason.len() > MAX_TEXT {
            return Err(RegistryError::BadRequest(format!(
                "description and reason are limited to {MAX_TEXT} bytes"
            )));
        }
        let _model_guard = self.claim_upload(&req.upload)?;
        let upload = self.complete_upload(&req.upload)?;
        let _dataset_guard = match &req.dataset_upload {
            Some(id) if *id == req.upload => {
                return Err(RegistryError::BadRequest(
                    "dataset_upload must differ from upload".into(),
                ))
            }
            Some(id) => Some(self.claim_upload(id)?),
            None => None,
        };
        let baseline = match &req.dataset_upload {
            Some(id) => {
                let rec = self.complete_upload(id)?;
                // The baseline keeps every numeric value (up to 8 bytes per
                // value from as few as 2 bytes of CSV): bound the input.
                if rec.size > super::baseline::MAX_DATASET_BYTES {
                    return Err(RegistryError::TooLarge(format!(
                        "reference dataset is {} bytes; at most {} are accepted (sample it first)",
                        rec.size,
                        super::baseline::MAX_DATASET_BYTES
                    )));
                }
                let data = self
                    .uploads
                    .read(id, super::baseline::MAX_DATASET_BYTES)
                    .map_err(internal)?;
                Some(
                    super::baseline::from_csv(&data)
                        .map_err(|e| RegistryError::BadRequest(e.to_string()))?,
                )
            }
            None => None,
        };

        let model = self
            .uploads
            .read(&upload.id, self.limits.max_upload_bytes)
            .map_err(internal)?;
        if model.len() as u64 != upload.size {
            return Err(internal(format!(
                "upload {} holds {} bytes, expected {}",
                upload.id,
                model.len(),
                upload.size
            )));
        }
        let signature = flotilla_runtime::model_signature(&model).map_err(|e| {
            RegistryError::BadRequest(format!(
                "{} is not a usable ONNX model: {e}",
                upload.file_name
            ))
        })?;
        let sha256 = Sha256Digest::of(&model);
        let chunks = chunk_bytes(&model);

        // Store chunks, remembering which ones this registration added so that a
        // failure below can take them back.
        // Chunk removal (delete, failed registrations) waits for registrations
        // that may be counting on a chunk to commit their references first.
        let in_flight = self.chunk_gc.read().map_err(internal)?;
        let mut added = Vec::new();
        let mut reused = 0u64;
        let mut seen = std::collections::HashSet::new();
        for c in &chunks {
            if !seen.insert(c.digest) {
                continue;
            }
            let data = &model[c.offset as usize..c.offset as usize + c.len as usize];
            match self.chunks.put(&c.digest, data) {
                Ok(true) => added.push(c.digest),
                Ok(false) => reused += 1,
                Err(e) => {
                    drop(in_flight);
                    self.remove_unreferenced(&added);
                    return Err(internal(format!("storing chunk {}: {e}", c.digest)));
                }
            }
        }

        let now = crate::now();
        let now_s = now.to_string();
        let keys = &self.keys;
        let expiries = self.expiries;
        let file_name = upload.file_name.clone();
        let mut build = |version: u64,
                         trust: Option<&TrustState>|
         -> Result<Registration, StoreError> {
            if let Some(p) = req.lineage.parent_version {
                if p >= version {
                    return Err(StoreError::Rejected(format!(
                        "lineage.parent_version {p} must be an earlier version than the new version {version}"
                    )));
                }
            }
            let manifest = BundleManifest {
                schema_version: MANIFEST_SCHEMA_VERSION,
                name: name.to_string(),
                version,
                flavor: Flavor::Onnx,
                entrypoint: file_name.clone(),
                files: vec![ManifestFile {
                    path: file_name.clone(),
                    size: model.len() as u64,
                    sha256,
                    blake3: Some(Blake3Digest::of(&model)),
                    chunks: chunks.iter().map(ChunkRef::from).collect(),
                }],
                chunking: ChunkingParams::default(),
                signature: signature.clone(),
                drift_baseline: baseline.clone(),
                requirements: RuntimeRequirements {
                    min_agent_version: env!("CARGO_PKG_VERSION").into(),
                    accelerator: Accelerator::Cpu,
                    min_memory_bytes: 2 * model.len() as u64,
                },
                lineage: Lineage {
                    created_by: actor.to_string(),
                    reason: req.reason.clone(),
                    source_run: req.lineage.source_run.clone(),
                    dataset_digest: req.lineage.dataset_digest.clone(),
                    parent_version: req.lineage.parent_version,
                },
                tags: req.tags.clone(),
            };
            manifest
                .validate(&Default::default())
                .map_err(|e| StoreError::Rejected(e.to_string()))?;
            let manifest_bytes = manifest.encode();
            let target = manifest.target_path();
            let mut state = trust.cloned().unwrap_or_else(|| TrustState {
                targets: Targets::new(0, now),
                publication_version: 0,
            });
            state.targets.targets.insert(
                target.clone(),
                TargetFile::describing(
                    &manifest_bytes,
                    Some(serde_json::json!({"kind": "bundle-manifest"})),
                ),
            );
            let (state, publication) = super::sign_next(state, true, now, expiries, keys)?;
            let view = VersionView {
                name: name.to_string(),
                version,
                status: VersionStatus::Active,
                description: req.description.clone(),
                tags: req.tags.clone(),
                metrics: req.metrics.clone(),
                lineage: req.lineage.clone(),
                created_by: actor.to_string(),
                reason: req.reason.clone(),
                created_at: now_s.clone(),
                file_name: file_name.clone(),
                size: model.len() as u64,
                sha256: sha256.to_hex(),
                chunks: chunks.len() as u64,
                chunks_reused: reused,
                target,
                manifest_sha256: Sha256Digest::of(&manifest_bytes).to_hex(),
                inputs: signature.inputs.iter().map(tensor_view).collect(),
                outputs: signature.outputs.iter().map(tensor_view).collect(),
                has_drift_baseline: baseline.is_some(),
                referenced_by: Vec::new(),
            };
            Ok(Registration {
                view,
                manifest: manifest_bytes,
                trust: state,
                publication,
                chunks: manifest
                    .unique_chunks()
                    .iter()
                    .map(|c| c.digest.0)
                    .collect(),
            })
        };
        let audit = AuditDraft::new(
            actor,
            "model.register",
            format!("model/{name}"),
            &req.reason,
        );
        let (mut view, _) = match self.store.register(name, &mut build, audit, &now_s) {
            Ok(r) => r,
            Err(e) => {
                drop(in_flight);
                self.remove_unreferenced(&added);
                return Err(e.into());
            }
        };
        view.chunks_reused = reused;
        for id in std::iter::once(&req.upload).chain(req.dataset_upload.as_ref()) {
            if let Err(e) = self
                .uploads
                .remove(id)
                .map_err(internal)
                .and_then(|_| Ok(self.store.delete_upload(id)?))
            {
                tracing::warn!(upload = %id, error = %e, "could not clean up a registered upload");
            }
        }
        tracing::info!(model = %name, version = view.version, bytes = view.size, chunks = view.chunks, reused, "model registered");
        self.emit(
            "model.registered",
            &format!("model/{name}/{}", view.version),
            actor,
            serde_json::json!({"sha256": view.sha256, "target": view.target}),
        );
        Ok(view)
    }

    fn complete_upload(&self, id: &str) -> Result<crate::store::UploadRecord, RegistryError> {
        let rec = self.upload_record(id)?;
        if rec.offset != rec.size {
            return Err(RegistryError::Conflict(format!(
                "upload {id} is incomplete: {} of {} bytes received; resume it before registering",
                rec.offset, rec.size
            )));
        }
        Ok(rec)
    }
}
