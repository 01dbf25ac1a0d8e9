//! The bundle manifest: what a model version is made of, in CBOR.
//!
//! A manifest names a model version's files, each cut into content-defined chunks
//! with their digests, the model's input/output signature, the drift baseline, what
//! the runtime needs, and where the version came from. It is a TUF target: its bytes
//! are hashed into signed `targets.json`, so every chunk digest it lists is signed.
//!
//! This module encodes, decodes and validates; it does not chunk (see
//! [`crate::chunking`]) and does not check signatures (see [`crate::tuf`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::chunking::Chunk;
use crate::chunking::{AVG_CHUNK, MAX_CHUNK, MIN_CHUNK};
use crate::digest::{AnyDigest, Blake3Digest, HashedBytes, Sha256Digest};
use crate::limits::Limits;

/// Manifest schema this code writes and reads.
pub const MANIFEST_SCHEMA_VERSION: u32 = 1;

/// A model version's bundle manifest. Decode it only through
/// [`BundleManifest::decode`], which enforces [`Limits`] and the invariants below.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleManifest {
    /// Always [`MANIFEST_SCHEMA_VERSION`] for manifests this code accepts.
    pub schema_version: u32,
    /// Model name in the registry.
    pub name: String,
    /// Model version, assigned by the registry (1, 2, 3 …).
    pub version: u64,
    /// How the runtime should load the bundle.
    pub flavor: Flavor,
    /// Path (among `files`) of the model graph to load.
    // invariant: names one entry of `files`.
    pub entrypoint: String,
    /// The files, each split into content-defined chunks.
    // invariant: paths unique, relative, without `..`; chunk sizes sum to `size`.
    pub files: Vec<ManifestFile>,
    /// The chunker parameters the files were cut with.
    pub chunking: ChunkingParams,
    /// Input and output tensors of the model.
    pub signature: ModelSignature,
    /// Distribution of the reference dataset, for drift detection on the node.
    pub drift_baseline: Option<DriftBaseline>,
    /// What a node needs to run this version.
    pub requirements: RuntimeRequirements,
    /// Where this version came from.
    pub lineage: Lineage,
    /// Free-form `key=value` labels.
    pub tags: BTreeMap<String, String>,
}

/// Model formats the runtime loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Flavor {
    /// An ONNX graph, run by Flotilla's executor.
    Onnx,
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative path inside the bundle, `/`-separated.
    pub path: String,
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: Sha256Digest,
    /// BLAKE3 of the whole file, signed with the rest. When present, an agent
    /// checks the file it assembles by it instead of by `sha256` (3-5x
    /// cheaper; see [`crate::digest`]); absent in older manifests.
    #[serde(rename = "b3", default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<Blake3Digest>,
    /// The chunks, in file order.
    pub chunks: Vec<ChunkRef>,
}

impl ManifestFile {
    /// The digest the whole file is checked by: its BLAKE3 where listed,
    /// else its SHA-256.
    pub fn checked_digest(&self) -> AnyDigest {
        self.blake3
            .map_or(AnyDigest::Sha256(self.sha256), AnyDigest::Blake3)
    }

    /// The entry for `data` at `path`, cut into `chunks`: its size and both
    /// digests.
    pub fn describing(path: impl Into<String>, data: &[u8], chunks: Vec<ChunkRef>) -> Self {
        Self {
            path: path.into(),
            size: data.len() as u64,
            sha256: Sha256Digest::of(data),
            blake3: Some(Blake3Digest::of(data)),
            chunks,
        }
    }
}

/// A chunk as a manifest lists it: its address, length and (in manifests
/// written since BLAKE3 was added) the digest it is verified by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// SHA-256 of the chunk bytes; also the chunk's address in every store.
    pub digest: Sha256Digest,
    /// Length in bytes.
    pub size: u32,
    /// BLAKE3 of the chunk bytes, signed with the rest of the manifest. When
    /// present, a receiver verifies the chunk by it instead of by `digest`
    /// (see [`crate::digest`] for why); absent in older manifests.
    #[serde(rename = "b3", default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<Blake3Digest>,
}

