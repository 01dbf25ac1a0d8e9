//! A socketless simulation for the reconciler's tests: a real signed fleet
//! repository (keys, root, targets, director documents), a hub that serves
//! chunks (with a fault switch), and an agent driver with an in-memory chunk
//! store and record that survive a simulated crash, all on a virtual clock.
// Test helpers unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::*;
use crate::chunking::chunk_bytes;
use crate::director::{
    verify_director, DeploymentAssignment, DirectorDocument, EndpointAssignment,
};
use crate::manifest::*;
use crate::time::UtcTime;
use crate::tuf::repo::{publish, Expiries, OnlineKeys};
use crate::tuf::{
    Envelope, Fetch, Role, Root, SigningKey, TargetFile, Targets, TrustedSet, Updater,
};
use crate::Limits;

pub(super) const T0: UtcTime = UtcTime(1_900_000_000);
const YEAR: i64 = 365 * 86_400;
pub(super) const DEVICE: &str = "dev-1";

fn key() -> SigningKey {
    let rng = ring::rand::SystemRandom::new();
    SigningKey::from_pkcs8(&SigningKey::generate_pkcs8(&rng).unwrap()).unwrap()
}

/// A pseudo-random "model file".
pub(super) fn model_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The hub side: signing keys, published targets, manifests and chunks.
pub(super) struct Fleet {
    root_key: SigningKey,
    online: OnlineKeys,
    targets: Targets,
    pub manifests: BTreeMap<String, Vec<u8>>,
    pub chunks: BTreeMap<Sha256Digest, Vec<u8>>,
    /// Chunks served with one flipped byte, once each.
    pub corrupt_once: BTreeSet<Sha256Digest>,
}

impl Fleet {
    pub(super) fn new() -> Self {
        Self {
            root_key: key(),
            online: OnlineKeys {
                targets: key(),
                snapshot: key(),
                timestamp: key(),
                director: key(),
            },
            targets: Targets::new(0, T0.plus_secs(YEAR)),
            manifests: BTreeMap::new(),
            chunks: BTreeMap::new(),
            corrupt_once: BTreeSet::new(),
        }
    }

    /// Registers model `name` version `version` made of `data`; returns its
    /// target path.
    pub(super) fn add_model(&mut self, name: &str, version: u64, data: &[u8]) -> String {
        self.add_model_edited(name, version, data, |_| {})
    }

    /// [`Fleet::add_model`], with `edit` applied to the manifest before it
    /// is signed (the hub signs whatever it lists).
    pub(super) fn add_model_edited(
        &mut self,
        name: &str,
        version: u64,
        data: &[u8],
        edit: impl FnOnce(&mut BundleManifest),
    ) -> String {
        let cut = chunk_bytes(data);
        for c in &cut {
            let at = c.offset as usize;
            self.chunks
                .insert(c.digest, data[at..at + c.len as usize].to_vec());
        }
        let mut m = BundleManifest {
            schema_version: MANIFEST_SCHEMA_VERSION,
            name: name.into(),
            version,
            flavor: Flavor::Onnx,
            entrypoint: "model.onnx".into(),
            files: vec![ManifestFile::describing(
                "model.onnx",
                data,
                cut.iter().map(ChunkRef::from).collect(),
            )],
            chunking: ChunkingParams::default(),
            signature: ModelSignature::default(),
            drift_baseline: None,
            requirements: RuntimeRequirements {
                min_agent_version: "0.1.0".into(),
                accelerator: Accelerator::Cpu,
                min_memory_bytes: 0,
            },
            lineage: Lineage::default(),
            tags: BTreeMap::new(),
        };
        edit(&mut m);
        let raw = m.encode();
        let target = m.target_path();
        self.targets
            .targets
            .insert(target.clone(), TargetFile::describing(&raw, None));
        self.targets.version += 1;
        self.manifests.insert(target.clone(), raw);
        target
    }

