//! TUF 1.0 metadata documents (root, targets, snapshot, timestamp) and Flotilla's
//! director document, in the spec's JSON form, and the signing envelope.
//!
//! Parsing here checks shape only. Trust decisions (thresholds, versions, expiry)
//! are made in [`super::verify`] and [`super::client`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::canonical::to_canonical;
use super::keys::{KeyId, PublicKey, SigningKey};
use super::TufError;
use crate::time::UtcTime;

/// TUF specification version written into metadata.
pub const SPEC_VERSION: &str = "1.0.31";

/// The roles of Flotilla's trust chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Root of trust: names every role's keys and threshold.
    Root,
    /// Signs bundle manifests (targets).
    Targets,
    /// Signs the versions of targets metadata (consistency).
    Snapshot,
    /// Signs the latest snapshot, short-lived (freshness).
    Timestamp,
    /// Off-spec (Uptane's idea): signs per-device director documents.
    Director,
}

impl Role {
    /// The role's name in `root.json` and in `_type`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
            Role::Director => "director",
        }
    }

    /// Every role, in the order root.json lists them.
    pub const ALL: [Role; 5] = [
        Role::Root,
        Role::Targets,
        Role::Snapshot,
        Role::Timestamp,
        Role::Director,
    ];
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One signature in a metadata envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Which key signed.
    pub keyid: KeyId,
    /// Hex-encoded signature over the canonical `signed` bytes.
    pub sig: String,
}

/// A metadata document as received: the raw `signed` value (so that unknown
/// fields stay covered by signatures) and its signatures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Signatures over `to_canonical(signed)`.
    pub signatures: Vec<Signature>,
    /// The signed body.
    pub signed: Value,
}

impl Envelope {
    /// Parses an envelope, refusing input larger than `limit` bytes.
    pub fn parse(role: Role, bytes: &[u8], limit: u64) -> Result<Self, TufError> {
        if bytes.len() as u64 > limit {
            return Err(TufError::TooLarge {
                role,
                actual: bytes.len() as u64,
                limit,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| TufError::Parse {
            role,
            reason: e.to_string(),
        })
    }

    /// The canonical bytes the signatures cover.
    pub fn signed_bytes(&self, role: Role) -> Result<Vec<u8>, TufError> {
        to_canonical(&self.signed).map_err(|e| TufError::Parse {
            role,
            reason: e.to_string(),
        })
    }

    /// Decodes the body as `T`, checking `_type` first.
    pub fn body<T: serde::de::DeserializeOwned>(&self, role: Role) -> Result<T, TufError> {
        let found = self
            .signed
            .get("_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        if found != role.name() {
            return Err(TufError::WrongType {
                role,
                found: found.chars().take(32).collect(),
            });
        }
        serde_json::from_value(self.signed.clone()).map_err(|e| TufError::Parse {
            role,
            reason: e.to_string(),
        })
    }

    /// Signs `body` with `keys` and returns the JSON bytes of the envelope.
    pub fn sign<T: Serialize>(body: &T, keys: &[&SigningKey]) -> Result<Vec<u8>, TufError> {
        let signed = serde_json::to_value(body).map_err(|e| TufError::Parse {
            role: Role::Root,
            reason: e.to_string(),
        })?;
        let msg = to_canonical(&signed).map_err(|e| TufError::Parse {
            role: Role::Root,
            reason: e.to_string(),
        })?;
        let signatures = keys
            .iter()
            .map(|k| Signature {
                keyid: k.key_id().clone(),
                sig: hex::encode(k.sign(&msg)),
            })
            .collect();
        let env = Envelope { signatures, signed };
        serde_json::to_vec_pretty(&env).map_err(|e| TufError::Parse {
            role: Role::Root,
            reason: e.to_string(),
        })
    }
}

/// Keys and threshold of one role, as root lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// Ids of the keys authorised for the role.
    pub keyids: Vec<KeyId>,
    /// How many distinct authorised keys must sign.
    // invariant: >= 1 (checked when root is verified).
    pub threshold: u64,
}

/// `root.json`'s signed body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Root {
    /// Always `root`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// TUF spec version.
    pub spec_version: String,
    /// Whether consistent snapshots are used (Flotilla addresses by version anyway).
    pub consistent_snapshot: bool,
    /// Monotonic version.
    pub version: u64,
    /// Expiry.
    pub expires: UtcTime,
    /// Every key any role uses, by id.
    pub keys: BTreeMap<KeyId, PublicKey>,
    /// Keys and thresholds per role name.
    pub roles: BTreeMap<String, RoleKeys>,
}

