//! Test-only faults the hub injects into what it sends, so end-to-end tests can
//! prove that agents reject what they must: `FLOTILLA_TEST_FAULTS`, a
//! comma-separated list of
//!
//! - `corrupt-chunks=N`: flip one byte in each of the first `N` chunk
//!   payloads (`ChunkData` of a model chunk) the hub sends, counted over the
//!   whole process. Manifests fetched by digest are never corrupted, so that
//!   the fault reaches the agent's chunk verification;
//! - `replay-director`: remember the first signed director document sent to
//!   each device; whenever a newer one is pushed, push the old one again in an
//!   extra `MetadataUpdate` right after (a rollback attempt);
//! - `freeze-timestamp`: never re-sign timestamp.json before it expires (a hub
//!   whose timestamp key is gone, or a freeze attack), so agents receive
//!   expired metadata.
//!
//! None is on unless the variable is set, and the hub warns loudly at start
//! when one is. This module does not decide when a chunk or an update is sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Which faults to inject, as configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultSpec {
    /// How many `ChunkData` payloads to corrupt.
    pub corrupt_chunks: u64,
    /// Replay each device's first director document after a newer one.
    pub replay_director: bool,
    /// Never refresh timestamp.json before it expires.
    pub freeze_timestamp: bool,
}

impl FaultSpec {
    /// Parses `corrupt-chunks=N,replay-director` (any subset, any order).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut spec = Self::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once('=') {
                Some(("corrupt-chunks", n)) => {
                    spec.corrupt_chunks = n.trim().parse().map_err(|_| {
                        format!("corrupt-chunks={n:?}: expected a number of chunks")
                    })?;
                }
                None if item == "replay-director" => spec.replay_director = true,
                None if item == "freeze-timestamp" => spec.freeze_timestamp = true,
                _ => {
                    return Err(format!(
                        "unknown fault {item:?} (known: corrupt-chunks=N, replay-director, freeze-timestamp)"
                    ))
                }
            }
        }
        Ok(spec)
    }

    /// Whether any fault is on.
    pub fn any(&self) -> bool {
        self.corrupt_chunks > 0 || self.replay_director || self.freeze_timestamp
    }
}

impl std::fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.corrupt_chunks > 0 {
            parts.push(format!("corrupt-chunks={}", self.corrupt_chunks));
        }
        if self.replay_director {
            parts.push("replay-director".into());
        }
        if self.freeze_timestamp {
            parts.push("freeze-timestamp".into());
        }
        f.write_str(&parts.join(","))
    }
}

/// The faults at run time, with their process-wide state.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    corrupt_left: AtomicU64,
    replay_director: bool,
    // Device id → (version, signed bytes) of the first director document sent.
    first_director: Mutex<HashMap<String, (u64, Vec<u8>)>>,
}

impl Faults {
    pub(crate) fn new(spec: FaultSpec) -> Self {
        Self {
            corrupt_left: AtomicU64::new(spec.corrupt_chunks),
            replay_director: spec.replay_director,
            first_director: Mutex::default(),
        }
    }

    /// Flips a byte of `payload` while corruptions are left; returns whether it did.
    pub(crate) fn corrupt(&self, payload: &mut [u8]) -> bool {
        if payload.is_empty() {
            return false;
        }
        let took = self
            .corrupt_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if took {
            let mid = payload.len() / 2;
            payload[mid] ^= 0x01;
        }
        took
    }

    /// Notes that director `version` (`bytes`) was pushed to `device`; returns
    /// the first document ever sent to it when this one is newer and replaying
    /// is on.
    pub(crate) fn director_sent(
        &self,
        device: &str,
        version: u64,
        bytes: &[u8],
    ) -> Option<Vec<u8>> {
        if !self.replay_director {
            return None;
        }
        let mut first = self
            .first_director
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match first.get(device) {
            None => {
                first.insert(device.to_string(), (version, bytes.to_vec()));
                None
            }
            Some((v, old)) if *v < version => Some(old.clone()),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_parse_and_unknown_faults_are_refused() {
        assert_eq!(FaultSpec::parse("").unwrap(), FaultSpec::default());
        let s = FaultSpec::parse("corrupt-chunks=2, replay-director").unwrap();
        assert_eq!((s.corrupt_chunks, s.replay_director), (2, true));
        assert_eq!(s.to_string(), "corrupt-chunks=2,replay-director");
        assert!(FaultSpec::parse("corrupt-chunks=lots").is_err());
        assert!(FaultSpec::parse("drop-everything").is_err());
        assert!(!FaultSpec::default().any());
        let frozen = FaultSpec::parse("freeze-timestamp").unwrap();
        assert!(frozen.freeze_timestamp && frozen.any());
        assert_eq!(frozen.to_string(), "freeze-timestamp");
    }

    #[test]
    fn only_the_first_n_payloads_are_corrupted() {
        let f = Faults::new(FaultSpec {
            corrupt_chunks: 2,
            ..FaultSpec::default()
        });
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut p = vec![0u8; 4];
            seen.push(f.corrupt(&mut p) && p != vec![0u8; 4]);
        }
        assert_eq!(seen, vec![true, true, false, false]);
    }

    #[test]
    fn the_first_director_is_replayed_only_after_a_newer_one() {
        let off = Faults::new(FaultSpec::default());
        assert_eq!(off.director_sent("d", 1, b"v1"), None);
        assert_eq!(off.director_sent("d", 2, b"v2"), None);
        let on = Faults::new(FaultSpec {
            replay_director: true,
            ..FaultSpec::default()
        });
        assert_eq!(on.director_sent("d", 1, b"v1"), None);
        assert_eq!(on.director_sent("d", 1, b"v1 again"), None);
        assert_eq!(on.director_sent("d", 2, b"v2"), Some(b"v1".to_vec()));
        assert_eq!(on.director_sent("e", 5, b"e5"), None, "per device");
    }
}
