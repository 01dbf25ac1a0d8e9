//! The live sync connections, one per device: for revocation (close the
//! device's connection now), replacement (a device that connects again closes
//! its older connection), and waking a device's session when only its own
//! desired state changed.
//!
//! Presence writes (connected / disconnected) go through
//! [`Sessions::presence`] so that an old connection's "offline" never lands
//! after a new connection's "online" for the same device.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// One device's live connection.
#[derive(Debug)]
struct Live {
    // invariant: unique over the process lifetime.
    id: u64,
    conn: quinn::Connection,
    wake: Arc<Notify>,
}

/// Device id → its live connection.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<String, Live>>,
    presence: Mutex<()>,
    next: AtomicU64,
}

/// A registered session: its id and the bell its device-specific changes ring.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) id: u64,
    pub(crate) wake: Arc<Notify>,
}

impl Sessions {
    fn live(&self) -> MutexGuard<'_, HashMap<String, Live>> {
        // Every critical section is a single map operation: nothing half-done.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serialises presence writes; hold it while checking [`Sessions::is_current`]
    /// or [`Sessions::is_connected`] and writing.
    pub(crate) fn presence(&self) -> MutexGuard<'_, ()> {
        self.presence.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `conn` as `device`'s connection, closing an older one with
    /// `REPLACED`.
    pub(crate) fn open(&self, device: &str, conn: quinn::Connection) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let old = self.live().insert(
            device.to_string(),
            Live {
                id,
                conn,
                wake: wake.clone(),
            },
        );
        if let Some(old) = old {
            tracing::info!(device, "a newer connection replaces the device's older one");
            old.conn.close(
                quinn::VarInt::from_u32(flotilla_net::close::REPLACED),
                b"replaced by a newer connection",
            );
        }
        Ticket { id, wake }
    }

    /// Forgets session `id` of `device` if it is still the current one.
    pub(crate) fn close(&self, device: &str, id: u64) -> bool {
        let mut live = self.live();
        if live.get(device).is_some_and(|l| l.id == id) {
            live.remove(device);
            return true;
        }
        false
    }

    /// Whether session `id` is `device`'s current one.
    pub(crate) fn is_current(&self, device: &str, id: u64) -> bool {
        self.live().get(device).is_some_and(|l| l.id == id)
    }

    /// Whether `device` has a live session.
    pub(crate) fn is_connected(&self, device: &str) -> bool {
        self.live().contains_key(device)
    }

    /// Rings `device`'s session: its desired state may have changed.
    pub(crate) fn wake(&self, device: &str) {
        if let Some(l) = self.live().get(device) {
            l.wake.notify_one();
        }
    }

    /// Closes `device`'s connection with `REVOKED`.
    pub(crate) fn revoke(&self, device: &str) {
        if let Some(l) = self.live().remove(device) {
            tracing::info!(device, "closing the connection of a revoked device");
            l.conn.close(
                quinn::VarInt::from_u32(flotilla_net::close::REVOKED),
                b"device revoked",
            );
        }
    }

    /// Closes the connections of every device `revoked` says is revoked.
    pub(crate) fn revoke_where(&self, revoked: impl Fn(&str) -> bool) {
        let devices: Vec<String> = self.live().keys().filter(|d| revoked(d)).cloned().collect();
        for d in devices {
            self.revoke(&d);
        }
    }

    /// Live sessions.
    pub(crate) fn len(&self) -> usize {
        self.live().len()
    }
}