    /// The agent's trust after a full TUF update against the current targets.
    pub(super) fn trusted(&self) -> TrustedSet {
        let mut root = Root::new(1, T0.plus_secs(YEAR));
        root.set_role(Role::Root, &[self.root_key.public()], 1);
        root.set_role(Role::Targets, &[self.online.targets.public()], 1);
        root.set_role(Role::Snapshot, &[self.online.snapshot.public()], 1);
        root.set_role(Role::Timestamp, &[self.online.timestamp.public()], 1);
        root.set_role(Role::Director, &[self.online.director.public()], 1);
        let root_raw = Envelope::sign(&root, &[&self.root_key]).unwrap();
        let p = publish(
            &self.targets,
            self.targets.version,
            T0,
            Expiries::default(),
            &self.online,
        )
        .unwrap();
        let set = TrustedSet::from_trusted_root(&root_raw, &Limits::default()).unwrap();
        Updater::run(set, T0, Limits::default(), |f| match f {
            Fetch::Root { .. } => None,
            Fetch::Timestamp { .. } => Some(p.timestamp.clone()),
            Fetch::Snapshot { .. } => Some(p.snapshot.clone()),
            Fetch::Targets { .. } => Some(p.targets.clone()),
        })
        .unwrap()
    }

    /// Signs director document `version` assigning `(endpoint, deployment,
    /// target)`s, verifies it as the agent would, and binds its manifests.
    pub(super) fn desired(&self, version: u64, assign: &[(&str, &str, &str)]) -> DesiredState {
        let doc = self.director(version, assign);
        DesiredState::from_verified(&doc, &self.manifests, &self.trusted(), &Limits::default())
            .unwrap()
    }

    /// Signs director document `version` and verifies it as the agent would.
    pub(super) fn director(&self, version: u64, assign: &[(&str, &str, &str)]) -> DirectorDocument {
        let mut endpoints: BTreeMap<&str, Vec<DeploymentAssignment>> = BTreeMap::new();
        for (ep, dep, target) in assign {
            let entry = &self.targets.targets[*target];
            endpoints.entry(ep).or_default().push(DeploymentAssignment {
                name: (*dep).into(),
                target: (*target).into(),
                length: entry.length,
                sha256: entry.hashes["sha256"].clone(),
                weight: 0,
            });
        }
        let endpoints = endpoints
            .into_iter()
            .map(|(name, mut deployments)| {
                let n = deployments.len() as u32;
                for (i, d) in deployments.iter_mut().enumerate() {
                    d.weight = 100 / n + u32::from(i == 0) * (100 % n);
                }
                EndpointAssignment {
                    name: name.into(),
                    deployments,
                    mirror: None,
                }
            })
            .collect();
        let doc = DirectorDocument::new(DEVICE, version, T0.plus_secs(YEAR), endpoints);
        let raw = Envelope::sign(&doc, &[&self.online.director]).unwrap();
        let trusted = self.trusted();
        let l = Limits::default();
        verify_director(&raw, &trusted, DEVICE, None, T0, &l).unwrap()
    }

    /// Chunks of `target`'s manifest.
    pub(super) fn chunks_of(&self, target: &str) -> Vec<ChunkRef> {
        BundleManifest::decode(&self.manifests[target], &Limits::default())
            .unwrap()
            .unique_chunks()
    }
}

/// How the simulated runtime answers trials.
pub(super) type TrialPolicy = fn(&str) -> Result<(), String>;

/// The agent side: the reconciler and what its driver keeps.
pub(super) struct Agent {
    pub rec: Reconciler,
    pub config: ReconcileConfig,
    pub now: UtcTime,
    /// The chunk store: survives crashes.
    pub store: BTreeMap<Sha256Digest, Vec<u8>>,
    /// The last persisted record: survives crashes.
    pub persisted: Option<Vec<u8>>,
    /// What the runtime serves per deployment: lost in a crash.
    pub serving: BTreeMap<DeploymentKey, String>,
    /// Chunk requests sent and not yet answered: lost in a crash.
    pub hub_queue: VecDeque<Sha256Digest>,
    /// Trials asked for and not yet answered: lost in a crash.
    pub trials: VecDeque<(DeploymentKey, String)>,
    /// Every chunk the hub sent (the bytes transferred, counted).
    pub fetched: Vec<Sha256Digest>,
    /// Every action performed, in order.
    pub log: Vec<Action>,
    /// Inputs the reconciler refused (rejected chunks, late trial results).
    pub errors: Vec<ReconcileError>,
    pub trial_policy: TrialPolicy,
    /// Whether the runtime answers trials at all.
    pub answer_trials: bool,
}

impl Agent {
    pub(super) fn new() -> Self {
        let config = ReconcileConfig::default();
        Self {
            rec: Reconciler::new(config, Limits::default()),
            config,
            now: T0,
            store: BTreeMap::new(),
            persisted: None,
            serving: BTreeMap::new(),
            hub_queue: VecDeque::new(),
            trials: VecDeque::new(),
            fetched: Vec::new(),
            log: Vec::new(),
            errors: Vec::new(),
            trial_policy: |_| Ok(()),
            answer_trials: true,
        }
    }

