//! Webhooks, the id of the last event each is done with, and their
//! delivery logs.

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{be, TelemetryStore, DELIVERIES, WEBHOOKS, WEBHOOK_CURSORS};
use crate::api::types::{DeliveryView, WebhookView};
use crate::store::redb_store::{decode, encode};
use crate::store::StoreError;

/// Delivery log entries kept per webhook; older ones are dropped.
pub(crate) const MAX_DELIVERIES_PER_WEBHOOK: u64 = 1000;

/// A webhook as stored, with its secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRecord {
    /// Id.
    pub id: String,
    /// Target URL.
    pub url: String,
    /// Event types; empty: all.
    pub events: Vec<String>,
    /// HMAC key.
    pub secret: String,
    /// When created.
    pub created_at: String,
    /// Who created it.
    pub created_by: String,
}

impl std::fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRecord")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl WebhookRecord {
    /// Whether this webhook wants events of `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == kind)
    }

    /// The API view (without the secret).
    pub fn view(&self, cursor: u64) -> WebhookView {
        WebhookView {
            id: self.id.clone(),
            url: self.url.clone(),
            events: self.events.clone(),
            created_at: self.created_at.clone(),
            created_by: self.created_by.clone(),
            cursor,
            secret: None,
        }
    }
}

impl TelemetryStore {
    /// Stores a new webhook whose cursor starts at `cursor` (the last event
    /// stored: a new webhook receives events from now on).
    pub fn create_webhook(&self, w: &WebhookRecord, cursor: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        {
            let mut t = tx.open_table(WEBHOOKS).map_err(be)?;
            if t.get(w.id.as_str()).map_err(be)?.is_some() {
                return Err(StoreError::Conflict(format!("webhook {} exists", w.id)));
            }
            t.insert(w.id.as_str(), encode(w)?.as_slice()).map_err(be)?;
            tx.open_table(WEBHOOK_CURSORS)
                .map_err(be)?
                .insert(w.id.as_str(), cursor)
                .map_err(be)?;
        }
        tx.commit().map_err(be)
    }

    /// Every webhook with its cursor.
    pub fn webhooks(&self) -> Result<Vec<(WebhookRecord, u64)>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(WEBHOOKS).map_err(be)?;
        let c = tx.open_table(WEBHOOK_CURSORS).map_err(be)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(be)? {
            let (k, v) = item.map_err(be)?;
            let cursor = c.get(k.value()).map_err(be)?.map_or(0, |v| v.value());
            out.push((decode(v.value())?, cursor));
        }
        Ok(out)
    }

    /// One webhook with its cursor.
    pub fn webhook(&self, id: &str) -> Result<Option<(WebhookRecord, u64)>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(WEBHOOKS).map_err(be)?;
        let c = tx.open_table(WEBHOOK_CURSORS).map_err(be)?;
        let Some(v) = t.get(id).map_err(be)? else {
            return Ok(None);
        };
        let cursor = c.get(id).map_err(be)?.map_or(0, |v| v.value());
        Ok(Some((decode(v.value())?, cursor)))
    }

    /// Removes a webhook, its cursor and its delivery log.
    pub fn delete_webhook(&self, id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        {
            let mut t = tx.open_table(WEBHOOKS).map_err(be)?;
            if t.remove(id).map_err(be)?.is_none() {
                return Err(StoreError::NotFound(format!("webhook {id}")));
            }
            tx.open_table(WEBHOOK_CURSORS)
                .map_err(be)?
                .remove(id)
                .map_err(be)?;
            let mut d = tx.open_table(DELIVERIES).map_err(be)?;
            d.retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                .map_err(be)?;
        }
        tx.commit().map_err(be)
    }

    /// Appends to a webhook's delivery log, and when the attempt settled
    /// the event (delivered or given up) moves its cursor to it, in one
    /// transaction. A webhook deleted meanwhile is left deleted.
    pub fn record_delivery(
        &self,
        id: &str,
        d: &DeliveryView,
        settled: bool,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        {
            if !webhook_exists(&tx, id)? {
                return Ok(());
            }
            let mut t = tx.open_table(DELIVERIES).map_err(be)?;
            let (first, last) = {
                let mut r = t.range((id, 0)..=(id, u64::MAX)).map_err(be)?;
                let first = r.next().transpose().map_err(be)?.map(|(k, _)| k.value().1);
                let last = r
                    .next_back()
                    .transpose()
                    .map_err(be)?
                    .map(|(k, _)| k.value().1);
                (first, last.or(first))
            };
            let seq = last.map_or(1, |l| l + 1);
            t.insert((id, seq), encode(d)?.as_slice()).map_err(be)?;
            if let Some(first) = first {
                if seq - first >= MAX_DELIVERIES_PER_WEBHOOK {
                    t.remove((id, first)).map_err(be)?;
                }
            }
            if settled {
                raise_cursor(&tx, id, d.event_id)?;
            }
        }
        tx.commit().map_err(be)
    }

    /// Moves a webhook's cursor past events it does not want.
    pub fn advance_cursor(&self, id: &str, to: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        {
            if !webhook_exists(&tx, id)? {
                return Ok(());
            }
            raise_cursor(&tx, id, to)?;
        }
        tx.commit().map_err(be)
    }

    /// The last `limit` delivery attempts of a webhook, oldest first.
    pub fn deliveries(&self, id: &str, limit: usize) -> Result<Vec<DeliveryView>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(DELIVERIES).map_err(be)?;
        let mut out = Vec::new();
        for item in t
            .range((id, 0)..=(id, u64::MAX))
            .map_err(be)?
            .rev()
            .take(limit)
        {
            out.push(decode(item.map_err(be)?.1.value())?);
        }
        out.reverse();
        Ok(out)
    }
}

