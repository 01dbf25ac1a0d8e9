//! What metadata to push to one agent, and when: a sans-IO planner.
//!
//! The planner starts from the versions the agent's hello says it trusts and
//! remembers what it has sent since. Given the hub's current root chain, trust
//! publication and the device's director document, [`Planner::next`] returns
//! the `MetadataUpdate` to send, or nothing when the agent is up to date. It
//! reads no clock and no store: the session passes `now` and the documents in.
//!
//! Rules (DESIGN.md, hub → agent metadata push):
//! - roots newer than the agent's, ascending, no gaps, at most
//!   `Limits::max_roots_per_update` per update (the rest follow in the next);
//! - timestamp and snapshot always (the update's freshness);
//! - targets when its version differs from the agent's;
//! - the director document when its version differs from the agent's, or when
//!   the copy last sent is older than [`DIRECTOR_REFRESH_SECS`] (same version,
//!   fresh expiry);
//! - nothing at all before the first trust publication.

use std::collections::HashMap;

use flotilla_protocol::digest::Sha256Digest;
use flotilla_protocol::time::UtcTime;
use flotilla_protocol::wire::{ByteBuf, MetadataUpdate, TrustedVersions};

/// Re-send an unchanged director document this long after the last copy, so
/// that its expiry (`DIRECTOR_LIFETIME_SECS`, 7 days) never passes while the
/// agent stays connected.
pub const DIRECTOR_REFRESH_SECS: i64 = 86_400;

/// The hub's current trust publication, as pushed to agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrustSnapshot {
    /// Version of timestamp (and snapshot) metadata.
    pub(crate) timestamp_version: u64,
    /// Version of targets metadata.
    pub(crate) targets_version: u64,
    /// Signed `timestamp.json`.
    pub(crate) timestamp: Vec<u8>,
    /// Signed `snapshot.json`.
    pub(crate) snapshot: Vec<u8>,
    /// Signed `targets.json`.
    pub(crate) targets: Vec<u8>,
    /// Manifest digest → target path, for manifests fetched by digest.
    pub(crate) manifests: HashMap<Sha256Digest, String>,
}

/// A signed director document and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Director {
    pub(crate) version: u64,
    pub(crate) bytes: Vec<u8>,
}

/// Versions the agent has (or will have once it applies what was sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    root: u64,
    timestamp: Option<u64>,
    targets: Option<u64>,
    director: Option<u64>,
    // When the director the agent holds was sent; the hello time for the one
    // it came with (its age then is unknown).
    director_at: UtcTime,
}

/// Plans the metadata pushes of one connection.
#[derive(Debug, Clone)]
pub(crate) struct Planner {
    sent: Sent,
    max_roots: usize,
}

impl Planner {
    /// A planner for an agent that said hello with `trusted` at `now`.
    pub(crate) fn new(trusted: TrustedVersions, max_roots: usize, now: UtcTime) -> Self {
        Self {
            sent: Sent {
                root: trusted.root,
                timestamp: trusted.timestamp,
                targets: trusted.targets,
                director: trusted.director,
                director_at: now,
            },
            max_roots: max_roots.max(1),
        }
    }

    /// Whether the director copy the agent holds is due for a refresh.
    pub(crate) fn director_refresh_due(&self, now: UtcTime) -> bool {
        now.0.saturating_sub(self.sent.director_at.0) >= DIRECTOR_REFRESH_SECS
    }

