//! Device enrolment, labels, revocation and desired state, as registry
//! operations.

use std::collections::BTreeMap;

use flotilla_protocol::digest::Sha256Digest;
use flotilla_protocol::director::DirectorDocument;
use flotilla_protocol::tuf::{Envelope, Targets};

use super::ca::pem_to_der;
use crate::api::types::*;
use crate::audit::AuditDraft;
use crate::registry::endpoints::desired_state;
use crate::registry::{filter, Registry, RegistryError};
use crate::store::{EnrolTokenRecord, StoreError};

/// A device just enrolled, and its certificate.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The new device record.
    pub device: DeviceView,
    /// Its certificate (DER), signed by the device CA.
    pub cert_der: Vec<u8>,
}

/// Longest enrolment token lifetime.
pub const MAX_ENROL_TTL_SECS: u64 = 7 * 86_400;
/// Director document lifetime; agents need a fresh one before then.
pub const DIRECTOR_LIFETIME_SECS: i64 = 7 * 86_400;

impl Registry {
    /// Creates a one-time enrolment token.
    pub fn create_enrol_token(
        &self,
        actor: &str,
        req: CreateEnrolToken,
    ) -> Result<EnrolTokenView, RegistryError> {
        filter::check_tags(&req.labels)
            .map_err(|e| RegistryError::BadRequest(format!("labels: {e}")))?;
        if !(60..=MAX_ENROL_TTL_SECS).contains(&req.ttl_secs) {
            return Err(RegistryError::BadRequest(format!(
                "ttl_secs must be between 60 and {MAX_ENROL_TTL_SECS} (7 days)"
            )));
        }
        let token = crate::tokens::generate()
            .map_err(|_| RegistryError::Internal("random number generator failed".into()))?;
        let now = crate::now();
        let expires = now.plus_secs(req.ttl_secs as i64);
        let rec = EnrolTokenRecord {
            labels: req.labels.clone(),
            expires_at: expires.0,
            created_by: actor.into(),
        };
        let labels: Vec<String> = req.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.store().create_enrol_token(
            &crate::tokens::hash(&token),
            rec,
            AuditDraft::new(
                actor,
                "device.token.create",
                "device-token",
                &format!("labels {}", labels.join(",")),
            ),
            &now.to_string(),
        )?;
        Ok(EnrolTokenView {
            token,
            expires_at: expires.to_string(),
            labels: req.labels,
        })
    }

    /// Enrols a device: uses up its token and signs its CSR (PEM).
    pub fn enroll(
        &self,
        req: EnrolRequest,
        root_json: &[u8],
    ) -> Result<EnrolResponse, RegistryError> {
        let csr = pem_to_der(&req.csr_pem)
            .map_err(|e| RegistryError::BadRequest(format!("csr_pem: {e}")))?;
        let enrolled = self.enroll_der(&req.token, &csr)?;
        let ca = self.ca();
        Ok(EnrolResponse {
            device_id: enrolled.device.id,
            certificate_pem: super::ca::pem_encode("CERTIFICATE", &enrolled.cert_der),
            ca_pem: ca.cert_pem(),
            ca_fingerprint: ca.fingerprint(),
            root_json: String::from_utf8_lossy(root_json).into_owned(),
            labels: enrolled.device.labels,
        })
    }

    /// Enrols a device from a DER certificate signing request (the QUIC
    /// enrolment path): uses up the token, signs the CSR as a new device id,
    /// and makes the certificate acceptable at the very next handshake.
    /// An unknown, used or expired token is `Unauthorized`; a bad CSR is
    /// `BadRequest` and leaves the token unused.
    pub fn enroll_der(&self, token: &str, csr_der: &[u8]) -> Result<Enrolled, RegistryError> {
        let ca = self.ca();
        let suffix = crate::tokens::generate()
            .map_err(|_| RegistryError::Internal("random number generator failed".into()))?;
        let id = format!("dev-{}", &suffix[4..20]);
        let now = crate::now();
        let mut cert = Vec::new();
        let mut make = |t: &EnrolTokenRecord| -> Result<DeviceView, StoreError> {
            if t.expires_at <= now.0 {
                return Err(StoreError::Rejected(
                    "the enrolment token has expired; ask for a new one".into(),
                ));
            }
            cert = ca
                .sign_device_csr(csr_der, &id, now)
                .map_err(|e| StoreError::Rejected(e.to_string()))?;
            Ok(DeviceView {
                id: id.clone(),
                labels: t.labels.clone(),
                status: DeviceStatus::Active,
                enrolled_at: now.to_string(),
                cert_sha256: Sha256Digest::of(&cert).to_hex(),
                revoked_at: None,
                director_version: 0,
                director_digest: String::new(),
                connected: false,
                last_seen: None,
                agent_version: None,
                inventory: None,
                deployments: Vec::new(),
            })
        };
        let device = self
            .store()
            .enroll(
                &crate::tokens::hash(token),
                &mut make,
                AuditDraft::new(
                    &id,
                    "device.enroll",
                    format!("device/{id}"),
                    "enrolled with a one-time token",
                ),
                &now.to_string(),
            )
            .map_err(|e| match e {
                StoreError::NotFound(_) => {
                    RegistryError::Unauthorized("unknown or already used enrolment token".into())
                }
                other => other.into(),
            })?;
        self.device_certs().record(&device);
        self.emit(
            "device.enrolled",
            &format!("device/{id}"),
            &id,
            serde_json::json!({"labels": device.labels}),
        );
        Ok(Enrolled {
            device,
            cert_der: cert,
        })
    }

