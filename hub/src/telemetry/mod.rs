//! The hub's telemetry side: the MQTT broker and client, ingest of agents'
//! windows with end-to-end acks, the time-series store, alerts, the event log
//! and its delivery (MQTT event topics, server-sent events, webhooks), and
//! the read views (device metrics, drift, `/metrics`).
//!
//! [`Telemetry`] is the shared state; [`Telemetry::spawn`] starts its tasks:
//! - the MQTT client's event loop (`mqtt`), feeding
//! - ingest (`ingest`): decode, deduplicate, store, *then* ack, then alerts;
//! - the event recorder (`recorder`): bus → store → MQTT, SSE subscribers,
//!   webhook workers (`crate::webhooks`);
//! - retention (`store::TelemetryStore::sweep`) and the presence check that
//!   drives `device_offline_secs` rules.
//!
//! It does not serve HTTP (`crate::api` does) and holds no registry state
//! beyond caches of drift baselines.
//!
//! # Layout
//! - [`config`]: `[mqtt]`, `[telemetry]`, `[webhooks]`, `[[alerts]]`.
//! - [`broker`]: the embedded rumqttd.
//! - [`mqtt`]: the hub's rumqttc client.
//! - [`store`]: the telemetry database, `DATA/telemetry.redb`.
//! - [`stats`]: counters, fleet aggregates, Prometheus text.
//! - [`query`]: device metrics and drift reports.
//! - `ingest`, `presence`, `recorder`, `alerting`: the tasks and their helpers.

mod alerting;
pub mod broker;
pub mod config;
mod ingest;
pub mod mqtt;
mod presence;
pub mod query;
mod recorder;
pub mod stats;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use anyhow::Context;
use flotilla_protocol::limits::Limits;
use flotilla_protocol::manifest::{BundleManifest, DriftBaseline};
use tokio::sync::{broadcast, watch};

use crate::alerts::eval::Evaluator;
use crate::api::types::{AlertRule, EventRecord};
use crate::config::HubConfig;
use crate::registry::Registry;
use config::{BrokerMode, TelemetryConfig, WebhookConfig};
use mqtt::MqttLink;
use stats::{Counters, FleetStats};
use store::TelemetryStore;

/// Events buffered for each server-sent-event subscriber; one that falls
/// further behind catches up from the store.
const EVENT_FANOUT: usize = 1024;

/// Most drift baselines cached.
const MAX_BASELINES: usize = 1024;

/// Locks a mutex; a panic elsewhere while holding it leaves plain data that
/// is still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The rules from the configuration and whether the defaults apply.
#[derive(Debug)]
pub(crate) struct AlertState {
    pub(crate) evaluator: Evaluator,
    pub(crate) defaults: bool,
    pub(crate) config_rules: Vec<AlertRule>,
}

/// Shared state of the telemetry side.
#[derive(Debug)]
pub struct Telemetry {
    /// The telemetry database.
    pub store: Arc<TelemetryStore>,
    /// The registry (devices, manifests, the event bus).
    pub registry: Arc<Registry>,
    /// Fleet name.
    pub fleet: String,
    /// The broker address agents are told (`GET /api/v1/hub`).
    /// Whether agents publish over TLS with their device certificate (the
    /// embedded broker's TLS listener).
    pub mqtt_tls: bool,
    /// The embedded broker's TLS listener, when it has one.
    pub tls_addr: Option<std::net::SocketAddr>,
    pub mqtt_addr: String,
    /// The broker's address: where the embedded one listens, or the external one.
    pub broker_addr: String,
    /// Whether the broker is the embedded one.
    pub embedded: bool,
    /// Counters for `/metrics`.
    pub counters: Counters,
    /// Fleet aggregates for `/metrics`.
    pub fleet_stats: Mutex<FleetStats>,
    /// Webhook delivery settings.
    pub webhook_config: WebhookConfig,
    pub(crate) alerts: Mutex<AlertState>,
    pub(crate) presence: Mutex<presence::PresenceMap>,
    pub(crate) webhooks: crate::webhooks::Workers,
    events: broadcast::Sender<EventRecord>,
    last_event: watch::Sender<u64>,
    baselines: Mutex<HashMap<String, Option<Arc<DriftBaseline>>>>,
    link: OnceLock<MqttLink>,
    limits: Limits,
    config: TelemetryConfig,
    mqtt: config::MqttConfig,
    // Where the hub's own client dials the broker.
    dial: (String, u16),
}

