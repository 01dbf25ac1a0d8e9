//! The hub-wide side of metadata push: one task follows the event bus and a
//! 30-second clock, keeps the current trust publication in memory, and tells
//! sessions when to recompute what they push.
//!
//! Design: sessions watch one [`Feed`] value instead of each reading the store
//! on every event and every tick: with thousands of agents connected, one
//! store read per change (or per 30 s) replaces thousands. Changes that concern
//! one device (labels) ring only that device's session; a revocation closes
//! its connection. A lagging event subscription is treated as "everything may
//! have changed".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_protocol::digest::Sha256Digest;
use tokio::sync::{broadcast, watch};

use super::metadata::TrustSnapshot;
use super::Shared;
use crate::events::Event;
use crate::registry::{Registry, RegistryError};

/// How often the feed re-reads trust metadata (a timestamp refresh emits no
/// event).
pub const TRUST_RECHECK: Duration = Duration::from_secs(30);

/// What sessions watch: the trust publication, and a generation that grows
/// whenever any device's desired state may have changed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Feed {
    pub(crate) generation: u64,
    pub(crate) trust: Option<Arc<TrustSnapshot>>,
}

/// What an event means for sync sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    /// Models or endpoints changed: trust and any director may have.
    Everyone,
    /// One device's labels changed.
    Device(String),
    /// One device was revoked.
    Revoked(String),
    /// Nothing sessions push depends on it.
    Nothing,
}

fn device_of(object: &str) -> Option<String> {
    object
        .strip_prefix("device/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(str::to_string)
}

fn classify(e: &Event) -> Effect {
    let kind = e.kind.as_str();
    if kind.starts_with("model.") || kind.starts_with("endpoint.") {
        return Effect::Everyone;
    }
    match (kind, device_of(&e.object)) {
        ("device.revoked", Some(id)) => Effect::Revoked(id),
        ("device.updated", Some(id)) => Effect::Device(id),
        _ => Effect::Nothing,
    }
}

/// Reads the current trust publication from the store.
pub(crate) fn load_trust(registry: &Registry) -> Result<Option<TrustSnapshot>, RegistryError> {
    let Some((state, publication)) = registry.store().trust()? else {
        return Ok(None);
    };
    let manifests: HashMap<Sha256Digest, String> = state
        .targets
        .targets
        .iter()
        .filter_map(|(path, t)| {
            let d = Sha256Digest::from_hex(t.hashes.get("sha256")?)?;
            Some((d, path.clone()))
        })
        .collect();
    Ok(Some(TrustSnapshot {
        timestamp_version: state.publication_version,
        targets_version: state.targets.version,
        timestamp: publication.timestamp,
        snapshot: publication.snapshot,
        targets: publication.targets,
        manifests,
    }))
}

async fn reload(shared: &Arc<Shared>) -> Option<Option<Arc<TrustSnapshot>>> {
    let registry = shared.registry.clone();
    match tokio::task::spawn_blocking(move || load_trust(&registry)).await {
        Ok(Ok(t)) => Some(t.map(Arc::new)),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not read trust metadata for sync");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "trust metadata reader failed");
            None
        }
    }
}

/// Publishes a new feed value: always when `everyone`, else only when the
/// trust publication changed.
async fn refresh(shared: &Arc<Shared>, tx: &watch::Sender<Feed>, everyone: bool) {
    let Some(trust) = reload(shared).await else {
        return;
    };
    tx.send_if_modified(|f| {
        let changed = f.trust.as_ref().map(|t| t.timestamp_version)
            != trust.as_ref().map(|t| t.timestamp_version);
        if everyone || changed {
            f.generation += 1;
            f.trust = trust;
            true
        } else {
            false
        }
    });
}

/// Follows events and the clock until `shutdown` turns true (or is dropped).
pub(crate) async fn run(
    shared: Arc<Shared>,
    tx: watch::Sender<Feed>,
    mut events: broadcast::Receiver<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(TRUST_RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    return;
                }
            }
            _ = tick.tick() => refresh(&shared, &tx, false).await,
            first = events.recv() => {
                // Take every event already queued, then act once.
                let mut everyone = false;
                let mut next = first;
                loop {
                    match next {
                        Ok(e) => match classify(&e) {
                            Effect::Everyone => everyone = true,
                            Effect::Device(id) => shared.sessions.wake(&id),
                            Effect::Revoked(id) => shared.sessions.revoke(&id),
                            Effect::Nothing => {}
                        },
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "sync fell behind the event bus; rechecking every device");
                            everyone = true;
                            let certs = shared.registry.device_certs().clone();
                            shared.sessions.revoke_where(|d| certs.is_revoked(d));
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                    next = match events.try_recv() {
                        Ok(e) => Ok(e),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            Err(broadcast::error::RecvError::Lagged(n))
                        }
                        Err(_) => break,
                    };
                }
                if everyone {
                    refresh(&shared, &tx, true).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, object: &str) -> Event {
        Event {
            kind: kind.into(),
            time: String::new(),
            object: object.into(),
            actor: "a".into(),
            data: serde_json::Value::Null,
        }
    }

    #[test]
    fn events_are_sorted_by_who_they_concern() {
        assert_eq!(
            classify(&event("model.registered", "model/m/1")),
            Effect::Everyone
        );
        assert_eq!(
            classify(&event("endpoint.deleted", "endpoint/e")),
            Effect::Everyone
        );
        assert_eq!(
            classify(&event("device.revoked", "device/dev-1")),
            Effect::Revoked("dev-1".into())
        );
        assert_eq!(
            classify(&event("device.updated", "device/dev-1")),
            Effect::Device("dev-1".into())
        );
        for (k, o) in [
            ("device.online", "device/dev-1"),
            ("deployment.activated", "device/dev-1/e/blue"),
            ("device.enrolled", "device/dev-2"),
            ("device.revoked", "device/"),
        ] {
            assert_eq!(classify(&event(k, o)), Effect::Nothing, "{k} {o}");
        }
    }
}
