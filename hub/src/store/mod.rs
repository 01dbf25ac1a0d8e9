//! Hub metadata storage behind a narrow, domain-level trait.
//!
//! Design: the registry talks to [`RegistryStore`], never to redb directly, so a
//! PostgreSQL store for multi-replica hubs (DESIGN.md, "what takes over at
//! scale") is an addition, not a rewrite. Every mutation takes its audit draft
//! and commits the change and the chained audit entry in one transaction: there
//! is no mutation without its audit entry and no entry without its mutation.
//!
//! Chunk and upload bytes are not here; see [`crate::blobs`].

pub mod redb_store;

pub use redb_store::RedbStore;

use serde::{Deserialize, Serialize};

use crate::api::types::{AuditEntry, DeviceView, EndpointView, ModelView, Role, VersionView};
use crate::audit::AuditDraft;
use flotilla_protocol::tuf::repo::Publication;
use flotilla_protocol::tuf::Targets;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed (disk, corruption, lock).
    #[error("storage failure: {0}")]
    Backend(String),
    /// The object does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The change conflicts with current state.
    #[error("{0}")]
    Conflict(String),
    /// The caller's callback refused the change.
    #[error("{0}")]
    Rejected(String),
}

/// The TUF repository state the hub publishes: current targets and the
/// version of the last publication (snapshot and timestamp version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustState {
    /// Current targets body.
    pub targets: Targets,
    /// Version of the last snapshot/timestamp published.
    pub publication_version: u64,
}

/// Everything a registration writes, built by the registry once the store has
/// assigned the version number.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The version as the API shows it.
    pub view: VersionView,
    /// The signed manifest's bytes.
    pub manifest: Vec<u8>,
    /// New TUF state and its signed metadata.
    pub trust: TrustState,
    /// The signed metadata.
    pub publication: Publication,
    /// Distinct chunk digests of the version.
    pub chunks: Vec<[u8; 32]>,
}

/// A stored API token (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Holder name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When created.
    pub created_at: String,
}

/// A stored enrolment token (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolTokenRecord {
    /// Labels the device gets.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Expiry, seconds since the epoch.
    pub expires_at: i64,
    /// Who created it.
    pub created_by: String,
}

/// A resumable upload in progress or complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Upload id.
    pub id: String,
    /// File name.
    pub file_name: String,
    /// Declared total size.
    pub size: u64,
    /// Bytes received and durable.
    // invariant: offset <= size, equal to the length of the upload's file.
    pub offset: u64,
    /// Who started it.
    pub created_by: String,
    /// When.
    pub created_at: String,
}

/// Re-signs trust metadata without a deleted target: (current state, target) →
/// (new state, its signed metadata).
pub type Republish<'a> =
    dyn FnMut(&TrustState, &str) -> Result<(TrustState, Publication), StoreError> + 'a;

/// Builds a registration once the next version number is known.
pub type BuildRegistration<'a> =
    dyn FnMut(u64, Option<&TrustState>) -> Result<Registration, StoreError> + 'a;

/// Hub metadata storage.
pub trait RegistryStore: Send + Sync + std::fmt::Debug {
    /// Assigns the next version of `name`, calls `build` with it, and stores the
    /// result with its audit entry atomically. Concurrent callers get distinct,
    /// consecutive versions.
    fn register(
        &self,
        name: &str,
        build: &mut BuildRegistration<'_>,
        audit: AuditDraft,
        now: &str,
    ) -> Result<(VersionView, AuditEntry), StoreError>;

    /// Changes one version with `f` and records `audit`, atomically.
    fn update_version(
        &self,
        name: &str,
        version: u64,
        f: &mut dyn FnMut(&mut VersionView) -> Result<(), StoreError>,
        audit: AuditDraft,
        now: &str,
    ) -> Result<(VersionView, AuditEntry), StoreError>;

    /// Deletes a version unless a deployment references it (then `Conflict`),
    /// republishing trust metadata with `republish`. Returns chunk digests no
    /// version references any more.
    fn delete_version(
        &self,
        name: &str,
        version: u64,
        republish: &mut Republish<'_>,
        audit: AuditDraft,
        now: &str,
    ) -> Result<(Vec<[u8; 32]>, AuditEntry), StoreError>;

    /// Replaces the trust metadata with what `republish` makes of the current
    /// state (for refreshing timestamps before they expire), with its audit entry.
    /// Does nothing and returns `None` when no metadata was published yet.
    fn refresh_trust(
        &self,
        republish: &mut Republish<'_>,
        audit: AuditDraft,
        now: &str,
    ) -> Result<Option<AuditEntry>, StoreError>;

