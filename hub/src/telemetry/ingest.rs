//! Ingest: windows and statuses from the broker into the store, and the
//! end-to-end acks back.
//!
//! Messages are taken in batches (whatever has arrived, up to
//! [`MAX_BATCH`]). For each window: decode against the protocol's limits
//! (a bad payload is one log line and a counter, never a panic), check that
//! the payload's device is the topic's and an enrolled, unrevoked device
//! (the topic is what the broker's ACL vouches for), and sort it with the
//! [`Dedupe`] watermarks. New windows of the batch are stored in *one*
//! transaction together with the raised watermarks; only after that commit
//! does the hub publish the cumulative [`WindowAck`]s (QoS 1) and acknowledge
//! the messages to the broker. A failed commit acknowledges nothing: the
//! watermarks are reloaded from the store and the agents resend.
//!
//! [`WindowAck`]: flotilla_protocol::telemetry::WindowAck

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use flotilla_protocol::telemetry::event::{DEVICE_OFFLINE, DEVICE_ONLINE};
use flotilla_protocol::telemetry::topics::{self, Topic, STATUS_OFFLINE, STATUS_ONLINE};
use flotilla_protocol::telemetry::{Dedupe, TelemetryWindow, Verdict};
use flotilla_protocol::time::UtcTime;
use rumqttc::{Publish, QoS};
use tokio::sync::mpsc;

use super::mqtt::MqttLink;
use super::stats::bump;
use super::{lock, Telemetry};
use crate::api::types::{DeviceStatus, DeviceView};

/// Most messages handled per store transaction.
pub(crate) const MAX_BATCH: usize = 256;

/// The ingest task's state: the deduplication watermarks.
#[derive(Debug)]
pub(crate) struct Ingest {
    t: Arc<Telemetry>,
    link: MqttLink,
    dedupe: Dedupe,
}

/// What a processed batch asks the MQTT side to do.
#[derive(Debug, Default)]
struct Outcome {
    /// (topic, payload) of acks to publish.
    acks: Vec<(String, Vec<u8>)>,
}

/// Watermarks as stored.
fn restored(t: &Telemetry) -> Result<Dedupe, crate::store::StoreError> {
    let mut d = Dedupe::new();
    for m in t.store.marks()? {
        d.restore(&m.device, m.epoch, m.acked);
    }
    Ok(d)
}

impl Ingest {
    /// Ingest with the watermarks restored from the store.
    pub(crate) fn new(t: Arc<Telemetry>, link: MqttLink) -> anyhow::Result<Self> {
        let dedupe = restored(&t)?;
        Ok(Self { t, link, dedupe })
    }

    /// Runs until the event loop's channel closes.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Publish>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let t = self.t.clone();
            let mut dedupe = std::mem::take(&mut self.dedupe);
            let joined = tokio::task::spawn_blocking(move || {
                let out = process(&t, &mut dedupe, &batch);
                (dedupe, batch, out)
            })
            .await;
            let (dedupe, batch, out) = match joined {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "ingest worker failed; reloading watermarks");
                    self.dedupe = restored(&self.t).unwrap_or_default();
                    continue;
                }
            };
            self.dedupe = dedupe;
            let Some(out) = out else {
                // Nothing acknowledged: the broker and the agents resend.
                continue;
            };
            for (topic, payload) in out.acks {
                match self
                    .link
                    .client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                {
                    Ok(()) => bump(&self.t.counters.acks_sent),
                    Err(e) => tracing::warn!(error = %e, "cannot queue a window ack"),
                }
            }
            for p in &batch {
                if let Err(e) = self.link.client.ack(p).await {
                    tracing::warn!(error = %e, "cannot acknowledge a message to the broker");
                }
            }
        }
    }
}

