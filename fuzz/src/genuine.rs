//! The genuine material: a TUF repository with one root rotation, a manifest it
//! signs as a target, and the bundle that carries them, built once per process.
//!
//! Design: keys come from fixed seeds, not from the system RNG, so the genuine
//! documents are the same bytes in every run (Ed25519 signing is deterministic
//! too). A crash input then reproduces with `cargo fuzz run TARGET ARTIFACT`, and a
//! corpus stays meaningful from one run to the next. The keys are real Ed25519
//! keys; only their secrecy is given up, which a fuzzer cannot use: it sees
//! coverage, not key material, and cannot compute a signature.
//!
//! Panics here are harness bugs (the genuine material must verify), never
//! findings about the library; [`genuine`] checks that before any input runs.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use flotilla_protocol::bundle::{verify_bundle, BundleWriter};
use flotilla_protocol::digest::Sha256Digest;
use flotilla_protocol::manifest::{
    Accelerator, BundleManifest, ChunkRef, ChunkingParams, Dim, DriftBaseline, ElementType,
    FeatureBaseline, FeatureDistribution, Flavor, Lineage, ManifestFile, ModelSignature,
    RuntimeRequirements, TensorSpec, MANIFEST_SCHEMA_VERSION,
};
use flotilla_protocol::time::UtcTime;
use flotilla_protocol::tuf::repo::{publish, Expiries, OnlineKeys, Publication};
use flotilla_protocol::tuf::{
    Envelope, Fetch, PublicKey, Role, Root, SigningKey, TargetFile, Targets, TrustedSet, TufError,
    Updater,
};
use flotilla_protocol::Limits;

/// The fixed update start time of every verification.
pub const NOW: UtcTime = UtcTime(1_900_000_000);
const YEAR: i64 = 365 * 86_400;

/// Everything a target compares fuzzed bytes against.
#[derive(Debug)]
pub struct Genuine {
    /// `1.root.json`: root keys A, B, C (threshold 2) and the first online keys.
    /// The pinned root of every verification.
    pub root_v1: Vec<u8>,
    /// `2.root.json`: root keys B, C, D (threshold 2) and a new timestamp key;
    /// signed by A, B and D, so by a threshold of both the old and the new keys.
    pub root_v2: Vec<u8>,
    /// timestamp, snapshot and targets signed with root v2's online keys.
    pub publication: Publication,
    /// What a client trusts after updating from `root_v1` over this repository.
    pub trusted: TrustedSet,
    /// The one target: a manifest with two files, a signature and a baseline.
    pub manifest: BundleManifest,
    /// Its CBOR bytes, as `targets.json` signs them.
    pub manifest_bytes: Vec<u8>,
    /// The files' bytes, concatenated in manifest order.
    pub payload: Vec<u8>,
    /// The bundle file carrying all of the above.
    pub bundle: Vec<u8>,
}

/// A small genuine ONNX MLP (`flotilla_runtime::generate::mlp`), the
/// starting point of the ONNX targets' edits (built once).
pub fn genuine_model() -> &'static [u8] {
    static MODEL: OnceLock<Vec<u8>> = OnceLock::new();
    MODEL.get_or_init(|| flotilla_runtime::generate::mlp(&[4, 3, 2], 1))
}

/// The process's genuine material, built (and checked) on first use.
pub fn genuine() -> &'static Genuine {
    static GENUINE: OnceLock<Genuine> = OnceLock::new();
    GENUINE.get_or_init(Genuine::build)
}

/// An Ed25519 key from a fixed seed, through a PKCS#8 v1 document
/// (RFC 8410: the algorithm identifier 1.3.101.112, then the seed).
fn key(seed: u8) -> SigningKey {
    let mut doc = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    doc.extend_from_slice(&[seed; 32]);
    SigningKey::from_pkcs8(&doc).expect("a PKCS#8 v1 Ed25519 document")
}