    /// The update to send now, if any; what it carries counts as sent.
    pub(crate) fn next(
        &mut self,
        roots: &[(u64, Vec<u8>)],
        trust: Option<&TrustSnapshot>,
        director: Option<&Director>,
        now: UtcTime,
    ) -> Option<MetadataUpdate> {
        let trust = trust?;
        let mut newer: Vec<&(u64, Vec<u8>)> =
            roots.iter().filter(|(v, _)| *v > self.sent.root).collect();
        newer.sort_by_key(|(v, _)| *v);
        // No gaps: stop at the first missing version.
        let mut new_roots = Vec::new();
        let mut expect = self.sent.root.saturating_add(1);
        for (v, bytes) in newer.into_iter().take(self.max_roots) {
            if *v != expect {
                break;
            }
            new_roots.push((*v, bytes));
            expect = expect.saturating_add(1);
        }
        let timestamp_new = self
            .sent
            .timestamp
            .is_none_or(|t| t < trust.timestamp_version);
        let targets_new = self.sent.targets != Some(trust.targets_version);
        let director_new = director
            .filter(|d| self.sent.director != Some(d.version) || self.director_refresh_due(now));
        if new_roots.is_empty() && !timestamp_new && !targets_new && director_new.is_none() {
            return None;
        }
        if let Some((v, _)) = new_roots.last() {
            self.sent.root = *v;
        }
        self.sent.timestamp = Some(trust.timestamp_version);
        self.sent.targets = Some(trust.targets_version);
        if let Some(d) = director_new {
            self.sent.director = Some(d.version);
            self.sent.director_at = now;
        }
        Some(MetadataUpdate {
            roots: new_roots
                .into_iter()
                .map(|(_, b)| ByteBuf(b.clone()))
                .collect(),
            timestamp: ByteBuf(trust.timestamp.clone()),
            snapshot: ByteBuf(trust.snapshot.clone()),
            targets: targets_new.then(|| ByteBuf(trust.targets.clone())),
            director: director_new.map(|d| ByteBuf(d.bytes.clone())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(root: u64) -> TrustedVersions {
        TrustedVersions {
            root,
            timestamp: None,
            snapshot: None,
            targets: None,
            director: None,
        }
    }

    fn trust(ts: u64, targets: u64) -> TrustSnapshot {
        TrustSnapshot {
            timestamp_version: ts,
            targets_version: targets,
            timestamp: format!("ts{ts}").into_bytes(),
            snapshot: format!("snap{ts}").into_bytes(),
            targets: format!("targets{targets}").into_bytes(),
            manifests: HashMap::new(),
        }
    }

    fn director(v: u64) -> Director {
        Director {
            version: v,
            bytes: format!("director{v}").into_bytes(),
        }
    }

    fn roots(n: u64) -> Vec<(u64, Vec<u8>)> {
        (1..=n)
            .map(|v| (v, format!("root{v}").into_bytes()))
            .collect()
    }

    #[test]
    fn nothing_is_sent_before_the_first_publication() {
        let mut p = Planner::new(trusted(1), 4, UtcTime(0));
        assert_eq!(
            p.next(&roots(3), None, Some(&director(1)), UtcTime(0)),
            None
        );
    }

    #[test]
    fn a_new_agent_gets_newer_roots_in_order_and_everything_else() {
        let mut p = Planner::new(trusted(1), 4, UtcTime(0));
        let u = p
            .next(
                &roots(3),
                Some(&trust(5, 2)),
                Some(&director(1)),
                UtcTime(0),
            )
            .unwrap();
        assert_eq!(
            u.roots,
            vec![ByteBuf(b"root2".to_vec()), ByteBuf(b"root3".to_vec())]
        );
        assert_eq!(u.timestamp, ByteBuf(b"ts5".to_vec()));
        assert_eq!(u.targets, Some(ByteBuf(b"targets2".to_vec())));
        assert_eq!(u.director, Some(ByteBuf(b"director1".to_vec())));
        assert_eq!(
            p.next(
                &roots(3),
                Some(&trust(5, 2)),
                Some(&director(1)),
                UtcTime(10)
            ),
            None,
            "up to date: nothing more"
        );
    }

    #[test]
    fn an_up_to_date_agent_gets_nothing_until_something_changes() {
        let t = TrustedVersions {
            root: 1,
            timestamp: Some(5),
            snapshot: Some(5),
            targets: Some(2),
            director: Some(1),
        };
        let mut p = Planner::new(t, 4, UtcTime(0));
        assert_eq!(
            p.next(
                &roots(1),
                Some(&trust(5, 2)),
                Some(&director(1)),
                UtcTime(0)
            ),
            None
        );
        // A timestamp refresh: timestamp and snapshot only.
        let u = p
            .next(
                &roots(1),
                Some(&trust(6, 2)),
                Some(&director(1)),
                UtcTime(1),
            )
            .unwrap();
        assert_eq!((u.targets, u.director, u.roots.len()), (None, None, 0));
        // A new director version alone.
        let u = p
            .next(
                &roots(1),
                Some(&trust(6, 2)),
                Some(&director(2)),
                UtcTime(2),
            )
            .unwrap();
        assert_eq!(u.director, Some(ByteBuf(b"director2".to_vec())));
        assert_eq!(u.targets, None);
    }

    #[test]
    fn roots_come_at_most_n_per_update_without_gaps() {
        let mut p = Planner::new(trusted(1), 2, UtcTime(0));
        let u = p
            .next(&roots(5), Some(&trust(1, 1)), None, UtcTime(0))
            .unwrap();
        assert_eq!(u.roots.len(), 2);
        let u = p
            .next(&roots(5), Some(&trust(1, 1)), None, UtcTime(0))
            .unwrap();
        assert_eq!(
            u.roots,
            vec![ByteBuf(b"root4".to_vec()), ByteBuf(b"root5".to_vec())]
        );
        let mut gap = roots(4);
        gap.remove(1); // version 2 missing
        let mut p = Planner::new(trusted(1), 4, UtcTime(0));
        let u = p.next(&gap, Some(&trust(1, 1)), None, UtcTime(0)).unwrap();
        assert!(u.roots.is_empty(), "never skip a root version");
    }

    #[test]
    fn an_unchanged_director_is_refreshed_daily() {
        let t = TrustedVersions {
            root: 1,
            timestamp: Some(5),
            snapshot: Some(5),
            targets: Some(2),
            director: Some(3),
        };
        let mut p = Planner::new(t, 4, UtcTime(0));
        let now = UtcTime(DIRECTOR_REFRESH_SECS - 1);
        assert!(!p.director_refresh_due(now));
        assert_eq!(
            p.next(&roots(1), Some(&trust(5, 2)), Some(&director(3)), now),
            None
        );
        let now = UtcTime(DIRECTOR_REFRESH_SECS);
        assert!(p.director_refresh_due(now));
        let u = p
            .next(&roots(1), Some(&trust(5, 2)), Some(&director(3)), now)
            .unwrap();
        assert_eq!(u.director, Some(ByteBuf(b"director3".to_vec())));
        assert!(!p.director_refresh_due(now));
    }
}