impl From<&Chunk> for ChunkRef {
    fn from(c: &Chunk) -> Self {
        Self {
            digest: c.digest,
            size: c.len,
            blake3: Some(c.blake3),
        }
    }
}

impl ChunkRef {
    /// Checks that `bytes` are this chunk: its length, and its BLAKE3 where
    /// the manifest lists one, else its SHA-256 (hashed now). On a mismatch,
    /// returns the digest the bytes have, of the kind that was checked.
    pub fn verify(&self, bytes: &HashedBytes) -> Result<(), AnyDigest> {
        self.check(bytes.len(), || bytes.blake3(), || bytes.sha256())
    }

    /// [`ChunkRef::verify`] for bytes in one buffer.
    pub fn verify_slice(&self, bytes: &[u8]) -> Result<(), AnyDigest> {
        self.check(
            bytes.len(),
            || Blake3Digest::of(bytes),
            || Sha256Digest::of(bytes),
        )
    }

    /// The digest this chunk is checked by: its BLAKE3 where listed, else
    /// its SHA-256.
    pub fn checked_digest(&self) -> AnyDigest {
        self.blake3
            .map_or(AnyDigest::Sha256(self.digest), AnyDigest::Blake3)
    }

    /// Computes only the digest that is checked.
    fn check(
        &self,
        len: usize,
        blake3: impl FnOnce() -> Blake3Digest,
        sha256: impl FnOnce() -> Sha256Digest,
    ) -> Result<(), AnyDigest> {
        let expected = self.checked_digest();
        let actual = match expected {
            AnyDigest::Blake3(_) => AnyDigest::Blake3(blake3()),
            AnyDigest::Sha256(_) => AnyDigest::Sha256(sha256()),
        };
        if len == self.size as usize && actual == expected {
            Ok(())
        } else {
            Err(actual)
        }
    }
}

/// FastCDC parameters, recorded so that a reader knows how files were cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkingParams {
    /// Algorithm name; `fastcdc-2020`.
    pub algorithm: ChunkAlgorithm,
    /// Minimum chunk size in bytes.
    pub min: u32,
    /// Average chunk size in bytes.
    pub avg: u32,
    /// Maximum chunk size in bytes.
    pub max: u32,
}

/// The only chunking algorithm: FastCDC as published in 2020.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkAlgorithm {
    /// FastCDC, 2020 paper variant with normalised chunking.
    #[serde(rename = "fastcdc-2020")]
    FastCdc2020,
}

impl Default for ChunkingParams {
    fn default() -> Self {
        Self {
            algorithm: ChunkAlgorithm::FastCdc2020,
            min: MIN_CHUNK,
            avg: AVG_CHUNK,
            max: MAX_CHUNK,
        }
    }
}

/// Element types of tensors, named as the Open Inference Protocol does loosely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ElementType {
    /// IEEE 754 binary32.
    Float32,
    /// IEEE 754 binary16.
    Float16,
    /// bfloat16.
    Bfloat16,
    /// IEEE 754 binary64.
    Float64,
    /// Signed 8-bit integer.
    Int8,
    /// Signed 16-bit integer.
    Int16,
    /// Signed 32-bit integer.
    Int32,
    /// Signed 64-bit integer.
    Int64,
    /// Unsigned 8-bit integer.
    Uint8,
    /// Unsigned 16-bit integer.
    Uint16,
    /// Unsigned 32-bit integer.
    Uint32,
    /// Unsigned 64-bit integer.
    Uint64,
    /// Boolean.
    Bool,
    /// UTF-8 string.
    String,
}

/// One dimension of a tensor shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dim {
    /// A known size.
    Fixed(u64),
    /// A named size fixed per request (`batch`, `seq`).
    Symbolic(String),
    /// Any size.
    Unknown,
}

/// A named tensor with its element type and shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Tensor name as the graph spells it.
    pub name: String,
    /// Element type.
    pub elem_type: ElementType,
    /// Shape; `None` when even the rank is unknown.
    pub shape: Option<Vec<Dim>>,
}

