//! [`RegistryStore`] on redb: one database file in the hub's data directory.
//!
//! Records are CBOR with a schema version (`Record`). Every mutation is one
//! write transaction that also appends its chained audit entry, so a crash at
//! any instant leaves either both or neither.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    BuildRegistration, EnrolTokenRecord, RegistryStore, Republish, StoreError, TokenRecord,
    TrustState, UploadRecord,
};
use crate::api::types::{
    AuditEntry, DeviceView, EndpointView, ModelView, VersionStatus, VersionView,
};
use crate::audit::AuditDraft;
use flotilla_protocol::tuf::repo::Publication;

const MODELS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("models");
const VERSIONS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("versions");
const MANIFESTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("manifests");
const CHUNK_REFS: TableDefinition<'_, &[u8], u64> = TableDefinition::new("chunk_refs");
/// The audit log: sequence number → CBOR [`AuditEntry`].
pub const AUDIT: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("audit");
const TOKENS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tokens");
const UPLOADS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("uploads");
const TRUST: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("trust");
const ENDPOINTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("endpoints");
const DEVICES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("devices");
const ENROL_TOKENS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("enrol_tokens");

/// On-disk schema version of every record.
const RECORD_SCHEMA: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Record<T> {
    schema: u32,
    body: T,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModelRecord {
    name: String,
    latest_version: u64,
    created_at: String,
}

#[derive(Serialize, Deserialize)]
struct TrustRecord {
    state: TrustState,
    targets: Vec<u8>,
    snapshot: Vec<u8>,
    timestamp: Vec<u8>,
}

fn be(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Encodes a record as CBOR.
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    ciborium::into_writer(
        &Record {
            schema: RECORD_SCHEMA,
            body,
        },
        &mut out,
    )
    .map_err(be)?;
    Ok(out)
}

/// Decodes a CBOR record, checking its schema version.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    let r: Record<T> = ciborium::from_reader(bytes)
        .map_err(|e| StoreError::Backend(format!("corrupt record: {e}")))?;
    if r.schema != RECORD_SCHEMA {
        return Err(StoreError::Backend(format!(
            "record schema {} is not supported",
            r.schema
        )));
    }
    Ok(r.body)
}

