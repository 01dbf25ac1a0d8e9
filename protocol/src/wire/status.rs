//! A deployment's status as the agent reports it to the hub.
//!
//! The agent sends one [`DeploymentStatus`] per deployment in its hello and one
//! more whenever a deployment changes state; the hub's rollout controller gates
//! waves on them. This module only defines and checks the record; the agent's
//! [`crate::reconcile`] decides when to send one.

use serde::{Deserialize, Serialize};

use super::WireError;
use crate::limits::Limits;
use crate::time::UtcTime;

/// Where one deployment on one device stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentStatus {
    /// Endpoint name.
    pub endpoint: String,
    /// Deployment name within the endpoint.
    pub deployment: String,
    /// TUF target path of the bundle manifest this state is about (the one
    /// being fetched, tried or served).
    pub target: String,
    /// The state of that target.
    pub state: DeploymentState,
    /// Target path of the version serving traffic now, if any. During a fetch it
    /// is the old version; after a rollback, the version rolled back to.
    pub active: Option<String>,
    /// Version of the director document this status answers.
    pub director_version: u64,
    /// When the deployment entered this state (the agent's clock).
    pub since: UtcTime,
}

/// The lifecycle of one target on one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeploymentState {
    /// Chunks are being fetched.
    Fetching {
        /// Bytes of the bundle's distinct chunks already in the agent's store.
        have: u64,
        /// Bytes of all the bundle's distinct chunks.
        need: u64,
    },
    /// Every chunk is verified and in the store; waiting to activate.
    Staged,
    /// Activated and running its trial (load and self-test).
    Trial,
    /// Committed: serving, trial passed.
    Active,
    /// Never went live (staging or activation failed, nothing to roll back to).
    Failed {
        /// Why.
        reason: String,
    },
    /// Went live, failed its trial, and the agent rolled back on its own.
    RolledBack {
        /// Why.
        reason: String,
    },
}

impl DeploymentStatus {
    /// Checks name and reason lengths against `limits`.
    pub fn validate(&self, limits: &Limits) -> Result<(), WireError> {
        check_len("endpoint name", &self.endpoint, limits.max_name_len)?;
        check_len("deployment name", &self.deployment, limits.max_name_len)?;
        check_len("target path", &self.target, limits.max_name_len)?;
        if let Some(a) = &self.active {
            check_len("active target path", a, limits.max_name_len)?;
        }
        match &self.state {
            DeploymentState::Failed { reason } | DeploymentState::RolledBack { reason } => {
                check_len("failure reason", reason, limits.max_reason_len)
            }
            _ => Ok(()),
        }
    }
}

/// A string longer than `limit` bytes is a [`WireError::LimitExceeded`].
pub(crate) fn check_len(what: &'static str, s: &str, limit: usize) -> Result<(), WireError> {
    check_count(what, s.len(), limit)
}

/// A count above `limit` is a [`WireError::LimitExceeded`].
pub(crate) fn check_count(what: &'static str, n: usize, limit: usize) -> Result<(), WireError> {
    if n > limit {
        return Err(WireError::LimitExceeded {
            what,
            actual: n as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: DeploymentState) -> DeploymentStatus {
        DeploymentStatus {
            endpoint: "fraud".into(),
            deployment: "blue".into(),
            target: "models/fraud/3/manifest.cbor".into(),
            state,
            active: None,
            director_version: 1,
            since: UtcTime(0),
        }
    }

    #[test]
    fn an_overlong_failure_reason_is_rejected() {
        let limits = Limits::default();
        let long = "x".repeat(limits.max_reason_len + 1);
        assert!(matches!(
            status(DeploymentState::RolledBack { reason: long }).validate(&limits),
            Err(WireError::LimitExceeded {
                what: "failure reason",
                ..
            })
        ));
        assert_eq!(status(DeploymentState::Trial).validate(&limits), Ok(()));
    }
}
