//! `flotilla bundle …`: pack, inspect and verify signed bundle files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use flotilla_protocol::bundle::{inspect_bundle, verify_bundle, BundleError};
use flotilla_protocol::manifest::{Accelerator, Lineage, ModelSignature, TensorSpec};
use flotilla_protocol::tuf::repo::Expiries;
use flotilla_protocol::tuf::Envelope;
use flotilla_protocol::Limits;
use serde::Serialize;

use super::{emit, CliError, Output, Report};
use crate::packer::{pack, PackError, PackReport, PackRequest};

#[derive(Debug, Subcommand)]
pub(super) enum BundleCommand {
    /// Pack an ONNX model into a signed, self-contained bundle file.
    ///
    /// Reads the model's input/output signature, cuts it into content-defined
    /// chunks, signs the manifest as a TUF target with the online keys in
    /// --keys, and writes a tar archive holding metadata, manifest and chunks.
    Pack(Box<PackArgs>),
    /// Show what a bundle holds, without trusting it.
    Inspect(InspectArgs),
    /// Verify a bundle against a pinned root.json: signatures, thresholds,
    /// versions, expiry, and every hash and length. Exit 0 only if all hold.
    Verify(VerifyArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AcceleratorArg {
    Cpu,
    Cuda,
}

#[derive(Debug, Args)]
pub(super) struct PackArgs {
    /// The ONNX model file.
    model: PathBuf,
    /// Model name (letters, digits, - _ .).
    #[arg(long)]
    name: String,
    /// Model version (1, 2, 3 …).
    #[arg(long)]
    version: u64,
    /// Keys directory made by `flotilla keys init`.
    #[arg(long, env = "FLOTILLA_KEYS")]
    keys: PathBuf,
    /// Where to write the bundle.
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    /// Why this version exists (recorded in its lineage).
    #[arg(long, default_value = "")]
    reason: String,
    /// Who packed it (default: $USER).
    #[arg(long, env = "USER", default_value = "unknown")]
    created_by: String,
    /// Training run or pipeline that produced it.
    #[arg(long)]
    source_run: Option<String>,
    /// Digest of the training dataset.
    #[arg(long)]
    dataset_digest: Option<String>,
    /// The version this one derives from.
    #[arg(long)]
    parent_version: Option<u64>,
    /// A tag, key=value; repeat for more.
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Accelerator the model needs.
    #[arg(long, value_enum, default_value_t = AcceleratorArg::Cpu)]
    accelerator: AcceleratorArg,
    /// Oldest agent version that may run it.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    min_agent_version: String,
    /// Days until the bundle's timestamp metadata expires (an air-gapped
    /// transfer must be verified before then).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=365))]
    timestamp_days: u32,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("tag {s:?} is not key=value")),
    }
}