/// The redb store.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (or creates) the database at `path` and makes sure every table exists.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(be)?;
        {
            tx.open_table(MODELS).map_err(be)?;
            tx.open_table(VERSIONS).map_err(be)?;
            tx.open_table(MANIFESTS).map_err(be)?;
            tx.open_table(CHUNK_REFS).map_err(be)?;
            tx.open_table(AUDIT).map_err(be)?;
            tx.open_table(TOKENS).map_err(be)?;
            tx.open_table(UPLOADS).map_err(be)?;
            tx.open_table(TRUST).map_err(be)?;
            tx.open_table(ENDPOINTS).map_err(be)?;
            tx.open_table(DEVICES).map_err(be)?;
            tx.open_table(ENROL_TOKENS).map_err(be)?;
        }
        tx.commit().map_err(be)?;
        Ok(Self { db })
    }

    fn versions_in(
        t: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
        name: &str,
    ) -> Result<Vec<VersionView>, StoreError> {
        let mut out = Vec::new();
        for item in t.range((name, 0)..=(name, u64::MAX)).map_err(be)? {
            let (_, v) = item.map_err(be)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// One record of a string-keyed table.
    fn get_one<T: DeserializeOwned>(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(table).map_err(be)?;
        let v = t.get(key).map_err(be)?;
        v.map(|v| decode(v.value())).transpose()
    }

    /// Every record of a string-keyed table, in key order.
    fn get_all<T: DeserializeOwned>(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(table).map_err(be)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(be)? {
            out.push(decode(item.map_err(be)?.1.value())?);
        }
        Ok(out)
    }

    fn model_view(rec: ModelRecord, versions: &[VersionView]) -> ModelView {
        ModelView {
            name: rec.name,
            latest_version: rec.latest_version,
            versions: versions.len() as u64,
            created_at: rec.created_at,
        }
    }
}

/// Appends `audit` to the chain inside `tx`.
fn chain_audit(
    tx: &redb::WriteTransaction,
    audit: AuditDraft,
    now: &str,
) -> Result<AuditEntry, StoreError> {
    let mut t = tx.open_table(AUDIT).map_err(be)?;
    let last: Option<AuditEntry> = match t.last().map_err(be)? {
        Some((_, v)) => Some(decode(v.value())?),
        None => None,
    };
    let entry = audit.chain(last.as_ref(), now.to_string());
    t.insert(entry.seq, encode(&entry)?.as_slice())
        .map_err(be)?;
    Ok(entry)
}

/// Moves `referenced_by` entries of `old`'s deployments to `new`'s, checking
/// that every version `new` names exists and is active.
fn rereference(
    tx: &redb::WriteTransaction,
    old: Option<&EndpointView>,
    new: Option<&EndpointView>,
) -> Result<(), StoreError> {
    let mut versions = tx.open_table(VERSIONS).map_err(be)?;
    let mut edit =
        |model: &str,
         version: u64,
         f: &mut dyn FnMut(&mut VersionView) -> Result<(), StoreError>| {
            let mut v: VersionView = match versions.get((model, version)).map_err(be)? {
                Some(raw) => decode(raw.value())?,
                None => {
                    return Err(StoreError::Rejected(format!(
                        "model {model} version {version} does not exist"
                    )))
                }
            };
            f(&mut v)?;
            versions
                .insert((model, version), encode(&v)?.as_slice())
                .map_err(be)?;
            Ok(())
        };
    if let Some(old) = old {
        for d in &old.deployments {
            let tag = format!("{}/{}", old.name, d.name);
            // A version deleted meanwhile cannot be: it was referenced.
            let _ = edit(&d.model, d.version, &mut |v| {
                v.referenced_by.retain(|r| *r != tag);
                Ok(())
            });
        }
    }
    if let Some(new) = new {
        for d in &new.deployments {
            let tag = format!("{}/{}", new.name, d.name);
            edit(&d.model, d.version, &mut |v| {
                if v.status != VersionStatus::Active {
                    return Err(StoreError::Conflict(format!(
                        "model {} version {} is archived and cannot be deployed",
                        d.model, d.version
                    )));
                }
                if !v.referenced_by.contains(&tag) {
                    v.referenced_by.push(tag.clone());
                }
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// Appends `audit` to the chain and commits: the last step of every audited
/// mutation, so that a change and its audit entry land together.
fn commit_audited(
    tx: redb::WriteTransaction,
    audit: AuditDraft,
    now: &str,
) -> Result<AuditEntry, StoreError> {
    let entry = chain_audit(&tx, audit, now)?;
    tx.commit().map_err(be)?;
    Ok(entry)
}

/// A record of a string-keyed table, read inside a write transaction.
fn get_tx<T: DeserializeOwned>(
    tx: &redb::WriteTransaction,
    table: TableDefinition<'_, &str, &[u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let t = tx.open_table(table).map_err(be)?;
    let v = t.get(key).map_err(be)?;
    v.map(|v| decode(v.value())).transpose()
}

fn write_trust(
    tx: &redb::WriteTransaction,
    state: &TrustState,
    p: &Publication,
) -> Result<(), StoreError> {
    let rec = TrustRecord {
        state: state.clone(),
        targets: p.targets.clone(),
        snapshot: p.snapshot.clone(),
        timestamp: p.timestamp.clone(),
    };
    tx.open_table(TRUST)
        .map_err(be)?
        .insert("current", encode(&rec)?.as_slice())
        .map_err(be)?;
    Ok(())
}

fn read_trust(tx: &redb::WriteTransaction) -> Result<Option<TrustState>, StoreError> {
    let t = tx.open_table(TRUST).map_err(be)?;
    let v = t.get("current").map_err(be)?;
    v.map(|v| decode::<TrustRecord>(v.value()).map(|r| r.state))
        .transpose()
}

impl RegistryStore for RedbStore {
    fn register(
        &self,
        name: &str,
        build: &mut BuildRegistration<'_>,
        audit: AuditDraft,
        now: &str,
    ) -> Result<(VersionView, AuditEntry), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let mut model: ModelRecord = {
            let t = tx.open_table(MODELS).map_err(be)?;
            let v = t.get(name).map_err(be)?;
            match v {
                Some(v) => decode(v.value())?,
                None => ModelRecord {
                    name: name.into(),
                    latest_version: 0,
                    created_at: now.into(),
                },
            }
        };
        let next = model.latest_version + 1;
        let trust = read_trust(&tx)?;
        let reg = build(next, trust.as_ref())?;
        model.latest_version = next;
        tx.open_table(MODELS)
            .map_err(be)?
            .insert(name, encode(&model)?.as_slice())
            .map_err(be)?;
        tx.open_table(VERSIONS)
            .map_err(be)?
            .insert((name, next), encode(&reg.view)?.as_slice())
            .map_err(be)?;
        tx.open_table(MANIFESTS)
            .map_err(be)?
            .insert(reg.view.target.as_str(), reg.manifest.as_slice())
            .map_err(be)?;
        {
            let mut refs = tx.open_table(CHUNK_REFS).map_err(be)?;
            for d in &reg.chunks {
                let n = refs.get(d.as_slice()).map_err(be)?.map_or(0, |v| v.value());
                refs.insert(d.as_slice(), n + 1).map_err(be)?;
            }
        }
        write_trust(&tx, &reg.trust, &reg.publication)?;
        let entry = commit_audited(tx, audit, now)?;
        Ok((reg.view, entry))
    }

    fn update_version(
        &self,
        name: &str,
        version: u64,
        f: &mut dyn FnMut(&mut VersionView) -> Result<(), StoreError>,
        audit: AuditDraft,
        now: &str,
    ) -> Result<(VersionView, AuditEntry), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let mut view: VersionView = {
            let t = tx.open_table(VERSIONS).map_err(be)?;
            let v = t.get((name, version)).map_err(be)?;
            match v {
                Some(v) => decode(v.value())?,
                None => {
                    return Err(StoreError::NotFound(format!(
                        "model {name} version {version}"
                    )))
                }
            }
        };
        f(&mut view)?;
        tx.open_table(VERSIONS)
            .map_err(be)?
            .insert((name, version), encode(&view)?.as_slice())
            .map_err(be)?;
        let entry = commit_audited(tx, audit, now)?;
        Ok((view, entry))
    }

    fn delete_version(
        &self,
        name: &str,
        version: u64,
        republish: &mut Republish<'_>,
        audit: AuditDraft,
        now: &str,
    ) -> Result<(Vec<[u8; 32]>, AuditEntry), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let view: VersionView = {
            let t = tx.open_table(VERSIONS).map_err(be)?;
            let v = t.get((name, version)).map_err(be)?;
            match v {
                Some(v) => decode(v.value())?,
                None => {
                    return Err(StoreError::NotFound(format!(
                        "model {name} version {version}"
                    )))
                }
            }
        };
        if !view.referenced_by.is_empty() {
            return Err(StoreError::Conflict(format!(
                "model {name} version {version} is used by deployment(s) {}; move them to another version first",
                view.referenced_by.join(", ")
            )));
        }
        let manifest = tx
            .open_table(MANIFESTS)
            .map_err(be)?
            .remove(view.target.as_str())
            .map_err(be)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        tx.open_table(VERSIONS)
            .map_err(be)?
            .remove((name, version))
            .map_err(be)?;
        let mut freed = Vec::new();
        if let Ok(m) =
            flotilla_protocol::manifest::BundleManifest::decode(&manifest, &Default::default())
        {
            let mut refs = tx.open_table(CHUNK_REFS).map_err(be)?;
            for c in m.unique_chunks() {
                let key = c.digest.0;
                let n = refs
                    .get(key.as_slice())
                    .map_err(be)?
                    .map_or(0, |v| v.value());
                if n <= 1 {
                    refs.remove(key.as_slice()).map_err(be)?;
                    freed.push(key);
                } else {
                    refs.insert(key.as_slice(), n - 1).map_err(be)?;
                }
            }
        }
        if let Some(state) = read_trust(&tx)? {
            let (state, publication) = republish(&state, &view.target)?;
            write_trust(&tx, &state, &publication)?;
        }
        let entry = commit_audited(tx, audit, now)?;
        Ok((freed, entry))
    }

    fn refresh_trust(
        &self,
        republish: &mut Republish<'_>,
        audit: AuditDraft,
        now: &str,
    ) -> Result<Option<AuditEntry>, StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let Some(state) = read_trust(&tx)? else {
            return Ok(None);
        };
        let (state, publication) = republish(&state, "")?;
        write_trust(&tx, &state, &publication)?;
        let entry = commit_audited(tx, audit, now)?;
        Ok(Some(entry))
    }

    fn put_endpoint(
        &self,
        mut view: EndpointView,
        audit: AuditDraft,
        now: &str,
    ) -> Result<(EndpointView, AuditEntry), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let old: Option<EndpointView> = get_tx(&tx, ENDPOINTS, &view.name)?;
        view.revision = old.as_ref().map_or(1, |o| o.revision + 1);
        rereference(&tx, old.as_ref(), Some(&view))?;
        tx.open_table(ENDPOINTS)
            .map_err(be)?
            .insert(view.name.as_str(), encode(&view)?.as_slice())
            .map_err(be)?;
        let entry = commit_audited(tx, audit, now)?;
        Ok((view, entry))
    }

    fn delete_endpoint(
        &self,
        name: &str,
        audit: AuditDraft,
        now: &str,
    ) -> Result<AuditEntry, StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let old: EndpointView = get_tx(&tx, ENDPOINTS, name)?
            .ok_or_else(|| StoreError::NotFound(format!("endpoint {name}")))?;
        rereference(&tx, Some(&old), None)?;
        tx.open_table(ENDPOINTS)
            .map_err(be)?
            .remove(name)
            .map_err(be)?;
        let entry = commit_audited(tx, audit, now)?;
        Ok(entry)
    }

    fn endpoint(&self, name: &str) -> Result<Option<EndpointView>, StoreError> {
        self.get_one(ENDPOINTS, name)
    }

    fn endpoints(&self) -> Result<Vec<EndpointView>, StoreError> {
        self.get_all(ENDPOINTS)
    }

    fn create_enrol_token(
        &self,
        hash: &str,
        record: EnrolTokenRecord,
        audit: AuditDraft,
        now: &str,
    ) -> Result<AuditEntry, StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        tx.open_table(ENROL_TOKENS)
            .map_err(be)?
            .insert(hash, encode(&record)?.as_slice())
            .map_err(be)?;
        let e = commit_audited(tx, audit, now)?;
        Ok(e)
    }

    fn enroll(
        &self,
        hash: &str,
        f: &mut dyn FnMut(&EnrolTokenRecord) -> Result<DeviceView, StoreError>,
        audit: AuditDraft,
        now: &str,
    ) -> Result<DeviceView, StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let token: EnrolTokenRecord = {
            let mut t = tx.open_table(ENROL_TOKENS).map_err(be)?;
            let removed = t.remove(hash).map_err(be)?;
            match removed {
                Some(v) => decode(v.value())?,
                None => {
                    return Err(StoreError::NotFound(
                        "enrolment token (unknown or already used)".into(),
                    ))
                }
            }
        };
        let device = f(&token)?;
        tx.open_table(DEVICES)
            .map_err(be)?
            .insert(device.id.as_str(), encode(&device)?.as_slice())
            .map_err(be)?;
        commit_audited(tx, audit, now)?;
        Ok(device)
    }

    fn device(&self, id: &str) -> Result<Option<DeviceView>, StoreError> {
        self.get_one(DEVICES, id)
    }

    fn devices(&self) -> Result<Vec<DeviceView>, StoreError> {
        self.get_all(DEVICES)
    }

    fn update_device(
        &self,
        id: &str,
        f: &mut dyn FnMut(&mut DeviceView) -> Result<(), StoreError>,
        audit: Option<AuditDraft>,
        now: &str,
    ) -> Result<DeviceView, StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let mut device: DeviceView = get_tx(&tx, DEVICES, id)?
            .ok_or_else(|| StoreError::NotFound(format!("device {id}")))?;
        f(&mut device)?;
        tx.open_table(DEVICES)
            .map_err(be)?
            .insert(id, encode(&device)?.as_slice())
            .map_err(be)?;
        if let Some(a) = audit {
            chain_audit(&tx, a, now)?;
        }
        tx.commit().map_err(be)?;
        Ok(device)
    }

    fn model(&self, name: &str) -> Result<Option<ModelView>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let models = tx.open_table(MODELS).map_err(be)?;
        let Some(rec) = models.get(name).map_err(be)? else {
            return Ok(None);
        };
        let rec: ModelRecord = decode(rec.value())?;
        let versions = Self::versions_in(&tx.open_table(VERSIONS).map_err(be)?, name)?;
        Ok(Some(Self::model_view(rec, &versions)))
    }

    fn models(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&ModelView, &[VersionView]) -> bool,
    ) -> Result<Vec<ModelView>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let models = tx.open_table(MODELS).map_err(be)?;
        let versions = tx.open_table(VERSIONS).map_err(be)?;
        let mut out = Vec::new();
        let range = match after {
            Some(a) => {
                models.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => models.range::<&str>(..),
        }
        .map_err(be)?;
        for item in range {
            let (_, v) = item.map_err(be)?;
            let rec: ModelRecord = decode(v.value())?;
            let vs = Self::versions_in(&versions, &rec.name)?;
            let view = Self::model_view(rec, &vs);
            if keep(&view, &vs) {
                out.push(view);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn versions(&self, name: &str) -> Result<Vec<VersionView>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        Self::versions_in(&tx.open_table(VERSIONS).map_err(be)?, name)
    }

    fn version(&self, name: &str, version: u64) -> Result<Option<VersionView>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(VERSIONS).map_err(be)?;
        let v = t.get((name, version)).map_err(be)?;
        v.map(|v| decode(v.value())).transpose()
    }

    fn manifest(&self, target: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(MANIFESTS).map_err(be)?;
        let v = t.get(target).map_err(be)?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    fn trust(&self) -> Result<Option<(TrustState, Publication)>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(TRUST).map_err(be)?;
        let v = t.get("current").map_err(be)?;
        Ok(match v {
            Some(v) => {
                let r: TrustRecord = decode(v.value())?;
                Some((
                    r.state,
                    Publication {
                        targets: r.targets,
                        snapshot: r.snapshot,
                        timestamp: r.timestamp,
                    },
                ))
            }
            None => None,
        })
    }

    fn append_audit(&self, audit: AuditDraft, now: &str) -> Result<AuditEntry, StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let e = commit_audited(tx, audit, now)?;
        Ok(e)
    }

    fn audit_after(&self, since: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(AUDIT).map_err(be)?;
        let mut out = Vec::new();
        for item in t.range(since.saturating_add(1)..).map_err(be)? {
            let (_, v) = item.map_err(be)?;
            out.push(decode(v.value())?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn audit_all(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_after(0, usize::MAX)
    }

    fn create_token(
        &self,
        hash: &str,
        record: TokenRecord,
        audit: AuditDraft,
        now: &str,
    ) -> Result<AuditEntry, StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        {
            let mut t = tx.open_table(TOKENS).map_err(be)?;
            for item in t.iter().map_err(be)? {
                let (_, v) = item.map_err(be)?;
                let existing: TokenRecord = decode(v.value())?;
                if existing.name == record.name {
                    return Err(StoreError::Conflict(format!(
                        "a token named {} already exists",
                        record.name
                    )));
                }
            }
            t.insert(hash, encode(&record)?.as_slice()).map_err(be)?;
        }
        let e = commit_audited(tx, audit, now)?;
        Ok(e)
    }

    fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.get_one(TOKENS, hash)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.get_all(TOKENS)
    }

    fn delete_token(
        &self,
        name: &str,
        audit: AuditDraft,
        now: &str,
    ) -> Result<AuditEntry, StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        {
            let mut t = tx.open_table(TOKENS).map_err(be)?;
            let mut found = None;
            for item in t.iter().map_err(be)? {
                let (k, v) = item.map_err(be)?;
                let rec: TokenRecord = decode(v.value())?;
                if rec.name == name {
                    found = Some(k.value().to_string());
                }
            }
            let Some(hash) = found else {
                return Err(StoreError::NotFound(format!("token {name}")));
            };
            t.remove(hash.as_str()).map_err(be)?;
        }
        let e = commit_audited(tx, audit, now)?;
        Ok(e)
    }

    fn put_upload(&self, record: &UploadRecord) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        tx.open_table(UPLOADS)
            .map_err(be)?
            .insert(record.id.as_str(), encode(record)?.as_slice())
            .map_err(be)?;
        tx.commit().map_err(be)
    }

    fn upload(&self, id: &str) -> Result<Option<UploadRecord>, StoreError> {
        self.get_one(UPLOADS, id)
    }

    fn delete_upload(&self, id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        tx.open_table(UPLOADS).map_err(be)?.remove(id).map_err(be)?;
        tx.commit().map_err(be)
    }

    fn uploads(&self) -> Result<Vec<UploadRecord>, StoreError> {
        self.get_all(UPLOADS)
    }

    fn chunk_refs(&self, digest: &[u8; 32]) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(CHUNK_REFS).map_err(be)?;
        let v = t.get(digest.as_slice()).map_err(be)?;
        Ok(v.map_or(0, |v| v.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{LineageBody, VersionStatus};
    use crate::store::Registration;
    use flotilla_protocol::tuf::Targets;

    fn view(name: &str, version: u64, referenced_by: Vec<String>) -> VersionView {
        VersionView {
            name: name.into(),
            version,
            status: VersionStatus::Active,
            description: String::new(),
            tags: Default::default(),
            metrics: Default::default(),
            lineage: LineageBody::default(),
            created_by: "t".into(),
            reason: String::new(),
            created_at: String::new(),
            file_name: "m.onnx".into(),
            size: 0,
            sha256: String::new(),
            chunks: 0,
            chunks_reused: 0,
            target: format!("models/{name}/{version}/manifest.cbor"),
            manifest_sha256: String::new(),
            inputs: vec![],
            outputs: vec![],
            has_drift_baseline: false,
            referenced_by,
        }
    }

    fn registration(v: VersionView) -> Registration {
        let t = Targets::new(1, flotilla_protocol::time::UtcTime(0));
        Registration {
            view: v,
            manifest: Vec::new(),
            trust: TrustState {
                targets: t,
                publication_version: 1,
            },
            publication: Publication {
                targets: vec![],
                snapshot: vec![],
                timestamp: vec![],
            },
            chunks: vec![[7u8; 32]],
        }
    }

    #[test]
    fn a_version_a_deployment_references_cannot_be_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("t.redb")).unwrap();
        let mut build = |v: u64, _: Option<&TrustState>| {
            Ok(registration(view("fraud", v, vec!["checkout/blue".into()])))
        };
        s.register(
            "fraud",
            &mut build,
            AuditDraft::new("a", "model.register", "model/fraud", ""),
            "t",
        )
        .unwrap();
        let mut republish = |st: &TrustState, _: &str| {
            Ok((
                st.clone(),
                Publication {
                    targets: vec![],
                    snapshot: vec![],
                    timestamp: vec![],
                },
            ))
        };
        let err = s
            .delete_version(
                "fraud",
                1,
                &mut republish,
                AuditDraft::new("a", "model.version.delete", "model/fraud/1", ""),
                "t",
            )
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("checkout/blue")),
            "{err}"
        );
        assert!(
            s.version("fraud", 1).unwrap().is_some(),
            "the refused delete changed nothing"
        );
        assert_eq!(s.chunk_refs(&[7u8; 32]).unwrap(), 1);
        assert_eq!(
            s.audit_all().unwrap().len(),
            1,
            "a refused mutation leaves no audit entry"
        );
    }

    #[test]
    fn a_failed_build_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("t.redb")).unwrap();
        let mut build = |_: u64, _: Option<&TrustState>| Err(StoreError::Rejected("no".into()));
        assert!(s
            .register("m", &mut build, AuditDraft::new("a", "x", "y", ""), "t")
            .is_err());
        assert!(s.model("m").unwrap().is_none());
        assert!(s.audit_all().unwrap().is_empty());
        let mut ok = |v: u64, _: Option<&TrustState>| Ok(registration(view("m", v, vec![])));
        let (v, e) = s
            .register("m", &mut ok, AuditDraft::new("a", "x", "y", ""), "t")
            .unwrap();
        assert_eq!(
            (v.version, e.seq),
            (1, 1),
            "the failed attempt used no version number"
        );
    }
}