/// A model's inputs and outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSignature {
    /// Graph inputs a caller must feed (initializers excluded).
    pub inputs: Vec<TensorSpec>,
    /// Graph outputs.
    pub outputs: Vec<TensorSpec>,
}

/// The reference distribution of a model's inputs, from its training or
/// validation dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftBaseline {
    /// Rows the baseline was computed from.
    pub rows: u64,
    /// One entry per feature.
    pub features: Vec<FeatureBaseline>,
}

/// The baseline of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureBaseline {
    /// Feature (column) name.
    pub name: String,
    /// Share of rows where the feature was missing, in `[0, 1]`.
    pub missing_rate: f64,
    /// The observed distribution.
    pub distribution: FeatureDistribution,
}

/// How a feature was distributed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureDistribution {
    /// Numeric feature: quantile bin edges and the row count per bin.
    // invariant: counts.len() + 1 == edges.len(); edges ascending.
    Numeric {
        /// Bin edges, ascending.
        edges: Vec<f64>,
        /// Rows per bin.
        counts: Vec<u64>,
    },
    /// Categorical feature: frequency per category.
    Categorical {
        /// Rows per category.
        frequencies: BTreeMap<String, u64>,
    },
}

/// Accelerators a bundle can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Accelerator {
    /// Any CPU.
    Cpu,
    /// An NVIDIA GPU with CUDA.
    Cuda,
}

/// What a node needs to run the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeRequirements {
    /// Oldest agent version (semver) that can run it.
    pub min_agent_version: String,
    /// Accelerator required.
    pub accelerator: Accelerator,
    /// Memory the model needs, in bytes.
    pub min_memory_bytes: u64,
}

/// Provenance of a model version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// Who registered it.
    pub created_by: String,
    /// Why.
    pub reason: String,
    /// The training run or pipeline that produced it.
    pub source_run: Option<String>,
    /// Digest of the training dataset.
    pub dataset_digest: Option<String>,
    /// The version it was derived from.
    pub parent_version: Option<u64>,
}

/// A manifest that cannot be decoded or breaks an invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The encoded manifest is larger than [`Limits::max_manifest_bytes`].
    #[error("manifest is {actual} bytes, limit is {limit}")]
    TooLarge {
        /// Encoded size.
        actual: u64,
        /// The limit.
        limit: u64,
    },
    /// One chunk address is listed with two sizes or two BLAKE3 digests.
    #[error("manifest lists chunk {0} twice with different sizes or BLAKE3 digests")]
    InconsistentChunk(Sha256Digest),
    /// The bytes are not a CBOR manifest.
    #[error("manifest is not valid CBOR: {0}")]
    Decode(String),
    /// The manifest was written by a schema this code does not know.
    #[error(
        "manifest schema version {0} is not supported (this build reads {MANIFEST_SCHEMA_VERSION})"
    )]
    UnsupportedSchema(u32),
    /// A count or size is above its limit.
    #[error("manifest {what} is {actual}, limit is {limit}")]
    LimitExceeded {
        /// What was counted.
        what: &'static str,
        /// The value found.
        actual: u64,
        /// The limit.
        limit: u64,
    },
    /// A file path is absolute, empty, contains `..` or is listed twice.
    #[error("manifest file path {0:?} is not a unique relative path")]
    BadPath(String),
    /// The chunks of a file do not add up to its size.
    #[error("file {path}: chunks sum to {chunks_total} bytes but size is {size}")]
    ChunkSizeMismatch {
        /// The file.
        path: String,
        /// Sum of chunk sizes.
        chunks_total: u64,
        /// Declared size.
        size: u64,
    },
    /// A chunk has size zero.
    #[error("file {path}: chunk {index} is empty")]
    EmptyChunk {
        /// The file.
        path: String,
        /// Chunk index.
        index: usize,
    },
    /// The entrypoint names no file of the manifest.
    #[error("entrypoint {0:?} is not one of the manifest's files")]
    MissingEntrypoint(String),
    /// A name field is empty or too long.
    #[error("manifest field {0} is empty or too long")]
    BadName(&'static str),
    /// A drift baseline breaks its shape invariant.
    #[error("drift baseline of feature {0:?} is malformed")]
    BadBaseline(String),
}

