//! Packing: an ONNX model file becomes a signed, self-contained bundle file.
//!
//! The model's signature is read from the graph, its bytes are cut into
//! content-defined chunks, the manifest is built and published as a TUF target
//! (targets, snapshot and timestamp re-signed with the online keys), and the
//! bundle is written beside its final path and renamed into place.
//!
//! The model is held in memory while packing (graph parsing needs it); chunk
//! writing is streamed into the archive.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use flotilla_protocol::bundle::BundleWriter;
use flotilla_protocol::chunking::chunk_bytes;
use flotilla_protocol::digest::Sha256Digest;
use flotilla_protocol::manifest::{
    Accelerator, BundleManifest, ChunkRef, ChunkingParams, Flavor, Lineage, ManifestFile,
    ModelSignature, RuntimeRequirements, MANIFEST_SCHEMA_VERSION,
};
use flotilla_protocol::time::UtcTime;
use flotilla_protocol::tuf::repo::{publish, Expiries};
use flotilla_protocol::tuf::{TargetFile, Targets};
use flotilla_protocol::Limits;

use crate::keystore::{self, KeystoreError};

/// What to pack.
#[derive(Debug, Clone)]
pub struct PackRequest {
    /// The ONNX model file.
    pub model: PathBuf,
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: u64,
    /// Provenance.
    pub lineage: Lineage,
    /// `key=value` tags.
    pub tags: BTreeMap<String, String>,
    /// Required accelerator.
    pub accelerator: Accelerator,
    /// Oldest agent that may run it.
    pub min_agent_version: String,
    /// Lifetimes of the published metadata.
    pub expiries: Expiries,
}

/// What was packed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PackReport {
    /// The bundle written.
    pub bundle: PathBuf,
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: u64,
    /// TUF target path of the manifest.
    pub target: String,
    /// Manifest SHA-256.
    pub manifest_sha256: String,
    /// Model file SHA-256.
    pub model_sha256: String,
    /// Model size in bytes.
    pub model_bytes: u64,
    /// Chunks in the model.
    pub chunks: usize,
    /// Distinct chunks.
    pub unique_chunks: usize,
    /// Targets metadata version published.
    pub targets_version: u64,
    /// The model's inputs and outputs.
    pub signature: ModelSignature,
}

/// Why packing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// The keys directory is missing or broken.
    #[error(transparent)]
    Keys(#[from] KeystoreError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The model is not a usable ONNX graph.
    #[error("{path}: not a usable ONNX model: {reason}")]
    Model {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The name or version is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// This name and version are already signed with other content.
    #[error("{target} is already signed with different content; publish it under a new version")]
    VersionTaken {
        /// The target path.
        target: String,
    },
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Packs `req.model` into a signed bundle at `out`, publishing it in `keys_dir`.
pub fn pack(
    req: &PackRequest,
    keys_dir: &Path,
    now: UtcTime,
    out: &Path,
) -> Result<PackReport, PackError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Io { path, source }
    };
    if req.name.is_empty()
        || req.name.len() > 128
        || !req
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(PackError::Invalid(format!(
            "model name {:?} must be 1-128 characters of A-Z a-z 0-9 - _ .",
            req.name
        )));
    }
    if req.version == 0 {
        return Err(PackError::Invalid(
            "model version must be 1 or higher".into(),
        ));
    }
    let roots = keystore::root_chain(keys_dir)?;
    let keys = keystore::load_online(keys_dir)?;

    let model = fs::read(&req.model).map_err(io(&req.model))?;
    let signature = flotilla_runtime::model_signature(&model).map_err(|e| PackError::Model {
        path: req.model.clone(),
        reason: e.to_string(),
    })?;
    let chunks = chunk_bytes(&model);
    let file_name = req
        .model
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("model.onnx")
        .to_string();
    let manifest = BundleManifest {
        schema_version: MANIFEST_SCHEMA_VERSION,
        name: req.name.clone(),
        version: req.version,
        flavor: Flavor::Onnx,
        entrypoint: file_name.clone(),
        files: vec![ManifestFile::describing(
            file_name,
            &model,
            chunks.iter().map(ChunkRef::from).collect(),
        )],
        chunking: ChunkingParams::default(),
        signature,
        drift_baseline: None,
        requirements: RuntimeRequirements {
            min_agent_version: req.min_agent_version.clone(),
            accelerator: req.accelerator,
            // Weights once as stored, once as runtime tensors.
            min_memory_bytes: 2 * model.len() as u64,
        },
        lineage: req.lineage.clone(),
        tags: req.tags.clone(),
    };
    manifest
        .validate(&Limits::default())
        .map_err(|e| PackError::Invalid(e.to_string()))?;
    let manifest_bytes = manifest.encode();
    let target = manifest.target_path();

    let (mut targets, last) =
        keystore::published(keys_dir)?.unwrap_or_else(|| (Targets::new(0, now), 0));
    let entry = TargetFile::describing(
        &manifest_bytes,
        Some(serde_json::json!({"kind": "bundle-manifest"})),
    );
    if let Some(existing) = targets.targets.get(&target) {
        if existing.hashes != entry.hashes {
            return Err(PackError::VersionTaken { target });
        }
    }
    targets.targets.insert(target.clone(), entry);
    targets.version += 1;
    targets.expires = now.plus_secs(req.expiries.targets_secs);
    let publication = publish(&targets, last + 1, now, req.expiries, &keys)
        .map_err(|e| PackError::Sign(e.to_string()))?;

    let tmp = out.with_extension("bundle.partial");
    let bundle = BundleParts {
        roots: &roots,
        publication: &publication,
        target: &target,
        manifest: &manifest_bytes,
    };
    write_bundle(&tmp, &bundle, &model, &chunks).map_err(io(&tmp))?;
    fs::rename(&tmp, out).map_err(io(out))?;
    // Publish only once the bundle exists, so a failed pack changes nothing.
    keystore::save_publication(keys_dir, &publication)?;

    Ok(PackReport {
        bundle: out.to_path_buf(),
        name: manifest.name.clone(),
        version: manifest.version,
        target,
        manifest_sha256: Sha256Digest::of(&manifest_bytes).to_hex(),
        model_sha256: manifest.files[0].sha256.to_hex(),
        model_bytes: manifest.files[0].size,
        chunks: chunks.len(),
        unique_chunks: manifest.unique_chunks().len(),
        targets_version: targets.version,
        signature: manifest.signature,
    })
}

/// Everything a bundle file holds besides the chunk bytes.
struct BundleParts<'a> {
    roots: &'a [(u64, Vec<u8>)],
    publication: &'a flotilla_protocol::tuf::repo::Publication,
    target: &'a str,
    manifest: &'a [u8],
}

fn write_bundle(
    path: &Path,
    parts: &BundleParts<'_>,
    model: &[u8],
    chunks: &[flotilla_protocol::chunking::Chunk],
) -> std::io::Result<()> {
    let file = fs::File::create(path)?;
    let mut w = BundleWriter::new(BufWriter::with_capacity(1 << 20, file));
    for (v, raw) in parts.roots {
        w.root(*v, raw)?;
    }
    let p = parts.publication;
    w.metadata(&p.timestamp, &p.snapshot, &p.targets)?;
    w.manifest(parts.target, parts.manifest)?;
    for c in chunks {
        let start = c.offset as usize;
        w.chunk(&c.digest, &model[start..start + c.len as usize])?;
    }
    let mut inner = w.finish()?;
    inner.flush()?;
    inner.get_ref().sync_all()
}
