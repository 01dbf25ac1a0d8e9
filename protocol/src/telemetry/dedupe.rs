//! Hub-side deduplication of telemetry windows by (device, epoch, sequence).
//!
//! Telemetry is at-least-once: an agent republishes every window until an ack
//! covers it, so the hub sees duplicates after broker, hub and agent
//! restarts. [`Dedupe`] keeps, per device and outbox epoch, the highest
//! sequence number stored (`acked`) and sorts each arriving window:
//! - [`Verdict::Duplicate`] when `last_seq <= acked`: already stored; ack again.
//! - [`Verdict::New`] when `first_seq > acked`: store it, then [`Dedupe::record`].
//! - [`Verdict::Overlap`] when `first_seq <= acked < last_seq`: a merged window
//!   holding some windows the hub stored and some it did not (see below).
//!   Accept it (it is the only copy of the new part), record it, count it.
//!
//! This relies on a device's windows arriving in sequence order, which holds
//! because the outbox publishes oldest first on one topic over one MQTT
//! session, and MQTT keeps QoS 1 messages of one topic in order; a window
//! overtaken by a later one would be taken for a duplicate and acked.
//!
//! # Merged windows and partial overlaps
//! The agent's outbox merges only windows it still holds, that is windows no
//! ack has covered, and a window the hub has not stored can never be covered
//! by an ack. So a merged window can only partially overlap the hub's
//! watermark when the hub stored one of its parts *and its ack had not
//! reached the agent yet* (an ack in flight, or a window published just
//! before a broker outage and stored from the broker's queue). The outbox
//! makes that rare by merging windows it has not published before those it
//! has; it cannot make it impossible, because acks are asynchronous.
//! Splitting a merged window back into parts is impossible (its counters and
//! histograms are sums), so the hub accepts it whole and the overlapped
//! part, at most the windows stored between the merge and the ack, is
//! counted twice. Rejecting it instead would lose the new part for good,
//! which the telemetry invariant forbids; [`Verdict::Overlap`] says how many
//! sequence numbers were doubled so the hub can report it.
//!
//! An agent whose database is wiped starts a new epoch and numbers from 1
//! again; epochs are tracked separately, so its new windows are not taken for
//! old ones. Up to [`MAX_EPOCHS_PER_DEVICE`] epochs per device are kept.

use std::collections::HashMap;

use super::ack::WindowAck;
use super::window::WindowKey;

/// Outbox epochs remembered per device; the least recently used is forgotten
/// first. Late windows of a forgotten epoch are taken as new.
pub const MAX_EPOCHS_PER_DEVICE: usize = 4;

/// What to do with an arriving window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Entirely new: store it.
    New,
    /// Entirely stored already: do not store; ack again.
    Duplicate,
    /// Partly stored already (a merged window): store it whole.
    Overlap {
        /// Sequence numbers of the window that were already stored
        /// (`first_seq..=acked`), whose data is now counted twice.
        doubled: u64,
    },
}

impl Verdict {
    /// Whether the hub should store the window.
    pub fn accept(self) -> bool {
        !matches!(self, Verdict::Duplicate)
    }
}

#[derive(Debug, Clone, Copy)]
struct EpochMark {
    epoch: u64,
    /// Highest sequence number stored.
    acked: u64,
    /// When this epoch was last recorded (a counter, for eviction).
    used: u64,
}

/// Per device and epoch, the highest sequence number stored.
#[derive(Debug, Clone, Default)]
pub struct Dedupe {
    // invariant: at most MAX_EPOCHS_PER_DEVICE marks per device, epochs unique.
    devices: HashMap<String, Vec<EpochMark>>,
    clock: u64,
}

impl Dedupe {
    /// Knows nothing: every window is new.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sorts the window `key` (without recording anything).
    pub fn check(&self, key: &WindowKey<'_>) -> Verdict {
        let acked = self.acked(key.device, key.epoch);
        if key.last_seq <= acked {
            Verdict::Duplicate
        } else if key.first_seq > acked {
            Verdict::New
        } else {
            Verdict::Overlap {
                doubled: acked - key.first_seq + 1,
            }
        }
    }

    /// Records that the window `key` is stored durably: `acked` becomes at
    /// least its `last_seq`. Call it after the store's commit.
    pub fn record(&mut self, key: &WindowKey<'_>) {
        self.raise(key.device, key.epoch, key.last_seq);
    }

    /// Restores a mark from the hub's store after a restart.
    pub fn restore(&mut self, device: &str, epoch: u64, acked: u64) {
        self.raise(device, epoch, acked);
    }

