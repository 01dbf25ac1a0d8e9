//! The `flotilla` binary end to end: keys, pack, inspect, verify, with exit codes
//! and one-line failure messages, as an operator or a script sees them.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn flotilla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env_remove("FLOTILLA_OUTPUT")
        .env_remove("FLOTILLA_KEYS")
        .output()
        .expect("flotilla runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

struct Fleet {
    dir: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Self {
        let f = Self {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let keys = f.keys();
        let o = flotilla(&[
            "keys",
            "init",
            "--dir",
            p(&keys),
            "--threshold",
            "2",
            "--keys",
            "3",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        f
    }

    fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    fn root(&self) -> PathBuf {
        self.keys().join("root.json")
    }

    fn model(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).expect("write model");
        path
    }

    fn pack(&self, model: &Path, version: u64) -> (Output, PathBuf) {
        let out = self.dir.path().join(format!("m-{version}.bundle"));
        let v = version.to_string();
        let o = flotilla(&[
            "--output",
            "json",
            "bundle",
            "pack",
            p(model),
            "--name",
            "fraud",
            "--version",
            &v,
            "--keys",
            p(&self.keys()),
            "-o",
            p(&out),
            "--reason",
            "test",
            "--tag",
            "stage=prod",
        ]);
        (o, out)
    }

    fn verify(&self, bundle: &Path) -> Output {
        flotilla(&["bundle", "verify", p(bundle), "--root", p(&self.root())])
    }
}

#[test]
fn keys_init_writes_private_keys_with_mode_0600() {
    let f = Fleet::new();
    let mut private = 0;
    for sub in ["root-keys", "online"] {
        for e in std::fs::read_dir(f.keys().join(sub)).unwrap() {
            let mode = e.unwrap().metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            private += 1;
        }
    }
    assert_eq!(private, 3 + 4, "3 root keys and 4 online keys");
    let again = flotilla(&["keys", "init", "--dir", p(&f.keys())]);
    assert_eq!(again.status.code(), Some(3));
    assert!(
        stderr(&again).contains("refusing to overwrite"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_packed_bundle_verifies_and_reports_its_signature() {
    let f = Fleet::new();
    let model = f.model(
        "fraud.onnx",
        &flotilla_runtime::generate::mlp(&[64, 256, 256, 10], 1),
    );
    let (o, bundle) = f.pack(&model, 1);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["target"], "models/fraud/1/manifest.cbor");
    assert_eq!(report["signature"]["inputs"][0]["name"], "input");

    let o = flotilla(&[
        "--output",
        "json",
        "bundle",
        "verify",
        p(&bundle),
        "--root",
        p(&f.root()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(v["version"], 1);
    assert_eq!(
        v["bytes"].as_u64().unwrap(),
        std::fs::metadata(&model).unwrap().len()
    );

    let o = flotilla(&["bundle", "inspect", p(&bundle)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("fraud:1") && text.contains("stage"), "{text}");
}

#[test]
fn verify_names_the_failing_chunk_and_exits_1() {
    let f = Fleet::new();
    let model = f.model(
        "fraud.onnx",
        &flotilla_runtime::generate::mlp(&[512, 1024, 10], 2),
    );
    let (o, bundle) = f.pack(&model, 1);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut bytes = std::fs::read(&bundle).unwrap();
    let at = bytes.len() - 1024 - 4096; // inside the last chunk's data
    bytes[at] ^= 0xff;
    std::fs::write(&bundle, &bytes).unwrap();
    let o = f.verify(&bundle);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("fraud.onnx: chunk") && err.contains("sha256 mismatch: expected"),
        "{err}"
    );
}

#[test]
fn verify_against_another_fleets_root_names_the_role_and_exits_1() {
    let f = Fleet::new();
    let other = Fleet::new();
    let model = f.model("fraud.onnx", &flotilla_runtime::generate::mlp(&[16, 8], 3));
    let (_, bundle) = f.pack(&model, 1);
    let o = flotilla(&["bundle", "verify", p(&bundle), "--root", p(&other.root())]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("timestamp metadata: signature threshold not met"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_version_cannot_be_signed_twice_with_different_content() {
    let f = Fleet::new();
    let a = f.model("a.onnx", &flotilla_runtime::generate::mlp(&[16, 8], 3));
    let b = f.model("b.onnx", &flotilla_runtime::generate::mlp(&[16, 8], 4));
    assert!(f.pack(&a, 1).0.status.success());
    let (o, _) = f.pack(&b, 1);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("already signed with different content"),
        "{}",
        stderr(&o)
    );
    // A new version of the same model publishes fine; both bundles verify.
    let (o, second) = f.pack(&b, 2);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(f.verify(&second).status.success());
}

#[test]
fn bad_inputs_get_a_clear_line_and_a_meaningful_exit_code() {
    let f = Fleet::new();
    let not_onnx = f.model("junk.onnx", b"\xff\xff\xffnot a model");
    let (o, _) = f.pack(&not_onnx, 1);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("not a usable ONNX model"),
        "{}",
        stderr(&o)
    );

    let missing = f.dir.path().join("nope.bundle");
    let o = f.verify(&missing);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("nope.bundle"), "{}", stderr(&o));

    let garbage = f.model("garbage.bundle", &[7u8; 10_000]);
    let o = f.verify(&garbage);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    let o = flotilla(&[
        "keys",
        "init",
        "--dir",
        p(&f.dir.path().join("k2")),
        "--threshold",
        "3",
        "--keys",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = flotilla(&["bundle", "pack"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn the_demo_runs_the_whole_path() {
    let dir = tempfile::tempdir().unwrap();
    let o = flotilla(&["--output", "json", "demo", "--dir", p(dir.path())]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let shared = r["v2_chunks_shared_with_v1"].as_u64().unwrap();
    let total = r["v2"]["unique_chunks"].as_u64().unwrap();
    assert!(shared * 10 >= total * 9, "{shared} of {total}");
    assert_eq!(r["hub"]["audit"]["ok"], true);
    assert_eq!(r["hub"]["download_matches"], true);
    let v2 = &r["hub"]["registered"][1];
    assert_eq!(v2["version"], 2);
    assert!(
        v2["chunks_reused"].as_u64().unwrap() * 10 >= v2["chunks"].as_u64().unwrap() * 9,
        "{v2}"
    );
    assert!(r["tampered_bundle_rejected_with"]
        .as_str()
        .unwrap()
        .contains("mismatch"));
    // The fleet: every agent pulled and served, the canary split traffic,
    // and the hub's telemetry counted every request the agents answered.
    let fleet = &r["hub"]["fleet"];
    let agents = fleet["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2, "{fleet}");
    for a in agents {
        assert!(a["fetched_bytes"].as_u64().unwrap() > 0, "{a}");
        assert!(a["scoring"].as_str().unwrap().starts_with("http://"), "{a}");
    }
    let split = &fleet["canary_split"];
    let (blue, green) = (
        split["blue"].as_u64().unwrap_or(0),
        split["green"].as_u64().unwrap_or(0),
    );
    assert_eq!(blue + green, 200, "{split}");
    assert!(
        (5..=50).contains(&green),
        "about 10% to the canary: {split}"
    );
    let seen: u64 = fleet["fleet_metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(seen, 400, "{fleet}");
}
