//! The embedded MQTT broker: rumqttd on its own threads, MQTT 3.1.1 over
//! plain TCP.
//!
//! rumqttd binds its listener itself and does not report the address, so for
//! port 0 the hub binds the address first to learn a free port, releases it,
//! and hands rumqttd that port; then it waits until the broker accepts a
//! connection before it says where it listens. A bind failure (the port is
//! taken) is an error at start, never a silent broker-less hub.
//!
//! With `tls` the broker has a second listener for devices: TLS (rumqttd's
//! rustls 0.22 on ring) with a server certificate the hub issues from its
//! device CA, and client certificates required and verified against that CA,
//! so only enrolled devices connect. The plain listener stays for the hub's
//! own client (keep it on loopback). Not here: per-device topic ACLs (rumqttd
//! has none; the hub refuses a payload naming another device than its topic,
//! and docs/mosquitto.md shows an external broker that enforces them) and
//! revocation at the broker (the hub refuses windows of revoked devices).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Longest wait for the broker to accept connections after start.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Most clients the embedded broker accepts.
pub const MAX_CONNECTIONS: usize = 10_010;

/// Bytes of one topic's in-memory log: rumqttd keeps the messages of each
/// topic in segments and serves subscribers from there, so this bounds the
/// broker's memory per topic (the hub consumes as messages arrive, and the
/// agents' outboxes hold what is not acknowledged).
const SEGMENT_BYTES: usize = 1 << 20;
const SEGMENTS: usize = 2;

/// The files of the TLS listener (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The device CA: client certificates must chain to it.
    pub ca: std::path::PathBuf,
    /// The broker's certificate.
    pub cert: std::path::PathBuf,
    /// Its key.
    pub key: std::path::PathBuf,
}

/// Binds `listen` briefly to learn the port rumqttd will get (port 0).
fn probe(listen: SocketAddr, what: &str) -> anyhow::Result<SocketAddr> {
    let probe = TcpListener::bind(listen)
        .with_context(|| format!("binding the MQTT broker to {listen} ({what})"))?;
    Ok(probe.local_addr()?)
}

fn settings(
    name: &str,
    listen: SocketAddr,
    max_payload: usize,
    tls: Option<rumqttd::TlsConfig>,
) -> ServerSettings {
    ServerSettings {
        name: name.into(),
        listen,
        tls,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: max_payload,
            max_inflight_count: 256,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    }
}

/// Starts rumqttd listening on `listen` (and, with `tls`, on its address for
/// devices over TLS); returns the bound addresses. `max_payload` bounds one
/// message.
pub fn start(
    listen: SocketAddr,
    tls: Option<(SocketAddr, TlsFiles)>,
    max_payload: usize,
) -> anyhow::Result<(SocketAddr, Option<SocketAddr>)> {
    if !listen.ip().is_loopback() {
        eprintln!(
            "WARNING: the embedded MQTT broker listens on {listen} without TLS or authentication: \
             anyone who reaches it can publish as any device and send acks to agents. \
             Keep it on loopback and give devices mqtt.tls_listen, or use an external broker with TLS and ACLs (docs/mosquitto.md)."
        );
    }
    let addr = probe(listen, "mqtt.listen")?;
    let mut v4 = HashMap::new();
    v4.insert(
        "flotilla".to_string(),
        settings("flotilla-mqtt", addr, max_payload, None),
    );
    let mut tls_addr = None;
    if let Some((tls_listen, files)) = tls {
        let a = probe(tls_listen, "mqtt.tls_listen")?;
        let path = |p: &std::path::Path| p.display().to_string();
        let config = rumqttd::TlsConfig::Rustls {
            capath: Some(path(&files.ca)),
            certpath: path(&files.cert),
            keypath: path(&files.key),
        };
        anyhow::ensure!(
            config.validate_paths(),
            "the MQTT TLS files under {} are missing",
            files.cert.parent().map(path).unwrap_or_default()
        );
        v4.insert(
            "flotilla-tls".to_string(),
            settings("flotilla-mqtt-tls", a, max_payload, Some(config)),
        );
        tls_addr = Some(a);
    }
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: MAX_CONNECTIONS,
            max_outgoing_packet_count: 256,
            max_segment_size: SEGMENT_BYTES.max(max_payload * 2),
            max_segment_count: SEGMENTS,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        ..Config::default()
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            }
        })
        .context("starting the MQTT broker thread")?;
    Ok((addr, tls_addr))
}

/// Waits until the broker at `addr` answers an MQTT CONNECT (a plain TCP
/// probe would make rumqttd log a failed handshake).
pub async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let (host, port) = local_dial(addr);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let mut opts = rumqttc::MqttOptions::new(
            format!("flotilla-hub-probe-{}", std::process::id()),
            host.clone(),
            port,
        );
        opts.set_clean_session(true);
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 4);
        let ready = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if ready {
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("the embedded MQTT broker did not start listening on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The address a client on this machine dials to reach a broker bound to `addr`.
pub fn local_dial(addr: SocketAddr) -> (String, u16) {
    let host = if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => "127.0.0.1".to_string(),
            SocketAddr::V6(_) => "::1".to_string(),
        }
    } else {
        addr.ip().to_string()
    };
    (host, addr.port())
}