    /// One device.
    pub fn device(&self, id: &str) -> Result<DeviceView, RegistryError> {
        self.store()
            .device(id)?
            .ok_or_else(|| RegistryError::NotFound(format!("device {id} does not exist")))
    }

    /// All devices.
    pub fn devices(&self) -> Result<Vec<DeviceView>, RegistryError> {
        Ok(self.store().devices()?)
    }

    /// Sets and removes labels.
    pub fn update_labels(
        &self,
        actor: &str,
        id: &str,
        req: UpdateLabels,
    ) -> Result<DeviceView, RegistryError> {
        filter::check_tags(&req.set)
            .map_err(|e| RegistryError::BadRequest(format!("labels: {e}")))?;
        let mut change = |d: &mut DeviceView| {
            for k in &req.remove {
                d.labels.remove(k);
            }
            d.labels.extend(req.set.clone());
            filter::check_tags(&d.labels).map_err(StoreError::Rejected)
        };
        let d = self.store().update_device(
            id,
            &mut change,
            Some(AuditDraft::new(
                actor,
                "device.label",
                format!("device/{id}"),
                &req.reason,
            )),
            &crate::now().to_string(),
        )?;
        self.emit(
            "device.updated",
            &format!("device/{id}"),
            actor,
            serde_json::json!({"labels": d.labels}),
        );
        Ok(d)
    }

    /// Revokes a device: it is refused at its next handshake.
    pub fn revoke_device(
        &self,
        actor: &str,
        id: &str,
        reason: &str,
    ) -> Result<DeviceView, RegistryError> {
        let now = crate::now().to_string();
        let mut change = |d: &mut DeviceView| {
            d.status = DeviceStatus::Revoked;
            d.revoked_at.get_or_insert_with(|| now.clone());
            Ok(())
        };
        let d = self.store().update_device(
            id,
            &mut change,
            Some(AuditDraft::new(
                actor,
                "device.revoke",
                format!("device/{id}"),
                reason,
            )),
            &now,
        )?;
        self.device_certs().record(&d);
        self.emit(
            "device.revoked",
            &format!("device/{id}"),
            actor,
            serde_json::Value::Null,
        );
        Ok(d)
    }

    /// The device's signed director document: what it must run now. Its version
    /// grows whenever that content changes.
    pub fn director_for(&self, id: &str) -> Result<Vec<u8>, RegistryError> {
        let device = self.device(id)?;
        if device.status == DeviceStatus::Revoked {
            return Err(RegistryError::Conflict(format!("device {id} is revoked")));
        }
        let targets = self
            .store()
            .trust()?
            .map(|(s, _)| s.targets)
            .unwrap_or_else(|| Targets::new(0, crate::now()));
        let endpoints = desired_state(&self.store().endpoints()?, &device.labels, &targets)
            .map_err(RegistryError::Conflict)?;
        let digest = Sha256Digest::of(
            &serde_json::to_vec(&endpoints).map_err(|e| RegistryError::Internal(e.to_string()))?,
        )
        .to_hex();
        let device = if digest != device.director_digest {
            let mut bump = |d: &mut DeviceView| {
                if d.director_digest != digest {
                    d.director_version += 1;
                    d.director_digest = digest.clone();
                }
                Ok(())
            };
            self.store()
                .update_device(id, &mut bump, None, &crate::now().to_string())?
        } else {
            device
        };
        let now = crate::now();
        let doc = DirectorDocument::new(
            id,
            device.director_version,
            now.plus_secs(DIRECTOR_LIFETIME_SECS),
            endpoints,
        );
        Envelope::sign(&doc, &[&self.keys().director])
            .map_err(|e| RegistryError::Internal(e.to_string()))
    }
}

/// Labels as `k=v` strings, for display.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
