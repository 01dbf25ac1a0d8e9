//! One deployment's slots in memory: active (with its trial), previous, staged,
//! the bundle being fetched, and the last rejected version; and how they turn
//! into a persisted record and a status for the hub.
//!
//! Plain data with no transitions: [`super::machine`] moves bundles between
//! slots.

use std::collections::BTreeSet;
use std::mem::discriminant;

use super::desired::DeploymentKey;
use super::record::{DeploymentRecord, Rejection, Slot, TrialRecord};
use crate::digest::Sha256Digest;
use crate::time::UtcTime;
use crate::wire::{DeploymentState, DeploymentStatus};

/// A bundle being fetched.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) slot: Slot,
    /// Distinct chunks not yet known to be in the store.
    pub(super) missing: BTreeSet<Sha256Digest>,
    /// Bytes of all distinct chunks.
    pub(super) need: u64,
    /// Bytes of distinct chunks in the store.
    pub(super) have: u64,
}

/// A trial in progress.
#[derive(Debug, Clone, Copy)]
pub(super) struct Trial {
    pub(super) attempts: u32,
    pub(super) started: UtcTime,
    pub(super) deadline: UtcTime,
}

/// One deployment's slots, in memory.
#[derive(Debug, Default)]
pub(super) struct Deployment {
    pub(super) active: Option<Slot>,
    pub(super) trial: Option<Trial>,
    pub(super) previous: Option<Slot>,
    pub(super) staged: Option<Slot>,
    pub(super) pending: Option<Pending>,
    pub(super) rejected: Option<Rejection>,
    /// What the hub was last told, to report changes only.
    pub(super) last_report: Option<DeploymentStatus>,
    pub(super) last_progress: Option<UtcTime>,
}

impl Deployment {
    /// Every slot whose chunks must stay in the store.
    pub(super) fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.active
            .iter()
            .chain(&self.previous)
            .chain(&self.staged)
            .chain(self.pending.as_ref().map(|p| &p.slot))
    }

    pub(super) fn to_record(&self, key: &DeploymentKey) -> DeploymentRecord {
        DeploymentRecord {
            key: key.clone(),
            active: self.active.as_ref().map(Slot::to_record),
            trial: self.trial.map(|t| TrialRecord {
                attempts: t.attempts,
                started: t.started,
            }),
            previous: self.previous.as_ref().map(Slot::to_record),
            staged: self.staged.as_ref().map(Slot::to_record),
            pending: self.pending.as_ref().map(|p| p.slot.to_record()),
            rejected: self.rejected.clone(),
        }
    }

    /// The target this deployment's status is about, and its state.
    pub(super) fn state(&self) -> Option<(&str, DeploymentState)> {
        if let Some(p) = &self.pending {
            let state = DeploymentState::Fetching {
                have: p.have,
                need: p.need,
            };
            return Some((p.slot.target(), state));
        }
        if let Some(s) = &self.staged {
            return Some((s.target(), DeploymentState::Staged));
        }
        if let (Some(a), Some(_)) = (&self.active, &self.trial) {
            return Some((a.target(), DeploymentState::Trial));
        }
        if let Some(r) = &self.rejected {
            let reason = r.reason.clone();
            let state = if r.rolled_back {
                DeploymentState::RolledBack { reason }
            } else {
                DeploymentState::Failed { reason }
            };
            return Some((&r.target, state));
        }
        self.active
            .as_ref()
            .map(|a| (a.target(), DeploymentState::Active))
    }
}

/// The status to report for `d`, with `since` carried over while the target and
/// state kind stay the same; `None` when nothing changed since the last report
/// (or there is nothing to report).
pub(super) fn changed_status(
    key: &DeploymentKey,
    d: &Deployment,
    director_version: u64,
    now: UtcTime,
) -> Option<DeploymentStatus> {
    let (target, state) = d.state()?;
    let mut status = DeploymentStatus {
        endpoint: key.endpoint.clone(),
        deployment: key.deployment.clone(),
        target: target.into(),
        state,
        active: d.active.as_ref().map(|a| a.target().to_string()),
        director_version,
        since: now,
    };
    if let Some(last) = &d.last_report {
        if last.target == status.target && discriminant(&last.state) == discriminant(&status.state)
        {
            status.since = last.since;
        }
        if *last == status {
            return None;
        }
    }
    Some(status)
}
