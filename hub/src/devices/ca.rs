//! The hub's device certificate authority (rcgen on ring).
//!
//! The CA key never leaves the hub's data directory (`DATA/ca/ca-key.pem`, 0600);
//! its certificate (`DATA/ca/ca.pem`) is what technicians pin by SHA-256
//! fingerprint. Device keys are generated on the device; the hub only signs
//! their certificate signing requests, with the device id it assigned as the
//! subject common name (whatever the request asked for).

use std::path::Path;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::CertificateSigningRequestDer;

use flotilla_protocol::digest::Sha256Digest;
use flotilla_protocol::time::UtcTime;

/// Why the CA could not be loaded or could not sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A CA file could not be read or written.
    #[error("device CA file {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// Certificate generation or parsing failed.
    #[error("device CA: {0}")]
    Cert(String),
    /// The certificate signing request is malformed or badly signed.
    #[error("certificate signing request rejected: {0}")]
    BadCsr(String),
}

fn cert_err(e: rcgen::Error) -> CaError {
    CaError::Cert(e.to_string())
}

/// Device certificate lifetime.
pub const DEVICE_CERT_DAYS: i64 = 365;

/// Lifetime of the hub's own QUIC certificate. Its key is new at every start
/// and never stored, so the certificate lives as long as one hub process may.
pub const HUB_CERT_DAYS: i64 = 5 * 365;

/// The hub's QUIC identity: a leaf certificate signed by the device CA and
/// its private key (PKCS#8), both DER.
pub struct HubCertificate {
    /// The leaf certificate (DER).
    pub cert_der: Vec<u8>,
    /// Its private key (PKCS#8 DER). Held in memory only.
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for HubCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubCertificate")
            .field("cert_sha256", &Sha256Digest::of(&self.cert_der).to_hex())
            .finish_non_exhaustive()
    }
}

/// The device CA.
pub struct DeviceCa {
    key: KeyPair,
    // The CA certificate as distributed (its fingerprint is pinned).
    der: Vec<u8>,
    // Issuer used for signing: same subject and key as `der`.
    issuer: Certificate,
}

impl std::fmt::Debug for DeviceCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

fn ca_params() -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Flotilla device CA");
    dn.push(DnType::OrganizationName, "Flotilla fleet");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

fn ymd(t: UtcTime) -> (i32, u8, u8) {
    let s = t.to_string();
    let n = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok()).unwrap_or(1);
    (n(0..4) as i32, n(5..7) as u8, n(8..10) as u8)
}

impl DeviceCa {
    /// Loads the CA from `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let io = |p: &Path, e: std::io::Error| CaError::Io {
            path: p.display().to_string(),
            reason: e.to_string(),
        };
        let key_path = dir.join("ca-key.pem");
        let cert_path = dir.join("ca.pem");
        if !key_path.exists() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            let key = KeyPair::generate().map_err(cert_err)?;
            let cert = ca_params()?.self_signed(&key).map_err(cert_err)?;
            crate::keystore::write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)
                .map_err(|e| CaError::Io {
                    path: key_path.display().to_string(),
                    reason: e.to_string(),
                })?;
            crate::keystore::write_atomic(&cert_path, cert.pem().as_bytes(), 0o644).map_err(
                |e| CaError::Io {
                    path: cert_path.display().to_string(),
                    reason: e.to_string(),
                },
            )?;
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| io(&key_path, e))?;
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| io(&cert_path, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(cert_err)?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem).map_err(cert_err)?;
        let der = pem_to_der(&cert_pem)?;
        let issuer = params.self_signed(&key).map_err(cert_err)?;
        Ok(Self { key, der, issuer })
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.der
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex: what technicians pin.
    pub fn fingerprint(&self) -> String {
        Sha256Digest::of(&self.der).to_hex()
    }

    /// Signs a device's CSR (DER) as `device_id`, valid from `now` for
    /// [`DEVICE_CERT_DAYS`]. The subject is replaced by the device id.
    pub fn sign_device_csr(
        &self,
        csr_der: &[u8],
        device_id: &str,
        now: UtcTime,
    ) -> Result<Vec<u8>, CaError> {
        let csr = CertificateSigningRequestDer::from(csr_der.to_vec());
        let mut req = CertificateSigningRequestParams::from_der(&csr)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device_id);
        req.params.distinguished_name = dn;
        req.params.subject_alt_names = Vec::new();
        req.params.is_ca = IsCa::ExplicitNoCa;
        req.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        req.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (y, m, d) = ymd(now.plus_secs(-86_400));
        req.params.not_before = rcgen::date_time_ymd(y, m, d);
        let (y, m, d) = ymd(now.plus_secs(DEVICE_CERT_DAYS * 86_400));
        req.params.not_after = rcgen::date_time_ymd(y, m, d);
        let cert = req.signed_by(&self.issuer, &self.key).map_err(cert_err)?;
        Ok(cert.der().to_vec())
    }

    /// Issues the hub's own QUIC server certificate with a fresh key: subject
    /// alternative names [`flotilla_net::HUB_SERVER_NAME`] (what agents verify)
    /// plus `names` (DNS names or IP addresses), extended key usage serverAuth,
    /// valid from a day before `now` for [`HUB_CERT_DAYS`].
    pub fn issue_hub_cert(
        &self,
        names: &[String],
        now: UtcTime,
    ) -> Result<HubCertificate, CaError> {
        let mut sans = vec![flotilla_net::HUB_SERVER_NAME.to_string()];
        sans.extend(
            names
                .iter()
                .filter(|n| n.as_str() != flotilla_net::HUB_SERVER_NAME)
                .cloned(),
        );
        let mut p = CertificateParams::new(sans).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, flotilla_net::HUB_SERVER_NAME);
        dn.push(DnType::OrganizationName, "Flotilla fleet");
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let (y, m, d) = ymd(now.plus_secs(-86_400));
        p.not_before = rcgen::date_time_ymd(y, m, d);
        let (y, m, d) = ymd(now.plus_secs(HUB_CERT_DAYS * 86_400));
        p.not_after = rcgen::date_time_ymd(y, m, d);
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = p
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(cert_err)?;
        Ok(HubCertificate {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }
}

