//! Restarting the reconciler from its persisted record.
//!
//! The record says which version each deployment serves; restoring re-points
//! the runtime at exactly that, and resumes what was in progress. It reads no
//! store and no network itself: it queues the actions that will.

use super::action::Action;
use super::deployment::{Deployment, Trial};
use super::desired::DeploymentKey;
use super::machine::Reconciler;
use super::record::{AgentRecord, SlotRecord, RECORD_SCHEMA_VERSION};
use super::{ReconcileConfig, ReconcileError};
use crate::limits::Limits;
use crate::time::UtcTime;

impl Reconciler {
    /// Rebuilds the reconciler from its last persisted record after a restart,
    /// and queues what resumes the work: `Activate` for every active version
    /// (reload what serves), `RunTrial` again for interrupted trials (or a
    /// rollback once they have used up their attempts), `QueryStore` for fetches.
    pub fn restore(
        record: &AgentRecord,
        config: ReconcileConfig,
        limits: Limits,
        now: UtcTime,
    ) -> Result<Self, ReconcileError> {
        if record.schema_version != RECORD_SCHEMA_VERSION {
            return Err(ReconcileError::UnsupportedRecordSchema(
                record.schema_version,
            ));
        }
        let mut r = Self::new(config, limits);
        r.director_version = record.director_version;
        let mut pendings = Vec::new();
        for dr in &record.deployments {
            let slot = |s: &Option<SlotRecord>| s.as_ref().map(|s| s.to_slot(&limits)).transpose();
            let active = slot(&dr.active)?;
            let trial = dr.trial.filter(|_| active.is_some()).map(|t| Trial {
                attempts: t.attempts,
                started: t.started,
                deadline: now.plus_secs(config.trial_timeout_secs),
            });
            if let Some(p) = slot(&dr.pending)? {
                pendings.push((dr.key.clone(), p));
            }
            let d = Deployment {
                active,
                trial,
                previous: slot(&dr.previous)?,
                staged: slot(&dr.staged)?,
                rejected: dr.rejected.clone(),
                ..Deployment::default()
            };
            r.deployments.insert(dr.key.clone(), d);
        }
        // Count the interrupted trial run before running any trial again, so a
        // model that kills the agent during its trial is rolled back eventually.
        let mut exhausted = Vec::new();
        for (key, d) in &mut r.deployments {
            if let Some(t) = &mut d.trial {
                if t.attempts >= config.max_trial_attempts {
                    exhausted.push((key.clone(), t.attempts));
                } else {
                    t.attempts += 1;
                }
            }
        }
        r.persist();
        let keys: Vec<DeploymentKey> = r.deployments.keys().cloned().collect();
        for key in &keys {
            if let Some((_, attempts)) = exhausted.iter().find(|(k, _)| k == key) {
                let reason = format!("trial interrupted by {attempts} agent restarts");
                r.rollback(key, reason, now);
                continue;
            }
            let Some(d) = r.deployments.get(key) else {
                continue;
            };
            if let Some(a) = &d.active {
                let target = a.target().to_string();
                let on_trial = d.trial.is_some();
                r.actions.push_back(Action::Activate {
                    key: key.clone(),
                    target: target.clone(),
                });
                if on_trial {
                    r.actions.push_back(Action::RunTrial {
                        key: key.clone(),
                        target,
                    });
                }
            }
        }
        for (key, slot) in pendings {
            r.start_pending(&key, slot, now);
        }
        r.fill_requests(now);
        r.advance_all(now);
        r.report_all(now);
        Ok(r)
    }
}
