//! TLS 1.3 configurations on the ring provider, and the two verifiers that
//! make Flotilla's trust model:
//!
//! - The hub verifies device certificates against its device CA *and* asks the
//!   registry about each one ([`DeviceCheck`]): an unknown or revoked device is
//!   refused during the handshake. A client without a certificate is let
//!   through the handshake only to enrol; the hub refuses it on [`ALPN_SYNC`].
//! - An enrolling agent has no CA yet, only the SHA-256 fingerprint a
//!   technician typed: [`PinnedCa`] accepts the hub only when the chain it
//!   presents contains a CA certificate with exactly that fingerprint and the
//!   hub's certificate chains to it.
//!
//! After enrolment the agent verifies the hub against the stored CA with
//! rustls's standard WebPKI verifier.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::{NetError, ALPN_ENROL, ALPN_SYNC};

/// The ring provider: the only one Flotilla uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide default provider (harmless when one is
/// already installed).
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn tls(e: impl std::fmt::Display) -> NetError {
    NetError::Tls(e.to_string())
}

/// The registry's word on a device certificate the CA signed.
pub trait DeviceCheck: Send + Sync + std::fmt::Debug {
    /// `Ok` when the certificate (DER) belongs to an enrolled device in good
    /// standing; `Err(reason)` when it is unknown or revoked.
    fn check(&self, cert_der: &[u8]) -> Result<(), String>;
}

/// The largest UDP payload a QUIC endpoint may use while sending with
/// segmentation offload: quinn hands the kernel up to 10 packets of one size
/// in a single `sendmsg` (UDP GSO), and the kernel refuses a batch over
/// 64 KiB (`EMSGSIZE`), which quinn takes for a failed path-MTU probe.
/// With a larger bound, every probe past this size was silently dropped on
/// loopback and the connection fell back to 1200-byte packets; with this
/// bound it settles here, and a 1 GiB fetch over loopback needs about
/// 166,000 packets instead of 740,000 (docs/benchmarks.md, issue 4).
pub const MAX_GSO_UDP_PAYLOAD: u16 = 6500;

/// QUIC transport settings shared by both ends.
#[derive(Debug, Clone, Copy)]
pub struct TransportSettings {
    /// A connection with no packets for this long is dead.
    pub idle_timeout: Duration,
    /// Keep-alive interval (the agent sends them; NATs forget idle flows).
    pub keep_alive: Option<Duration>,
    /// Most bidirectional streams the peer may have open at once.
    pub max_bidi_streams: u32,
    /// Per-stream receive window, in bytes.
    pub stream_window: u32,
    /// Per-connection receive window, in bytes.
    pub connection_window: u32,
    /// Bytes a connection may have sent but not yet acknowledged. On the hub
    /// this is memory held per fetching agent (quinn keeps unacknowledged
    /// stream data); 8 MiB covers a 100 ms, 600 Mbit/s path.
    pub send_window: u32,
    /// Largest UDP payload path-MTU discovery may probe for; see
    /// [`MAX_GSO_UDP_PAYLOAD`] for why it is not larger. On Ethernet the
    /// probes above the path's MTU fail and the connection stays at what the
    /// path carries (about 1452).
    pub max_udp_payload: u16,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(5)),
            max_bidi_streams: 32,
            stream_window: 8 << 20,
            connection_window: 32 << 20,
            send_window: 8 << 20,
            max_udp_payload: MAX_GSO_UDP_PAYLOAD,
        }
    }
}

impl TransportSettings {
    fn build(&self) -> Result<quinn::TransportConfig, NetError> {
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(self.idle_timeout).map_err(tls)?,
        ));
        t.keep_alive_interval(self.keep_alive);
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(self.max_bidi_streams));
        t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
        t.stream_receive_window(quinn::VarInt::from_u32(self.stream_window));
        t.receive_window(quinn::VarInt::from_u32(self.connection_window));
        t.send_window(u64::from(self.send_window));
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.max_udp_payload);
        t.mtu_discovery_config(Some(mtu));
        Ok(t)
    }
}

/// The hub's identity on QUIC: its certificate chain (leaf first, then the
/// device CA, so enrolling agents can check their pin) and key.
#[derive(Debug)]
pub struct HubIdentity {
    /// Leaf certificate, then the CA certificate.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// The device CA certificate devices chain to.
    pub ca: CertificateDer<'static>,
}

/// The hub's QUIC server configuration.
pub fn server_config(
    id: HubIdentity,
    devices: Arc<dyn DeviceCheck>,
    settings: &TransportSettings,
) -> Result<quinn::ServerConfig, NetError> {
    let provider = provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(id.ca.clone()).map_err(tls)?;
    let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(tls)?;
    let verifier = Arc::new(DeviceVerifier { inner, devices });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain, id.key)
        .map_err(tls)?;
    cfg.alpn_protocols = vec![ALPN_SYNC.to_vec(), ALPN_ENROL.to_vec()];
    cfg.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg).map_err(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(settings.build()?));
    Ok(server)
}

/// The agent's sync client configuration: it presents its device certificate
/// and trusts only the device CA it stored at enrolment.
pub fn sync_client_config(
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    settings: &TransportSettings,
) -> Result<quinn::ClientConfig, NetError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(tls)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(tls)?;
    cfg.alpn_protocols = vec![ALPN_SYNC.to_vec()];
    client(cfg, settings)
}

/// The agent's MQTT client configuration for a TLS broker: it presents its
/// device certificate (the broker maps its common name, the device id, to the
/// MQTT user name) and trusts the broker certificates issued by `roots`.
/// TLS 1.2 and 1.3: brokers such as Mosquitto offer both.
pub fn mqtt_client_config(
    roots: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ClientConfig, NetError> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r).map_err(tls)?;
    }
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_root_certificates(store)
        .with_client_auth_cert(chain, key)
        .map_err(tls)
}

/// The enrolling agent's client configuration: no client certificate, and the
/// hub accepted only if it chains to a CA with SHA-256 fingerprint `pin`.
pub fn enrol_client_config(
    pin: [u8; 32],
    settings: &TransportSettings,
) -> Result<quinn::ClientConfig, NetError> {
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa { pin, provider }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_ENROL.to_vec()];
    client(cfg, settings)
}

fn client(
    cfg: rustls::ClientConfig,
    settings: &TransportSettings,
) -> Result<quinn::ClientConfig, NetError> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).map_err(tls)?;
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(Arc::new(settings.build()?));
    Ok(c)
}

/// The device certificate the peer presented on `conn`, if any.
pub fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().cloned()
}

/// The ALPN protocol negotiated on `conn`.
pub fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let data = conn.handshake_data()?;
    let hd = data
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    hd.protocol
}

/// WebPKI against the device CA, then the registry's check.
#[derive(Debug)]
struct DeviceVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    devices: Arc<dyn DeviceCheck>,
}

impl ClientCertVerifier for DeviceVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // Enrolling agents have no certificate yet; the hub refuses them on
        // every ALPN but the enrolment one.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match self.devices.check(end_entity.as_ref()) {
            Ok(()) => Ok(ok),
            Err(reason) => {
                tracing::info!(%reason, "device certificate refused at handshake");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts a server whose chain holds a CA certificate with SHA-256 `pin` and
/// whose leaf chains to that CA for [`crate::HUB_SERVER_NAME`].
#[derive(Debug)]
pub struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| ring::digest::digest(&ring::digest::SHA256, c.as_ref()).as_ref() == self.pin)
            .ok_or_else(|| {
                rustls::Error::General("the hub's CA does not match the pinned fingerprint".into())
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA certificate: {e}")))?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
