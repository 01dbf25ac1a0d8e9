//! `flotilla-agent serve --bundle FILE --root root.json`: a signed bundle is
//! verified against the pinned root before anything is served; a genuine one
//! serves under its model name and version, a tampered one or one signed under
//! another root is refused with exit status 1 and nothing on stdout.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flotilla_protocol::bundle::BundleWriter;
use flotilla_protocol::chunking::chunk_bytes;
use flotilla_protocol::manifest::{
    Accelerator, BundleManifest, ChunkRef, ChunkingParams, Flavor, Lineage, ManifestFile,
    RuntimeRequirements, MANIFEST_SCHEMA_VERSION,
};
use flotilla_protocol::time::UtcTime;
use flotilla_protocol::tuf::repo::{publish, Expiries, OnlineKeys};
use flotilla_protocol::tuf::{Envelope, PublicKey, Role, Root, SigningKey, TargetFile, Targets};
use serde_json::{json, Value};

const YEAR: i64 = 365 * 86_400;

fn now() -> UtcTime {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    UtcTime(i64::try_from(secs).unwrap())
}

fn key() -> SigningKey {
    let rng = ring::rand::SystemRandom::new();
    SigningKey::from_pkcs8(&SigningKey::generate_pkcs8(&rng).unwrap()).unwrap()
}

/// A fleet's keys: one root key and the online keys.
struct Fleet {
    root_key: SigningKey,
    online: OnlineKeys,
}

impl Fleet {
    fn new() -> Self {
        Self {
            root_key: key(),
            online: OnlineKeys {
                targets: key(),
                snapshot: key(),
                timestamp: key(),
                director: key(),
            },
        }
    }

    fn root_json(&self) -> Vec<u8> {
        let mut r = Root::new(1, now().plus_secs(YEAR));
        let root: Vec<&PublicKey> = vec![self.root_key.public()];
        r.set_role(Role::Root, &root, 1);
        r.set_role(Role::Targets, &[self.online.targets.public()], 1);
        r.set_role(Role::Snapshot, &[self.online.snapshot.public()], 1);
        r.set_role(Role::Timestamp, &[self.online.timestamp.public()], 1);
        r.set_role(Role::Director, &[self.online.director.public()], 1);
        Envelope::sign(&r, &[&self.root_key]).unwrap()
    }

    /// A bundle of `model` as `name` version `version`; `tamper` may alter the
    /// chunk bytes written.
    fn bundle(&self, name: &str, version: u64, model: &[u8], tamper: bool) -> Vec<u8> {
        let chunks = chunk_bytes(model);
        let manifest = BundleManifest {
            schema_version: MANIFEST_SCHEMA_VERSION,
            name: name.into(),
            version,
            flavor: Flavor::Onnx,
            entrypoint: "model.onnx".into(),
            files: vec![ManifestFile::describing(
                "model.onnx",
                model,
                chunks.iter().map(ChunkRef::from).collect(),
            )],
            chunking: ChunkingParams::default(),
            signature: flotilla_runtime::model_signature(model).unwrap(),
            drift_baseline: None,
            requirements: RuntimeRequirements {
                min_agent_version: "0.1.0".into(),
                accelerator: Accelerator::Cpu,
                min_memory_bytes: 0,
            },
            lineage: Lineage::default(),
            tags: BTreeMap::new(),
        };
        let manifest_bytes = manifest.encode();
        let mut targets = Targets::new(1, now().plus_secs(YEAR));
        targets.targets.insert(
            manifest.target_path(),
            TargetFile::describing(&manifest_bytes, None),
        );
        let p = publish(&targets, 1, now(), Expiries::default(), &self.online).unwrap();
        let mut w = BundleWriter::new(Vec::new());
        w.root(1, &self.root_json()).unwrap();
        w.metadata(&p.timestamp, &p.snapshot, &p.targets).unwrap();
        w.manifest(&manifest.target_path(), &manifest_bytes)
            .unwrap();
        let mut off = 0usize;
        for c in &manifest.files[0].chunks {
            let mut bytes = model[off..off + c.size as usize].to_vec();
            off += c.size as usize;
            if tamper {
                bytes[0] ^= 1;
            }
            w.chunk(&c.digest, &bytes).unwrap();
        }
        w.finish().unwrap()
    }
}

fn spawn(bundle: &Path, root: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .arg("serve")
        .arg("--bundle")
        .arg(bundle)
        .arg("--root")
        .arg(root)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn a_genuine_bundle_serves_under_its_name_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::new();
    let model = flotilla_runtime::generate::mlp(&[8, 16, 2], 3);
    let bundle = write(
        dir.path(),
        "fraud.bundle",
        &fleet.bundle("fraud", 3, &model, false),
    );
    let root = write(dir.path(), "root.json", &fleet.root_json());
    let mut child = spawn(&bundle, &root);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim_end()
        .strip_prefix("scoring listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let http = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();

    let meta: Value = http
        .get(&format!("http://{addr}/v2/models/fraud"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(meta["versions"], json!(["3"]));
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 8]));

    let body = json!({"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": vec![0.5f32; 8]}]});
    let r = http
        .post(&format!("http://{addr}/v2/models/fraud/versions/3/infer"))
        .send_json(body)
        .unwrap();
    assert_eq!(
        r.header("x-flotilla-model-version"),
        Some("models/fraud/3/manifest.cbor")
    );
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["model_version"], "3");
    assert_eq!(v["outputs"][0]["shape"], json!([1, 2]));

    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_tampered_bundle_or_a_foreign_root_is_refused_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::new();
    let model = flotilla_runtime::generate::mlp(&[8, 16, 2], 3);
    let root = write(dir.path(), "root.json", &fleet.root_json());
    let other_root = write(dir.path(), "other-root.json", &Fleet::new().root_json());
    let genuine = write(
        dir.path(),
        "ok.bundle",
        &fleet.bundle("fraud", 1, &model, false),
    );
    let tampered = write(
        dir.path(),
        "bad.bundle",
        &fleet.bundle("fraud", 1, &model, true),
    );

    for (bundle, root, expect) in [
        (&tampered, &root, "sha256 mismatch"),
        (&genuine, &other_root, "signature threshold not met"),
    ] {
        let mut child = spawn(bundle, root);
        let status = child.wait().unwrap();
        let mut out = String::new();
        let mut err = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(1), "stderr: {err}");
        assert_eq!(out, "", "nothing may be served");
        assert!(err.contains(expect), "stderr: {err}");
    }
}
