//! The reconciler: desired versus current, per deployment, one transition at a
//! time. See the module above for the protocol with its driver.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::action::Action;
use super::deployment::{changed_status, Deployment, Pending, Trial};
use super::desired::{DeploymentKey, DesiredState};
use super::fetch::ChunkFetch;
use super::record::{AgentRecord, Rejection, Slot, RECORD_SCHEMA_VERSION};
use super::{ReconcileConfig, ReconcileError};
use crate::digest::{HashedBytes, Sha256Digest};
use crate::limits::Limits;
use crate::time::UtcTime;
use crate::wire::DeploymentStatus;

/// The agent's sync-and-activation state machine. Inputs through `handle_*`,
/// actions out through [`Reconciler::poll_action`], time through `now`.
#[derive(Debug)]
pub struct Reconciler {
    pub(super) config: ReconcileConfig,
    pub(super) limits: Limits,
    pub(super) director_version: Option<u64>,
    pub(super) deployments: BTreeMap<DeploymentKey, Deployment>,
    pub(super) fetch: ChunkFetch,
    pub(super) actions: VecDeque<Action>,
}

impl Reconciler {
    /// A reconciler with nothing deployed (a freshly enrolled agent).
    pub fn new(config: ReconcileConfig, limits: Limits) -> Self {
        Self {
            config,
            limits,
            director_version: None,
            deployments: BTreeMap::new(),
            fetch: ChunkFetch::default(),
            actions: VecDeque::new(),
        }
    }

