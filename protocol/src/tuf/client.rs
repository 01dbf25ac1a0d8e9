//! The TUF client update workflow (specification section 5) as a sans-IO state
//! machine.
//!
//! The caller asks [`Updater::poll_fetch`] what to fetch, fetches it however it
//! likes (QUIC stream, bundle file, memory) and hands the bytes, or `None` for
//! "not found", to [`Updater::handle_fetched`]. Time is passed in once, at the
//! start (5.1). Comments carry the spec's step numbers.

use super::metadata::{Envelope, MetaFile, Role, Root, Snapshot, TargetFile, Targets, Timestamp};
use super::verify::{check_length_and_hashes, check_root_shape, check_threshold};
use super::TufError;
use crate::limits::Limits;
use crate::time::UtcTime;

/// A verified document: the exact bytes received (to persist) and the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified<T> {
    /// Bytes as received and verified.
    pub raw: Vec<u8>,
    /// The decoded signed body.
    pub body: T,
}

/// Metadata a client trusts: a root, and possibly timestamp, snapshot and
/// targets verified under it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustedSet {
    root: Verified<Root>,
    timestamp: Option<Verified<Timestamp>>,
    snapshot: Option<Verified<Snapshot>>,
    targets: Option<Verified<Targets>>,
}

impl TrustedSet {
    /// 5.2 Load the trusted root metadata file. It arrived out of band (pinned at
    /// enrolment or given on the command line), yet it must still be signed by a
    /// threshold of its own root keys and be internally consistent. Its expiry is
    /// checked after the root update (5.3.10), not here.
    pub fn from_trusted_root(raw: &[u8], limits: &Limits) -> Result<Self, TufError> {
        let root = verify_root_self(raw, limits)?;
        Ok(Self {
            root,
            timestamp: None,
            snapshot: None,
            targets: None,
        })
    }

    /// Restores a set persisted earlier (for example by an agent across restarts):
    /// every document is re-checked against the root's keys. Expiry is not checked
    /// here: the next update does that.
    pub fn restore(
        root: &[u8],
        timestamp: Option<&[u8]>,
        snapshot: Option<&[u8]>,
        targets: Option<&[u8]>,
        limits: &Limits,
    ) -> Result<Self, TufError> {
        let mut set = Self::from_trusted_root(root, limits)?;
        let r = &set.root.body;
        set.timestamp = timestamp
            .map(|b| verify_signed(Role::Timestamp, b, limits.max_timestamp_bytes, r, limits))
            .transpose()?;
        set.snapshot = snapshot
            .map(|b| verify_signed(Role::Snapshot, b, limits.max_snapshot_bytes, r, limits))
            .transpose()?;
        set.targets = targets
            .map(|b| verify_signed(Role::Targets, b, limits.max_targets_bytes, r, limits))
            .transpose()?;
        Ok(set)
    }

    /// The trusted root.
    pub fn root(&self) -> &Verified<Root> {
        &self.root
    }

    /// The trusted timestamp, if any.
    pub fn timestamp(&self) -> Option<&Verified<Timestamp>> {
        self.timestamp.as_ref()
    }

    /// The trusted snapshot, if any.
    pub fn snapshot(&self) -> Option<&Verified<Snapshot>> {
        self.snapshot.as_ref()
    }

    /// The trusted targets, if any.
    pub fn targets(&self) -> Option<&Verified<Targets>> {
        self.targets.as_ref()
    }

    /// 5.7 Verify a target: it must be listed in trusted targets metadata and
    /// `bytes` must have the listed length and SHA-256.
    pub fn verify_target(&self, path: &str, bytes: &[u8]) -> Result<&TargetFile, TufError> {
        let entry = self.target(path)?;
        check_length_and_hashes(
            &format!("target {path}"),
            bytes,
            Some(entry.length),
            Some(&entry.hashes),
        )?;
        Ok(entry)
    }

    /// The trusted targets entry for `path`.
    pub fn target(&self, path: &str) -> Result<&TargetFile, TufError> {
        self.targets
            .as_ref()
            .and_then(|t| t.body.targets.get(path))
            .ok_or_else(|| TufError::UnknownTarget(path.to_string()))
    }
}

