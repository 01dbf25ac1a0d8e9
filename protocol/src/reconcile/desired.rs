//! The desired state: what the director says this device must run, with every
//! manifest it names verified as a TUF target.
//!
//! A [`DesiredState`] can only be built from a director document (which the
//! caller got from [`crate::director::verify_director`]) and manifest bytes that
//! trusted targets metadata signs, so the reconciler never sees an unsigned
//! manifest, and hence never a chunk digest nobody signed.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::record::Slot;
use super::ReconcileError;
use crate::digest::Sha256Digest;
use crate::director::DirectorDocument;
use crate::limits::Limits;
use crate::tuf::TrustedSet;

/// Names one deployment on a device: an endpoint and a deployment within it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeploymentKey {
    /// Endpoint name.
    pub endpoint: String,
    /// Deployment name (`blue`, `green`).
    pub deployment: String,
}

impl DeploymentKey {
    /// A key from its two names.
    pub fn new(endpoint: &str, deployment: &str) -> Self {
        Self {
            endpoint: endpoint.into(),
            deployment: deployment.into(),
        }
    }
}

impl fmt::Display for DeploymentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.endpoint, self.deployment)
    }
}

/// A manifest the director names: where it sits in targets and its address, so
/// that the agent can fetch it by digest over a chunk stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ManifestRef {
    /// TUF target path.
    pub target: String,
    /// SHA-256 of the manifest bytes.
    pub sha256: Sha256Digest,
    /// Length of the manifest bytes.
    pub length: u64,
}

/// Every distinct manifest a (verified) director document names.
pub fn manifest_refs(director: &DirectorDocument) -> Result<Vec<ManifestRef>, ReconcileError> {
    let mut out = Vec::new();
    for d in director.endpoints.iter().flat_map(|e| &e.deployments) {
        let sha256 = Sha256Digest::from_hex(&d.sha256.to_ascii_lowercase()).ok_or_else(|| {
            ReconcileError::BadDigest {
                target: d.target.clone(),
                sha256: d.sha256.chars().take(80).collect(),
            }
        })?;
        out.push(ManifestRef {
            target: d.target.clone(),
            sha256,
            length: d.length,
        });
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// What the device must run: one verified bundle per deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredState {
    director_version: u64,
    // invariant: every slot's manifest was verified against trusted targets.
    deployments: BTreeMap<DeploymentKey, Slot>,
}

impl DesiredState {
    /// Binds a director document that [`crate::director::verify_director`]
    /// accepted to the manifests it names. `manifests` maps target paths to
    /// manifest bytes; each must be listed in `trusted` targets with its length
    /// and SHA-256 (TUF 5.7), decode within `limits`, and be the manifest of the
    /// model name and version its target path says.
    pub fn from_verified(
        director: &DirectorDocument,
        manifests: &BTreeMap<String, Vec<u8>>,
        trusted: &TrustedSet,
        limits: &Limits,
    ) -> Result<Self, ReconcileError> {
        let count: usize = director.endpoints.iter().map(|e| e.deployments.len()).sum();
        if count > limits.max_deployments {
            return Err(ReconcileError::TooManyDeployments {
                count,
                limit: limits.max_deployments,
            });
        }
        let mut deployments = BTreeMap::new();
        for ep in &director.endpoints {
            for d in &ep.deployments {
                let raw =
                    manifests
                        .get(&d.target)
                        .ok_or_else(|| ReconcileError::MissingManifest {
                            target: d.target.clone(),
                        })?;
                // 5.7 Verify the target against trusted targets metadata.
                trusted.verify_target(&d.target, raw)?;
                let slot = Slot::decode(&d.target, raw.clone(), limits)?;
                deployments.insert(DeploymentKey::new(&ep.name, &d.name), slot);
            }
        }
        Ok(Self {
            director_version: director.version,
            deployments,
        })
    }

    /// The director document version this state comes from.
    pub fn director_version(&self) -> u64 {
        self.director_version
    }

    /// Each deployment and the bundle it must run.
    pub fn deployments(&self) -> impl Iterator<Item = (&DeploymentKey, &Slot)> {
        self.deployments.iter()
    }

    pub(crate) fn into_parts(self) -> (u64, BTreeMap<DeploymentKey, Slot>) {
        (self.director_version, self.deployments)
    }
}
