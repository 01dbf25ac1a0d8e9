//! The hub's REST API bodies (`/api/v1`): the one definition shared by the
//! server handlers, the `flotilla` CLI client and the OpenAPI document.
//!
//! Requests reject unknown fields, so a typo in a script is a 400, not a silently
//! ignored option.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod telemetry;
pub use telemetry::*;

/// Roles of API tokens, from least to most powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// Registers, tags, archives and deletes models.
    Operator,
    /// Everything, including tokens.
    Admin,
}

/// `POST /api/v1/uploads`: start a resumable upload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUpload {
    /// File name (no directories); becomes the file's path in the bundle.
    pub file_name: String,
    /// Total size in bytes.
    pub size: u64,
}

/// An upload's state. Send the next bytes with `PATCH /api/v1/uploads/{id}` and
/// header `Upload-Offset: {offset}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UploadState {
    /// Upload id.
    pub id: String,
    /// File name.
    pub file_name: String,
    /// Bytes received so far: where the next PATCH must start.
    pub offset: u64,
    /// Total size.
    pub size: u64,
}

/// Provenance of a version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineageBody {
    /// Training run or pipeline.
    #[serde(default)]
    pub source_run: Option<String>,
    /// Digest of the training dataset.
    #[serde(default)]
    pub dataset_digest: Option<String>,
    /// Version this one derives from.
    #[serde(default)]
    pub parent_version: Option<u64>,
}

/// `POST /api/v1/models/{name}/versions`: register the next version of a model
/// from a completed upload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterVersion {
    /// Id of the completed upload holding the ONNX file.
    pub upload: String,
    /// Id of a completed upload holding a reference dataset (CSV with a header
    /// row); it becomes the drift baseline.
    #[serde(default)]
    pub dataset_upload: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// `key=value` tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Named numbers (accuracy, auc, …).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Provenance.
    #[serde(default)]
    pub lineage: LineageBody,
    /// Why this version is registered (recorded in the audit log).
    #[serde(default)]
    pub reason: String,
}

/// One tensor of a model's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TensorView {
    /// Tensor name.
    pub name: String,
    /// Element type (`float32`, `int64`, …).
    pub datatype: String,
    /// Shape; symbolic dims by name, unknown as `?`; absent if the rank is unknown.
    pub shape: Option<Vec<String>>,
}

/// Lifecycle state of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VersionStatus {
    /// Usable in deployments.
    Active,
    /// Kept for the record; not deployable.
    Archived,
}

/// A registered model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VersionView {
    /// Model name.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// Lifecycle state.
    pub status: VersionStatus,
    /// Free text.
    pub description: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Provenance.
    pub lineage: LineageBody,
    /// Who registered it.
    pub created_by: String,
    /// Why.
    pub reason: String,
    /// When (RFC 3339, UTC).
    pub created_at: String,
    /// Model file name.
    pub file_name: String,
    /// Model file size.
    pub size: u64,
    /// Model file SHA-256 (computed by the hub).
    pub sha256: String,
    /// Chunks in the model file.
    pub chunks: u64,
    /// Chunks already stored for earlier versions when this one was registered.
    pub chunks_reused: u64,
    /// TUF target path of the signed manifest.
    pub target: String,
    /// SHA-256 of the signed manifest.
    pub manifest_sha256: String,
    /// Model inputs.
    pub inputs: Vec<TensorView>,
    /// Model outputs.
    pub outputs: Vec<TensorView>,
    /// Whether a drift baseline was computed from a reference dataset.
    pub has_drift_baseline: bool,
    /// Deployments that reference this version (it cannot be deleted meanwhile).
    pub referenced_by: Vec<String>,
}

/// A model: a name and its versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelView {
    /// Model name.
    pub name: String,
    /// Highest version number ever assigned.
    pub latest_version: u64,
    /// Versions that still exist.
    pub versions: u64,
    /// When the first version was registered.
    pub created_at: String,
}

/// A page of results; pass `next_cursor` as `cursor` for the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Cursor of the next page, absent on the last page.
    pub next_cursor: Option<String>,
}

