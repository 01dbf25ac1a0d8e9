//! The signing side: building and signing a repository's metadata.
//!
//! Used by the `flotilla` CLI (`keys init`, `bundle pack`), the hub, and tests that
//! need a real trust chain. Versions are chosen by the caller; this module only
//! keeps the references between documents (timestamp → snapshot → targets) right.

use super::keys::SigningKey;
use super::metadata::{Envelope, MetaFile, Snapshot, Targets, Timestamp};
use super::TufError;
use crate::time::UtcTime;

/// The online keys: everything a running hub signs with. Root keys stay offline.
#[derive(Debug)]
pub struct OnlineKeys {
    /// Signs `targets.json`.
    pub targets: SigningKey,
    /// Signs `snapshot.json`.
    pub snapshot: SigningKey,
    /// Signs `timestamp.json`.
    pub timestamp: SigningKey,
    /// Signs director documents.
    pub director: SigningKey,
}

/// Signed targets, snapshot and timestamp, published together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// `targets.json` bytes.
    pub targets: Vec<u8>,
    /// `snapshot.json` bytes.
    pub snapshot: Vec<u8>,
    /// `timestamp.json` bytes.
    pub timestamp: Vec<u8>,
}

/// How long each online document stays valid, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiries {
    /// targets.json lifetime.
    pub targets_secs: i64,
    /// snapshot.json lifetime.
    pub snapshot_secs: i64,
    /// timestamp.json lifetime.
    pub timestamp_secs: i64,
}

impl Default for Expiries {
    fn default() -> Self {
        const DAY: i64 = 86_400;
        Self {
            targets_secs: 90 * DAY,
            snapshot_secs: 30 * DAY,
            timestamp_secs: 7 * DAY,
        }
    }
}

/// Signs `targets` and a snapshot and timestamp that pin it. The snapshot and
/// timestamp take `version`, which must grow with every publication.
pub fn publish(
    targets: &Targets,
    version: u64,
    now: UtcTime,
    expiries: Expiries,
    keys: &OnlineKeys,
) -> Result<Publication, TufError> {
    let targets_raw = Envelope::sign(targets, &[&keys.targets])?;
    let snapshot = Snapshot::new(
        version,
        now.plus_secs(expiries.snapshot_secs),
        MetaFile::describing(targets.version, &targets_raw),
    );
    let snapshot_raw = Envelope::sign(&snapshot, &[&keys.snapshot])?;
    let timestamp = Timestamp::new(
        version,
        now.plus_secs(expiries.timestamp_secs),
        MetaFile::describing(version, &snapshot_raw),
    );
    let timestamp_raw = Envelope::sign(&timestamp, &[&keys.timestamp])?;
    Ok(Publication {
        targets: targets_raw,
        snapshot: snapshot_raw,
        timestamp: timestamp_raw,
    })
}