impl BundleManifest {
    /// Encodes to CBOR.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Serialising plain data into a Vec cannot fail.
        if let Err(e) = ciborium::into_writer(self, &mut out) {
            unreachable!("CBOR encoding into memory failed: {e}");
        }
        out
    }

    /// Decodes CBOR and validates every invariant against `limits`.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, ManifestError> {
        if bytes.len() as u64 > limits.max_manifest_bytes {
            return Err(ManifestError::TooLarge {
                actual: bytes.len() as u64,
                limit: limits.max_manifest_bytes,
            });
        }
        // Check the schema version before the full decode so that a future
        // schema gets a clear error instead of a field mismatch.
        #[derive(Deserialize)]
        struct Probe {
            schema_version: u32,
        }
        let probe: Probe =
            ciborium::from_reader(bytes).map_err(|e| ManifestError::Decode(e.to_string()))?;
        if probe.schema_version != MANIFEST_SCHEMA_VERSION {
            return Err(ManifestError::UnsupportedSchema(probe.schema_version));
        }
        let m: Self =
            ciborium::from_reader(bytes).map_err(|e| ManifestError::Decode(e.to_string()))?;
        m.validate(limits)?;
        Ok(m)
    }

    /// Checks the invariants a decoded or freshly built manifest must hold.
    pub fn validate(&self, limits: &Limits) -> Result<(), ManifestError> {
        let name_ok = |s: &str| !s.is_empty() && s.len() <= limits.max_name_len;
        if !name_ok(&self.name) || self.name.contains(['/', '\\']) {
            return Err(ManifestError::BadName("name"));
        }
        if self.files.len() > limits.max_files {
            return Err(exceeded(
                "file count",
                self.files.len() as u64,
                limits.max_files as u64,
            ));
        }
        let total_chunks: usize = self.files.iter().map(|f| f.chunks.len()).sum();
        if total_chunks > limits.max_chunks {
            return Err(exceeded(
                "chunk count",
                total_chunks as u64,
                limits.max_chunks as u64,
            ));
        }
        let mut paths = BTreeSet::new();
        // A chunk listed twice (a file repeating a block) must be listed
        // the same way: a receiver keeps one entry per address.
        let mut seen: BTreeMap<Sha256Digest, &ChunkRef> = BTreeMap::new();
        for f in &self.files {
            if !is_safe_relative_path(&f.path, limits) || !paths.insert(f.path.as_str()) {
                return Err(ManifestError::BadPath(f.path.clone()));
            }
            if f.size > limits.max_file_bytes {
                return Err(exceeded("file size", f.size, limits.max_file_bytes));
            }
            let mut total = 0u64;
            for (index, c) in f.chunks.iter().enumerate() {
                if c.size == 0 {
                    return Err(ManifestError::EmptyChunk {
                        path: f.path.clone(),
                        index,
                    });
                }
                if u64::from(c.size) > limits.max_chunk_bytes {
                    return Err(exceeded(
                        "chunk size",
                        c.size.into(),
                        limits.max_chunk_bytes,
                    ));
                }
                if let Some(first) = seen.insert(c.digest, c) {
                    if first != c {
                        return Err(ManifestError::InconsistentChunk(c.digest));
                    }
                }
                total += u64::from(c.size);
            }
            if total != f.size {
                return Err(ManifestError::ChunkSizeMismatch {
                    path: f.path.clone(),
                    chunks_total: total,
                    size: f.size,
                });
            }
        }
        if !paths.contains(self.entrypoint.as_str()) {
            return Err(ManifestError::MissingEntrypoint(self.entrypoint.clone()));
        }
        for t in self.signature.inputs.iter().chain(&self.signature.outputs) {
            if t.name.len() > limits.max_name_len {
                return Err(ManifestError::BadName("signature tensor name"));
            }
        }
        if let Some(b) = &self.drift_baseline {
            for f in &b.features {
                let ok = (0.0..=1.0).contains(&f.missing_rate)
                    && match &f.distribution {
                        FeatureDistribution::Numeric { edges, counts } => {
                            edges.len() == counts.len() + 1
                                && edges.windows(2).all(|w| w[0] <= w[1])
                        }
                        FeatureDistribution::Categorical { .. } => true,
                    };
                if !ok {
                    return Err(ManifestError::BadBaseline(f.name.clone()));
                }
            }
        }
        Ok(())
    }

    /// The target path of this manifest in TUF `targets.json`.
    pub fn target_path(&self) -> String {
        target_path(&self.name, self.version)
    }

    /// Every distinct chunk the bundle needs, in first-use order.
    pub fn unique_chunks(&self) -> Vec<ChunkRef> {
        let mut seen = std::collections::HashSet::new();
        self.files
            .iter()
            .flat_map(|f| f.chunks.iter())
            .filter(|c| seen.insert(c.digest))
            .copied()
            .collect()
    }
}

