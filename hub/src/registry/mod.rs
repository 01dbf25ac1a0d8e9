//! The model registry: uploads, registration, search, tags, archive, delete.
//!
//! It owns the rules (validation, version assignment through the store, chunk
//! sharing, TUF publication, audit and events) and nothing about HTTP. All
//! methods block (disk, hashing, signing); the API calls them on blocking threads.
//!
//! # Layout
//! - [`filter`]: search filters and input validation.
//! - [`baseline`]: drift baselines from reference datasets.
//! - [`endpoints`]: endpoints, their validation, and per-device desired state.
//! - `register` (below): the registration pipeline.

pub mod baseline;
pub mod endpoints;
pub mod filter;
mod register;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use flotilla_protocol::digest::Sha256Digest;
use flotilla_protocol::manifest::BundleManifest;
use flotilla_protocol::tuf::repo::{publish, Expiries, OnlineKeys};

use crate::api::types::*;
use crate::audit::{verify_chain, AuditDraft};
use crate::blobs::{ChunkStore, UploadFiles};
use crate::events::{Event, EventBus};
use crate::store::{RegistryStore, StoreError, TokenRecord, UploadRecord};
use filter::Filter;

/// Why a registry operation failed; the API maps each to an HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The request is invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// Something does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with current state (409).
    #[error("{0}")]
    Conflict(String),
    /// A size limit is exceeded (413).
    #[error("{0}")]
    TooLarge(String),
    /// The credentials are not valid (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Too many things in progress (429).
    #[error("{0}")]
    Busy(String),
    /// The hub failed (500).
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => RegistryError::NotFound(format!("{what} does not exist")),
            StoreError::Conflict(m) => RegistryError::Conflict(m),
            StoreError::Rejected(m) => RegistryError::BadRequest(m),
            other => RegistryError::Internal(other.to_string()),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Internal(e.to_string())
}

/// Limits the registry enforces.
#[derive(Debug, Clone, Copy)]
pub struct RegistryLimits {
    /// Largest upload.
    pub max_upload_bytes: u64,
    /// Most uploads in progress.
    pub max_pending_uploads: usize,
}

/// The registry service.
#[derive(Debug)]
pub struct Registry {
    store: Arc<dyn RegistryStore>,
    chunks: Arc<dyn ChunkStore>,
    uploads: UploadFiles,
    keys: OnlineKeys,
    ca: crate::devices::ca::DeviceCa,
    // Changed in the same call as each enrolment and revocation.
    device_certs: Arc<crate::devices::certs::DeviceCerts>,
    events: EventBus,
    limits: RegistryLimits,
    expiries: Expiries,
    // Readers: registrations between storing chunks and committing their
    // references. Writer: removal of unreferenced chunks, which re-checks the
    // reference count under it, so no registration's chunk is removed.
    chunk_gc: std::sync::RwLock<()>,
    // invariant: an upload id is in here while a PATCH or registration uses it.
    busy_uploads: Mutex<HashSet<String>>,
}

/// Releases a busy upload id when dropped.
struct UploadGuard<'a>(&'a Registry, String);

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.busy_uploads.lock() {
            set.remove(&self.1);
        }
    }
}

fn now_str() -> String {
    crate::now().to_string()
}

/// Signs the next publication of `state`: snapshot and timestamp always get the
/// next version; targets too when `targets_changed` (its content was edited).
fn sign_next(
    mut state: crate::store::TrustState,
    targets_changed: bool,
    now: flotilla_protocol::time::UtcTime,
    expiries: Expiries,
    keys: &OnlineKeys,
) -> Result<
    (
        crate::store::TrustState,
        flotilla_protocol::tuf::repo::Publication,
    ),
    StoreError,
> {
    if targets_changed {
        state.targets.version += 1;
        state.targets.expires = now.plus_secs(expiries.targets_secs);
    }
    state.publication_version += 1;
    let p = publish(
        &state.targets,
        state.publication_version,
        now,
        expiries,
        keys,
    )
    .map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok((state, p))
}