/// PEM armour.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// The first PEM block's bytes.
pub fn pem_to_der(text: &str) -> Result<Vec<u8>, CaError> {
    pem::parse(text)
        .map(|p| p.into_contents())
        .map_err(|e| CaError::Cert(format!("bad PEM: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(cn: &str) -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let req = p.serialize_request(&key).unwrap();
        (key, req.der().to_vec())
    }

    #[test]
    fn the_ca_survives_a_restart_with_the_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceCa::load_or_create(dir.path()).unwrap();
        let b = DeviceCa::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("ca-key.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_hub_certificate_names_the_fixed_server_name_and_is_fresh_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DeviceCa::load_or_create(dir.path()).unwrap();
        let names = vec!["hub.example".to_string(), "10.0.0.7".to_string()];
        let a = ca.issue_hub_cert(&names, UtcTime(1_900_000_000)).unwrap();
        let b = ca.issue_hub_cert(&[], UtcTime(1_900_000_000)).unwrap();
        assert_ne!(a.key_der, b.key_der, "a fresh key every start");
        let params = CertificateParams::from_ca_cert_der(&a.cert_der.clone().into()).unwrap();
        let sans = format!("{:?}", params.subject_alt_names);
        for n in ["flotilla-hub", "hub.example", "10.0.0.7"] {
            assert!(sans.contains(n), "{n} missing from {sans}");
        }
        assert!(
            !format!("{a:?}").contains("key_der"),
            "Debug never shows the key"
        );
    }

    #[test]
    fn a_signed_device_certificate_names_the_assigned_id_not_the_requested_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DeviceCa::load_or_create(dir.path()).unwrap();
        let (_, req) = csr("i-am-the-hub");
        let der = ca
            .sign_device_csr(&req, "dev-0123", UtcTime(1_900_000_000))
            .unwrap();
        let params = CertificateParams::from_ca_cert_der(&der.clone().into()).unwrap();
        let cn = params.distinguished_name.get(&DnType::CommonName).unwrap();
        assert!(
            matches!(cn, rcgen::DnValue::Utf8String(s) if s == "dev-0123")
                || format!("{cn:?}").contains("dev-0123")
        );
        assert!(ca
            .sign_device_csr(b"not a csr", "dev-1", UtcTime(0))
            .is_err());
        let mut tampered = req.clone();
        let last = tampered.len() - 5;
        tampered[last] ^= 1;
        assert!(
            ca.sign_device_csr(&tampered, "dev-1", UtcTime(0)).is_err(),
            "a CSR with a broken signature is refused"
        );
    }
}