/// Running telemetry tasks; aborted when dropped.
#[derive(Debug)]
pub struct TelemetryTasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for TelemetryTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The embedded broker's TLS files under `DATA/mqtt-tls/`: the device CA,
/// and a server certificate from it (fresh key at every start) for
/// `sync.cert_names`, `localhost`, `127.0.0.1` and the TLS listen address.
fn broker_tls_files(config: &HubConfig, registry: &Registry) -> anyhow::Result<broker::TlsFiles> {
    use crate::devices::ca::pem_encode;
    let dir = config.data_dir.join("mqtt-tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names = config.sync.cert_names.clone();
    names.push("localhost".into());
    names.push("127.0.0.1".into());
    if let Some(a) = config.mqtt.tls_listen {
        if !a.ip().is_unspecified() {
            names.push(a.ip().to_string());
        }
    }
    names.sort();
    names.dedup();
    let ca = registry.ca();
    let leaf = ca
        .issue_hub_cert(&names, crate::now())
        .context("issuing the MQTT broker's certificate")?;
    let files = broker::TlsFiles {
        ca: dir.join("device-ca.pem"),
        cert: dir.join("broker.pem"),
        key: dir.join("broker-key.pem"),
    };
    let write = |p: &std::path::Path, text: String, mode: u32| {
        crate::keystore::write_atomic(p, text.as_bytes(), mode)
            .with_context(|| format!("writing {}", p.display()))
    };
    write(&files.ca, ca.cert_pem(), 0o644)?;
    write(
        &files.cert,
        pem_encode("CERTIFICATE", &leaf.cert_der),
        0o644,
    )?;
    write(&files.key, pem_encode("PRIVATE KEY", &leaf.key_der), 0o600)?;
    Ok(files)
}

impl Telemetry {
    /// Opens `DATA/telemetry.redb`, starts the embedded broker (if configured)
    /// and restores alerts. Call [`Telemetry::spawn`] to start the tasks.
    pub async fn open(config: &HubConfig, registry: Arc<Registry>) -> anyhow::Result<Arc<Self>> {
        let store = Arc::new(TelemetryStore::open(
            &config.data_dir.join("telemetry.redb"),
        )?);
        let limits = Limits::default();
        let max_payload = usize::try_from(limits.max_telemetry_bytes).unwrap_or(usize::MAX);
        let (dial, bound, tls_addr) = match &config.mqtt.mode {
            BrokerMode::Embedded { listen } => {
                let tls = match config.mqtt.tls_listen {
                    Some(t) => Some((t, broker_tls_files(config, &registry)?)),
                    None => None,
                };
                let (addr, tls_addr) = broker::start(*listen, tls, max_payload + 4096)?;
                broker::wait_ready(addr).await?;
                (broker::local_dial(addr), addr.to_string(), tls_addr)
            }
            BrokerMode::External { host, port } => {
                ((host.clone(), *port), format!("{host}:{port}"), None)
            }
        };
        let api_rules = store.alert_rules().context("reading alert rules")?;
        let rules = crate::alerts::effective_rules(
            config.telemetry.default_alerts,
            &config.alerts,
            &api_rules,
        );
        let mut evaluator = Evaluator::new(rules.into_iter().map(|(r, _)| r).collect());
        evaluator.restore(store.active_alerts().context("reading active alerts")?);
        let last = store.last_event_id()?;
        Ok(Arc::new(Self {
            store,
            registry,
            fleet: config.mqtt.fleet.clone(),
            mqtt_addr: config
                .mqtt
                .advertise
                .clone()
                .or_else(|| tls_addr.map(|a| a.to_string()))
                .unwrap_or_else(|| bound.clone()),
            mqtt_tls: tls_addr.is_some(),
            tls_addr,
            broker_addr: bound,
            embedded: matches!(config.mqtt.mode, BrokerMode::Embedded { .. }),
            counters: Counters::default(),
            fleet_stats: Mutex::default(),
            webhook_config: config.webhooks,
            alerts: Mutex::new(AlertState {
                evaluator,
                defaults: config.telemetry.default_alerts,
                config_rules: config.alerts.clone(),
            }),
            presence: Mutex::default(),
            webhooks: crate::webhooks::Workers::default(),
            events: broadcast::channel(EVENT_FANOUT).0,
            last_event: watch::channel(last).0,
            baselines: Mutex::default(),
            link: OnceLock::new(),
            limits,
            config: config.telemetry.clone(),
            mqtt: config.mqtt.clone(),
            dial,
        }))
    }

    /// Starts the MQTT client, ingest, the event recorder, webhook workers,
    /// retention and the presence check. `bus` must have been subscribed
    /// before anything could publish an event the log should hold.
    pub fn spawn(
        self: &Arc<Self>,
        bus: broadcast::Receiver<crate::events::Event>,
    ) -> anyhow::Result<TelemetryTasks> {
        let max_payload = usize::try_from(self.limits.max_telemetry_bytes).unwrap_or(usize::MAX);
        let (link, inbound, mqtt_task) =
            mqtt::spawn(&self.mqtt, &self.dial.0, self.dial.1, max_payload);
        let _ = self.link.set(link.clone());
        let ingest = ingest::Ingest::new(self.clone(), link)?;
        let mut tasks = vec![mqtt_task, tokio::spawn(ingest.run(inbound))];
        tasks.push(tokio::spawn(recorder::run(self.clone(), bus)));
        crate::webhooks::start_all(self)?;
        let t = self.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(t.config.sweep_interval);
            loop {
                tick.tick().await;
                let s = t.clone();
                let (retention, hourly) = (
                    s.config.retention.as_secs(),
                    s.config.hourly_retention.as_secs(),
                );
                match tokio::task::spawn_blocking(move || {
                    s.store.sweep(crate::now(), retention, hourly)
                })
                .await
                {
                    Ok(Ok(r)) if r != store::SweepReport::default() => {
                        tracing::info!(
                            downsampled = r.downsampled,
                            hourly_removed = r.hourly_removed,
                            events_removed = r.events_removed,
                            "telemetry retention"
                        )
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "telemetry retention failed"),
                    Err(e) => tracing::error!(error = %e, "telemetry retention task failed"),
                }
            }
        }));
        let t = self.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let s = t.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || s.check_presence()).await {
                    tracing::error!(error = %e, "presence check failed");
                }
            }
        }));
        Ok(TelemetryTasks(tasks))
    }

    /// The MQTT link, once spawned.
    pub fn link(&self) -> Option<&MqttLink> {
        self.link.get()
    }

    /// A subscription to events as they are stored.
    pub fn subscribe_events(&self) -> broadcast::Receiver<EventRecord> {
        self.events.subscribe()
    }

    /// A receiver that changes whenever an event is stored (its id).
    pub fn watch_events(&self) -> watch::Receiver<u64> {
        self.last_event.subscribe()
    }

    /// The drift baseline of the bundle at `target`, if it has one (cached;
    /// blocking).
    pub fn baseline(&self, target: &str) -> Option<Arc<DriftBaseline>> {
        if let Some(b) = lock(&self.baselines).get(target) {
            return b.clone();
        }
        let found = match self.registry.store().manifest(target) {
            Ok(Some(bytes)) => BundleManifest::decode(&bytes, &Limits::default())
                .ok()
                .and_then(|m| m.drift_baseline)
                .map(Arc::new),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%target, error = %e, "cannot read a manifest for its drift baseline");
                return None;
            }
        };
        let mut cache = lock(&self.baselines);
        if cache.len() >= MAX_BASELINES {
            cache.clear();
        }
        cache.insert(target.to_string(), found.clone());
        found
    }
}
