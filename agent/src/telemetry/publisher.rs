//! [`Publisher`]: the telemetry task. See the module docs of
//! [`crate::telemetry`] for what it guarantees.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flotilla_protocol::limits::Limits;
use flotilla_protocol::telemetry::topics::{self, STATUS_OFFLINE, STATUS_ONLINE};
use flotilla_protocol::telemetry::{AgentStats, Outbox, OutboxChange, TelemetryWindow, WindowAck};
use flotilla_protocol::time::UtcTime;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::watch;

use super::system::SystemSampler;
use super::{AgentView, TelemetryStatus};
use crate::config::AgentConfig;
use crate::serve::Serving;
use crate::store::AgentStore;
use crate::sync::now;

/// How long windows may wait with no ack advancing before the publisher
/// publishes everything pending again.
pub const ACK_OVERDUE: Duration = Duration::from_secs(120);
/// MQTT keep-alive: the broker declares the agent gone (and publishes its
/// last will) after 1.5 times this without a packet.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Requests the MQTT client queues; past it publishing waits for acks.
const REQUEST_QUEUE: usize = 256;
/// After a (re)connection, how long the first window waits for its ack
/// before it is published again (see `probing`).
const PROBE_RETRY: Duration = Duration::from_secs(2);
/// First and longest wait between broker connection attempts.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(15);
/// Longest a clean stop waits for the last window and `offline` to leave.
const STOP_FLUSH: Duration = Duration::from_secs(2);

/// The MQTT topics of this device.
#[derive(Debug)]
struct Topics {
    window: String,
    ack: String,
    status: String,
}

/// The telemetry task's state.
#[derive(Debug)]
pub struct Publisher {
    device: String,
    window: Duration,
    host: String,
    port: u16,
    /// TLS to the broker, with the device certificate.
    tls: Option<Arc<rustls::ClientConfig>>,
    topics: Topics,
    limits: Limits,
    store: Arc<AgentStore>,
    serving: Arc<Serving>,
    view: watch::Receiver<AgentView>,
    outbox: Outbox,
    sampler: Option<SystemSampler>,
    started: Instant,
    window_start: UtcTime,
    status: Arc<Mutex<TelemetryStatus>>,
    /// Told whenever `status` changes (the sync loop rewrites status.json).
    changed: Arc<tokio::sync::Notify>,
    /// Highest `last_seq` handed to the client in this session.
    cursor: u64,
    connected: bool,
    /// True from each connection until the hub's first ack in it: only the
    /// oldest pending window is published meanwhile (again every
    /// [`PROBE_RETRY`]). Design: after a broker restart the hub may not have
    /// subscribed again yet, and the broker drops what nobody subscribes to.
    /// The hub deduplicates by a per-epoch watermark, so a newer window that
    /// reached it before a dropped older one would make the older one look
    /// like a duplicate, and its ack would delete it here unstored. With the
    /// oldest window first and alone until acknowledged, the first window the
    /// hub stores after a reconnection is the oldest the agent holds.
    probing: bool,
    /// When the window being probed was last handed over.
    probe_sent: Option<tokio::time::Instant>,
    /// When each window handed over in this session was first published,
    /// by `last_seq`.
    sent_at: std::collections::BTreeMap<u64, Instant>,
    /// When an ack last advanced, a session started, or the outbox stopped
    /// being empty.
    last_progress: Instant,
}

