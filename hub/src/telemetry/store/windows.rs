//! Windows, deduplication marks, retention and hourly downsampling.

use std::collections::BTreeMap;

use flotilla_protocol::telemetry::{MergeError, TelemetryWindow};
use flotilla_protocol::time::UtcTime;
use redb::{ReadableDatabase, ReadableTable};

use super::{be, TelemetryStore, HOURLY, MARKS, WINDOWS};
use crate::store::StoreError;

/// A deduplication watermark as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMark {
    /// Device id.
    pub device: String,
    /// Outbox epoch.
    pub epoch: u64,
    /// Highest sequence number stored.
    pub acked: u64,
    /// When it was last raised (hub clock, seconds).
    pub updated: i64,
}

/// What one retention sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Raw windows merged into hourly rows and removed.
    pub downsampled: u64,
    /// Hourly rows removed.
    pub hourly_removed: u64,
    /// Events removed.
    pub events_removed: u64,
}

/// Raw windows moved per transaction by a sweep.
const SWEEP_BATCH: usize = 5_000;

/// Decodes a window this store wrote (trusted: no limits to apply again).
fn decode_window(bytes: &[u8]) -> Result<TelemetryWindow, StoreError> {
    ciborium::from_reader(bytes).map_err(|e| StoreError::Backend(format!("corrupt window: {e}")))
}

/// Start of the hour holding `t`.
fn hour_of(t: i64) -> i64 {
    t.div_euclid(3600) * 3600
}

/// Merges `w` into the hourly row `acc`. Hourly rows only add up counts, so
/// sequence numbers lose their meaning there: a window whose range overlaps
/// the row's (a merged window the hub stored as an overlap) is renumbered
/// after it, and drift counts of another shape are left out.
pub(crate) fn fold_into(acc: &mut TelemetryWindow, w: &TelemetryWindow) {
    let mut part = w.clone();
    part.device.clone_from(&acc.device);
    part.epoch = acc.epoch;
    if part.first_seq <= acc.last_seq && part.last_seq >= acc.first_seq {
        let width = part.last_seq - part.first_seq;
        part.first_seq = acc.last_seq.saturating_add(1);
        part.last_seq = part.first_seq.saturating_add(width);
    }
    if let Err(MergeError::DriftShape { .. }) = acc.merge(&part) {
        part.drift.clear();
        let _ = acc.merge(&part);
    }
}

impl TelemetryStore {
    /// Stores `windows` (already deduplicated) and raises each device's
    /// mark to their `last_seq`, in one transaction: after it commits, they
    /// may be acknowledged.
    pub fn store_windows(
        &self,
        windows: &[TelemetryWindow],
        now: UtcTime,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        {
            let mut t = tx.open_table(WINDOWS).map_err(be)?;
            let mut marks = tx.open_table(MARKS).map_err(be)?;
            for w in windows {
                t.insert(
                    (w.device.as_str(), w.end.0, w.epoch, w.last_seq),
                    w.encode().as_slice(),
                )
                .map_err(be)?;
                let key = (w.device.as_str(), w.epoch);
                let acked = marks.get(key).map_err(be)?.map_or(0, |v| v.value().0);
                marks
                    .insert(key, (acked.max(w.last_seq), now.0))
                    .map_err(be)?;
            }
        }
        tx.commit().map_err(be)
    }