    /// Kills the agent and starts it again from its record.
    pub(super) fn crash_and_restart(&mut self) {
        self.serving.clear();
        self.hub_queue.clear();
        self.trials.clear();
        self.now = self.now.plus_secs(1);
        let record = match &self.persisted {
            Some(raw) => AgentRecord::decode(raw).unwrap(),
            None => Reconciler::new(self.config, Limits::default()).record(),
        };
        self.rec = Reconciler::restore(&record, self.config, Limits::default(), self.now).unwrap();
    }

    /// One tick: perform one action, else deliver one chunk, else answer one
    /// trial. False when there is nothing left to do.
    pub(super) fn tick(&mut self, fleet: &mut Fleet) -> bool {
        if let Some(a) = self.rec.poll_action() {
            self.perform(fleet, a);
            return true;
        }
        if let Some(d) = self.hub_queue.pop_front() {
            self.now = self.now.plus_secs(1);
            match fleet.chunks.get(&d) {
                Some(bytes) => {
                    let mut bytes = bytes.clone();
                    if fleet.corrupt_once.remove(&d) {
                        bytes[0] ^= 1;
                    }
                    self.fetched.push(d);
                    if let Err(e) =
                        self.rec
                            .handle_chunk(d, crate::digest::HashedBytes::new(bytes), self.now)
                    {
                        self.errors.push(e);
                    }
                }
                None => {
                    self.rec.handle_chunk_missing(d);
                }
            }
            return true;
        }
        if !self.answer_trials {
            return false;
        }
        if let Some((key, target)) = self.trials.pop_front() {
            let result = (self.trial_policy)(&target);
            if let Err(e) = self
                .rec
                .handle_trial_result(&key, &target, result, self.now)
            {
                self.errors.push(e);
            }
            return true;
        }
        false
    }

    /// Ticks until nothing is left; returns the ticks taken.
    pub(super) fn run(&mut self, fleet: &mut Fleet) -> usize {
        let mut n = 0;
        while self.tick(fleet) {
            n += 1;
            assert!(n < 100_000, "the simulation does not settle");
        }
        n
    }

    /// Performs one action, as the agent's driver would.
    pub(super) fn perform(&mut self, fleet: &Fleet, a: Action) {
        match &a {
            Action::QueryStore { digests } => {
                let (present, absent): (Vec<_>, Vec<_>) =
                    digests.iter().partition(|d| self.store.contains_key(d));
                self.rec.handle_store_answer(&present, &absent, self.now);
            }
            Action::FetchChunks { digests } => self.hub_queue.extend(digests),
            Action::WriteChunk { digest, bytes } => {
                let bytes = bytes.clone().into_vec();
                assert_eq!(Sha256Digest::of(&bytes), *digest);
                self.store.insert(*digest, bytes);
            }
            Action::Stage { slot, .. } => self.assert_complete(fleet, slot.target()),
            Action::Activate { key, target } => {
                self.assert_complete(fleet, target);
                self.serving.insert(key.clone(), target.clone());
            }
            Action::RunTrial { key, target } => {
                self.trials.push_back((key.clone(), target.clone()));
            }
            Action::RollBack { key, to, .. } => match to {
                Some(t) => {
                    self.assert_complete(fleet, t);
                    self.serving.insert(key.clone(), t.clone());
                }
                None => {
                    self.serving.remove(key);
                }
            },
            Action::Retire { key } => {
                self.serving.remove(key);
            }
            Action::Persist(r) => self.persisted = Some(r.encode()),
            Action::CollectGarbage { digests } => {
                for d in digests {
                    if !self.rec.is_referenced(d) {
                        self.store.remove(d);
                    }
                }
            }
            Action::Commit { .. } | Action::Report(_) => {}
        }
        self.log.push(a);
    }

    /// Every chunk of `target` is in the store (never stage or serve a partial
    /// bundle).
    pub(super) fn assert_complete(&self, fleet: &Fleet, target: &str) {
        for c in fleet.chunks_of(target) {
            assert!(
                self.store.contains_key(&c.digest),
                "{target} is used while chunk {} is not in the store",
                c.digest
            );
        }
    }

    /// Statuses reported so far, as (target, state) pairs.
    pub(super) fn reports(&self) -> Vec<(String, crate::wire::DeploymentState)> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Report(s) => Some((s.target.clone(), s.state.clone())),
                _ => None,
            })
            .collect()
    }
}
