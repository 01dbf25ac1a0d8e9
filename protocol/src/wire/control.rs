//! Control-stream frames: the agent's hello, the hub's pushed metadata, the
//! agent's status reports, keep-alives and the closing word.
//!
//! One control stream per connection, opened by the agent. The agent speaks
//! first ([`AgentHello`]); from then on the hub pushes [`MetadataUpdate`]s as its
//! metadata changes (no polling) and the agent sends [`DeploymentStatus`]es as
//! its deployments move. This module defines and bounds the frames; what to do
//! with them is the agent's and the hub's business.

use serde::{Deserialize, Serialize};

use super::bytes::ByteBuf;
use super::status::{check_count, check_len, DeploymentStatus};
use super::{Frame, WireError};
use crate::limits::Limits;
use crate::manifest::Accelerator;
use crate::tuf::Fetch;

/// A frame on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ControlFrame {
    /// Agent to hub, first frame: who it is and what it has.
    AgentHello(AgentHello),
    /// Hub to agent: trust metadata and the device's director document.
    MetadataUpdate(MetadataUpdate),
    /// Agent to hub: one deployment changed state.
    DeploymentStatus(DeploymentStatus),
    /// Either way: are you there? Answered by a [`ControlFrame::Pong`].
    Ping {
        /// Echoed in the pong.
        nonce: u64,
    },
    /// Either way: the answer to a ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Either way: the sender is closing the connection, and why.
    Goodbye {
        /// Human-readable reason.
        reason: String,
    },
}

/// The agent's opening frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    /// Device id, as in its certificate (the hub checks they match).
    pub device_id: String,
    /// Agent version (semver).
    pub agent_version: String,
    /// The node's hardware.
    pub inventory: Inventory,
    /// Every deployment's current status.
    // invariant: at most `Limits::max_deployments` entries.
    pub state: Vec<DeploymentStatus>,
    /// Metadata versions the agent trusts, so the hub sends only what is newer.
    pub trusted: TrustedVersions,
}

/// What a node has to run models on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Logical CPUs.
    pub cpus: u32,
    /// Physical memory, in bytes.
    pub memory_bytes: u64,
    /// Accelerators, CPU excluded.
    // invariant: at most `Limits::max_accelerators` entries.
    pub accelerators: Vec<AcceleratorInfo>,
}

/// One accelerator of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceleratorInfo {
    /// What kind, in the manifest's terms (a bundle requiring `cuda` needs one).
    pub kind: Accelerator,
    /// Model name as the driver reports it (`NVIDIA H200`).
    pub name: String,
    /// Device memory, in bytes.
    pub memory_bytes: u64,
}

/// Versions of the metadata an agent trusts; `None` where it trusts none yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedVersions {
    /// Root version (an agent always has a pinned root).
    pub root: u64,
    /// Timestamp version.
    pub timestamp: Option<u64>,
    /// Snapshot version.
    pub snapshot: Option<u64>,
    /// Targets version.
    pub targets: Option<u64>,
    /// Director document version.
    pub director: Option<u64>,
}

/// Trust metadata pushed by the hub, as signed bytes. The agent runs them through
/// [`crate::tuf::Updater`] (see [`MetadataUpdate::answer`]) and
/// [`crate::director::verify_director`]; nothing here is trusted before that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataUpdate {
    /// Root documents newer than the agent's, in ascending version order with no
    /// gaps, starting at the agent's trusted root version plus one.
    // invariant: at most `Limits::max_roots_per_update` entries.
    pub roots: Vec<ByteBuf>,
    /// `timestamp.json`.
    pub timestamp: ByteBuf,
    /// `snapshot.json`.
    pub snapshot: ByteBuf,
    /// `targets.json`, when newer than the agent's; `None` means "unchanged".
    pub targets: Option<ByteBuf>,
    /// The device's director document, when newer than the agent's.
    pub director: Option<ByteBuf>,
}

