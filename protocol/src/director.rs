//! The director document: what one device must run, signed by the director role.
//!
//! Design (Uptane's director idea): targets metadata says which bundles are
//! authentic; the director says which of them a given device runs, on which
//! endpoints, with what traffic weights. A director document can only point at
//! bundles the targets role signed: [`verify_director`] checks each reference
//! against trusted targets, so a compromised director key alone cannot make a
//! device run unsigned code.

use serde::{Deserialize, Serialize};

use crate::limits::Limits;
use crate::time::UtcTime;
use crate::tuf::client::{verify_signed, TrustedSet};
use crate::tuf::metadata::Role;
use crate::tuf::TufError;

/// The director document's signed body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectorDocument {
    /// Always `director`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// Monotonic version, per device.
    pub version: u64,
    /// Expiry.
    pub expires: UtcTime,
    /// The device this document is for.
    pub device: String,
    /// Endpoints the device serves.
    pub endpoints: Vec<EndpointAssignment>,
}

/// One endpoint on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointAssignment {
    /// Endpoint name (the model name in scoring URLs).
    pub name: String,
    /// Deployments and their traffic weights.
    // invariant: weights sum to 100; names unique.
    pub deployments: Vec<DeploymentAssignment>,
    /// Optional shadow copy of traffic.
    pub mirror: Option<MirrorAssignment>,
}

/// A deployment: a bundle bound to a name, with a traffic weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentAssignment {
    /// Deployment name (`blue`, `green`).
    pub name: String,
    /// TUF target path of the bundle manifest.
    pub target: String,
    /// Manifest length, as targets lists it.
    pub length: u64,
    /// Manifest SHA-256 (hex), as targets lists it.
    pub sha256: String,
    /// Share of traffic in percent.
    pub weight: u32,
}

/// A mirror: a share of requests also sent to a shadow deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorAssignment {
    /// The shadow deployment (one of the endpoint's deployments).
    pub deployment: String,
    /// Percent of requests copied.
    // invariant: <= 100.
    pub percent: u32,
}

impl DirectorDocument {
    /// A new document body.
    pub fn new(
        device: &str,
        version: u64,
        expires: UtcTime,
        endpoints: Vec<EndpointAssignment>,
    ) -> Self {
        Self {
            type_: "director".into(),
            version,
            expires,
            device: device.into(),
            endpoints,
        }
    }
}

/// Why a director document was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectorError {
    /// Signature, size, expiry or format failure.
    #[error(transparent)]
    Tuf(#[from] TufError),
    /// The document is for another device.
    #[error("director document is for device {found:?}, not {expected:?}")]
    WrongDevice {
        /// This device.
        expected: String,
        /// The device named.
        found: String,
    },
    /// Traffic weights do not sum to 100, or a name repeats.
    #[error("endpoint {endpoint}: {reason}")]
    BadEndpoint {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// A deployment names a bundle that trusted targets do not list as given.
    #[error("deployment {deployment} names target {target} that trusted targets metadata does not sign as given")]
    UnsignedTarget {
        /// The deployment.
        deployment: String,
        /// The target path.
        target: String,
    },
}

/// Verifies a director document for `device`: signed by a threshold of the
/// director keys of the trusted root, not older than `trusted_version`, not
/// expired at `now`, and pointing only at targets that trusted targets list.
pub fn verify_director(
    raw: &[u8],
    trusted: &TrustedSet,
    device: &str,
    trusted_version: Option<u64>,
    now: UtcTime,
    limits: &Limits,
) -> Result<DirectorDocument, DirectorError> {
    let doc: DirectorDocument = verify_signed(
        Role::Director,
        raw,
        limits.max_director_bytes,
        &trusted.root().body,
        limits,
    )?
    .body;
    if doc.device != device {
        return Err(DirectorError::WrongDevice {
            expected: device.into(),
            found: doc.device,
        });
    }
    if let Some(v) = trusted_version {
        if doc.version < v {
            return Err(TufError::Rollback {
                role: Role::Director,
                trusted: v,
                offered: doc.version,
            }
            .into());
        }
    }
    if doc.expires <= now {
        return Err(TufError::Expired {
            role: Role::Director,
            expires: doc.expires,
            now,
        }
        .into());
    }
    for ep in &doc.endpoints {
        let bad = |reason: String| DirectorError::BadEndpoint {
            endpoint: ep.name.clone(),
            reason,
        };
        let sum: u64 = ep.deployments.iter().map(|d| u64::from(d.weight)).sum();
        if sum != 100 {
            return Err(bad(format!("traffic weights sum to {sum}, not 100")));
        }
        let mut names = std::collections::BTreeSet::new();
        for d in &ep.deployments {
            if !names.insert(d.name.as_str()) {
                return Err(bad(format!("deployment {} is listed twice", d.name)));
            }
            let signed = trusted.target(&d.target).ok();
            let matches = signed.is_some_and(|t| {
                t.length == d.length
                    && t.hashes
                        .get("sha256")
                        .is_some_and(|h| h.eq_ignore_ascii_case(&d.sha256))
            });
            if !matches {
                return Err(DirectorError::UnsignedTarget {
                    deployment: d.name.clone(),
                    target: d.target.clone(),
                });
            }
        }
        if let Some(m) = &ep.mirror {
            if m.percent > 100 || !names.contains(m.deployment.as_str()) {
                return Err(bad(format!(
                    "mirror to {} at {}% is not valid",
                    m.deployment, m.percent
                )));
            }
        }
    }
    Ok(doc)
}