    /// Highest sequence number stored for `device` in `epoch` (0: none).
    pub fn acked(&self, device: &str, epoch: u64) -> u64 {
        self.devices
            .get(device)
            .and_then(|marks| marks.iter().find(|m| m.epoch == epoch))
            .map_or(0, |m| m.acked)
    }

    /// The ack to send `device` for `epoch` now.
    pub fn ack(&self, device: &str, epoch: u64) -> WindowAck {
        WindowAck::new(device, epoch, self.acked(device, epoch))
    }

    /// Forgets a device (revoked or deleted).
    pub fn forget(&mut self, device: &str) {
        self.devices.remove(device);
    }

    fn raise(&mut self, device: &str, epoch: u64, seq: u64) {
        self.clock += 1;
        let used = self.clock;
        let marks = self.devices.entry(device.to_owned()).or_default();
        if let Some(m) = marks.iter_mut().find(|m| m.epoch == epoch) {
            m.acked = m.acked.max(seq);
            m.used = used;
            return;
        }
        if marks.len() >= MAX_EPOCHS_PER_DEVICE {
            if let Some(oldest) = marks
                .iter()
                .enumerate()
                .min_by_key(|(_, m)| m.used)
                .map(|(i, _)| i)
            {
                marks.swap_remove(oldest);
            }
        }
        marks.push(EpochMark {
            epoch,
            acked: seq,
            used,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(first_seq: u64, last_seq: u64) -> WindowKey<'static> {
        WindowKey {
            device: "dev-1",
            epoch: 1,
            first_seq,
            last_seq,
        }
    }

    /// The hub's ingest step: check, store if accepted, record.
    fn ingest(d: &mut Dedupe, k: WindowKey<'_>) -> Verdict {
        let v = d.check(&k);
        if v.accept() {
            d.record(&k);
        }
        v
    }

    #[test]
    fn windows_are_new_once_and_duplicates_after() {
        let mut d = Dedupe::new();
        assert_eq!(ingest(&mut d, key(1, 1)), Verdict::New);
        assert_eq!(ingest(&mut d, key(2, 2)), Verdict::New);
        assert_eq!(ingest(&mut d, key(1, 1)), Verdict::Duplicate);
        assert_eq!(ingest(&mut d, key(2, 2)), Verdict::Duplicate);
        assert_eq!(d.ack("dev-1", 1), WindowAck::new("dev-1", 1, 2));
    }

    #[test]
    fn a_merged_window_is_deduplicated_by_its_whole_range() {
        let mut d = Dedupe::new();
        // Windows 3..=6 merged by the outbox, then republished.
        assert_eq!(ingest(&mut d, key(3, 6)), Verdict::New);
        assert_eq!(ingest(&mut d, key(3, 6)), Verdict::Duplicate);
        assert_eq!(ingest(&mut d, key(4, 5)), Verdict::Duplicate);
        assert_eq!(d.acked("dev-1", 1), 6);
        // A gap left by windows the outbox dropped does not block later ones.
        assert_eq!(ingest(&mut d, key(9, 9)), Verdict::New);
    }

    #[test]
    fn a_partial_overlap_is_accepted_and_reported() {
        let mut d = Dedupe::new();
        ingest(&mut d, key(1, 1));
        ingest(&mut d, key(2, 2));
        // The agent merged 2 and 3 before the ack for 2 reached it.
        assert_eq!(ingest(&mut d, key(2, 3)), Verdict::Overlap { doubled: 1 });
        assert_eq!(d.acked("dev-1", 1), 3);
    }

    #[test]
    fn epochs_and_devices_are_numbered_apart() {
        let mut d = Dedupe::new();
        ingest(&mut d, key(1, 50));
        let wiped = WindowKey {
            epoch: 2,
            ..key(1, 1)
        };
        assert_eq!(ingest(&mut d, wiped), Verdict::New);
        let other = WindowKey {
            device: "dev-2",
            ..key(1, 1)
        };
        assert_eq!(ingest(&mut d, other), Verdict::New);
        assert_eq!(d.acked("dev-1", 1), 50);
        assert_eq!(d.acked("dev-1", 2), 1);
        for epoch in 3..10 {
            ingest(&mut d, WindowKey { epoch, ..key(1, 1) });
        }
        assert!(d.devices["dev-1"].len() <= MAX_EPOCHS_PER_DEVICE);
        d.forget("dev-1");
        assert_eq!(d.acked("dev-1", 9), 0);
    }

    #[test]
    fn restored_marks_survive_a_hub_restart() {
        let mut d = Dedupe::new();
        d.restore("dev-1", 1, 7);
        assert_eq!(d.check(&key(5, 7)), Verdict::Duplicate);
        assert_eq!(d.check(&key(8, 8)), Verdict::New);
    }
}
