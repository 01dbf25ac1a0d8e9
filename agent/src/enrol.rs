//! `flotilla-agent enroll`: trade a one-time token for a device certificate.
//!
//! The device key is generated here and never leaves the node: only a
//! certificate signing request travels. The hub is trusted only if the CA in
//! its certificate chain has the SHA-256 fingerprint the technician typed
//! (`--hub-ca-fingerprint`, from `flotilla hub info`); the TUF root that arrives
//! over that pinned channel becomes the agent's pinned root. Enrolment leaves a
//! complete `agent.toml` so that `flotilla-agent run --data-dir DIR` needs
//! nothing more.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_net::tls::{enrol_client_config, TransportSettings};
use flotilla_net::{framed, HUB_SERVER_NAME};
use flotilla_protocol::limits::Limits;
use flotilla_protocol::tuf::TrustedSet;
use flotilla_protocol::wire::{ByteBuf, EnrolFrame};

use crate::config::{
    resolve, AgentConfig, DataFiles, HubSection, ServeSection, SyncSection, TelemetrySection,
};

/// How long enrolment waits for the hub.
pub const ENROL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why enrolment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrolError {
    /// Bad arguments (fingerprint, address) or an already enrolled data dir.
    #[error("{0}")]
    Usage(String),
    /// The hub could not be reached, or the connection failed.
    #[error("cannot reach the hub at {addr}: {reason}")]
    Unreachable {
        /// The address dialled.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The hub's certificate does not chain to the pinned CA.
    #[error("the hub at {addr} is not the one pinned: {reason}")]
    Untrusted {
        /// The address dialled.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The hub refused the token or the request.
    #[error("the hub refused enrolment: {0}")]
    Refused(String),
    /// The hub's answer does not hold together.
    #[error("bad enrolment answer from the hub: {0}")]
    BadAnswer(String),
    /// Files could not be written.
    #[error("writing {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// What `enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrolOptions {
    /// Data directory to create or fill.
    pub data_dir: PathBuf,
    /// The hub's QUIC address, `HOST:PORT`.
    pub hub: String,
    /// The one-time token.
    pub token: String,
    /// SHA-256 of the hub's device CA certificate, hex (colons allowed).
    pub fingerprint: String,
    /// Replace an existing enrolment in `data_dir`.
    pub force: bool,
}

/// The result of a successful enrolment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Enrolled {
    /// The device id the hub assigned.
    pub device_id: String,
    /// Labels the token gave.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The configuration file written.
    pub config: PathBuf,
    /// The pinned TUF root version.
    pub root_version: u64,
}

/// Parses a fingerprint: 64 hex digits, optionally separated by colons.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], EnrolError> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(hex.trim()).map_err(|_| {
        EnrolError::Usage(format!(
            "--hub-ca-fingerprint {s:?} is not hex (expected the 64 hex digits `flotilla hub info` prints)"
        ))
    })?;
    bytes.try_into().map_err(|_| {
        EnrolError::Usage(
            "--hub-ca-fingerprint must be a SHA-256: 64 hex digits, as `flotilla hub info` prints"
                .into(),
        )
    })
}

