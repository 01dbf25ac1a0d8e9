//! The hub's QUIC endpoint: enrolment and sync with agents.
//!
//! One UDP port serves two kinds of connection, told apart by ALPN:
//! [`flotilla_net::ALPN_ENROL`] (no client certificate; one token + CSR, one
//! answer) and [`flotilla_net::ALPN_SYNC`] (mutual TLS with a device
//! certificate the registry still accepts). On a sync connection the agent's
//! first bidirectional stream is the control stream (hello, then pushed
//! metadata, status reports, pings); every later one is a chunk stream.
//!
//! This module owns sockets, tasks and limits; what to push is decided by
//! [`metadata::Planner`] (sans-IO), what a device may connect with by
//! [`crate::devices::certs`], and what it runs by the registry's director
//! documents. It does not verify anything the agent sends beyond frame limits:
//! statuses are reports, not commands.
//!
//! # Layout
//! - [`faults`]: test-only fault injection (`FLOTILLA_TEST_FAULTS`).
//! - `metadata`: which `MetadataUpdate` to push, and when.
//! - `feed`: the hub-wide trust cache and change notifications.
//! - `sessions`: live connections per device (revocation, replacement).
//! - `enrol`, `control`, `chunks`: the three kinds of stream.

mod attempts;
mod chunks;
mod control;
mod enrol;
pub mod faults;
mod feed;
mod metadata;
mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_net::tls::{HubIdentity, TransportSettings};
use flotilla_net::{close, Bandwidth, ALPN_ENROL, ALPN_SYNC};
use flotilla_protocol::limits::Limits;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::config::SyncConfig;
use crate::registry::Registry;
use faults::{FaultSpec, Faults};
use feed::Feed;
use sessions::Sessions;

pub use feed::TRUST_RECHECK;
pub use metadata::DIRECTOR_REFRESH_SECS;