impl Registry {
    /// Signs timestamps that expire `secs` after signing (default 7 days).
    pub fn set_timestamp_expiry(&mut self, secs: i64) {
        self.expiries.timestamp_secs = secs;
    }

    /// The timestamp lifetime in seconds.
    pub fn timestamp_expiry_secs(&self) -> i64 {
        self.expiries.timestamp_secs
    }

    /// A registry over its store, chunk store, upload files and online keys.
    pub fn new(
        store: Arc<dyn RegistryStore>,
        chunks: Arc<dyn ChunkStore>,
        uploads: UploadFiles,
        keys: OnlineKeys,
        ca: crate::devices::ca::DeviceCa,
        events: EventBus,
        limits: RegistryLimits,
    ) -> Self {
        Self {
            store,
            chunks,
            uploads,
            keys,
            ca,
            device_certs: Arc::default(),
            events,
            limits,
            expiries: Expiries::default(),
            chunk_gc: std::sync::RwLock::new(()),
            busy_uploads: Mutex::new(HashSet::new()),
        }
    }

    /// The store (for auth and trust endpoints).
    pub fn store(&self) -> &Arc<dyn RegistryStore> {
        &self.store
    }

    /// The online signing keys.
    pub fn keys(&self) -> &OnlineKeys {
        &self.keys
    }

    /// The device CA.
    pub fn ca(&self) -> &crate::devices::ca::DeviceCa {
        &self.ca
    }

    /// The certificates of enrolled devices, for QUIC handshakes. Empty until
    /// [`Registry::load_device_certs`].
    pub fn device_certs(&self) -> &Arc<crate::devices::certs::DeviceCerts> {
        &self.device_certs
    }

    /// Loads the device certificate map from the store (once, at start).
    pub fn load_device_certs(&self) -> Result<(), RegistryError> {
        self.device_certs.load(&self.store.devices()?);
        Ok(())
    }

