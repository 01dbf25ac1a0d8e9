//! The event log: every lifecycle event with an increasing id.

use flotilla_protocol::time::UtcTime;
use redb::{ReadableDatabase, ReadableTable};

use super::{be, TelemetryStore, EVENTS};
use crate::api::types::EventRecord;
use crate::events::Event;
use crate::store::redb_store::{decode, encode};
use crate::store::StoreError;

impl TelemetryStore {
    /// Stores `event` under the next id and returns it as recorded.
    pub fn append_event(&self, event: Event) -> Result<EventRecord, StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let record;
        {
            let mut t = tx.open_table(EVENTS).map_err(be)?;
            let id = t.last().map_err(be)?.map_or(0, |(k, _)| k.value()) + 1;
            record = EventRecord {
                id,
                kind: event.kind,
                time: event.time,
                object: event.object,
                actor: event.actor,
                data: event.data,
            };
            t.insert(id, encode(&record)?.as_slice()).map_err(be)?;
        }
        tx.commit().map_err(be)?;
        Ok(record)
    }

    /// Events with `id > since`, of one of `kinds` (all when empty), at most `limit`.
    pub fn events(
        &self,
        since: u64,
        kinds: &[String],
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(EVENTS).map_err(be)?;
        let mut out = Vec::new();
        for item in t.range(since.saturating_add(1)..).map_err(be)? {
            if out.len() >= limit {
                break;
            }
            let r: EventRecord = decode(item.map_err(be)?.1.value())?;
            if kinds.is_empty() || kinds.contains(&r.kind) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The last `n` events of one of `kinds` (all when empty), oldest first.
    pub fn events_tail(&self, kinds: &[String], n: usize) -> Result<Vec<EventRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(EVENTS).map_err(be)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(be)?.rev() {
            if out.len() >= n {
                break;
            }
            let r: EventRecord = decode(item.map_err(be)?.1.value())?;
            if kinds.is_empty() || kinds.contains(&r.kind) {
                out.push(r);
            }
        }
        out.reverse();
        Ok(out)
    }

    /// The id of the last event stored (0: none).
    pub fn last_event_id(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(EVENTS).map_err(be)?;
        let last = t.last().map_err(be)?.map_or(0, |(k, _)| k.value());
        Ok(last)
    }

    /// Removes events older than `before`, oldest first; returns how many.
    /// Ids are never reused: the newest event always stays.
    pub(super) fn prune_events(&self, before: UtcTime) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let mut n = 0;
        {
            let mut t = tx.open_table(EVENTS).map_err(be)?;
            let last = t.last().map_err(be)?.map_or(0, |(k, _)| k.value());
            let mut old = Vec::new();
            for item in t.iter().map_err(be)? {
                let (k, v) = item.map_err(be)?;
                let r: EventRecord = decode(v.value())?;
                let at = UtcTime::parse(&r.time).map_or(i64::MAX, |t| t.0);
                if at >= before.0 || k.value() == last {
                    break;
                }
                old.push(k.value());
            }
            for id in old {
                t.remove(id).map_err(be)?;
                n += 1;
            }
        }
        tx.commit().map_err(be)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, time: &str) -> Event {
        Event {
            kind: kind.into(),
            time: time.into(),
            object: "x".into(),
            actor: "a".into(),
            data: serde_json::json!({"n": 1}),
        }
    }

    #[test]
    fn events_get_increasing_ids_and_filter_by_type() {
        let dir = tempfile::tempdir().unwrap();
        let s = TelemetryStore::open(&dir.path().join("t.redb")).unwrap();
        let a = s
            .append_event(event("model.registered", "2030-01-01T00:00:00Z"))
            .unwrap();
        let b = s
            .append_event(event("alert.fired", "2030-01-01T00:00:01Z"))
            .unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        assert_eq!(s.events(0, &[], 10).unwrap().len(), 2);
        assert_eq!(s.events(1, &[], 10).unwrap()[0].id, 2);
        let tail = s.events_tail(&[], 1).unwrap();
        assert_eq!(tail[0].id, 2);
        let fired = s.events(0, &["alert.fired".into()], 10).unwrap();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].data["n"], 1);
        assert_eq!(
            s.prune_events(UtcTime::parse("2031-01-01T00:00:00Z").unwrap())
                .unwrap(),
            1
        );
        assert_eq!(s.last_event_id().unwrap(), 2, "the newest event stays");
        let c = s.append_event(event("x", "2031-01-01T00:00:00Z")).unwrap();
        assert_eq!(c.id, 3, "ids are not reused");
    }
}