/// How long a shut-down hub waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Why the QUIC endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The hub's certificate could not be issued.
    #[error("hub certificate: {0}")]
    Certificate(#[from] crate::devices::ca::CaError),
    /// The TLS configuration was refused.
    #[error("QUIC configuration: {0}")]
    Transport(#[from] flotilla_net::NetError),
    /// The UDP socket could not be bound.
    #[error("binding QUIC to {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Device records could not be read.
    #[error("reading devices: {0}")]
    Registry(#[from] crate::registry::RegistryError),
}

/// Per-connection settings, from `[sync]`.
#[derive(Debug, Clone, Copy)]
struct Timing {
    hello_timeout: Duration,
    stall_timeout: Duration,
    connection_bandwidth: u64,
    max_streams: u32,
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    registry: Arc<Registry>,
    roots: Arc<Vec<(u64, Vec<u8>)>>,
    limits: Limits,
    timing: Timing,
    bandwidth: Bandwidth,
    sessions: Sessions,
    // For reading the current trust; sessions clone it to watch changes.
    feed: watch::Receiver<Feed>,
    faults: Faults,
    /// What enrolment tells a new device about telemetry.
    telemetry: Option<flotilla_protocol::wire::enrol::TelemetryHint>,
    /// Refused enrolments per source address.
    enrol_failures: attempts::FailedAttempts,
}

/// The QUIC endpoint, bound and ready to serve.
#[derive(Debug)]
pub struct SyncServer {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    advertise: String,
    max_connections: usize,
    shared: Arc<Shared>,
    feed_tx: watch::Sender<Feed>,
}

impl SyncServer {
    /// Issues the hub's certificate (fresh key), builds the TLS configuration
    /// around the registry's device check, and binds `config.listen`.
    pub fn bind(
        config: &SyncConfig,
        faults: FaultSpec,
        registry: Arc<Registry>,
        roots: Arc<Vec<(u64, Vec<u8>)>>,
        telemetry: Option<flotilla_protocol::wire::enrol::TelemetryHint>,
    ) -> Result<Self, SyncError> {
        flotilla_net::tls::install_default_provider();
        if faults.any() {
            tracing::warn!(%faults, "TEST FAULTS ENABLED: this hub corrupts what it sends on purpose");
            eprintln!(
                "WARNING: FLOTILLA_TEST_FAULTS={faults}: this hub deliberately corrupts what it sends. Never use it outside tests."
            );
        }
        let ca = registry.ca();
        let leaf = ca.issue_hub_cert(&config.cert_names, crate::now())?;
        let identity = HubIdentity {
            chain: vec![
                CertificateDer::from(leaf.cert_der.clone()),
                CertificateDer::from(ca.cert_der().to_vec()),
            ],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
            ca: CertificateDer::from(ca.cert_der().to_vec()),
        };
        let transport = TransportSettings::default();
        let server = flotilla_net::tls::server_config(
            identity,
            registry.device_certs().clone(),
            &transport,
        )?;
        let endpoint =
            flotilla_net::udp::endpoint(config.listen, Some(server)).map_err(|source| {
                SyncError::Bind {
                    addr: config.listen,
                    source,
                }
            })?;
        let addr = endpoint.local_addr().map_err(|source| SyncError::Bind {
            addr: config.listen,
            source,
        })?;
        let trust = feed::load_trust(&registry)?.map(Arc::new);
        let (feed_tx, feed_rx) = watch::channel(Feed {
            generation: 0,
            trust,
        });
        let shared = Arc::new(Shared {
            registry,
            roots,
            limits: Limits::default(),
            timing: Timing {
                hello_timeout: config.hello_timeout,
                stall_timeout: config.stall_timeout,
                connection_bandwidth: config.connection_bandwidth_bytes_per_sec,
                max_streams: transport.max_bidi_streams,
            },
            bandwidth: Bandwidth::new(config.bandwidth_bytes_per_sec),
            sessions: Sessions::default(),
            feed: feed_rx,
            faults: Faults::new(faults),
            telemetry,
            enrol_failures: attempts::FailedAttempts::default(),
        });
        Ok(Self {
            endpoint,
            addr,
            advertise: config.advertise.clone().unwrap_or_else(|| addr.to_string()),
            max_connections: config.max_connections,
            shared,
            feed_tx,
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address agents are told to dial.
    pub fn advertised(&self) -> &str {
        &self.advertise
    }

    /// Accepts connections until `shutdown` turns true (or its sender is
    /// dropped), then closes every connection with `SHUTDOWN`.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(addr = %self.addr, "QUIC sync listening");
        let feed = tokio::spawn(feed::run(
            self.shared.clone(),
            self.feed_tx,
            self.shared.registry.events().subscribe(),
            shutdown.clone(),
        ));
        let slots = Arc::new(Semaphore::new(self.max_connections));
        loop {
            tokio::select! {
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(
                            remote = %incoming.remote_address(),
                            limit = self.max_connections,
                            "refusing a connection: at sync.max_connections"
                        );
                        incoming.refuse();
                        continue;
                    };
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        connection(shared, incoming).await;
                        drop(slot);
                    });
                }
            }
        }
        feed.abort();
        self.endpoint.close(
            quinn::VarInt::from_u32(close::SHUTDOWN),
            b"hub shutting down",
        );
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.endpoint.wait_idle()).await;
        tracing::info!("QUIC sync stopped");
    }
}

/// Closes `conn` because the peer broke the protocol, with one log line.
fn protocol_close(conn: &quinn::Connection, why: &str) {
    tracing::info!(remote = %conn.remote_address(), reason = why, "closing connection: protocol violation");
    let reason: String = why.chars().take(200).collect();
    conn.close(quinn::VarInt::from_u32(close::PROTOCOL), reason.as_bytes());
}

/// One connection: handshake within the hello timeout, then by ALPN.
async fn connection(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "connection failed before the handshake");
            return;
        }
    };
    let conn = match tokio::time::timeout(shared.timing.hello_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%remote, "QUIC handshake timed out");
            return;
        }
    };
    let alpn = flotilla_net::tls::alpn(&conn);
    match alpn.as_deref() {
        Some(a) if a == ALPN_ENROL => {
            enrol::run(&shared, &conn)
                .instrument(tracing::info_span!("enrol", %remote))
                .await;
        }
        Some(a) if a == ALPN_SYNC => {
            let Some(cert) = flotilla_net::tls::peer_certificate(&conn) else {
                protocol_close(&conn, "sync needs a device certificate");
                return;
            };
            let device = match shared.registry.device_certs().active_device(cert.as_ref()) {
                Ok(d) => d,
                Err(reason) => {
                    tracing::info!(%remote, %reason, "device refused after the handshake");
                    conn.close(quinn::VarInt::from_u32(close::REVOKED), b"device revoked");
                    return;
                }
            };
            let span = tracing::info_span!("sync", device = %device, %remote);
            control::run(shared.clone(), conn, device)
                .instrument(span)
                .await;
        }
        _ => protocol_close(&conn, "unknown ALPN protocol"),
    }
}