impl MetadataUpdate {
    /// Answers one [`Fetch`] of the TUF update workflow from this update.
    /// `base_root` is the root version the agent trusted when the update started;
    /// `trusted_targets` is its trusted `targets.json`, used when the hub sent
    /// none because it did not change (the workflow re-verifies it all the same).
    pub fn answer<'a>(
        &'a self,
        fetch: Fetch,
        base_root: u64,
        trusted_targets: Option<&'a [u8]>,
    ) -> Option<&'a [u8]> {
        match fetch {
            Fetch::Root { version, .. } => {
                let index = version.checked_sub(base_root)?.checked_sub(1)?;
                let index = usize::try_from(index).ok()?;
                self.roots.get(index).map(ByteBuf::as_slice)
            }
            Fetch::Timestamp { .. } => Some(self.timestamp.as_slice()),
            Fetch::Snapshot { .. } => Some(self.snapshot.as_slice()),
            Fetch::Targets { .. } => self
                .targets
                .as_ref()
                .map(ByteBuf::as_slice)
                .or(trusted_targets),
        }
    }

    fn validate(&self, limits: &Limits) -> Result<(), WireError> {
        check_count(
            "roots in a metadata update",
            self.roots.len(),
            limits.max_roots_per_update,
        )?;
        let docs = self
            .roots
            .iter()
            .map(|r| ("root metadata bytes", r, limits.max_root_bytes))
            .chain([
                (
                    "timestamp metadata bytes",
                    &self.timestamp,
                    limits.max_timestamp_bytes,
                ),
                (
                    "snapshot metadata bytes",
                    &self.snapshot,
                    limits.max_snapshot_bytes,
                ),
            ])
            .chain(
                self.targets
                    .iter()
                    .map(|t| ("targets metadata bytes", t, limits.max_targets_bytes)),
            )
            .chain(
                self.director
                    .iter()
                    .map(|d| ("director document bytes", d, limits.max_director_bytes)),
            );
        for (what, doc, limit) in docs {
            if doc.len() as u64 > limit {
                return Err(WireError::LimitExceeded {
                    what,
                    actual: doc.len() as u64,
                    limit,
                });
            }
        }
        Ok(())
    }
}

impl Frame for ControlFrame {
    fn validate(&self, limits: &Limits) -> Result<(), WireError> {
        match self {
            Self::AgentHello(h) => {
                check_len("device id", &h.device_id, limits.max_name_len)?;
                check_len("agent version", &h.agent_version, limits.max_name_len)?;
                check_count(
                    "accelerators",
                    h.inventory.accelerators.len(),
                    limits.max_accelerators,
                )?;
                for a in &h.inventory.accelerators {
                    check_len("accelerator name", &a.name, limits.max_name_len)?;
                }
                check_count("deployment statuses", h.state.len(), limits.max_deployments)?;
                h.state.iter().try_for_each(|s| s.validate(limits))
            }
            Self::MetadataUpdate(m) => m.validate(limits),
            Self::DeploymentStatus(s) => s.validate(limits),
            Self::Ping { .. } | Self::Pong { .. } => Ok(()),
            Self::Goodbye { reason } => check_len("goodbye reason", reason, limits.max_reason_len),
        }
    }
}

impl super::sealed::Sealed for ControlFrame {}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(roots: usize) -> MetadataUpdate {
        MetadataUpdate {
            roots: (0..roots).map(|i| ByteBuf(vec![i as u8])).collect(),
            timestamp: ByteBuf(b"ts".to_vec()),
            snapshot: ByteBuf(b"snap".to_vec()),
            targets: None,
            director: None,
        }
    }

    #[test]
    fn roots_are_answered_by_version_after_the_trusted_one() {
        let u = update(2);
        let root = |version| Fetch::Root {
            version,
            max_len: 0,
        };
        assert_eq!(u.answer(root(5), 4, None), Some(&[0u8][..]));
        assert_eq!(u.answer(root(6), 4, None), Some(&[1u8][..]));
        assert_eq!(u.answer(root(7), 4, None), None);
        assert_eq!(u.answer(root(4), 4, None), None);
    }

    #[test]
    fn unchanged_targets_are_answered_from_the_trusted_copy() {
        let u = update(0);
        let t = Fetch::Targets {
            version: 1,
            max_len: 0,
        };
        assert_eq!(u.answer(t, 1, Some(b"old")), Some(&b"old"[..]));
        assert_eq!(u.answer(t, 1, None), None);
    }

    #[test]
    fn too_many_roots_or_an_oversized_document_are_rejected() {
        let limits = Limits {
            max_roots_per_update: 1,
            max_timestamp_bytes: 1,
            ..Limits::default()
        };
        assert!(matches!(
            ControlFrame::MetadataUpdate(update(2)).validate(&limits),
            Err(WireError::LimitExceeded {
                what: "roots in a metadata update",
                ..
            })
        ));
        assert!(matches!(
            ControlFrame::MetadataUpdate(update(0)).validate(&limits),
            Err(WireError::LimitExceeded {
                what: "timestamp metadata bytes",
                ..
            })
        ));
    }
}