/// `PATCH /api/v1/models/{name}/versions/{version}/tags`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTags {
    /// Tags to set.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Tag keys to remove.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Why (recorded in the audit log).
    #[serde(default)]
    pub reason: String,
}

/// A state change with a reason, for archive and delete.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Why (recorded in the audit log).
    #[serde(default)]
    pub reason: String,
}

/// One entry of the hash-chained audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// Token name of who did it.
    pub actor: String,
    /// What (`model.register`, `token.create`, …).
    pub action: String,
    /// On what (`model/fraud/3`).
    pub object: String,
    /// Why, as given.
    pub reason: String,
    /// Hash (hex SHA-256) of the previous entry; 64 zeros for the first.
    pub prev_hash: String,
    /// Hash (hex SHA-256) of this entry's other fields.
    pub hash: String,
}

/// Result of checking the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditVerification {
    /// True when every entry's hash and link hold.
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// First sequence number that fails, if any.
    pub first_bad_seq: Option<u64>,
    /// What is wrong with it.
    pub reason: Option<String>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A unique name for the token's holder (shows as actor in the audit log).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// A token; `token` is present only in the answer to its creation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// Holder name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When created.
    pub created_at: String,
    /// The secret, shown once.
    pub token: Option<String>,
}

/// `GET /api/v1/whoami`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// Token name.
    pub name: String,
    /// Role.
    pub role: Role,
}

/// RFC 9457 problem details, the body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What happened and what to do, for a person.
    pub detail: String,
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// One deployment of an endpoint: a name bound to a model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    /// Deployment name (`blue`, `green`).
    pub name: String,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: u64,
}

/// A share of requests copied to a shadow deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    /// The shadow deployment (one of the endpoint's deployments).
    pub deployment: String,
    /// Percent of requests copied, 0-100.
    pub percent: u32,
}

/// `PUT /api/v1/endpoints/{name}`: create or replace an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Devices whose labels include all of these run the endpoint.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// The deployments.
    pub deployments: Vec<DeploymentSpec>,
    /// Traffic weight per deployment in percent; must sum to 100. Deployments
    /// not listed get 0 (useful as a mirror target).
    pub traffic: BTreeMap<String, u32>,
    /// Optional mirror.
    #[serde(default)]
    pub mirror: Option<MirrorSpec>,
    /// Latency objective: the 99th percentile of each deployment's requests
    /// should stay at or under this many milliseconds (the
    /// `p99_over_objective` alert metric). Absent: no objective, and rules on
    /// that metric never judge this endpoint.
    // invariant (checked by the registry): finite and > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective_p99_ms: Option<f64>,
    /// Why (recorded in the audit log).
    #[serde(default)]
    pub reason: String,
}

/// An endpoint as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EndpointView {
    /// Endpoint name: the model name applications use in scoring URLs.
    pub name: String,
    /// Device selector.
    pub selector: BTreeMap<String, String>,
    /// Deployments.
    pub deployments: Vec<DeploymentSpec>,
    /// Traffic weights (percent, sum 100).
    pub traffic: BTreeMap<String, u32>,
    /// Mirror.
    pub mirror: Option<MirrorSpec>,
    /// Latency objective for each deployment's p99, in milliseconds; absent
    /// in endpoints stored before objectives existed or set without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective_p99_ms: Option<f64>,
    /// Increments with every change.
    pub revision: u64,
    /// When last changed.
    pub updated_at: String,
    /// Who last changed it.
    pub updated_by: String,
}

/// Whether a device may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Enrolled and allowed.
    Active,
    /// Refused at its next handshake.
    Revoked,
}

/// An enrolled device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    /// Device id, assigned by the hub (the certificate's common name).
    pub id: String,
    /// Labels that endpoint selectors match.
    pub labels: BTreeMap<String, String>,
    /// Active or revoked.
    pub status: DeviceStatus,
    /// When it enrolled.
    pub enrolled_at: String,
    /// SHA-256 of its certificate (DER).
    pub cert_sha256: String,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// Version of its current director document (0 before the first).
    pub director_version: u64,
    /// Hash of its current desired state, to bump the version only on change.
    pub director_digest: String,
    /// Whether it holds a QUIC sync connection to this hub now.
    #[serde(default)]
    pub connected: bool,
    /// When the hub last heard from it over QUIC (connect, status report,
    /// disconnect; at least every few minutes while connected).
    #[serde(default)]
    pub last_seen: Option<String>,
    /// The agent version its last hello named.
    #[serde(default)]
    pub agent_version: Option<String>,
    /// The hardware its last hello listed.
    #[serde(default)]
    pub inventory: Option<InventoryView>,
    /// The latest status of each of its deployments, by endpoint and deployment.
    // invariant: at most one entry per (endpoint, deployment), sorted by them.
    #[serde(default)]
    pub deployments: Vec<DeploymentReport>,
}