impl Root {
    /// The keys and threshold of `role`.
    pub fn role(&self, role: Role) -> Result<&RoleKeys, TufError> {
        self.roles
            .get(role.name())
            .ok_or(TufError::MissingRole(role))
    }
}

/// Length and hashes of a file or metadata document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// Version of the metadata document referred to.
    pub version: u64,
    /// Its length in bytes, when given.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub length: Option<u64>,
    /// Its hashes by algorithm name, when given.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hashes: Option<BTreeMap<String, String>>,
}

/// `timestamp.json`'s signed body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Always `timestamp`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// TUF spec version.
    pub spec_version: String,
    /// Monotonic version.
    pub version: u64,
    /// Expiry.
    pub expires: UtcTime,
    /// Exactly `snapshot.json`.
    pub meta: BTreeMap<String, MetaFile>,
}

/// `snapshot.json`'s signed body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Always `snapshot`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// TUF spec version.
    pub spec_version: String,
    /// Monotonic version.
    pub version: u64,
    /// Expiry.
    pub expires: UtcTime,
    /// Versions of every targets metadata file (`targets.json`).
    pub meta: BTreeMap<String, MetaFile>,
}

/// One target file: a bundle manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    /// Length in bytes.
    pub length: u64,
    /// Hashes by algorithm; Flotilla requires `sha256`.
    pub hashes: BTreeMap<String, String>,
    /// Application data.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub custom: Option<Value>,
}

/// `targets.json`'s signed body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// Always `targets`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// TUF spec version.
    pub spec_version: String,
    /// Monotonic version.
    pub version: u64,
    /// Expiry.
    pub expires: UtcTime,
    /// Target files by path.
    pub targets: BTreeMap<String, TargetFile>,
}

impl Root {
    /// A new root body.
    pub fn new(version: u64, expires: UtcTime) -> Self {
        Self {
            type_: "root".into(),
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: false,
            version,
            expires,
            keys: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }

    /// Authorises `keys` for `role` with `threshold`.
    pub fn set_role(&mut self, role: Role, keys: &[&PublicKey], threshold: u64) {
        let keyids = keys
            .iter()
            .map(|k| {
                let id = k.key_id();
                self.keys.insert(id.clone(), (*k).clone());
                id
            })
            .collect();
        self.roles
            .insert(role.name().into(), RoleKeys { keyids, threshold });
    }
}

impl Timestamp {
    /// A timestamp naming `snapshot`.
    pub fn new(version: u64, expires: UtcTime, snapshot: MetaFile) -> Self {
        Self {
            type_: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires,
            meta: [("snapshot.json".to_string(), snapshot)].into(),
        }
    }
}

impl Snapshot {
    /// A snapshot naming `targets`.
    pub fn new(version: u64, expires: UtcTime, targets: MetaFile) -> Self {
        Self {
            type_: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires,
            meta: [("targets.json".to_string(), targets)].into(),
        }
    }
}

impl Targets {
    /// An empty targets body.
    pub fn new(version: u64, expires: UtcTime) -> Self {
        Self {
            type_: "targets".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires,
            targets: BTreeMap::new(),
        }
    }
}

impl MetaFile {
    /// A reference to metadata bytes `raw` of `version`, with length and SHA-256.
    pub fn describing(version: u64, raw: &[u8]) -> Self {
        Self {
            version,
            length: Some(raw.len() as u64),
            hashes: Some(
                [(
                    "sha256".to_string(),
                    crate::digest::Sha256Digest::of(raw).to_hex(),
                )]
                .into(),
            ),
        }
    }
}

impl TargetFile {
    /// A target entry for `raw` with its length and SHA-256.
    pub fn describing(raw: &[u8], custom: Option<Value>) -> Self {
        Self {
            length: raw.len() as u64,
            hashes: [(
                "sha256".to_string(),
                crate::digest::Sha256Digest::of(raw).to_hex(),
            )]
            .into(),
            custom,
        }
    }
}