    /// Creates or replaces an endpoint. Every deployment must name an existing,
    /// active version; versions the old spec referenced lose the reference, the
    /// new ones gain it (`referenced_by` = `endpoint/deployment`), atomically
    /// with the audit entry. The stored revision is the old one plus one.
    fn put_endpoint(
        &self,
        view: EndpointView,
        audit: AuditDraft,
        now: &str,
    ) -> Result<(EndpointView, AuditEntry), StoreError>;
    /// Deletes an endpoint and its references.
    fn delete_endpoint(
        &self,
        name: &str,
        audit: AuditDraft,
        now: &str,
    ) -> Result<AuditEntry, StoreError>;
    /// One endpoint.
    fn endpoint(&self, name: &str) -> Result<Option<EndpointView>, StoreError>;
    /// All endpoints, by name.
    fn endpoints(&self) -> Result<Vec<EndpointView>, StoreError>;

    /// Stores an enrolment token under its hash.
    fn create_enrol_token(
        &self,
        hash: &str,
        record: EnrolTokenRecord,
        audit: AuditDraft,
        now: &str,
    ) -> Result<AuditEntry, StoreError>;
    /// Uses up the enrolment token `hash` (NotFound if unknown or already used)
    /// and stores the device `f` makes of it, atomically with `audit`.
    fn enroll(
        &self,
        hash: &str,
        f: &mut dyn FnMut(&EnrolTokenRecord) -> Result<DeviceView, StoreError>,
        audit: AuditDraft,
        now: &str,
    ) -> Result<DeviceView, StoreError>;
    /// One device.
    fn device(&self, id: &str) -> Result<Option<DeviceView>, StoreError>;
    /// All devices, by id.
    fn devices(&self) -> Result<Vec<DeviceView>, StoreError>;
    /// Changes a device with `f`; records `audit` when given (director version
    /// bumps are bookkeeping, not operator actions).
    fn update_device(
        &self,
        id: &str,
        f: &mut dyn FnMut(&mut DeviceView) -> Result<(), StoreError>,
        audit: Option<AuditDraft>,
        now: &str,
    ) -> Result<DeviceView, StoreError>;

    /// One model.
    fn model(&self, name: &str) -> Result<Option<ModelView>, StoreError>;
    /// Models after `after` in name order, filtered by `keep`, at most `limit`.
    fn models(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&ModelView, &[VersionView]) -> bool,
    ) -> Result<Vec<ModelView>, StoreError>;
    /// Existing versions of a model, ascending.
    fn versions(&self, name: &str) -> Result<Vec<VersionView>, StoreError>;
    /// One version.
    fn version(&self, name: &str, version: u64) -> Result<Option<VersionView>, StoreError>;
    /// A signed manifest by target path.
    fn manifest(&self, target: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The current TUF state and its signed metadata.
    fn trust(&self) -> Result<Option<(TrustState, Publication)>, StoreError>;

    /// Appends an audit entry for a change stored elsewhere.
    fn append_audit(&self, audit: AuditDraft, now: &str) -> Result<AuditEntry, StoreError>;
    /// Entries with `seq > since`, at most `limit`.
    fn audit_after(&self, since: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// Every entry in storage order.
    fn audit_all(&self) -> Result<Vec<AuditEntry>, StoreError>;

    /// Stores a token under its hash, refusing a duplicate name.
    fn create_token(
        &self,
        hash: &str,
        record: TokenRecord,
        audit: AuditDraft,
        now: &str,
    ) -> Result<AuditEntry, StoreError>;
    /// The token with this hash.
    fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// All tokens.
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Revokes the token named `name`.
    fn delete_token(
        &self,
        name: &str,
        audit: AuditDraft,
        now: &str,
    ) -> Result<AuditEntry, StoreError>;

    /// Creates or replaces an upload record.
    fn put_upload(&self, record: &UploadRecord) -> Result<(), StoreError>;
    /// One upload.
    fn upload(&self, id: &str) -> Result<Option<UploadRecord>, StoreError>;
    /// Forgets an upload.
    fn delete_upload(&self, id: &str) -> Result<(), StoreError>;
    /// Uploads not yet registered or deleted.
    fn uploads(&self) -> Result<Vec<UploadRecord>, StoreError>;
    /// How many versions reference each chunk, for garbage collection checks.
    fn chunk_refs(&self, digest: &[u8; 32]) -> Result<u64, StoreError>;
}
