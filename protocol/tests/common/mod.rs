//! A real trust chain in memory for the tamper tests: fresh ed25519 keys, signed
//! roots, published metadata and bundle bytes built with the crate's own writer.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use flotilla_protocol::bundle::BundleWriter;
use flotilla_protocol::chunking::chunk_bytes;
use flotilla_protocol::manifest::*;
use flotilla_protocol::time::UtcTime;
use flotilla_protocol::tuf::repo::{publish, Expiries, OnlineKeys, Publication};
use flotilla_protocol::tuf::{
    Envelope, Fetch, PublicKey, Role, Root, SigningKey, TargetFile, Targets,
};

pub const NOW: UtcTime = UtcTime(1_900_000_000);
pub const YEAR: i64 = 365 * 86_400;

pub fn key() -> SigningKey {
    let rng = ring::rand::SystemRandom::new();
    SigningKey::from_pkcs8(&SigningKey::generate_pkcs8(&rng).unwrap()).unwrap()
}

pub fn online() -> OnlineKeys {
    OnlineKeys {
        targets: key(),
        snapshot: key(),
        timestamp: key(),
        director: key(),
    }
}

/// A root body authorising `root_keys` (threshold `k`) and `online`.
pub fn root_body(version: u64, root_keys: &[&SigningKey], k: u64, online: &OnlineKeys) -> Root {
    let mut r = Root::new(version, NOW.plus_secs(YEAR));
    let pubs: Vec<&PublicKey> = root_keys.iter().map(|k| k.public()).collect();
    r.set_role(Role::Root, &pubs, k);
    r.set_role(Role::Targets, &[online.targets.public()], 1);
    r.set_role(Role::Snapshot, &[online.snapshot.public()], 1);
    r.set_role(Role::Timestamp, &[online.timestamp.public()], 1);
    r.set_role(Role::Director, &[online.director.public()], 1);
    r
}

pub fn sign<T: serde::Serialize>(body: &T, keys: &[&SigningKey]) -> Vec<u8> {
    Envelope::sign(body, keys).unwrap()
}

/// A repository as a client sees it: documents by name.
#[derive(Debug, Clone, Default)]
pub struct MemRepo {
    pub roots: BTreeMap<u64, Vec<u8>>,
    pub timestamp: Option<Vec<u8>>,
    pub snapshot: Option<Vec<u8>>,
    pub targets: Option<Vec<u8>>,
}

impl MemRepo {
    pub fn fetch(&self, f: Fetch) -> Option<Vec<u8>> {
        match f {
            Fetch::Root { version, .. } => self.roots.get(&version).cloned(),
            Fetch::Timestamp { .. } => self.timestamp.clone(),
            Fetch::Snapshot { .. } => self.snapshot.clone(),
            Fetch::Targets { .. } => self.targets.clone(),
        }
    }

    pub fn publish(&mut self, p: &Publication) {
        self.timestamp = Some(p.timestamp.clone());
        self.snapshot = Some(p.snapshot.clone());
        self.targets = Some(p.targets.clone());
    }
}

/// A pseudo-random "model file".
pub fn model_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

pub fn manifest_for(name: &str, version: u64, data: &[u8]) -> BundleManifest {
    let chunks = chunk_bytes(data);
    BundleManifest {
        schema_version: MANIFEST_SCHEMA_VERSION,
        name: name.into(),
        version,
        flavor: Flavor::Onnx,
        entrypoint: "model.onnx".into(),
        files: vec![ManifestFile::describing(
            "model.onnx",
            data,
            chunks.iter().map(ChunkRef::from).collect(),
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
    }
}

/// A fleet's signing material and a published bundle.
#[derive(Debug)]
pub struct Fixture {
    pub root_keys: Vec<SigningKey>,
    pub online: OnlineKeys,
    pub root_v1: Vec<u8>,
    pub data: Vec<u8>,
    pub manifest: BundleManifest,
    pub manifest_bytes: Vec<u8>,
    pub targets: Targets,
    pub publication: Publication,
}

impl Fixture {
    pub fn new(data_len: usize) -> Self {
        let root_keys = vec![key(), key(), key()];
        let online = online();
        let refs: Vec<&SigningKey> = root_keys.iter().collect();
        let root_v1 = sign(&root_body(1, &refs, 2, &online), &refs[..2]);
        let data = model_bytes(data_len, 7);
        let manifest = manifest_for("fraud", 1, &data);
        let manifest_bytes = manifest.encode();
        let mut targets = Targets::new(1, NOW.plus_secs(YEAR));
        targets.targets.insert(
            manifest.target_path(),
            TargetFile::describing(&manifest_bytes, None),
        );
        let publication = publish(&targets, 1, NOW, Expiries::default(), &online).unwrap();
        Self {
            root_keys,
            online,
            root_v1,
            data,
            manifest,
            manifest_bytes,
            targets,
            publication,
        }
    }

    pub fn repo(&self) -> MemRepo {
        let mut r = MemRepo {
            roots: [(1, self.root_v1.clone())].into(),
            ..MemRepo::default()
        };
        r.publish(&self.publication);
        r
    }

    /// The bundle bytes, with `chunk_data` able to alter chunk `i`'s bytes.
    pub fn bundle_with(
        &self,
        md: &MemRepo,
        manifest: &[u8],
        mut chunk_data: impl FnMut(usize, &mut Vec<u8>),
    ) -> Vec<u8> {
        let mut w = BundleWriter::new(Vec::new());
        for (v, raw) in &md.roots {
            w.root(*v, raw).unwrap();
        }
        w.metadata(
            md.timestamp.as_deref().unwrap_or_default(),
            md.snapshot.as_deref().unwrap_or_default(),
            md.targets.as_deref().unwrap_or_default(),
        )
        .unwrap();
        w.manifest(&self.manifest.target_path(), manifest).unwrap();
        let mut off = 0usize;
        for (i, c) in self.manifest.files[0].chunks.iter().enumerate() {
            let mut bytes = self.data[off..off + c.size as usize].to_vec();
            off += c.size as usize;
            chunk_data(i, &mut bytes);
            w.chunk(&c.digest, &bytes).unwrap();
        }
        w.finish().unwrap()
    }

    pub fn bundle(&self) -> Vec<u8> {
        self.bundle_with(&self.repo(), &self.manifest_bytes, |_, _| {})
    }
}
