//! The hub's MQTT client (rumqttc), the same for the embedded and an external
//! broker.
//!
//! It holds a persistent session (`clean_session = false`, a fixed client id
//! per fleet), subscribes with QoS 1 to every device's windows and status, and
//! acknowledges each message to the broker *by hand*, only after ingest has
//! stored it: a hub that dies between receiving and storing gets the message
//! again from the broker when it reconnects. The agent's outbox covers
//! everything else (it republishes until the hub's end-to-end ack arrives).
//!
//! The event loop task only moves packets: publishes go to the ingest task
//! through a bounded channel (which pushes back on the broker when ingest is
//! slow); connection loss is logged once and retried every second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_protocol::telemetry::topics;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;

use super::config::MqttConfig;

/// Messages buffered between the event loop and ingest.
pub const INBOUND_BUFFER: usize = 1024;

/// Requests (publishes, acks) buffered towards the event loop. Large: ingest
/// may queue two per message of a batch while the event loop waits for it.
const REQUEST_BUFFER: usize = 16 * 1024;

/// The hub's connection to the broker.
#[derive(Debug, Clone)]
pub struct MqttLink {
    /// Publishes and acks.
    pub client: AsyncClient,
    connected: Arc<AtomicBool>,
}

impl MqttLink {
    /// Whether the client is connected now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Connects to the broker at `host:port` and spawns the event loop; windows
/// and status messages arrive on the returned receiver.
pub fn spawn(
    cfg: &MqttConfig,
    host: &str,
    port: u16,
    max_payload: usize,
) -> (
    MqttLink,
    mpsc::Receiver<Publish>,
    tokio::task::JoinHandle<()>,
) {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), host, port);
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(256)
        .set_max_packet_size(max_payload + 1024, max_payload + 1024)
        .set_request_channel_capacity(REQUEST_BUFFER);
    if let Some(user) = &cfg.username {
        opts.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
    }
    let (client, mut events) = AsyncClient::new(opts, REQUEST_BUFFER);
    // Acks are small writes right after small reads: without TCP_NODELAY,
    // Nagle's algorithm and delayed ACKs add ~40 ms to every ack.
    let mut net = events.network_options();
    net.set_tcp_nodelay(true);
    events.set_network_options(net);
    let (tx, rx) = mpsc::channel(INBOUND_BUFFER);
    let connected = Arc::new(AtomicBool::new(false));
    let link = MqttLink {
        client: client.clone(),
        connected: connected.clone(),
    };
    let filters = [
        topics::all_windows(&cfg.fleet),
        topics::all_status(&cfg.fleet),
    ];
    let task = tokio::spawn(run(
        events,
        client,
        tx,
        connected,
        filters.into_iter().flatten().collect(),
    ));
    (link, rx, task)
}

async fn run(
    mut events: EventLoop,
    client: AsyncClient,
    tx: mpsc::Sender<Publish>,
    connected: Arc<AtomicBool>,
    filters: Vec<String>,
) {
    let mut failures = 0u32;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(session_present = ack.session_present, "MQTT connected");
                connected.store(true, Ordering::Relaxed);
                failures = 0;
                // Subscribing again is harmless when the session kept them.
                let subs = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(subs) {
                    tracing::error!(error = %e, "cannot subscribe to telemetry topics");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if connected.swap(false, Ordering::Relaxed) || failures == 0 {
                    tracing::warn!(error = %e, "MQTT connection to the broker failed; retrying every second");
                }
                failures = failures.saturating_add(1);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