impl Publisher {
    /// Restores the outbox from the store (or starts one with a new random
    /// epoch) for the broker in `config.telemetry.mqtt`.
    ///
    /// # Errors
    ///
    /// No broker configured, a broker address that is not `HOST:PORT`, a
    /// device id or fleet that cannot be a topic level, or the store failing.
    pub fn open(
        config: &AgentConfig,
        store: Arc<AgentStore>,
        serving: Arc<Serving>,
        view: watch::Receiver<AgentView>,
    ) -> anyhow::Result<Self> {
        let t = &config.telemetry;
        let broker = t.mqtt.clone().context("no MQTT broker configured")?;
        let (host, port) = broker
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?)))
            .with_context(|| format!("telemetry.mqtt {broker:?} is not HOST:PORT"))?;
        let device = config.device_id.clone();
        let topics = Topics {
            window: topics::window(&t.fleet, &device)?,
            ack: topics::ack(&t.fleet, &device)?,
            status: topics::status(&t.fleet, &device)?,
        };
        let limits = Limits {
            max_outbox_bytes: t.outbox_bytes,
            ..Limits::default()
        };
        let (outbox, changes) = match store.load_outbox()? {
            Some((meta, stored)) => Outbox::restore(device.as_str(), limits, meta, stored),
            None => {
                let outbox = Outbox::new(device.as_str(), new_epoch(), limits);
                let meta = outbox.meta();
                (outbox, vec![OutboxChange::Meta(meta)])
            }
        };
        store.apply_outbox(&changes)?;
        let tls = if t.tls {
            Some(Arc::new(tls_config(config)?))
        } else {
            None
        };
        let status = Arc::new(Mutex::new(TelemetryStatus {
            broker,
            outbox_budget: t.outbox_bytes,
            ..TelemetryStatus::default()
        }));
        let p = Self {
            device,
            window: Duration::from_secs(t.window_secs),
            host,
            port,
            tls,
            topics,
            limits,
            store,
            serving,
            view,
            outbox,
            sampler: Some(SystemSampler::new(&config.data_dir)),
            started: Instant::now(),
            window_start: now(),
            status,
            changed: Arc::new(tokio::sync::Notify::new()),
            cursor: 0,
            probing: false,
            probe_sent: None,
            sent_at: std::collections::BTreeMap::new(),
            connected: false,
            last_progress: Instant::now(),
        };
        p.update_status(None);
        Ok(p)
    }

    /// The publisher's state, shared with `status.json` and `/metrics`.
    pub fn status(&self) -> Arc<Mutex<TelemetryStatus>> {
        Arc::clone(&self.status)
    }

    /// Notified whenever [`Publisher::status`] changes.
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.changed)
    }

    /// Publishes until `shutdown` completes; then closes the last window,
    /// says `offline` and disconnects (waiting at most a moment).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut opts = MqttOptions::new(self.device.clone(), self.host.clone(), self.port);
        opts.set_keep_alive(KEEP_ALIVE);
        opts.set_clean_session(true);
        let max = usize::try_from(self.limits.max_telemetry_bytes).unwrap_or(usize::MAX);
        opts.set_max_packet_size(max.saturating_add(1024), max.saturating_add(1024));
        opts.set_last_will(LastWill::new(
            self.topics.status.clone(),
            STATUS_OFFLINE.to_vec(),
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(tls) = &self.tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::clone(tls)),
            ));
        }
        let (client, mut events) = AsyncClient::new(opts, REQUEST_QUEUE);
        // Small publishes and acks: without TCP_NODELAY, Nagle's algorithm
        // and delayed ACKs hold them ~40 ms.
        let mut net = events.network_options();
        net.set_tcp_nodelay(true);
        events.set_network_options(net);
        tracing::info!(broker = %format!("{}:{}", self.host, self.port), epoch = self.outbox.meta().epoch, pending = self.outbox.len(), "telemetry starting");
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.window, self.window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut delay = RECONNECT_MIN;
        let mut resume_at = tokio::time::Instant::now();
        tokio::pin!(shutdown);
        loop {
            let may_poll = tokio::time::Instant::now() >= resume_at;
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => {
                    self.close_window().await;
                    if self.connected && !self.outbox.is_empty() && self.last_progress.elapsed() > ACK_OVERDUE {
                        tracing::warn!(pending = self.outbox.len(), "no telemetry ack for a while; publishing the outbox again");
                        self.cursor = 0;
                        self.last_progress = Instant::now();
                    }
                    self.pump(&client);
                }
                () = tokio::time::sleep_until(
                    self.probe_sent.map_or_else(tokio::time::Instant::now, |t| t + PROBE_RETRY)
                ), if self.connected && self.probing && self.probe_sent.is_some() => {
                    // No ack yet: the hub may not have been subscribed.
                    self.cursor = 0;
                    self.probe_sent = None;
                    self.pump(&client);
                }
                () = tokio::time::sleep_until(resume_at), if !may_poll => {}
                ev = events.poll(), if may_poll => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        tracing::info!(pending = self.outbox.len(), "telemetry broker connected");
                        self.connected = true;
                        self.probing = true;
                        self.probe_sent = None;
                        delay = RECONNECT_MIN;
                        self.cursor = 0;
                        self.sent_at.clear();
                        self.last_progress = Instant::now();
                        let _ = client.try_subscribe(self.topics.ack.clone(), QoS::AtLeastOnce);
                        let _ = client.try_publish(self.topics.status.clone(), QoS::AtLeastOnce, true, STATUS_ONLINE.to_vec());
                        self.pump(&client);
                        self.update_status(None);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic == self.topics.ack {
                            self.on_ack(&p.payload).await;
                        }
                        self.pump(&client);
                    }
                    Ok(_) => self.pump(&client),
                    Err(e) => {
                        if self.connected {
                            tracing::warn!(error = %e, "telemetry broker connection lost");
                        } else {
                            tracing::debug!(error = %e, "telemetry broker unreachable");
                        }
                        self.connected = false;
                        self.update_status(Some(format!("broker {}:{}: {e}", self.host, self.port)));
                        resume_at = tokio::time::Instant::now() + jitter(delay);
                        delay = (delay * 2).min(RECONNECT_MAX);
                    }
                }
            }
        }
        self.stop(&client, &mut events).await;
    }

    /// Ends the window running now: builds it, stores it, publishes it.
    async fn close_window(&mut self) {
        let end = now();
        let (endpoints, drift) = self.serving.take_window();
        let system = match self.sampler.take() {
            Some(mut s) => match tokio::task::spawn_blocking(move || {
                let x = s.sample();
                (s, x)
            })
            .await
            {
                Ok((s, x)) => {
                    self.sampler = Some(s);
                    x
                }
                Err(_) => Default::default(),
            },
            None => Default::default(),
        };
        let view = self.view.borrow().clone();
        let mut activations = view.activations;
        activations.truncate(self.limits.max_deployments);
        let mut w = TelemetryWindow::new(
            self.device.as_str(),
            self.window_start,
            end.max(self.window_start),
        );
        w.endpoints = endpoints;
        w.drift = drift;
        w.system = system;
        w.agent = AgentStats {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.started.elapsed().as_secs(),
            sync_state: view.sync_state,
            activations,
            outbox_dropped: self.outbox.dropped(),
        };
        self.window_start = end.max(self.window_start);
        if self.outbox.is_empty() {
            self.last_progress = Instant::now();
        }
        match self.outbox.push(w) {
            Ok(changes) => self.apply(changes).await,
            Err(e) => {
                tracing::error!(error = %e, "telemetry window refused by the outbox; its counts are lost");
                self.update_status(Some(format!("window refused: {e}")));
            }
        }
    }

    /// Hands every pending window past the cursor to the client, oldest
    /// first, until its queue is full.
    fn pump(&mut self, client: &AsyncClient) {
        if !self.connected {
            return;
        }
        // Only what the client takes is copied: during a backlog flush this
        // runs on every MQTT event while most windows still wait.
        if self.probing && self.probe_sent.is_some() {
            return;
        }
        let mut handed_seqs = Vec::new();
        let limit = if self.probing { 1 } else { usize::MAX };
        for w in self
            .outbox
            .pending()
            .filter(|w| w.last_seq > self.cursor)
            .take(limit)
        {
            if client
                .try_publish(
                    self.topics.window.clone(),
                    QoS::AtLeastOnce,
                    false,
                    w.bytes.to_vec(),
                )
                .is_err()
            {
                break;
            }
            handed_seqs.push(w.last_seq);
        }
        let handed = handed_seqs.len() as u64;
        if self.probing && handed > 0 {
            self.probe_sent = Some(tokio::time::Instant::now());
        }
        let now = Instant::now();
        for last_seq in handed_seqs {
            self.cursor = last_seq;
            self.sent_at.entry(last_seq).or_insert(now);
            self.outbox.mark_published(last_seq);
        }
        // Send times of windows the outbox merged away (no ack will name
        // their last_seq alone) are forgotten, so the map stays as small as
        // the outbox.
        if self.sent_at.len() > self.outbox.len() * 2 + 64 {
            let live: std::collections::HashSet<u64> =
                self.outbox.pending().map(|w| w.last_seq).collect();
            self.sent_at.retain(|k, _| live.contains(k));
        }
        if handed > 0 {
            self.status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .published += handed;
            self.changed.notify_one();
        }
    }

    /// An ack from the hub: forget what it covers.
    async fn on_ack(&mut self, payload: &[u8]) {
        let ack = match WindowAck::decode(payload, &self.limits) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "malformed telemetry ack ignored");
                return;
            }
        };
        let before = self.outbox.len();
        let changes = self.outbox.ack(&ack);
        if self.outbox.len() < before {
            self.last_progress = Instant::now();
        }
        if ack.epoch == self.outbox.meta().epoch && ack.device == self.device {
            self.probing = false;
            self.probe_sent = None;
            let later = self.sent_at.split_off(&ack.up_to_seq.saturating_add(1));
            let covered = std::mem::replace(&mut self.sent_at, later);
            let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            s.acked_seq = s.acked_seq.max(ack.up_to_seq);
            for sent in covered.values() {
                s.ack_latency_us
                    .record(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
        }
        self.apply(changes).await;
    }

    /// Applies outbox changes to the store (one durable transaction).
    async fn apply(&mut self, changes: Vec<OutboxChange>) {
        let store = Arc::clone(&self.store);
        let result = tokio::task::spawn_blocking(move || store.apply_outbox(&changes))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match result {
            Ok(()) => self.update_status(None),
            Err(e) => {
                tracing::error!(error = %e, "cannot write the telemetry outbox");
                self.update_status(Some(format!("outbox store: {e}")));
            }
        }
    }

    /// Closes the last window and says goodbye, within [`STOP_FLUSH`].
    async fn stop(&mut self, client: &AsyncClient, events: &mut rumqttc::EventLoop) {
        self.close_window().await;
        if !self.connected {
            return;
        }
        self.pump(client);
        let _ = client.try_publish(
            self.topics.status.clone(),
            QoS::AtLeastOnce,
            true,
            STATUS_OFFLINE.to_vec(),
        );
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(STOP_FLUSH, async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == self.topics.ack => {
                        self.on_ack(&p.payload).await;
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    fn update_status(&self, error: Option<String>) {
        let meta = self.outbox.meta();
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        s.connected = self.connected;
        s.outbox_windows = self.outbox.len() as u64;
        s.outbox_bytes = self.outbox.total_bytes();
        s.dropped = self.outbox.dropped();
        s.next_seq = meta.next_seq;
        if error.is_some() || self.connected {
            s.last_error = error;
        }
        drop(s);
        self.changed.notify_one();
    }
}

/// The rustls client configuration for a TLS broker: the device key and
/// certificate from enrolment, the broker's CA from `telemetry.ca_file`
/// (default: the hub's device CA).
fn tls_config(config: &AgentConfig) -> anyhow::Result<rustls::ClientConfig> {
    let files = config.files();
    let ca_path = config
        .telemetry
        .ca_file
        .clone()
        .unwrap_or_else(|| files.hub_ca());
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let roots: Vec<_> = pem::parse_many(read(&ca_path)?)
        .with_context(|| format!("{} is not PEM", ca_path.display()))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| rustls_pki_types::CertificateDer::from(p.into_contents()))
        .collect();
    anyhow::ensure!(
        !roots.is_empty(),
        "{} holds no certificate",
        ca_path.display()
    );
    let cert = pem::parse(read(&files.cert())?).context("device.pem is not PEM")?;
    let key = pem::parse(read(&files.key())?).context("device-key.pem is not PEM")?;
    flotilla_net::tls::install_default_provider();
    Ok(flotilla_net::tls::mqtt_client_config(
        roots,
        vec![cert.into_contents().into()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.into_contents().into()),
    )?)
}

/// A random outbox epoch (the clock when the system has no randomness).
fn new_epoch() -> u64 {
    let mut b = [0u8; 8];
    match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b) {
        Ok(()) => u64::from_le_bytes(b).max(1),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(1)),
    }
}

/// `d` plus up to a quarter more, so a fleet does not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}