#[derive(Debug, Args)]
pub(super) struct InspectArgs {
    /// The bundle file.
    bundle: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct VerifyArgs {
    /// The bundle file.
    bundle: PathBuf,
    /// The pinned root.json to trust (from `keys init`, or pinned at enrolment).
    #[arg(long)]
    root: PathBuf,
}

fn describe(t: &TensorSpec) -> String {
    let shape = match &t.shape {
        None => "?".to_string(),
        Some(dims) => dims
            .iter()
            .map(|d| match d {
                flotilla_protocol::manifest::Dim::Fixed(n) => n.to_string(),
                flotilla_protocol::manifest::Dim::Symbolic(s) => s.clone(),
                flotilla_protocol::manifest::Dim::Unknown => "?".into(),
            })
            .collect::<Vec<_>>()
            .join(","),
    };
    format!("{} {:?}[{shape}]", t.name, t.elem_type).to_lowercase()
}

fn describe_signature(s: &ModelSignature) -> String {
    let list = |v: &[TensorSpec]| v.iter().map(describe).collect::<Vec<_>>().join(", ");
    format!("inputs: {}; outputs: {}", list(&s.inputs), list(&s.outputs))
}

impl Report for PackReport {
    fn text(&self) -> String {
        format!(
            "packed {}:{} -> {}\n  model: {} bytes, sha256 {}\n  chunks: {} ({} distinct)\n  target: {} (targets v{}), manifest sha256 {}\n  {}",
            self.name,
            self.version,
            self.bundle.display(),
            self.model_bytes,
            self.model_sha256,
            self.chunks,
            self.unique_chunks,
            self.target,
            self.targets_version,
            self.manifest_sha256,
            describe_signature(&self.signature)
        )
    }
}

fn open(path: &Path) -> Result<BufReader<File>, CliError> {
    File::open(path)
        .map(|f| BufReader::with_capacity(1 << 20, f))
        .map_err(|e| CliError::input(format!("{}: {e}", path.display())))
}

/// A bundle as `inspect` shows it.
#[derive(Debug, Serialize)]
struct InspectReport {
    bundle: PathBuf,
    root_versions: Vec<u64>,
    metadata: BTreeMap<String, MetadataSummary>,
    manifest: Option<serde_json::Value>,
    manifest_error: Option<String>,
    chunk_entries: u64,
    chunk_bytes: u64,
}

#[derive(Debug, Serialize)]
struct MetadataSummary {
    version: Option<u64>,
    expires: Option<String>,
    signatures: usize,
}

fn summarise(raw: &[u8]) -> MetadataSummary {
    match serde_json::from_slice::<Envelope>(raw) {
        Ok(env) => MetadataSummary {
            version: env.signed.get("version").and_then(|v| v.as_u64()),
            expires: env
                .signed
                .get("expires")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            signatures: env.signatures.len(),
        },
        Err(_) => MetadataSummary {
            version: None,
            expires: None,
            signatures: 0,
        },
    }
}

impl Report for InspectReport {
    fn text(&self) -> String {
        let mut s = format!(
            "bundle {} (not verified; use `flotilla bundle verify`)\n",
            self.bundle.display()
        );
        s += &format!("  root versions: {:?}\n", self.root_versions);
        for (name, m) in &self.metadata {
            s += &format!(
                "  {name}: version {}, expires {}, {} signature(s)\n",
                m.version.map_or("?".into(), |v| v.to_string()),
                m.expires.as_deref().unwrap_or("?"),
                m.signatures
            );
        }
        if let Some(m) = &self.manifest {
            s += &format!(
                "  manifest: {}:{} flavor {}, entrypoint {}\n",
                m["name"].as_str().unwrap_or("?"),
                m["version"],
                m["flavor"].as_str().unwrap_or("?"),
                m["entrypoint"].as_str().unwrap_or("?")
            );
            if let Some(files) = m["files"].as_array() {
                for f in files {
                    s += &format!(
                        "    file {}: {} bytes, {} chunks, sha256 {}\n",
                        f["path"].as_str().unwrap_or("?"),
                        f["size"],
                        f["chunks"].as_array().map_or(0, Vec::len),
                        f["sha256"].as_str().unwrap_or("?")
                    );
                }
            }
            s += &format!("    lineage: {}\n", m["lineage"]);
            s += &format!("    tags: {}\n", m["tags"]);
        }
        if let Some(e) = &self.manifest_error {
            s += &format!("  manifest: unreadable: {e}\n");
        }
        s += &format!(
            "  chunks: {} entries, {} bytes",
            self.chunk_entries, self.chunk_bytes
        );
        s
    }
}

/// A verified bundle, as `verify` reports it.
#[derive(Debug, Serialize)]
struct VerifyReport {
    bundle: PathBuf,
    verified: bool,
    name: String,
    version: u64,
    root_version: u64,
    targets_version: u64,
    timestamp_expires: String,
    chunks: u64,
    bytes: u64,
    signature: ModelSignature,
}

impl Report for VerifyReport {
    fn text(&self) -> String {
        format!(
            "verified {}:{} ({} chunks, {} bytes) under root v{}, targets v{}; timestamp valid until {}\n  {}",
            self.name,
            self.version,
            self.chunks,
            self.bytes,
            self.root_version,
            self.targets_version,
            self.timestamp_expires,
            describe_signature(&self.signature)
        )
    }
}

pub(super) fn run(cmd: BundleCommand, output: Output) -> Result<(), CliError> {
    match cmd {
        BundleCommand::Pack(a) => {
            let a = *a;
            let req = PackRequest {
                model: a.model,
                name: a.name,
                version: a.version,
                lineage: Lineage {
                    created_by: a.created_by,
                    reason: a.reason,
                    source_run: a.source_run,
                    dataset_digest: a.dataset_digest,
                    parent_version: a.parent_version,
                },
                tags: a.tags.into_iter().collect(),
                accelerator: match a.accelerator {
                    AcceleratorArg::Cpu => Accelerator::Cpu,
                    AcceleratorArg::Cuda => Accelerator::Cuda,
                },
                min_agent_version: a.min_agent_version,
                expiries: Expiries {
                    timestamp_secs: i64::from(a.timestamp_days) * 86_400,
                    ..Expiries::default()
                },
            };
            let r = pack(&req, &a.keys, crate::now(), &a.out).map_err(|e| match e {
                PackError::Invalid(_) | PackError::VersionTaken { .. } => CliError {
                    code: super::exit::USAGE,
                    message: e.to_string(),
                },
                other => CliError::input(other),
            })?;
            emit(output, &r);
            Ok(())
        }
        BundleCommand::Inspect(a) => {
            let summary = inspect_bundle(open(&a.bundle)?, &Limits::default())
                .map_err(|e| CliError::untrusted(format!("{}: {e}", a.bundle.display())))?;
            let md = &summary.metadata;
            let mut metadata = BTreeMap::new();
            for (name, raw) in [
                ("timestamp", &md.timestamp),
                ("snapshot", &md.snapshot),
                ("targets", &md.targets),
            ] {
                if let Some(raw) = raw {
                    metadata.insert(name.to_string(), summarise(raw));
                }
            }
            let (manifest, manifest_error) = match summary.manifest {
                Some(Ok(m)) => (serde_json::to_value(&m).ok(), None),
                Some(Err(e)) => (None, Some(e.to_string())),
                None => (None, Some("missing".into())),
            };
            let r = InspectReport {
                bundle: a.bundle,
                root_versions: md.roots.keys().copied().collect(),
                metadata,
                manifest,
                manifest_error,
                chunk_entries: summary.chunk_entries,
                chunk_bytes: summary.chunk_bytes,
            };
            emit(output, &r);
            Ok(())
        }
        BundleCommand::Verify(a) => {
            let root = std::fs::read(&a.root)
                .map_err(|e| CliError::input(format!("{}: {e}", a.root.display())))?;
            let v = verify_bundle(
                open(&a.bundle)?,
                &root,
                crate::now(),
                &Limits::default(),
                |_, _| Ok(()),
            )
            // The file opened, so a failure from here on is the bundle's
            // content (tar framing included): untrusted, not an input error.
            .map_err(|e: BundleError| {
                CliError::untrusted(format!("{}: {e}", a.bundle.display()))
            })?;
            let r = VerifyReport {
                bundle: a.bundle,
                verified: true,
                name: v.manifest.name.clone(),
                version: v.manifest.version,
                root_version: v.trusted.root().body.version,
                targets_version: v.trusted.targets().map_or(0, |t| t.body.version),
                timestamp_expires: v
                    .trusted
                    .timestamp()
                    .map_or(String::new(), |t| t.body.expires.to_string()),
                chunks: v.chunks,
                bytes: v.bytes,
                signature: v.manifest.signature,
            };
            emit(output, &r);
            Ok(())
        }
    }
}