/// Online keys from seeds, in the order targets, snapshot, timestamp, director.
fn online([targets, snapshot, timestamp, director]: [u8; 4]) -> OnlineKeys {
    OnlineKeys {
        targets: key(targets),
        snapshot: key(snapshot),
        timestamp: key(timestamp),
        director: key(director),
    }
}

fn root_body(version: u64, root_keys: &[&SigningKey], online: &OnlineKeys) -> Root {
    let mut r = Root::new(version, NOW.plus_secs(YEAR));
    let pubs: Vec<&PublicKey> = root_keys.iter().map(|k| k.public()).collect();
    r.set_role(Role::Root, &pubs, 2);
    r.set_role(Role::Targets, &[online.targets.public()], 1);
    r.set_role(Role::Snapshot, &[online.snapshot.public()], 1);
    r.set_role(Role::Timestamp, &[online.timestamp.public()], 1);
    r.set_role(Role::Director, &[online.director.public()], 1);
    r
}

/// `len` bytes of a fixed xorshift stream.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
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

/// A manifest file cut at `cuts` (chunk lengths), with its chunks' bytes.
fn file(path: &str, data: &[u8], cuts: &[usize]) -> (ManifestFile, Vec<Vec<u8>>) {
    let mut chunks = Vec::new();
    let mut refs = Vec::new();
    let mut off = 0;
    for &len in cuts {
        let bytes = data[off..off + len].to_vec();
        off += len;
        refs.push(ChunkRef {
            digest: Sha256Digest::of(&bytes),
            size: u32::try_from(len).expect("small chunk"),
            blake3: Some(flotilla_protocol::digest::Blake3Digest::of(&bytes)),
        });
        chunks.push(bytes);
    }
    assert_eq!(off, data.len(), "cuts cover the file");
    let f = ManifestFile::describing(path, data, refs);
    (f, chunks)
}

fn tensor(name: &str, shape: Vec<Dim>) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        elem_type: ElementType::Float32,
        shape: Some(shape),
    }
}

/// The manifest, and every chunk's bytes in bundle order. Chunks are tiny (the
/// chunker's sizes are not a manifest invariant) so that the bundle stays a few
/// KiB and the streaming checks run on every input.
fn manifest() -> (BundleManifest, Vec<Vec<u8>>) {
    let model = pseudo_random(300, 7);
    // The vocabulary repeats the model's first chunk: bundles carry repeats.
    let vocab = model[..100].to_vec();
    let (model_file, mut chunks) = file("model.onnx", &model, &[100, 120, 80]);
    let (vocab_file, vocab_chunks) = file("vocab.bin", &vocab, &[100]);
    chunks.extend(vocab_chunks);
    let manifest = BundleManifest {
        schema_version: MANIFEST_SCHEMA_VERSION,
        name: "fraud".into(),
        version: 3,
        flavor: Flavor::Onnx,
        entrypoint: "model.onnx".into(),
        files: vec![model_file, vocab_file],
        chunking: ChunkingParams::default(),
        signature: ModelSignature {
            inputs: vec![tensor(
                "input",
                vec![Dim::Symbolic("batch".into()), Dim::Fixed(4)],
            )],
            outputs: vec![tensor("output", vec![Dim::Unknown, Dim::Fixed(2)])],
        },
        drift_baseline: Some(DriftBaseline {
            rows: 1000,
            features: vec![
                FeatureBaseline {
                    name: "amount".into(),
                    missing_rate: 0.25,
                    distribution: FeatureDistribution::Numeric {
                        edges: vec![-1.5, 0.0, 2.75],
                        counts: vec![400, 600],
                    },
                },
                FeatureBaseline {
                    name: "country".into(),
                    missing_rate: 0.0,
                    distribution: FeatureDistribution::Categorical {
                        frequencies: [("de".to_string(), 700), ("fr".to_string(), 300)].into(),
                    },
                },
            ],
        }),
        requirements: RuntimeRequirements {
            min_agent_version: "0.1.0".into(),
            accelerator: Accelerator::Cpu,
            min_memory_bytes: 1 << 20,
        },
        lineage: Lineage {
            created_by: "fuzz".into(),
            reason: "genuine fixture".into(),
            source_run: Some("run-1".into()),
            dataset_digest: None,
            parent_version: Some(2),
        },
        tags: BTreeMap::from([("team".to_string(), "risk".to_string())]),
    };
    (manifest, chunks)
}