    /// A new desired state. Deployments it no longer names are retired; a
    /// deployment whose target changed drops whatever it was fetching or had
    /// staged for an older target and starts on the new one; a target that
    /// failed here is not tried again until the director names another one.
    pub fn handle_desired(
        &mut self,
        desired: DesiredState,
        now: UtcTime,
    ) -> Result<(), ReconcileError> {
        let (version, wanted) = desired.into_parts();
        if let Some(applied) = self.director_version {
            if version < applied {
                return Err(ReconcileError::StaleDesired {
                    applied,
                    offered: version,
                });
            }
        }
        if wanted.len() > self.limits.max_deployments {
            return Err(ReconcileError::TooManyDeployments {
                count: wanted.len(),
                limit: self.limits.max_deployments,
            });
        }
        self.director_version = Some(version);
        let gone: Vec<DeploymentKey> = self
            .deployments
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.retire(&key);
        }
        for (key, slot) in wanted {
            self.apply_target(&key, slot, now);
        }
        self.persist();
        self.fill_requests(now);
        self.advance_all(now);
        self.report_all(now);
        Ok(())
    }

    /// The store's answer to an [`Action::QueryStore`]: which of the digests it
    /// holds and which it lacks. Digests nobody asked about are ignored.
    pub fn handle_store_answer(
        &mut self,
        present: &[Sha256Digest],
        absent: &[Sha256Digest],
        now: UtcTime,
    ) {
        for d in present {
            if self.fetch.is_querying(d) {
                self.mark_present(d);
            }
        }
        for d in absent {
            self.fetch.absent(d);
        }
        self.fill_requests(now);
        self.advance_all(now);
        self.report_all(now);
    }

    /// Chunk bytes from the hub, hashed by whoever read them
    /// ([`HashedBytes::new`]). Returns `Ok(true)` when they were wanted and
    /// verified (an [`Action::WriteChunk`] follows), `Ok(false)` for a chunk
    /// nobody wants any more (dropped). Bytes that do not match the signed
    /// manifest's entry for `digest` ([`crate::manifest::ChunkRef::verify`]: length, and
    /// BLAKE3 where listed, else SHA-256) are rejected and the chunk is
    /// requested again.
    pub fn handle_chunk(
        &mut self,
        digest: Sha256Digest,
        bytes: HashedBytes,
        now: UtcTime,
    ) -> Result<bool, ReconcileError> {
        let Some(expected) = self.fetch.get(&digest).copied() else {
            return Ok(false);
        };
        if let Err(actual) = expected.verify(&bytes) {
            self.fetch.requeue(&digest);
            self.fill_requests(now);
            return Err(ReconcileError::ChunkRejected {
                digest,
                expected_len: expected.size,
                actual_len: bytes.len(),
                actual,
            });
        }
        self.actions.push_back(Action::WriteChunk { digest, bytes });
        self.mark_present(&digest);
        self.fill_requests(now);
        let due: Vec<DeploymentKey> = self
            .deployments
            .iter()
            .filter(|(_, d)| {
                d.pending.is_some()
                    && d.last_progress
                        .is_none_or(|t| t.plus_secs(self.config.progress_interval_secs) <= now)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some(d) = self.deployments.get_mut(&key) {
                d.last_progress = Some(now);
            }
            self.report(&key, now);
        }
        self.advance_all(now);
        Ok(true)
    }

    /// The hub does not have `digest`. The request stays in flight and is sent
    /// again when it times out (the hub may be mid-upload). Returns whether the
    /// chunk is still wanted.
    pub fn handle_chunk_missing(&mut self, digest: Sha256Digest) -> bool {
        self.fetch.size(&digest).is_some()
    }

    /// The outcome of an [`Action::RunTrial`]: `Ok` commits, `Err(reason)` rolls
    /// back to the previous version on the spot.
    pub fn handle_trial_result(
        &mut self,
        key: &DeploymentKey,
        target: &str,
        result: Result<(), String>,
        now: UtcTime,
    ) -> Result<(), ReconcileError> {
        let d = self
            .deployments
            .get_mut(key)
            .ok_or_else(|| ReconcileError::UnknownDeployment(key.clone()))?;
        let on_trial = d.trial.is_some() && d.active.as_ref().is_some_and(|a| a.target() == target);
        if !on_trial {
            return Err(ReconcileError::UnexpectedTrialResult {
                key: key.clone(),
                target: target.into(),
            });
        }
        match result {
            Ok(()) => {
                d.trial = None;
                self.persist();
                self.actions.push_back(Action::Commit {
                    key: key.clone(),
                    target: target.into(),
                });
                self.report(key, now);
                self.advance(key, now);
            }
            Err(reason) => self.rollback(key, reason, now),
        }
        Ok(())
    }

    /// An action for `key` and `target` (`Stage`, `Activate`, `RunTrial`)
    /// failed on I/O. That version is dropped: rolled back if it had gone live,
    /// else marked failed; actions still queued for it are withdrawn. A target
    /// the deployment no longer holds is ignored.
    pub fn handle_action_failed(
        &mut self,
        key: &DeploymentKey,
        target: &str,
        reason: String,
        now: UtcTime,
    ) -> Result<(), ReconcileError> {
        let d = self
            .deployments
            .get_mut(key)
            .ok_or_else(|| ReconcileError::UnknownDeployment(key.clone()))?;
        let is = |s: Option<&Slot>| s.is_some_and(|s| s.target() == target);
        let live = d.trial.is_some() && is(d.active.as_ref());
        let dropped = if live {
            None
        } else if is(d.staged.as_ref()) {
            d.staged.take()
        } else if is(d.pending.as_ref().map(|p| &p.slot)) {
            d.pending.take().map(|p| p.slot)
        } else {
            return Ok(());
        };
        self.actions.retain(|a| match a {
            Action::Stage { key: k, slot } => k != key || slot.target() != target,
            Action::Activate { key: k, target: t } | Action::RunTrial { key: k, target: t } => {
                k != key || t != target
            }
            // Superseded by the record persisted below.
            Action::Persist(_) => false,
            _ => true,
        });
        if live {
            self.rollback(key, reason, now);
            return Ok(());
        }
        if let (Some(slot), Some(d)) = (dropped, self.deployments.get_mut(key)) {
            d.rejected = Some(Rejection {
                target: slot.target().into(),
                reason,
                rolled_back: false,
            });
            self.forget_unwanted();
            self.release(vec![slot]);
        }
        self.persist();
        self.report(key, now);
        Ok(())
    }

    /// Time passed: trials past their deadline roll back, chunk requests past
    /// theirs are sent again.
    pub fn handle_timeout(&mut self, now: UtcTime) {
        let late: Vec<DeploymentKey> = self
            .deployments
            .iter()
            .filter(|(_, d)| d.trial.is_some_and(|t| t.deadline <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in late {
            let reason = format!(
                "trial did not finish within {}s",
                self.config.trial_timeout_secs
            );
            self.rollback(&key, reason, now);
        }
        if self.fetch.expire(now, self.config.chunk_timeout_secs) > 0 {
            self.fill_requests(now);
        }
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Reconciler::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<UtcTime> {
        let trials = self
            .deployments
            .values()
            .filter_map(|d| d.trial.map(|t| t.deadline));
        trials
            .chain(self.fetch.next_deadline(self.config.chunk_timeout_secs))
            .min()
    }

    /// Every deployment's status, for the hello on a new connection.
    pub fn statuses(&self) -> Vec<DeploymentStatus> {
        self.deployments
            .values()
            .filter_map(|d| d.last_report.clone())
            .collect()
    }

    /// The record as it stands in memory (what the next `Persist` would write).
    pub fn record(&self) -> AgentRecord {
        AgentRecord {
            schema_version: RECORD_SCHEMA_VERSION,
            director_version: self.director_version,
            deployments: self
                .deployments
                .iter()
                .map(|(k, d)| d.to_record(k))
                .collect(),
        }
    }

    /// Chunks requested from the hub and not yet arrived.
    pub fn chunks_in_flight(&self) -> usize {
        self.fetch.in_flight()
    }

    /// The director version applied last.
    pub fn director_version(&self) -> Option<u64> {
        self.director_version
    }

    /// The version serving `key`, if any.
    pub fn active(&self, key: &DeploymentKey) -> Option<&Slot> {
        self.deployments.get(key).and_then(|d| d.active.as_ref())
    }

    /// Manifest bytes of `target` if any slot holds it, so that the agent need
    /// not fetch a manifest it has to build the next [`DesiredState`].
    pub fn manifest_bytes(&self, target: &str) -> Option<&[u8]> {
        self.deployments
            .values()
            .flat_map(Deployment::slots)
            .find(|s| s.target() == target)
            .map(Slot::manifest_bytes)
    }

    /// Whether any slot (or fetch) needs chunk `digest` kept.
    pub fn is_referenced(&self, digest: &Sha256Digest) -> bool {
        self.deployments
            .values()
            .flat_map(Deployment::slots)
            .any(|s| s.contains(digest))
    }

    /// Of the chunks in the store, those no slot or fetch references: garbage
    /// the agent may delete (for a full sweep, say at start-up).
    pub fn unreferenced(
        &self,
        stored: impl IntoIterator<Item = Sha256Digest>,
    ) -> Vec<Sha256Digest> {
        let referenced = self.referenced();
        stored
            .into_iter()
            .filter(|d| !referenced.contains(d))
            .collect()
    }

    fn referenced(&self) -> BTreeSet<Sha256Digest> {
        self.deployments
            .values()
            .flat_map(Deployment::slots)
            .flat_map(|s| s.chunks())
            .map(|c| c.digest)
            .collect()
    }

    /// Points `key` at `slot`, superseding whatever it was doing for another
    /// target.
    fn apply_target(&mut self, key: &DeploymentKey, slot: Slot, now: UtcTime) {
        let d = self.deployments.entry(key.clone()).or_default();
        let t = slot.target();
        let is = |s: Option<&Slot>| s.is_some_and(|s| s.target() == t);
        if is(d.pending.as_ref().map(|p| &p.slot)) || is(d.staged.as_ref()) {
            return;
        }
        let is_active = is(d.active.as_ref());
        let is_rejected = d.rejected.as_ref().is_some_and(|r| r.target == t);
        let mut dropped: Vec<Slot> = d.staged.take().into_iter().collect();
        dropped.extend(d.pending.take().map(|p| p.slot));
        if !is_rejected {
            d.rejected = None;
        }
        self.forget_unwanted();
        self.release(dropped);
        if !is_active && !is_rejected {
            self.start_pending(key, slot, now);
        }
    }

    /// Starts fetching `slot` for `key`: chunks other slots hold are present;
    /// the store is asked about the rest.
    pub(super) fn start_pending(&mut self, key: &DeploymentKey, slot: Slot, now: UtcTime) {
        let held: BTreeSet<Sha256Digest> = self
            .deployments
            .values()
            .flat_map(|d| d.active.iter().chain(&d.previous).chain(&d.staged))
            .flat_map(|s| s.chunks())
            .map(|c| c.digest)
            .collect();
        let mut pending = Pending {
            missing: BTreeSet::new(),
            need: 0,
            have: 0,
            slot,
        };
        let mut query = Vec::new();
        for c in pending.slot.chunks() {
            pending.need += u64::from(c.size);
            if held.contains(&c.digest) {
                pending.have += u64::from(c.size);
            } else {
                pending.missing.insert(c.digest);
                if self.fetch.want(c) {
                    query.push(c.digest);
                }
            }
        }
        if !query.is_empty() {
            self.actions
                .push_back(Action::QueryStore { digests: query });
        }
        let d = self.deployments.entry(key.clone()).or_default();
        d.pending = Some(pending);
        d.last_progress = Some(now);
    }

    /// `digest` is in the store: no fetch wants it any more.
    fn mark_present(&mut self, digest: &Sha256Digest) {
        let size = self.fetch.size(digest).map_or(0, u64::from);
        self.fetch.forget(digest);
        for d in self.deployments.values_mut() {
            if let Some(p) = &mut d.pending {
                if p.missing.remove(digest) {
                    p.have += size;
                }
            }
        }
    }

    /// Stops fetching chunks that no pending bundle is missing any more.
    fn forget_unwanted(&mut self) {
        let wanted: BTreeSet<Sha256Digest> = self
            .deployments
            .values()
            .filter_map(|d| d.pending.as_ref())
            .flat_map(|p| p.missing.iter().copied())
            .collect();
        self.fetch.retain(|d| wanted.contains(d));
    }

    pub(super) fn advance_all(&mut self, now: UtcTime) {
        let keys: Vec<DeploymentKey> = self.deployments.keys().cloned().collect();
        for key in keys {
            self.advance(&key, now);
        }
    }

    /// Stages a complete fetch; activates a staged bundle once no trial runs.
    fn advance(&mut self, key: &DeploymentKey, now: UtcTime) {
        let Some(d) = self.deployments.get_mut(key) else {
            return;
        };
        let mut changed = false;
        if d.pending.as_ref().is_some_and(|p| p.missing.is_empty()) {
            if let Some(p) = d.pending.take() {
                d.staged = Some(p.slot.clone());
                self.actions.push_back(Action::Stage {
                    key: key.clone(),
                    slot: Box::new(p.slot),
                });
                changed = true;
            }
        }
        let mut dropped = None;
        if d.trial.is_none() {
            if let Some(new) = d.staged.take() {
                // The activation pointer moves in memory; the Persist below is
                // the atomic switch, and Activate follows it.
                let target = new.target().to_string();
                dropped = d.previous.take();
                d.previous = d.active.replace(new);
                d.trial = Some(Trial {
                    attempts: 1,
                    started: now,
                    deadline: now.plus_secs(self.config.trial_timeout_secs),
                });
                self.persist();
                self.actions.push_back(Action::Activate {
                    key: key.clone(),
                    target: target.clone(),
                });
                self.actions.push_back(Action::RunTrial {
                    key: key.clone(),
                    target,
                });
                changed = false;
                self.report(key, now);
            }
        }
        if changed {
            self.persist();
            self.report(key, now);
        }
        self.release(dropped.into_iter().collect());
    }

    /// Puts `key`'s previous version back in place of the active one.
    pub(super) fn rollback(&mut self, key: &DeploymentKey, reason: String, now: UtcTime) {
        let Some(d) = self.deployments.get_mut(key) else {
            return;
        };
        let Some(failed) = d.active.take() else {
            return;
        };
        d.trial = None;
        d.active = d.previous.take();
        let to = d.active.as_ref().map(|s| s.target().to_string());
        d.rejected = Some(Rejection {
            target: failed.target().into(),
            reason: reason.clone(),
            rolled_back: to.is_some(),
        });
        self.persist();
        self.actions.push_back(Action::RollBack {
            key: key.clone(),
            from: failed.target().into(),
            to,
            reason,
        });
        self.report(key, now);
        self.release(vec![failed]);
        self.advance(key, now);
    }

    fn retire(&mut self, key: &DeploymentKey) {
        let Some(d) = self.deployments.remove(key) else {
            return;
        };
        self.actions.push_back(Action::Retire { key: key.clone() });
        let slots: Vec<Slot> = d
            .active
            .into_iter()
            .chain(d.previous)
            .chain(d.staged)
            .chain(d.pending.map(|p| p.slot))
            .collect();
        self.forget_unwanted();
        self.release(slots);
    }

    /// Offers the chunks of dropped slots that nothing references any more,
    /// and are in the store (not still being fetched), for garbage collection.
    fn release(&mut self, dropped: Vec<Slot>) {
        if dropped.is_empty() {
            return;
        }
        let referenced = self.referenced();
        let candidates: BTreeSet<Sha256Digest> = dropped
            .iter()
            .flat_map(Slot::chunks)
            .map(|c| c.digest)
            .filter(|d| !referenced.contains(d) && self.fetch.size(d).is_none())
            .collect();
        if !candidates.is_empty() {
            self.actions.push_back(Action::CollectGarbage {
                digests: candidates.into_iter().collect(),
            });
        }
    }

    pub(super) fn fill_requests(&mut self, now: UtcTime) {
        for digests in self.fetch.next_requests(
            now,
            self.config.max_chunks_in_flight,
            self.limits.max_digests_per_request,
        ) {
            self.actions.push_back(Action::FetchChunks { digests });
        }
    }

    /// Queues the record; a record queued just before is superseded.
    pub(super) fn persist(&mut self) {
        let record = self.record();
        if matches!(self.actions.back(), Some(Action::Persist(_))) {
            self.actions.pop_back();
        }
        self.actions.push_back(Action::Persist(record));
    }

    pub(super) fn report_all(&mut self, now: UtcTime) {
        let keys: Vec<DeploymentKey> = self.deployments.keys().cloned().collect();
        for key in keys {
            self.report(&key, now);
        }
    }

    /// Queues `key`'s status if it changed since the last report.
    pub(super) fn report(&mut self, key: &DeploymentKey, now: UtcTime) {
        let director_version = self.director_version.unwrap_or(0);
        let Some(d) = self.deployments.get_mut(key) else {
            return;
        };
        if let Some(status) = changed_status(key, d, director_version, now) {
            d.last_report = Some(status.clone());
            self.actions.push_back(Action::Report(status));
        }
    }
}