/// The TUF target path of model `name` version `version`'s manifest.
pub fn target_path(name: &str, version: u64) -> String {
    format!("models/{name}/{version}/manifest.cbor")
}

fn exceeded(what: &'static str, actual: u64, limit: u64) -> ManifestError {
    ManifestError::LimitExceeded {
        what,
        actual,
        limit,
    }
}

fn is_safe_relative_path(p: &str, limits: &Limits) -> bool {
    !p.is_empty()
        && p.len() <= limits.max_name_len
        && !p.starts_with('/')
        && !p.contains('\\')
        && !p.contains('\0')
        && p.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(files: Vec<ManifestFile>) -> BundleManifest {
        BundleManifest {
            schema_version: MANIFEST_SCHEMA_VERSION,
            name: "fraud".into(),
            version: 3,
            flavor: Flavor::Onnx,
            entrypoint: files.first().map(|f| f.path.clone()).unwrap_or_default(),
            files,
            chunking: ChunkingParams::default(),
            signature: ModelSignature {
                inputs: vec![TensorSpec {
                    name: "input".into(),
                    elem_type: ElementType::Float32,
                    shape: Some(vec![Dim::Symbolic("batch".into()), Dim::Fixed(64)]),
                }],
                outputs: vec![TensorSpec {
                    name: "output".into(),
                    elem_type: ElementType::Float32,
                    shape: None,
                }],
            },
            drift_baseline: Some(DriftBaseline {
                rows: 10,
                features: vec![FeatureBaseline {
                    name: "amount".into(),
                    missing_rate: 0.1,
                    distribution: FeatureDistribution::Numeric {
                        edges: vec![0.0, 1.0, 2.5],
                        counts: vec![4, 5],
                    },
                }],
            }),
            requirements: RuntimeRequirements {
                min_agent_version: "0.1.0".into(),
                accelerator: Accelerator::Cpu,
                min_memory_bytes: 1 << 20,
            },
            lineage: Lineage {
                created_by: "alice".into(),
                reason: "retrain".into(),
                source_run: Some("run-42".into()),
                dataset_digest: None,
                parent_version: Some(2),
            },
            tags: [("stage".to_string(), "prod".to_string())].into(),
        }
    }

    fn file(path: &str, sizes: &[u32]) -> ManifestFile {
        ManifestFile {
            path: path.into(),
            size: sizes.iter().map(|s| u64::from(*s)).sum(),
            sha256: Sha256Digest::of(path.as_bytes()),
            blake3: Some(Blake3Digest::of(path.as_bytes())),
            chunks: sizes
                .iter()
                .enumerate()
                .map(|(i, s)| ChunkRef {
                    digest: Sha256Digest::of(&[i as u8]),
                    size: *s,
                    blake3: Some(Blake3Digest::of(&[i as u8])),
                })
                .collect(),
        }
    }

    #[test]
    fn a_valid_manifest_round_trips() {
        let m = sample(vec![file("model.onnx", &[10, 20])]);
        assert_eq!(
            BundleManifest::decode(&m.encode(), &Limits::default()).unwrap(),
            m
        );
    }

    #[test]
    fn unsafe_paths_are_rejected() {
        for p in ["/etc/passwd", "../x", "a/../b", "", "a//b", "a\\b", "./a"] {
            let mut m = sample(vec![file("model.onnx", &[1])]);
            m.files.push(file(p, &[1]));
            assert!(
                matches!(
                    m.validate(&Limits::default()),
                    Err(ManifestError::BadPath(_))
                ),
                "{p}"
            );
        }
        let m = sample(vec![file("a", &[1]), file("a", &[1])]);
        assert!(matches!(
            m.validate(&Limits::default()),
            Err(ManifestError::BadPath(_))
        ));
    }

    #[test]
    fn chunks_are_verified_by_blake3_where_listed_else_by_sha256() {
        let data = b"some chunk bytes".to_vec();
        let chunk = crate::chunking::chunk_bytes(&data).remove(0);
        let with_b3 = ChunkRef::from(&chunk);
        assert_eq!(with_b3.blake3, Some(Blake3Digest::of(&data)));
        let bytes = HashedBytes::new(data.clone());
        assert_eq!(with_b3.verify(&bytes), Ok(()));
        assert_eq!(with_b3.verify_slice(&data), Ok(()));
        // The BLAKE3 is what is checked: a listed BLAKE3 that does not match
        // rejects bytes whose SHA-256 is the address.
        let wrong_b3 = ChunkRef {
            blake3: Some(Blake3Digest::of(b"other")),
            ..with_b3
        };
        assert_eq!(
            wrong_b3.verify(&bytes),
            Err(AnyDigest::Blake3(Blake3Digest::of(&data)))
        );
        assert!(wrong_b3.verify_slice(&data).is_err());
        // An older manifest's entry (no BLAKE3) is checked by SHA-256.
        let legacy = ChunkRef {
            blake3: None,
            ..with_b3
        };
        assert_eq!(legacy.verify(&bytes), Ok(()));
        let tampered = HashedBytes::new(b"some chunk bytez".to_vec());
        assert_eq!(
            legacy.verify(&tampered),
            Err(AnyDigest::Sha256(Sha256Digest::of(b"some chunk bytez")))
        );
        assert!(legacy.verify_slice(b"some chunk bytez").is_err());
        assert!(with_b3.verify(&tampered).is_err());
        // The length is checked too.
        let longer = ChunkRef {
            size: with_b3.size + 1,
            ..with_b3
        };
        assert!(longer.verify(&bytes).is_err());
        assert!(longer.verify_slice(&data).is_err());
    }

    #[test]
    fn manifests_without_blake3_still_decode_and_keep_it_absent() {
        let mut m = sample(vec![file("model.onnx", &[10, 20])]);
        for c in &mut m.files[0].chunks {
            c.blake3 = None;
        }
        m.files[0].blake3 = None;
        let bytes = m.encode();
        let with = sample(vec![file("model.onnx", &[10, 20])]).encode();
        assert_eq!(
            with.len() - bytes.len(),
            3 * (3 + 2 + 32),
            "each BLAKE3 (two chunks, one file) costs its key, a byte-string head and 32 bytes"
        );
        let back = BundleManifest::decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(back, m);
        assert!(back.files[0].chunks.iter().all(|c| c.blake3.is_none()));
        assert!(back.files[0].blake3.is_none());
    }

    #[test]
    fn a_chunk_listed_twice_differently_is_rejected() {
        let mut m = sample(vec![file("model.onnx", &[10, 20]), file("b.bin", &[10])]);
        // b.bin's only chunk has the same address as model.onnx's first.
        assert_eq!(m.files[1].chunks[0], m.files[0].chunks[0]);
        m.validate(&Limits::default()).unwrap();
        m.files[1].chunks[0].blake3 = Some(Blake3Digest::of(b"x"));
        assert!(matches!(
            m.validate(&Limits::default()),
            Err(ManifestError::InconsistentChunk(d)) if d == m.files[0].chunks[0].digest
        ));
        m.files[1].chunks[0] = m.files[0].chunks[0];
        m.files[1].chunks[0].size = 11;
        m.files[1].size = 11;
        assert!(matches!(
            m.validate(&Limits::default()),
            Err(ManifestError::InconsistentChunk(_))
        ));
    }

    #[test]
    fn a_manifest_with_the_most_chunks_fits_the_size_limit() {
        let limits = Limits::default();
        let mut f = file("model.onnx", &[]);
        f.chunks = (0..limits.max_chunks as u32)
            .map(|i| ChunkRef {
                digest: Sha256Digest::of(&i.to_le_bytes()),
                size: u32::MAX,
                blake3: Some(Blake3Digest::of(&i.to_le_bytes())),
            })
            .collect();
        let m = sample(vec![f]);
        let len = m.encode().len() as u64;
        assert!(
            len <= limits.max_manifest_bytes,
            "{len} bytes for {} chunks, limit {}",
            limits.max_chunks,
            limits.max_manifest_bytes
        );
    }

    #[test]
    fn chunks_that_do_not_sum_to_the_size_are_rejected() {
        let mut m = sample(vec![file("model.onnx", &[10, 20])]);
        m.files[0].size = 31;
        assert!(matches!(
            m.validate(&Limits::default()),
            Err(ManifestError::ChunkSizeMismatch { .. })
        ));
    }

    #[test]
    fn limits_are_enforced_before_decoding() {
        let m = sample(vec![file("model.onnx", &[10, 20])]);
        let bytes = m.encode();
        let tight = Limits {
            max_manifest_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            BundleManifest::decode(&bytes, &tight),
            Err(ManifestError::TooLarge { .. })
        ));
        let few = Limits {
            max_chunks: 1,
            ..Limits::default()
        };
        assert!(matches!(
            BundleManifest::decode(&bytes, &few),
            Err(ManifestError::LimitExceeded {
                what: "chunk count",
                ..
            })
        ));
        let small = Limits {
            max_chunk_bytes: 15,
            ..Limits::default()
        };
        assert!(matches!(
            BundleManifest::decode(&bytes, &small),
            Err(ManifestError::LimitExceeded {
                what: "chunk size",
                ..
            })
        ));
    }

    #[test]
    fn a_future_schema_gets_a_clear_error() {
        let mut m = sample(vec![file("model.onnx", &[1])]);
        m.schema_version = 9;
        assert_eq!(
            BundleManifest::decode(&m.encode(), &Limits::default()),
            Err(ManifestError::UnsupportedSchema(9))
        );
    }

    #[test]
    fn a_missing_entrypoint_is_rejected() {
        let mut m = sample(vec![file("model.onnx", &[1])]);
        m.entrypoint = "other.onnx".into();
        assert!(matches!(
            m.validate(&Limits::default()),
            Err(ManifestError::MissingEntrypoint(_))
        ));
    }

    fn arb_dim() -> impl Strategy<Value = Dim> {
        prop_oneof![
            any::<u64>().prop_map(Dim::Fixed),
            "[a-z]{1,8}".prop_map(Dim::Symbolic),
            Just(Dim::Unknown)
        ]
    }

    proptest! {
        #[test]
        fn cbor_round_trip_preserves_every_field(
            sizes in proptest::collection::vec(1u32..4_000_000, 0..40),
            version in any::<u64>(),
            shape in proptest::option::of(proptest::collection::vec(arb_dim(), 0..6)),
            tags in proptest::collection::btree_map("[a-z]{1,6}", "\\PC{0,12}", 0..5),
            parent in proptest::option::of(any::<u64>()),
        ) {
            let mut m = sample(vec![file("model.onnx", &sizes)]);
            m.version = version;
            m.signature.inputs[0].shape = shape;
            m.tags = tags;
            m.lineage.parent_version = parent;
            let back = BundleManifest::decode(&m.encode(), &Limits::default());
            prop_assert_eq!(back, Ok(m));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = BundleManifest::decode(&bytes, &Limits::default());
        }
    }
}