/// A device's hardware, as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InventoryView {
    /// Logical CPUs.
    pub cpus: u32,
    /// Physical memory, in bytes.
    pub memory_bytes: u64,
    /// Accelerators, CPU excluded.
    pub accelerators: Vec<AcceleratorView>,
}

/// One accelerator of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AcceleratorView {
    /// Kind in manifest terms (`cuda`).
    pub kind: String,
    /// Model name as the driver reports it.
    pub name: String,
    /// Device memory, in bytes.
    pub memory_bytes: u64,
}

/// Where one deployment on one device stands, as its agent last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentReport {
    /// Endpoint name.
    pub endpoint: String,
    /// Deployment name.
    pub deployment: String,
    /// Target path of the bundle manifest the state is about.
    pub target: String,
    /// `fetching`, `staged`, `trial`, `active`, `failed` or `rolled_back`.
    pub state: String,
    /// Why, for `failed` and `rolled_back`.
    #[serde(default)]
    pub reason: Option<String>,
    /// For `fetching`: bytes of the bundle's distinct chunks already stored.
    #[serde(default)]
    pub have_bytes: Option<u64>,
    /// For `fetching`: bytes of all the bundle's distinct chunks.
    #[serde(default)]
    pub need_bytes: Option<u64>,
    /// Target path of the version serving traffic now, if any.
    pub active: Option<String>,
    /// Version of the director document the status answers.
    pub director_version: u64,
    /// When the deployment entered this state, by the device's clock.
    pub since: String,
    /// When the hub received the report.
    pub reported_at: String,
}

/// `POST /api/v1/devices/tokens`: a one-time, expiring enrolment token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrolToken {
    /// Labels the enrolled device gets.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Lifetime in seconds (at most 7 days).
    pub ttl_secs: u64,
}

/// An enrolment token, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrolTokenView {
    /// The secret.
    pub token: String,
    /// When it stops working.
    pub expires_at: String,
    /// Labels the device will get.
    pub labels: BTreeMap<String, String>,
}

/// `POST /api/v1/enroll`: a device asks for its certificate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The one-time enrolment token.
    pub token: String,
    /// PEM certificate signing request for the key the device generated.
    pub csr_pem: String,
}

/// What a device receives at enrolment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrolResponse {
    /// Its id.
    pub device_id: String,
    /// Its certificate (PEM), signed by the device CA.
    pub certificate_pem: String,
    /// The device CA certificate (PEM).
    pub ca_pem: String,
    /// SHA-256 of the CA certificate (DER), for the device to compare with its pin.
    pub ca_fingerprint: String,
    /// The newest root.json, to pin.
    pub root_json: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// `PATCH /api/v1/devices/{id}/labels`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateLabels {
    /// Labels to set.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Label keys to remove.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// `GET /api/v1/hub`: where agents connect and what technicians pin.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HubInfo {
    /// The QUIC address agents enrol and sync with (`sync.advertise`, else the
    /// bound address).
    pub sync_addr: String,
    /// SHA-256 of the device CA certificate (DER), lowercase hex.
    pub ca_fingerprint: String,
    /// The device CA certificate (PEM).
    pub ca_pem: String,
    /// Hub version.
    pub version: String,
    /// The MQTT broker agents publish telemetry to (`mqtt.advertise`, else
    /// the embedded broker's or the external broker's address).
    #[serde(default)]
    pub mqtt_addr: Option<String>,
    /// The fleet: agents publish under `flotilla/v1/{fleet}/{device}/…`.
    #[serde(default)]
    pub fleet: String,
}