/// What the workflow needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Root metadata of this version (`N.root.json`); `None` if it does not exist.
    Root {
        /// Version wanted.
        version: u64,
        /// Largest acceptable size.
        max_len: u64,
    },
    /// The latest timestamp metadata.
    Timestamp {
        /// Largest acceptable size.
        max_len: u64,
    },
    /// Snapshot metadata of this version.
    Snapshot {
        /// Version named by the timestamp.
        version: u64,
        /// Largest acceptable size.
        max_len: u64,
    },
    /// Targets metadata of this version.
    Targets {
        /// Version named by the snapshot.
        version: u64,
        /// Largest acceptable size.
        max_len: u64,
    },
}

#[derive(Debug, Clone)]
enum Step {
    Root { rotations: u64 },
    Timestamp,
    Snapshot(MetaFile),
    Targets(MetaFile),
    Done,
    Failed(TufError),
}

/// One run of the client update workflow.
#[derive(Debug)]
pub struct Updater {
    trusted: TrustedSet,
    // 5.1 Record the time at which the update began as the fixed update start time.
    now: UtcTime,
    limits: Limits,
    step: Step,
}

impl Updater {
    /// Starts an update over `trusted` at the fixed start time `now` (5.1).
    pub fn new(trusted: TrustedSet, now: UtcTime, limits: Limits) -> Self {
        Self {
            trusted,
            now,
            limits,
            step: Step::Root { rotations: 0 },
        }
    }

    /// What to fetch next; `None` once the workflow has finished or failed.
    pub fn poll_fetch(&self) -> Option<Fetch> {
        let l = &self.limits;
        match &self.step {
            Step::Root { .. } => Some(Fetch::Root {
                version: self.trusted.root.body.version.saturating_add(1),
                max_len: l.max_root_bytes,
            }),
            Step::Timestamp => Some(Fetch::Timestamp {
                max_len: l.max_timestamp_bytes,
            }),
            Step::Snapshot(m) => Some(Fetch::Snapshot {
                version: m.version,
                max_len: m
                    .length
                    .unwrap_or(l.max_snapshot_bytes)
                    .min(l.max_snapshot_bytes),
            }),
            Step::Targets(m) => Some(Fetch::Targets {
                version: m.version,
                max_len: m
                    .length
                    .unwrap_or(l.max_targets_bytes)
                    .min(l.max_targets_bytes),
            }),
            Step::Done | Step::Failed(_) => None,
        }
    }

