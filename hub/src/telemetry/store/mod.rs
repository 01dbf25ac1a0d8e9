//! The telemetry database, `DATA/telemetry.redb`: windows and their
//! downsampled hourly merges, deduplication marks, events, webhooks and their
//! delivery logs, alert rules and active alerts.
//!
//! Design: a second redb file beside the registry's `hub.redb` (one database
//! per concern), so the high write rate of ingest never contends with the
//! registry's single writer, and the registry store stays untouched. Records
//! are CBOR with a schema version, as in the registry store; windows are the
//! protocol's own CBOR encoding.
//!
//! Keys:
//! - windows: `(device, end, epoch, last_seq)`: a device's windows in time order.
//! - hourly: `(device, hour start, epoch)`: merges of windows past retention.
//! - marks: `(device, epoch)` → `(acked, updated)`: the deduplication
//!   watermark, written in the same transaction as the windows it covers.
//!
//! # Layout
//! - `windows.rs`: windows, marks, retention and downsampling.
//! - `events.rs`: the event log.
//! - `webhooks.rs`: webhooks, their cursors and delivery logs.
//! - `alerts.rs`: API alert rules and active alerts.

mod alerts;
mod events;
mod webhooks;
mod windows;

use std::path::Path;

use redb::{Database, TableDefinition};

pub use webhooks::WebhookRecord;
pub use windows::{StoredMark, SweepReport};

use crate::store::StoreError;

const WINDOWS: TableDefinition<'_, (&str, i64, u64, u64), &[u8]> = TableDefinition::new("windows");
const HOURLY: TableDefinition<'_, (&str, i64, u64), &[u8]> = TableDefinition::new("hourly");
const MARKS: TableDefinition<'_, (&str, u64), (u64, i64)> = TableDefinition::new("marks");
const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
const WEBHOOKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("webhooks");
const WEBHOOK_CURSORS: TableDefinition<'_, &str, u64> = TableDefinition::new("webhook_cursors");
const DELIVERIES: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("deliveries");
const ALERT_RULES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("alert_rules");
const ACTIVE_ALERTS: TableDefinition<'_, (&str, &str), &[u8]> =
    TableDefinition::new("active_alerts");

fn be(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The telemetry database.
#[derive(Debug)]
pub struct TelemetryStore {
    db: Database,
}

impl TelemetryStore {
    /// Opens (or creates) the database at `path` with every table.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(be)?;
        {
            tx.open_table(WINDOWS).map_err(be)?;
            tx.open_table(HOURLY).map_err(be)?;
            tx.open_table(MARKS).map_err(be)?;
            tx.open_table(EVENTS).map_err(be)?;
            tx.open_table(WEBHOOKS).map_err(be)?;
            tx.open_table(WEBHOOK_CURSORS).map_err(be)?;
            tx.open_table(DELIVERIES).map_err(be)?;
            tx.open_table(ALERT_RULES).map_err(be)?;
            tx.open_table(ACTIVE_ALERTS).map_err(be)?;
        }
        tx.commit().map_err(be)?;
        Ok(Self { db })
    }
}