/// Handles one batch (blocking: store, registry). `None`: the commit failed.
fn process(t: &Telemetry, dedupe: &mut Dedupe, batch: &[Publish]) -> Option<Outcome> {
    let now = crate::now();
    let mut devices: HashMap<String, Option<DeviceView>> = HashMap::new();
    let mut lookup = |id: &str| -> Option<DeviceView> {
        devices
            .entry(id.to_string())
            .or_insert_with(|| t.registry.store().device(id).ok().flatten())
            .clone()
    };
    let mut to_store: Vec<TelemetryWindow> = Vec::new();
    let mut acks: BTreeSet<(String, u64)> = BTreeSet::new();
    for p in batch {
        match topics::parse(&p.topic) {
            Some(Topic::Window { fleet, device }) if fleet == t.fleet => {
                bump(&t.counters.windows_received);
                let w = match TelemetryWindow::decode(&p.payload, &t.limits) {
                    Ok(w) => w,
                    Err(e) => {
                        bump(&t.counters.decode_errors);
                        tracing::warn!(%device, error = %e, "telemetry window refused");
                        continue;
                    }
                };
                if w.device != device {
                    bump(&t.counters.rejected);
                    tracing::warn!(%device, payload_device = %w.device, "window names another device than its topic; refused");
                    continue;
                }
                if !lookup(device).is_some_and(|d| d.status == DeviceStatus::Active) {
                    bump(&t.counters.rejected);
                    tracing::warn!(%device, "window from an unknown or revoked device refused");
                    continue;
                }
                lock(&t.presence).heard(device, now);
                let key = w.key();
                match dedupe.check(&key) {
                    Verdict::Duplicate => bump(&t.counters.duplicates),
                    verdict => {
                        if let Verdict::Overlap { doubled } = verdict {
                            t.counters
                                .overlap_seqs
                                .fetch_add(doubled, std::sync::atomic::Ordering::Relaxed);
                            tracing::warn!(%device, epoch = w.epoch, doubled, "merged window overlaps stored ones; stored whole");
                        }
                        dedupe.record(&key);
                        to_store.push(w.clone());
                    }
                }
                acks.insert((device.to_string(), w.epoch));
            }
            Some(Topic::Status { fleet, device }) if fleet == t.fleet => {
                let online = match &p.payload[..] {
                    b if b == STATUS_ONLINE => true,
                    b if b == STATUS_OFFLINE => false,
                    _ => {
                        tracing::debug!(%device, "unknown status payload ignored");
                        continue;
                    }
                };
                if let Some(d) = lookup(device).filter(|d| d.status == DeviceStatus::Active) {
                    status(t, &d, online, p.retain, now);
                }
            }
            _ => {}
        }
    }
    if !to_store.is_empty() {
        if let Err(e) = t.store.store_windows(&to_store, now) {
            bump(&t.counters.store_errors);
            tracing::error!(error = %e, windows = to_store.len(), "cannot store telemetry windows; nothing acknowledged");
            match restored(t) {
                Ok(d) => *dedupe = d,
                Err(e) => tracing::error!(error = %e, "cannot reload deduplication marks"),
            }
            return None;
        }
        t.counters
            .windows_stored
            .fetch_add(to_store.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
    let mut out = Outcome::default();
    for (device, epoch) in &acks {
        if let Ok(topic) = topics::ack(&t.fleet, device) {
            out.acks.push((topic, dedupe.ack(device, *epoch).encode()));
        }
    }
    if !to_store.is_empty() {
        {
            let mut stats = lock(&t.fleet_stats);
            for w in &to_store {
                stats.add(now, w);
            }
        }
        let labels: BTreeMap<String, BTreeMap<String, String>> = devices
            .into_iter()
            .filter_map(|(id, d)| d.map(|d| (id, d.labels)))
            .collect();
        t.evaluate_windows(&to_store, &labels, now);
    }
    Some(out)
}

/// A status message: update presence; a live (not replayed) change of the
/// device's combined presence raises `device.online` / `device.offline`.
fn status(t: &Telemetry, d: &DeviceView, online: bool, retained: bool, now: UtcTime) {
    let before = lock(&t.presence).status(&d.id, online, now);
    let was_online = d.connected || before.is_some_and(|p| p.online);
    let is_online = d.connected || online;
    if retained || was_online == is_online {
        return;
    }
    let kind = if is_online {
        DEVICE_ONLINE
    } else {
        DEVICE_OFFLINE
    };
    t.registry.emit(
        kind,
        &format!("device/{}", d.id),
        &d.id,
        serde_json::json!({"via": "mqtt"}),
    );
}