/// Runs the update workflow from `root_v1` over a repository answering `fetch`.
pub fn update(
    root_v1: &[u8],
    fetch: impl FnMut(Fetch) -> Option<Vec<u8>>,
) -> Result<TrustedSet, TufError> {
    let limits = Limits::default();
    let trusted = TrustedSet::from_trusted_root(root_v1, &limits)?;
    Updater::run(trusted, NOW, limits, fetch)
}

impl Genuine {
    fn build() -> Self {
        let [a, b, c, d] = [1, 2, 3, 4].map(key);
        // Root v2 rotates the timestamp key; the other online keys stay.
        let online_v1 = online([11, 12, 13, 14]);
        let online_v2 = online([11, 12, 23, 14]);
        let sign = |body: &Root, keys: &[&SigningKey]| {
            Envelope::sign(body, keys).expect("a root body signs")
        };
        let root_v1 = sign(&root_body(1, &[&a, &b, &c], &online_v1), &[&a, &b]);
        let root_v2 = sign(&root_body(2, &[&b, &c, &d], &online_v2), &[&a, &b, &d]);

        let (manifest, chunks) = manifest();
        let manifest_bytes = manifest.encode();
        let mut targets = Targets::new(1, NOW.plus_secs(YEAR));
        targets.targets.insert(
            manifest.target_path(),
            TargetFile::describing(&manifest_bytes, None),
        );
        let publication = publish(&targets, 1, NOW, Expiries::default(), &online_v2)
            .expect("the genuine repository publishes");

        let trusted = update(&root_v1, |f| match f {
            Fetch::Root { version: 2, .. } => Some(root_v2.clone()),
            Fetch::Root { .. } => None,
            Fetch::Timestamp { .. } => Some(publication.timestamp.clone()),
            Fetch::Snapshot { .. } => Some(publication.snapshot.clone()),
            Fetch::Targets { .. } => Some(publication.targets.clone()),
        })
        .expect("the genuine repository verifies");

        let mut w = BundleWriter::new(Vec::new());
        w.root(1, &root_v1).expect("in-memory write");
        w.root(2, &root_v2).expect("in-memory write");
        w.metadata(
            &publication.timestamp,
            &publication.snapshot,
            &publication.targets,
        )
        .expect("in-memory write");
        w.manifest(&manifest.target_path(), &manifest_bytes)
            .expect("in-memory write");
        for (r, bytes) in manifest.files.iter().flat_map(|f| &f.chunks).zip(&chunks) {
            w.chunk(&r.digest, bytes).expect("in-memory write");
        }
        let bundle = w.finish().expect("in-memory write");
        let payload: Vec<u8> = chunks.concat();
        let verified = verify_bundle(
            &bundle[..],
            &root_v1,
            NOW,
            &Limits::default(),
            |_, _| Ok(()),
        )
        .expect("the genuine bundle verifies");
        assert_eq!(verified.manifest, manifest, "the genuine bundle verifies");

        Self {
            root_v1,
            root_v2,
            publication,
            trusted,
            manifest,
            manifest_bytes,
            payload,
            bundle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_genuine_material_verifies_and_is_the_same_bytes_every_time() {
        let g = genuine();
        assert_eq!(g.trusted.root().body.version, 2);
        let again = Genuine::build();
        assert_eq!(again.bundle, g.bundle);
    }
}