    /// Every deduplication mark, least recently raised first (so that
    /// restoring them in order keeps the most recent epochs).
    pub fn marks(&self) -> Result<Vec<StoredMark>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(MARKS).map_err(be)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(be)? {
            let (k, v) = item.map_err(be)?;
            let (device, epoch) = k.value();
            let (acked, updated) = v.value();
            out.push(StoredMark {
                device: device.to_string(),
                epoch,
                acked,
                updated,
            });
        }
        out.sort_by_key(|m| m.updated);
        Ok(out)
    }

    /// Devices that have sent windows.
    pub fn devices(&self) -> Result<Vec<String>, StoreError> {
        let mut out: Vec<String> = self.marks()?.into_iter().map(|m| m.device).collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The window of `device` that ended last.
    pub fn latest_window(&self, device: &str) -> Result<Option<TelemetryWindow>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(WINDOWS).map_err(be)?;
        let mut r = t
            .range((device, i64::MIN, 0, 0)..=(device, i64::MAX, u64::MAX, u64::MAX))
            .map_err(be)?;
        match r.next_back() {
            Some(item) => Ok(Some(decode_window(item.map_err(be)?.1.value())?)),
            None => Ok(None),
        }
    }

    /// Windows of `device` that ended in `from..=to`, oldest first, at most `limit`.
    pub fn windows_between(
        &self,
        device: &str,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<Vec<TelemetryWindow>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(WINDOWS).map_err(be)?;
        let mut out = Vec::new();
        for item in t
            .range((device, from, 0, 0)..=(device, to, u64::MAX, u64::MAX))
            .map_err(be)?
            .take(limit)
        {
            out.push(decode_window(item.map_err(be)?.1.value())?);
        }
        Ok(out)
    }

    /// Windows stored for `device`.
    pub fn window_count(&self, device: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(WINDOWS).map_err(be)?;
        let n = t
            .range((device, i64::MIN, 0, 0)..=(device, i64::MAX, u64::MAX, u64::MAX))
            .map_err(be)?
            .count();
        Ok(n as u64)
    }

    /// Hourly merges of `device` for hours starting in `from..=to`.
    pub fn hourly_between(
        &self,
        device: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<TelemetryWindow>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(HOURLY).map_err(be)?;
        let mut out = Vec::new();
        for item in t
            .range((device, from, 0)..=(device, to, u64::MAX))
            .map_err(be)?
        {
            out.push(decode_window(item.map_err(be)?.1.value())?);
        }
        Ok(out)
    }

    /// Retention: raw windows that ended before `now - retention_secs` are
    /// merged into their device's hourly row (per epoch) and removed; hourly
    /// rows older than `now - hourly_retention_secs` are removed, and so are
    /// events.
    pub fn sweep(
        &self,
        now: UtcTime,
        retention_secs: u64,
        hourly_retention_secs: u64,
    ) -> Result<SweepReport, StoreError> {
        let cutoff = now.0.saturating_sub(retention_secs as i64);
        let hourly_cutoff = now.0.saturating_sub(hourly_retention_secs as i64);
        let mut report = SweepReport::default();
        for device in self.devices()? {
            loop {
                let moved = self.downsample_batch(&device, cutoff)?;
                report.downsampled += moved as u64;
                if moved < SWEEP_BATCH {
                    break;
                }
            }
            let tx = self.db.begin_write().map_err(be)?;
            {
                let mut h = tx.open_table(HOURLY).map_err(be)?;
                let old: Vec<(i64, u64)> = h
                    .range((device.as_str(), i64::MIN, 0)..(device.as_str(), hourly_cutoff, 0))
                    .map_err(be)?
                    .map(|item| item.map(|(k, _)| (k.value().1, k.value().2)))
                    .collect::<Result<_, _>>()
                    .map_err(be)?;
                for (hour, epoch) in old {
                    h.remove((device.as_str(), hour, epoch)).map_err(be)?;
                    report.hourly_removed += 1;
                }
            }
            tx.commit().map_err(be)?;
        }
        report.events_removed = self.prune_events(UtcTime(hourly_cutoff))?;
        Ok(report)
    }

    /// Moves up to [`SWEEP_BATCH`] raw windows of `device` that ended before
    /// `cutoff` into hourly rows; returns how many.
    fn downsample_batch(&self, device: &str, cutoff: i64) -> Result<usize, StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let moved;
        {
            let mut t = tx.open_table(WINDOWS).map_err(be)?;
            let mut h = tx.open_table(HOURLY).map_err(be)?;
            let mut old = Vec::new();
            for item in t
                .range((device, i64::MIN, 0, 0)..(device, cutoff, 0, 0))
                .map_err(be)?
                .take(SWEEP_BATCH)
            {
                let (k, v) = item.map_err(be)?;
                let (_, end, epoch, last) = k.value();
                old.push(((end, epoch, last), decode_window(v.value())?));
            }
            let mut buckets: BTreeMap<(i64, u64), TelemetryWindow> = BTreeMap::new();
            for (_, w) in &old {
                let key = (hour_of(w.end.0), w.epoch);
                if let std::collections::btree_map::Entry::Vacant(slot) = buckets.entry(key) {
                    if let Some(v) = h.get((device, key.0, key.1)).map_err(be)? {
                        slot.insert(decode_window(v.value())?);
                    }
                }
                match buckets.get_mut(&key) {
                    Some(acc) => fold_into(acc, w),
                    None => {
                        buckets.insert(key, w.clone());
                    }
                }
            }
            for ((hour, epoch), w) in &buckets {
                h.insert((device, *hour, *epoch), w.encode().as_slice())
                    .map_err(be)?;
            }
            for ((end, epoch, last), _) in &old {
                t.remove((device, *end, *epoch, *last)).map_err(be)?;
            }
            moved = old.len();
        }
        tx.commit().map_err(be)?;
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(device: &str, seq: u64, end: i64, requests: u64) -> TelemetryWindow {
        let mut w = TelemetryWindow::new(device, UtcTime(end - 10), UtcTime(end));
        (w.epoch, w.first_seq, w.last_seq) = (7, seq, seq);
        let mut e = flotilla_protocol::telemetry::EndpointStats::new("fraud", "blue");
        e.requests = requests;
        e.latency_us.record_n(1_000, requests);
        w.endpoints.push(e);
        w
    }

    #[test]
    fn windows_and_marks_commit_together_and_come_back_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = TelemetryStore::open(&dir.path().join("t.redb")).unwrap();
        s.store_windows(
            &[window("d1", 1, 100, 5), window("d1", 2, 110, 6)],
            UtcTime(1),
        )
        .unwrap();
        s.store_windows(&[window("d2", 1, 105, 1)], UtcTime(2))
            .unwrap();
        let marks = s.marks().unwrap();
        assert_eq!(marks.len(), 2);
        assert_eq!((marks[0].device.as_str(), marks[0].acked), ("d1", 2));
        assert_eq!(s.latest_window("d1").unwrap().unwrap().last_seq, 2);
        assert_eq!(s.windows_between("d1", 0, 105, 10).unwrap().len(), 1);
        assert_eq!(s.window_count("d1").unwrap(), 2);
        assert_eq!(s.devices().unwrap(), vec!["d1", "d2"]);
        drop(s);
        let s = TelemetryStore::open(&dir.path().join("t.redb")).unwrap();
        assert_eq!(s.marks().unwrap().len(), 2, "marks survive a reopen");
    }

    #[test]
    fn old_windows_are_merged_into_hourly_rows_and_those_expire_too() {
        let dir = tempfile::tempdir().unwrap();
        let s = TelemetryStore::open(&dir.path().join("t.redb")).unwrap();
        let ws: Vec<_> = (1..=10)
            .map(|i| window("d1", i, 7200 + 10 * i as i64, 3))
            .collect();
        s.store_windows(&ws, UtcTime(0)).unwrap();
        // An overlapping merged window, stored as the dedupe's Overlap verdict allows.
        let mut overlap = window("d1", 9, 7300, 4);
        overlap.last_seq = 11;
        overlap.span_count = 2;
        s.store_windows(&[overlap], UtcTime(0)).unwrap();
        let r = s.sweep(UtcTime(7200 + 200), 60, 3600).unwrap();
        assert_eq!(r.downsampled, 11);
        assert_eq!(s.window_count("d1").unwrap(), 0);
        let hourly = s.hourly_between("d1", 0, i64::MAX).unwrap();
        assert_eq!(hourly.len(), 1);
        assert_eq!(hourly[0].requests_total(), 34, "every request is kept");
        let r = s.sweep(UtcTime(7200 + 3600 * 3), 60, 3600).unwrap();
        assert_eq!(r.hourly_removed, 1);
        assert!(s.hourly_between("d1", 0, i64::MAX).unwrap().is_empty());
    }
}