    /// Feeds the answer to the last [`Updater::poll_fetch`]: the bytes, or `None`
    /// when the repository does not have the document.
    pub fn handle_fetched(&mut self, bytes: Option<&[u8]>) -> Result<(), TufError> {
        let step = std::mem::replace(&mut self.step, Step::Done);
        let next = match step {
            Step::Root { rotations } => self.handle_root(rotations, bytes),
            Step::Timestamp => self.handle_timestamp(bytes),
            Step::Snapshot(m) => self.handle_snapshot(&m, bytes),
            Step::Targets(m) => self.handle_targets(&m, bytes),
            Step::Done => Err(TufError::Misuse("update already finished")),
            Step::Failed(e) => Err(e),
        };
        match next {
            Ok(step) => {
                self.step = step;
                Ok(())
            }
            Err(e) => {
                self.step = Step::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// The trusted set after a complete update, or why it failed.
    pub fn finish(self) -> Result<TrustedSet, TufError> {
        match self.step {
            Step::Done => Ok(self.trusted),
            Step::Failed(e) => Err(e),
            _ => Err(TufError::Misuse("update not finished")),
        }
    }

    /// Drives a whole update with a synchronous `fetch`.
    pub fn run(
        trusted: TrustedSet,
        now: UtcTime,
        limits: Limits,
        mut fetch: impl FnMut(Fetch) -> Option<Vec<u8>>,
    ) -> Result<TrustedSet, TufError> {
        let mut u = Self::new(trusted, now, limits);
        while let Some(f) = u.poll_fetch() {
            let bytes = fetch(f);
            u.handle_fetched(bytes.as_deref())?;
        }
        u.finish()
    }

    fn check_freeze(&self, role: Role, expires: UtcTime) -> Result<(), TufError> {
        if expires <= self.now {
            return Err(TufError::Expired {
                role,
                expires,
                now: self.now,
            });
        }
        Ok(())
    }

    fn handle_root(&mut self, rotations: u64, bytes: Option<&[u8]>) -> Result<Step, TufError> {
        let Some(bytes) = bytes else {
            // 5.3.10 Check for a freeze attack: the final root must not be expired.
            self.check_freeze(Role::Root, self.trusted.root.body.expires)?;
            // 5.3.12 Consistent snapshots: Off-spec: metadata is addressed by
            // version on every transport Flotilla uses, so nothing changes here.
            return Ok(Step::Timestamp);
        };
        // 5.3.3 Fetch at most a fixed maximum number of root versions.
        if rotations >= self.limits.max_root_rotations {
            return Err(TufError::TooManyRotations(self.limits.max_root_rotations));
        }
        let env = Envelope::parse(Role::Root, bytes, self.limits.max_root_bytes)?;
        // 5.3.4 Check signatures: a threshold of the trusted root's root keys...
        check_threshold(&env, &self.trusted.root.body, Role::Root, &self.limits)?;
        let new: Root = env.body(Role::Root)?;
        check_root_shape(&new)?;
        // ... and a threshold of the new root's own root keys.
        check_threshold(&env, &new, Role::Root, &self.limits)?;
        // 5.3.5 Check for a rollback attack: version must be exactly N+1.
        let expected = self.trusted.root.body.version.saturating_add(1);
        if new.version != expected {
            return Err(TufError::VersionMismatch {
                role: Role::Root,
                expected,
                found: new.version,
            });
        }
        // 5.3.6 Expiry of intermediate roots is not checked (5.3.10 checks the last).
        // 5.3.11 If timestamp and/or snapshot keys were rotated, delete the trusted
        // timestamp and snapshot so a fast-forward attack can be recovered from.
        let old = &self.trusted.root.body;
        let rotated = |role: Role| old.roles.get(role.name()) != new.roles.get(role.name());
        if rotated(Role::Timestamp) || rotated(Role::Snapshot) {
            self.trusted.timestamp = None;
            self.trusted.snapshot = None;
        }
        // 5.3.7 Set the trusted root to the new root. (5.3.8 persisting is the
        // caller's: it reads `trusted().root().raw`.) 5.3.9 Repeat from 5.3.2.
        self.trusted.root = Verified {
            raw: bytes.to_vec(),
            body: new,
        };
        Ok(Step::Root {
            rotations: rotations + 1,
        })
    }

    fn handle_timestamp(&mut self, bytes: Option<&[u8]>) -> Result<Step, TufError> {
        // 5.4.1 Download the timestamp metadata file, up to a limit.
        let bytes = bytes.ok_or(TufError::NotFound(Role::Timestamp))?;
        let root = &self.trusted.root.body;
        let env = Envelope::parse(Role::Timestamp, bytes, self.limits.max_timestamp_bytes)?;
        // 5.4.2 Check signatures against the trusted root's timestamp keys.
        check_threshold(&env, root, Role::Timestamp, &self.limits)?;
        let new: Timestamp = env.body(Role::Timestamp)?;
        let snap = new
            .meta
            .get("snapshot.json")
            .cloned()
            .ok_or_else(|| TufError::MissingMeta {
                role: Role::Timestamp,
                what: "snapshot.json".into(),
            })?;
        if let Some(trusted) = &self.trusted.timestamp {
            // 5.4.3.1 Check for a rollback attack on the timestamp.
            if new.version < trusted.body.version {
                return Err(TufError::Rollback {
                    role: Role::Timestamp,
                    trusted: trusted.body.version,
                    offered: new.version,
                });
            }
            // 5.4.3.2 The snapshot version it names must not go backwards either.
            if let Some(old) = trusted.body.meta.get("snapshot.json") {
                if snap.version < old.version {
                    return Err(TufError::Rollback {
                        role: Role::Snapshot,
                        trusted: old.version,
                        offered: snap.version,
                    });
                }
            }
        }
        // 5.4.4 Check for a freeze attack.
        self.check_freeze(Role::Timestamp, new.expires)?;
        // 5.4.5 Persist (the caller's) and trust the timestamp.
        self.trusted.timestamp = Some(Verified {
            raw: bytes.to_vec(),
            body: new,
        });
        Ok(Step::Snapshot(snap))
    }

    fn handle_snapshot(&mut self, meta: &MetaFile, bytes: Option<&[u8]>) -> Result<Step, TufError> {
        // 5.5.1 Download snapshot metadata, up to the length timestamp gives.
        let bytes = bytes.ok_or(TufError::NotFound(Role::Snapshot))?;
        let max = meta
            .length
            .unwrap_or(self.limits.max_snapshot_bytes)
            .min(self.limits.max_snapshot_bytes);
        let env = Envelope::parse(Role::Snapshot, bytes, max)?;
        // 5.5.2 Check against the timestamp's hashes (and length).
        check_length_and_hashes(
            "snapshot metadata",
            bytes,
            meta.length,
            meta.hashes.as_ref(),
        )?;
        // 5.5.3 Check signatures against the trusted root's snapshot keys.
        check_threshold(&env, &self.trusted.root.body, Role::Snapshot, &self.limits)?;
        let new: Snapshot = env.body(Role::Snapshot)?;
        // 5.5.4 Check the version against the timestamp's.
        if new.version != meta.version {
            return Err(TufError::VersionMismatch {
                role: Role::Snapshot,
                expected: meta.version,
                found: new.version,
            });
        }
        // 5.5.5 Check for a rollback attack: every targets file the trusted
        // snapshot lists must be listed, with a version not lower.
        if let Some(trusted) = &self.trusted.snapshot {
            for (name, old) in &trusted.body.meta {
                let Some(now) = new.meta.get(name) else {
                    return Err(TufError::MissingMeta {
                        role: Role::Snapshot,
                        what: name.clone(),
                    });
                };
                if now.version < old.version {
                    return Err(TufError::Rollback {
                        role: Role::Targets,
                        trusted: old.version,
                        offered: now.version,
                    });
                }
            }
        }
        // 5.5.6 Check for a freeze attack.
        self.check_freeze(Role::Snapshot, new.expires)?;
        let targets =
            new.meta
                .get("targets.json")
                .cloned()
                .ok_or_else(|| TufError::MissingMeta {
                    role: Role::Snapshot,
                    what: "targets.json".into(),
                })?;
        // 5.5.7 Persist (the caller's) and trust the snapshot.
        self.trusted.snapshot = Some(Verified {
            raw: bytes.to_vec(),
            body: new,
        });
        Ok(Step::Targets(targets))
    }

    fn handle_targets(&mut self, meta: &MetaFile, bytes: Option<&[u8]>) -> Result<Step, TufError> {
        // 5.6.1 Download targets metadata, up to the length snapshot gives.
        let bytes = bytes.ok_or(TufError::NotFound(Role::Targets))?;
        let max = meta
            .length
            .unwrap_or(self.limits.max_targets_bytes)
            .min(self.limits.max_targets_bytes);
        let env = Envelope::parse(Role::Targets, bytes, max)?;
        // 5.6.2 Check against the snapshot's hashes (and length).
        check_length_and_hashes("targets metadata", bytes, meta.length, meta.hashes.as_ref())?;
        // 5.6.3 Check signatures against the trusted root's targets keys.
        check_threshold(&env, &self.trusted.root.body, Role::Targets, &self.limits)?;
        let new: Targets = env.body(Role::Targets)?;
        // 5.6.4 Check the version against the snapshot's.
        if new.version != meta.version {
            return Err(TufError::VersionMismatch {
                role: Role::Targets,
                expected: meta.version,
                found: new.version,
            });
        }
        if let Some(trusted) = &self.trusted.targets {
            if new.version < trusted.body.version {
                return Err(TufError::Rollback {
                    role: Role::Targets,
                    trusted: trusted.body.version,
                    offered: new.version,
                });
            }
        }
        // 5.6.5 Check for a freeze attack.
        self.check_freeze(Role::Targets, new.expires)?;
        // 5.6.6 Persist (the caller's) and trust the targets.
        // 5.6.7 Delegations: Off-spec, not supported (see module docs).
        self.trusted.targets = Some(Verified {
            raw: bytes.to_vec(),
            body: new,
        });
        Ok(Step::Done)
    }
}

fn verify_root_self(raw: &[u8], limits: &Limits) -> Result<Verified<Root>, TufError> {
    let env = Envelope::parse(Role::Root, raw, limits.max_root_bytes)?;
    let body: Root = env.body(Role::Root)?;
    check_root_shape(&body)?;
    check_threshold(&env, &body, Role::Root, limits)?;
    Ok(Verified {
        raw: raw.to_vec(),
        body,
    })
}

pub(crate) fn verify_signed<T: serde::de::DeserializeOwned>(
    role: Role,
    raw: &[u8],
    max: u64,
    root: &Root,
    limits: &Limits,
) -> Result<Verified<T>, TufError> {
    let env = Envelope::parse(role, raw, max)?;
    check_threshold(&env, root, role, limits)?;
    Ok(Verified {
        raw: raw.to_vec(),
        body: env.body(role)?,
    })
}