    /// The event bus.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    fn claim_upload(&self, id: &str) -> Result<UploadGuard<'_>, RegistryError> {
        let mut set = self.busy_uploads.lock().map_err(internal)?;
        if !set.insert(id.to_string()) {
            return Err(RegistryError::Conflict(format!(
                "upload {id} is in use by another request; retry when it finishes"
            )));
        }
        Ok(UploadGuard(self, id.to_string()))
    }

    /// Starts an upload.
    pub fn create_upload(
        &self,
        actor: &str,
        req: CreateUpload,
    ) -> Result<UploadState, RegistryError> {
        filter::check_file_name(&req.file_name).map_err(RegistryError::BadRequest)?;
        if req.size > self.limits.max_upload_bytes {
            return Err(RegistryError::TooLarge(format!(
                "upload of {} bytes exceeds this hub's limit of {} bytes (api.max_upload_bytes)",
                req.size, self.limits.max_upload_bytes
            )));
        }
        if self.store.uploads()?.len() >= self.limits.max_pending_uploads {
            return Err(RegistryError::Busy(format!(
                "{} uploads are already pending; finish or delete some first",
                self.limits.max_pending_uploads
            )));
        }
        let id = crate::tokens::generate()
            .map_err(|_| internal("random number generator failed"))?[4..36]
            .to_string();
        let rec = UploadRecord {
            id: id.clone(),
            file_name: req.file_name,
            size: req.size,
            offset: 0,
            created_by: actor.to_string(),
            created_at: now_str(),
        };
        self.uploads.create(&id).map_err(internal)?;
        self.store.put_upload(&rec)?;
        Ok(state(&rec))
    }

    fn upload_record(&self, id: &str) -> Result<UploadRecord, RegistryError> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RegistryError::NotFound(format!(
                "upload {id:?} does not exist"
            )));
        }
        self.store
            .upload(id)?
            .ok_or_else(|| RegistryError::NotFound(format!("upload {id} does not exist")))
    }

    /// An upload's state.
    pub fn upload_state(&self, id: &str) -> Result<UploadState, RegistryError> {
        Ok(state(&self.upload_record(id)?))
    }

    /// Appends bytes at `offset`; the offset must be where the upload stands.
    pub fn append_upload(
        &self,
        id: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<UploadState, RegistryError> {
        let _guard = self.claim_upload(id)?;
        let mut rec = self.upload_record(id)?;
        if offset != rec.offset {
            return Err(RegistryError::Conflict(format!(
                "upload {id} stands at offset {}, not {offset}; continue from {}",
                rec.offset, rec.offset
            )));
        }
        let end = offset.saturating_add(data.len() as u64);
        if end > rec.size {
            return Err(RegistryError::TooLarge(format!(
                "upload {id} is declared as {} bytes; {} more bytes at offset {offset} would exceed it",
                rec.size,
                data.len()
            )));
        }
        rec.offset = self.uploads.append(id, offset, data).map_err(internal)?;
        self.store.put_upload(&rec)?;
        Ok(state(&rec))
    }

    /// Abandons an upload.
    pub fn delete_upload(&self, id: &str) -> Result<(), RegistryError> {
        let _guard = self.claim_upload(id)?;
        self.upload_record(id)?;
        self.uploads.remove(id).map_err(internal)?;
        self.store.delete_upload(id)?;
        Ok(())
    }

    /// A model.
    pub fn model(&self, name: &str) -> Result<ModelView, RegistryError> {
        self.store
            .model(name)?
            .ok_or_else(|| RegistryError::NotFound(format!("model {name} does not exist")))
    }

    /// Models whose name contains `name` and that have a version passing every
    /// filter, in name order, after `cursor`.
    pub fn models(
        &self,
        name: Option<&str>,
        filters: &[Filter],
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<ModelView>, RegistryError> {
        let limit = limit.clamp(1, 1000);
        let keep = |m: &ModelView, vs: &[VersionView]| {
            name.is_none_or(|n| m.name.contains(n))
                && (filters.is_empty() || vs.iter().any(|v| filters.iter().all(|f| f.matches(v))))
        };
        let mut items = self.store.models(cursor, limit + 1, &keep)?;
        let next_cursor = (items.len() > limit).then(|| {
            items.truncate(limit);
            items.last().map(|m| m.name.clone()).unwrap_or_default()
        });
        Ok(Page { items, next_cursor })
    }

    /// Versions of a model passing every filter, ascending, after `cursor`.
    pub fn versions(
        &self,
        name: &str,
        filters: &[Filter],
        limit: usize,
        cursor: Option<u64>,
    ) -> Result<Page<VersionView>, RegistryError> {
        self.model(name)?;
        let limit = limit.clamp(1, 1000);
        let mut items: Vec<VersionView> = self
            .store
            .versions(name)?
            .into_iter()
            .filter(|v| {
                cursor.is_none_or(|c| v.version > c) && filters.iter().all(|f| f.matches(v))
            })
            .take(limit + 1)
            .collect();
        let next_cursor = (items.len() > limit).then(|| {
            items.truncate(limit);
            items
                .last()
                .map(|v| v.version.to_string())
                .unwrap_or_default()
        });
        Ok(Page { items, next_cursor })
    }

    /// One version.
    pub fn version(&self, name: &str, version: u64) -> Result<VersionView, RegistryError> {
        self.store.version(name, version)?.ok_or_else(|| {
            RegistryError::NotFound(format!("model {name} version {version} does not exist"))
        })
    }

    pub(crate) fn emit(&self, kind: &str, object: &str, actor: &str, data: serde_json::Value) {
        self.events.publish(Event {
            kind: kind.into(),
            time: now_str(),
            object: object.into(),
            actor: actor.into(),
            data,
        });
    }

    /// Sets and removes tags.
    pub fn update_tags(
        &self,
        actor: &str,
        name: &str,
        version: u64,
        req: UpdateTags,
    ) -> Result<VersionView, RegistryError> {
        filter::check_tags(&req.set).map_err(RegistryError::BadRequest)?;
        let object = format!("model/{name}/{version}");
        let mut change = |v: &mut VersionView| {
            for k in &req.remove {
                v.tags.remove(k);
            }
            v.tags.extend(req.set.clone());
            filter::check_tags(&v.tags).map_err(StoreError::Rejected)
        };
        let (view, _) = self.store.update_version(
            name,
            version,
            &mut change,
            AuditDraft::new(actor, "model.version.tag", &object, &req.reason),
            &now_str(),
        )?;
        self.emit(
            "model.version.updated",
            &object,
            actor,
            serde_json::json!({"tags": view.tags}),
        );
        Ok(view)
    }

    /// Archives a version: kept and verifiable, no longer deployable.
    pub fn archive(
        &self,
        actor: &str,
        name: &str,
        version: u64,
        reason: &str,
    ) -> Result<VersionView, RegistryError> {
        let object = format!("model/{name}/{version}");
        let mut change = |v: &mut VersionView| {
            if !v.referenced_by.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "{object} is used by deployment(s) {}; move them to another version first",
                    v.referenced_by.join(", ")
                )));
            }
            v.status = VersionStatus::Archived;
            Ok(())
        };
        let (view, _) = self.store.update_version(
            name,
            version,
            &mut change,
            AuditDraft::new(actor, "model.version.archive", &object, reason),
            &now_str(),
        )?;
        self.emit(
            "model.version.archived",
            &object,
            actor,
            serde_json::Value::Null,
        );
        Ok(view)
    }

    /// Deletes a version, its target, and chunks no other version uses.
    pub fn delete(
        &self,
        actor: &str,
        name: &str,
        version: u64,
        reason: &str,
    ) -> Result<(), RegistryError> {
        let object = format!("model/{name}/{version}");
        let now = crate::now();
        let keys = &self.keys;
        let expiries = self.expiries;
        let mut republish = |state: &crate::store::TrustState, target: &str| {
            let mut state = state.clone();
            state.targets.targets.remove(target);
            sign_next(state, true, now, expiries, keys)
        };
        let (freed, _) = self.store.delete_version(
            name,
            version,
            &mut republish,
            AuditDraft::new(actor, "model.version.delete", &object, reason),
            &now.to_string(),
        )?;
        self.remove_unreferenced(&freed.into_iter().map(Sha256Digest).collect::<Vec<_>>());
        self.emit(
            "model.version.deleted",
            &object,
            actor,
            serde_json::Value::Null,
        );
        Ok(())
    }

    /// Re-signs snapshot and timestamp when the published timestamp expires
    /// within half its lifetime of `now`, so that clients never see it expire
    /// while the hub runs. Returns whether it re-signed.
    pub fn refresh_trust_if_due(
        &self,
        now: flotilla_protocol::time::UtcTime,
    ) -> Result<bool, RegistryError> {
        let Some((_, publication)) = self.store.trust()? else {
            return Ok(false);
        };
        let expires = flotilla_protocol::tuf::Envelope::parse(
            flotilla_protocol::tuf::Role::Timestamp,
            &publication.timestamp,
            u64::MAX,
        )
        .and_then(|e| {
            e.body::<flotilla_protocol::tuf::Timestamp>(flotilla_protocol::tuf::Role::Timestamp)
        })
        .map(|t| t.expires)
        .map_err(internal)?;
        if expires.0 - now.0 > self.expiries.timestamp_secs / 2 {
            return Ok(false);
        }
        let keys = &self.keys;
        let expiries = self.expiries;
        let mut republish = |state: &crate::store::TrustState, _: &str| {
            sign_next(state.clone(), false, now, expiries, keys)
        };
        let refreshed = self.store.refresh_trust(
            &mut republish,
            AuditDraft::new(
                "hub",
                "trust.refresh",
                "trust/timestamp",
                "timestamp near expiry",
            ),
            &now.to_string(),
        )?;
        Ok(refreshed.is_some())
    }

    /// Removes those of `candidates` that no version references, once no
    /// registration is between storing chunks and committing (see `chunk_gc`).
    fn remove_unreferenced(&self, candidates: &[Sha256Digest]) {
        let Ok(_exclusive) = self.chunk_gc.write() else {
            return;
        };
        for d in candidates {
            if self.store.chunk_refs(&d.0).unwrap_or(1) == 0 {
                if let Err(e) = self.chunks.remove(d) {
                    tracing::warn!(error = %e, "could not remove an unreferenced chunk");
                }
            }
        }
    }

    /// The manifest of a version, for downloads.
    pub fn manifest(&self, name: &str, version: u64) -> Result<BundleManifest, RegistryError> {
        let v = self.version(name, version)?;
        let bytes = self
            .store
            .manifest(&v.target)?
            .ok_or_else(|| internal(format!("manifest of {} is missing", v.target)))?;
        BundleManifest::decode(&bytes, &Default::default()).map_err(internal)
    }

    /// A stored chunk.
    pub fn chunk(&self, digest: &Sha256Digest) -> Result<Vec<u8>, RegistryError> {
        self.chunks.get(digest).map_err(internal)
    }

    /// A stored chunk, or `None` when the hub has none with this digest.
    pub fn chunk_if_present(
        &self,
        digest: &Sha256Digest,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        match self.chunks.get(digest) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(internal(e)),
        }
    }

    /// Audit entries after `since`.
    pub fn audit(&self, since: u64, limit: usize) -> Result<Page<AuditEntry>, RegistryError> {
        let limit = limit.clamp(1, 10_000);
        let mut items = self.store.audit_after(since, limit + 1)?;
        let next_cursor = (items.len() > limit).then(|| {
            items.truncate(limit);
            items.last().map(|e| e.seq.to_string()).unwrap_or_default()
        });
        Ok(Page { items, next_cursor })
    }

    /// Checks the audit chain.
    pub fn audit_verify(&self) -> Result<AuditVerification, RegistryError> {
        Ok(verify_chain(&self.store.audit_all()?))
    }

    /// Creates a token and returns it (the only time its secret is shown).
    pub fn create_token(&self, actor: &str, req: CreateToken) -> Result<TokenView, RegistryError> {
        filter::check_model_name(&req.name).map_err(|_| {
            RegistryError::BadRequest(format!(
                "token name {:?} must be 1-128 characters of A-Z a-z 0-9 - _ .",
                req.name
            ))
        })?;
        let token =
            crate::tokens::generate().map_err(|_| internal("random number generator failed"))?;
        let rec = TokenRecord {
            name: req.name.clone(),
            role: req.role,
            created_at: now_str(),
        };
        self.store.create_token(
            &crate::tokens::hash(&token),
            rec.clone(),
            AuditDraft::new(
                actor,
                "token.create",
                format!("token/{}", req.name),
                &format!("role {:?}", req.role).to_lowercase(),
            ),
            &now_str(),
        )?;
        Ok(TokenView {
            name: rec.name,
            role: rec.role,
            created_at: rec.created_at,
            token: Some(token),
        })
    }

    /// Revokes a token.
    pub fn revoke_token(&self, actor: &str, name: &str) -> Result<(), RegistryError> {
        self.store.delete_token(
            name,
            AuditDraft::new(actor, "token.revoke", format!("token/{name}"), ""),
            &now_str(),
        )?;
        Ok(())
    }
}

fn state(r: &UploadRecord) -> UploadState {
    UploadState {
        id: r.id.clone(),
        file_name: r.file_name.clone(),
        offset: r.offset,
        size: r.size,
    }
}