/// Whether webhook `id` still exists, inside a write transaction.
fn webhook_exists(tx: &redb::WriteTransaction, id: &str) -> Result<bool, StoreError> {
    Ok(tx
        .open_table(WEBHOOKS)
        .map_err(be)?
        .get(id)
        .map_err(be)?
        .is_some())
}

/// Moves webhook `id`'s delivery cursor forward to `to` (never back).
fn raise_cursor(tx: &redb::WriteTransaction, id: &str, to: u64) -> Result<(), StoreError> {
    let mut c = tx.open_table(WEBHOOK_CURSORS).map_err(be)?;
    let cur = c.get(id).map_err(be)?.map_or(0, |v| v.value());
    c.insert(id, cur.max(to)).map_err(be)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook() -> WebhookRecord {
        WebhookRecord {
            id: "wh-1".into(),
            url: "http://127.0.0.1:9/x".into(),
            events: vec![],
            secret: "s".into(),
            created_at: "t".into(),
            created_by: "admin".into(),
        }
    }

    fn attempt(event_id: u64, attempt: u32) -> DeliveryView {
        DeliveryView {
            event_id,
            event_type: "x".into(),
            attempt,
            status: Some(500),
            error: None,
            outcome: "retrying".into(),
            time: "t".into(),
        }
    }

    #[test]
    fn deliveries_are_logged_and_settled_ones_move_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let s = TelemetryStore::open(&dir.path().join("t.redb")).unwrap();
        s.create_webhook(&hook(), 4).unwrap();
        assert!(s.create_webhook(&hook(), 4).is_err());
        s.record_delivery("wh-1", &attempt(5, 1), false).unwrap();
        assert_eq!(s.webhook("wh-1").unwrap().unwrap().1, 4);
        s.record_delivery("wh-1", &attempt(5, 2), true).unwrap();
        assert_eq!(s.webhook("wh-1").unwrap().unwrap().1, 5);
        let log = s.deliveries("wh-1", 10).unwrap();
        assert_eq!(
            log.iter().map(|d| d.attempt).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(
            !format!("{:?}", hook()).contains("secret: "),
            "no secret in logs"
        );
        s.delete_webhook("wh-1").unwrap();
        assert!(s.webhook("wh-1").unwrap().is_none());
        assert!(s.deliveries("wh-1", 10).unwrap().is_empty());
        s.record_delivery("wh-1", &attempt(6, 1), true).unwrap();
        assert!(
            s.deliveries("wh-1", 10).unwrap().is_empty(),
            "deleted stays deleted"
        );
    }

    #[test]
    fn the_delivery_log_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = TelemetryStore::open(&dir.path().join("t.redb")).unwrap();
        s.create_webhook(&hook(), 0).unwrap();
        for i in 0..MAX_DELIVERIES_PER_WEBHOOK + 5 {
            s.record_delivery("wh-1", &attempt(i, 1), true).unwrap();
        }
        let log = s.deliveries("wh-1", usize::MAX).unwrap();
        assert_eq!(log.len() as u64, MAX_DELIVERIES_PER_WEBHOOK);
        assert_eq!(log.last().unwrap().event_id, MAX_DELIVERIES_PER_WEBHOOK + 4);
    }
}
