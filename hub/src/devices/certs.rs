//! The registry's answer at every QUIC handshake: is this device certificate
//! one the hub issued to a device still in good standing?
//!
//! Design: an in-memory map from certificate SHA-256 to device, loaded from the
//! store at start and changed by the registry in the same call that enrols or
//! revokes (not through an event), so a revocation holds from the very next
//! handshake. Revoked devices stay in the map, marked, so that a revoked
//! certificate is named as such in logs and never looked up again.
//!
//! It does not close live connections of a revoked device; the sync server
//! does that on the `device.revoked` event.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use flotilla_protocol::digest::Sha256Digest;

use crate::api::types::{DeviceStatus, DeviceView};

/// What the map knows about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CertEntry {
    device_id: String,
    revoked: bool,
}

#[derive(Debug, Default)]
struct Maps {
    // Key: SHA-256 of the certificate DER, lowercase hex (`DeviceView::cert_sha256`).
    by_cert: HashMap<String, CertEntry>,
    // invariant: exactly the device ids of the revoked entries of `by_cert`.
    revoked: HashSet<String>,
}

impl Maps {
    fn insert(&mut self, d: &DeviceView) {
        let revoked = d.status == DeviceStatus::Revoked;
        if revoked {
            self.revoked.insert(d.id.clone());
        } else {
            self.revoked.remove(&d.id);
        }
        self.by_cert.insert(
            d.cert_sha256.clone(),
            CertEntry {
                device_id: d.id.clone(),
                revoked,
            },
        );
    }
}

/// Certificate fingerprint → device, for handshakes.
#[derive(Debug, Default)]
pub struct DeviceCerts {
    maps: RwLock<Maps>,
}

impl DeviceCerts {
    /// Replaces the map with `devices`.
    pub fn load(&self, devices: &[DeviceView]) {
        let mut maps = Maps::default();
        for d in devices {
            maps.insert(d);
        }
        *self.write() = maps;
    }

    /// Records one device as it is now (after enrolment or revocation).
    pub fn record(&self, device: &DeviceView) {
        self.write().insert(device);
    }

    /// The device a certificate (DER) belongs to, if that device is active.
    pub fn active_device(&self, cert_der: &[u8]) -> Result<String, String> {
        let fp = Sha256Digest::of(cert_der).to_hex();
        match self.read().by_cert.get(&fp) {
            Some(e) if !e.revoked => Ok(e.device_id.clone()),
            Some(e) => Err(format!("device {} is revoked", e.device_id)),
            None => Err(format!("certificate {fp} belongs to no enrolled device")),
        }
    }

    /// Whether `device_id` is known and revoked.
    pub fn is_revoked(&self, device_id: &str) -> bool {
        self.read().revoked.contains(device_id)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        // A panic while holding the lock cannot leave the maps half-written:
        // nothing in `Maps::insert` panics between its two updates.
        self.maps.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl flotilla_net::tls::DeviceCheck for DeviceCerts {
    fn check(&self, cert_der: &[u8]) -> Result<(), String> {
        self.active_device(cert_der).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_net::tls::DeviceCheck;

    fn device(id: &str, cert: &[u8], status: DeviceStatus) -> DeviceView {
        DeviceView {
            id: id.into(),
            labels: Default::default(),
            status,
            enrolled_at: String::new(),
            cert_sha256: Sha256Digest::of(cert).to_hex(),
            revoked_at: None,
            director_version: 0,
            director_digest: String::new(),
            connected: false,
            last_seen: None,
            agent_version: None,
            inventory: None,
            deployments: Vec::new(),
        }
    }

    #[test]
    fn only_certificates_of_active_devices_pass_and_revocation_is_immediate() {
        let certs = DeviceCerts::default();
        certs.load(&[
            device("dev-a", b"cert-a", DeviceStatus::Active),
            device("dev-b", b"cert-b", DeviceStatus::Revoked),
        ]);
        assert_eq!(certs.active_device(b"cert-a").unwrap(), "dev-a");
        assert!(certs.check(b"cert-b").unwrap_err().contains("revoked"));
        assert!(certs.check(b"cert-c").is_err(), "unknown certificate");
        certs.record(&device("dev-a", b"cert-a", DeviceStatus::Revoked));
        assert!(certs.check(b"cert-a").is_err());
        assert!(certs.is_revoked("dev-a"));
        certs.record(&device("dev-c", b"cert-c", DeviceStatus::Active));
        assert!(
            certs.check(b"cert-c").is_ok(),
            "a new enrolment passes at once"
        );
    }
}
