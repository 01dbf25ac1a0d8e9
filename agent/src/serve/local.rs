//! Local debugging without a hub (`flotilla-agent serve`): an ONNX file, or a
//! signed bundle file verified against a pinned root, loaded as one endpoint
//! with one deployment, [`LOCAL_DEPLOYMENT`], taking all traffic.
//!
//! A bundle goes through the same code the sync loop uses: streamed
//! verification ([`flotilla_protocol::bundle::verify_bundle`]: TUF metadata,
//! manifest, every chunk), chunks into an agent store, atomic staging, and
//! the trial. An ONNX file has no manifest: its signature is read from the
//! graph, as the hub does when it packs one.
//!
//! It does not watch files for changes.

use std::path::Path;
use std::sync::Arc;

use flotilla_protocol::bundle::verify_bundle;
use flotilla_protocol::director::{DeploymentAssignment, EndpointAssignment};
use flotilla_protocol::manifest::{
    Accelerator, BundleManifest, ChunkingParams, Flavor, Lineage, RuntimeRequirements,
    MANIFEST_SCHEMA_VERSION,
};
use flotilla_protocol::reconcile::DeploymentKey;
use flotilla_protocol::time::UtcTime;
use flotilla_protocol::Limits;

use super::Serving;
use crate::slots::{self, LoadedModel};
use crate::store::AgentStore;

/// The one deployment local serving routes to.
pub const LOCAL_DEPLOYMENT: &str = "local";

/// A model ready to serve locally.
#[derive(Debug)]
pub struct LocalModel {
    /// The endpoint (model name in the v2 paths).
    pub name: String,
    /// What `x-flotilla-model-version` shows: the bundle's TUF target, or
    /// `file:PATH` for an ONNX file.
    pub target: String,
    /// The loaded model.
    pub model: Arc<LoadedModel>,
}

impl LocalModel {
    /// Routes all of `serving`'s traffic to this model.
    pub fn install(&self, serving: &Serving) {
        serving.set_routes(&[single_endpoint(&self.name)]);
        let key = DeploymentKey::new(&self.name, LOCAL_DEPLOYMENT);
        serving.activate(&key, &self.target, Arc::clone(&self.model));
    }
}

/// An endpoint with one deployment, [`LOCAL_DEPLOYMENT`], at weight 100.
pub fn single_endpoint(name: &str) -> EndpointAssignment {
    EndpointAssignment {
        name: name.to_owned(),
        deployments: vec![DeploymentAssignment {
            name: LOCAL_DEPLOYMENT.to_owned(),
            target: String::new(),
            length: 0,
            sha256: String::new(),
            weight: 100,
        }],
        mirror: None,
    }
}

/// Loads the ONNX file `path`, its signature read from the graph; the endpoint
/// is `name`, or the file's stem.
///
/// # Errors
///
/// A one-line reason: unreadable file, not ONNX, unsupported operator.
pub fn load_onnx_file(path: &Path, name: Option<&str>) -> Result<LocalModel, String> {
    // The bytes are read again by the load below; free them first.
    let signature = {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        flotilla_runtime::model_signature(&bytes)
            .map_err(|e| format!("{}: not a usable ONNX model: {e}", path.display()))?
    };
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: not a file name this agent can use", path.display()))?;
    let stem = path
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or(file_name);
    let name = name.unwrap_or(stem).to_owned();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let manifest = BundleManifest {
        schema_version: MANIFEST_SCHEMA_VERSION,
        name: name.clone(),
        version: 0,
        flavor: Flavor::Onnx,
        entrypoint: file_name.to_owned(),
        files: Vec::new(),
        chunking: ChunkingParams::default(),
        signature,
        drift_baseline: None,
        requirements: RuntimeRequirements {
            min_agent_version: "0.0.0".to_owned(),
            accelerator: Accelerator::Cpu,
            min_memory_bytes: 0,
        },
        lineage: Lineage::default(),
        tags: Default::default(),
    };
    let model = LoadedModel::load(dir, &manifest)?;
    Ok(LocalModel {
        name,
        target: format!("file:{}", path.display()),
        model: Arc::new(model),
    })
}

/// Verifies the bundle file `bundle` against the pinned root `root` at `now`,
/// stages it under `work_dir` and runs its trial; the endpoint is `name`, or the
/// manifest's model name.
///
/// # Errors
///
/// A one-line reason: unreadable files, a bundle that does not verify (named
/// role, file or chunk), a staging failure, a failed trial.
pub fn load_bundle(
    bundle: &Path,
    root: &Path,
    work_dir: &Path,
    name: Option<&str>,
    now: UtcTime,
) -> Result<LocalModel, String> {
    let root_bytes =
        std::fs::read(root).map_err(|e| format!("cannot read {}: {e}", root.display()))?;
    let file = std::fs::File::open(bundle)
        .map_err(|e| format!("cannot open {}: {e}", bundle.display()))?;
    let store = AgentStore::open(work_dir).map_err(|e| format!("opening the chunk store: {e}"))?;
    let verified = verify_bundle(
        std::io::BufReader::new(file),
        &root_bytes,
        now,
        &Limits::default(),
        |chunk, bytes| {
            store
                .put_chunk(&chunk.digest, bytes)
                .map_err(|e| std::io::Error::other(e.to_string()))
        },
    )
    .map_err(|e| format!("{}: {e}", bundle.display()))?;
    let manifest = &verified.manifest;
    let target = manifest.target_path();
    let name = name.unwrap_or(&manifest.name).to_owned();
    let key = DeploymentKey::new(&name, LOCAL_DEPLOYMENT);
    let dir = slots::stage_manifest(
        &work_dir.join("deployments"),
        &key,
        &target,
        manifest,
        &verified.manifest_bytes,
        &store,
    )
    .map_err(|e| format!("staging {target}: {e}"))?;
    let report = slots::trial(&dir, manifest).map_err(|e| format!("trial of {target}: {e}"))?;
    Ok(LocalModel {
        name,
        target,
        model: report.model,
    })
}