/// Enrols this node.
pub async fn enrol(opts: &EnrolOptions) -> Result<Enrolled, EnrolError> {
    let pin = parse_fingerprint(&opts.fingerprint)?;
    let files = DataFiles::new(&opts.data_dir);
    if files.cert().exists() && !opts.force {
        return Err(EnrolError::Usage(format!(
            "{} is already enrolled (remove it or pass --force to enrol again)",
            opts.data_dir.display()
        )));
    }
    let unreachable = |reason: String| EnrolError::Unreachable {
        addr: opts.hub.clone(),
        reason,
    };
    let addr = resolve(&opts.hub)
        .await
        .map_err(|e| EnrolError::Usage(e.to_string()))?;

    let key = rcgen::KeyPair::generate().map_err(|e| EnrolError::Usage(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| EnrolError::Usage(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "flotilla-device");
    let csr = params
        .serialize_request(&key)
        .map_err(|e| EnrolError::Usage(e.to_string()))?;

    flotilla_net::tls::install_default_provider();
    let config = enrol_client_config(pin, &TransportSettings::default())
        .map_err(|e| EnrolError::Usage(e.to_string()))?;
    let bind: std::net::SocketAddr = if addr.is_ipv6() {
        "[::]:0"
            .parse()
            .map_err(|_| unreachable("bad bind".into()))?
    } else {
        "0.0.0.0:0"
            .parse()
            .map_err(|_| unreachable("bad bind".into()))?
    };
    let endpoint =
        flotilla_net::udp::endpoint(bind, None).map_err(|e| unreachable(e.to_string()))?;
    let answer = tokio::time::timeout(ENROL_TIMEOUT, async {
        let conn = endpoint
            .connect_with(config, addr, HUB_SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?
            .await
            .map_err(|e| classify(e, &opts.hub))?;
        let limits = Limits::default();
        let bi = conn
            .open_bi()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut tx, mut rx) = framed::split::<EnrolFrame, EnrolFrame>(
            bi,
            limits.max_agent_frame_bytes,
            limits.max_control_frame_bytes,
            limits,
        );
        tx.send(&EnrolFrame::Request {
            token: opts.token.trim().to_string(),
            csr_der: ByteBuf(csr.der().to_vec()),
            agent_version: env!("CARGO_PKG_VERSION").into(),
        })
        .await
        .map_err(|e| unreachable(e.to_string()))?;
        tx.finish();
        let answer = rx
            .next()
            .await
            .map_err(|e| EnrolError::BadAnswer(e.to_string()))?
            .ok_or_else(|| EnrolError::BadAnswer("the hub closed the stream".into()))?;
        conn.close(quinn::VarInt::from_u32(flotilla_net::close::NORMAL), b"");
        Ok::<_, EnrolError>(answer)
    })
    .await
    .map_err(|_| unreachable(format!("no answer within {}s", ENROL_TIMEOUT.as_secs())))??;
    endpoint.wait_idle().await;

    let (device_id, cert, ca, root, labels, hint) = match answer {
        EnrolFrame::Accepted {
            device_id,
            certificate_der,
            ca_der,
            root_json,
            labels,
            telemetry,
        } => (
            device_id,
            certificate_der,
            ca_der,
            root_json,
            labels,
            telemetry,
        ),
        EnrolFrame::Refused { reason } => return Err(EnrolError::Refused(reason)),
        other => return Err(EnrolError::BadAnswer(format!("unexpected frame {other:?}"))),
    };
    if ring::digest::digest(&ring::digest::SHA256, ca.as_slice()).as_ref() != pin {
        return Err(EnrolError::BadAnswer(
            "the CA certificate sent does not match the pinned fingerprint".into(),
        ));
    }
    let trusted = TrustedSet::from_trusted_root(root.as_slice(), &Limits::default())
        .map_err(|e| EnrolError::BadAnswer(format!("root.json: {e}")))?;
    if device_id.is_empty()
        || !device_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(EnrolError::BadAnswer(format!(
            "device id {device_id:?} is not a plain name"
        )));
    }
    // The certificate must be for our key: a client config refuses a mismatch.
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    flotilla_net::tls::sync_client_config(
        ca.0.clone().into(),
        vec![cert.0.clone().into()],
        key_der,
        &TransportSettings::default(),
    )
    .map_err(|e| EnrolError::BadAnswer(format!("device certificate: {e}")))?;

    write_files(
        &files,
        &key.serialize_pem(),
        &pem_encode("CERTIFICATE", cert.as_slice()),
        &pem_encode("CERTIFICATE", ca.as_slice()),
        root.as_slice(),
    )?;
    let config = AgentConfig {
        data_dir: opts.data_dir.clone(),
        device_id: device_id.clone(),
        hub: HubSection {
            addr: opts.hub.clone(),
        },
        sync: SyncSection::default(),
        serve: ServeSection::default(),
        telemetry: match hint {
            Some(h) => TelemetrySection {
                mqtt: Some(broker_addr(&h.mqtt_addr, &opts.hub)),
                fleet: h.fleet,
                tls: h.tls,
                ..TelemetrySection::default()
            },
            None => TelemetrySection::default(),
        },
    };
    write(&files.config(), config.to_toml().as_bytes(), 0o644)?;
    Ok(Enrolled {
        device_id,
        labels,
        config: files.config(),
        root_version: trusted.root().body.version,
    })
}

/// The broker address to dial: the hub's answer, with an unspecified host
/// (`0.0.0.0`, `[::]`: a broker listening everywhere) replaced by the host the
/// agent reached the hub at.
fn broker_addr(mqtt: &str, hub: &str) -> String {
    let Some((host, port)) = mqtt.rsplit_once(':') else {
        return mqtt.to_owned();
    };
    let unspecified = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    match (unspecified, hub.rsplit_once(':')) {
        (true, Some((hub_host, _))) => format!("{hub_host}:{port}"),
        _ => mqtt.to_owned(),
    }
}

fn classify(e: quinn::ConnectionError, addr: &str) -> EnrolError {
    let text = e.to_string();
    if text.contains("pinned fingerprint") || text.contains("certificate") {
        EnrolError::Untrusted {
            addr: addr.into(),
            reason: text,
        }
    } else {
        EnrolError::Unreachable {
            addr: addr.into(),
            reason: text,
        }
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

fn write_files(
    files: &DataFiles,
    key_pem: &str,
    cert_pem: &str,
    ca_pem: &str,
    root: &[u8],
) -> Result<(), EnrolError> {
    let dir = files.dir();
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    set_mode(dir, 0o700)?;
    write(&files.key(), key_pem.as_bytes(), 0o600)?;
    write(&files.cert(), cert_pem.as_bytes(), 0o644)?;
    write(&files.hub_ca(), ca_pem.as_bytes(), 0o644)?;
    write(&files.root(), root, 0o644)?;
    Ok(())
}

fn io(path: &Path, e: std::io::Error) -> EnrolError {
    EnrolError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), EnrolError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| io(path, e))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename) with `mode`.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), EnrolError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    set_mode(&tmp, mode)?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons_and_bad_ones_are_named() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&hex).unwrap(), [0xab; 32]);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons).unwrap(), [0xab; 32]);
        assert!(parse_fingerprint("abcd")
            .unwrap_err()
            .to_string()
            .contains("64 hex digits"));
        assert!(parse_fingerprint("zz").is_err());
    }

    #[test]
    fn a_broker_listening_everywhere_is_dialled_at_the_hubs_host() {
        assert_eq!(
            broker_addr("0.0.0.0:1884", "hub.example:7443"),
            "hub.example:1884"
        );
        assert_eq!(broker_addr("[::]:1884", "10.0.0.2:7443"), "10.0.0.2:1884");
        assert_eq!(
            broker_addr("127.0.0.1:1884", "hub.example:7443"),
            "127.0.0.1:1884"
        );
        assert_eq!(
            broker_addr("mqtt.example:8883", "hub:1"),
            "mqtt.example:8883"
        );
    }
}
