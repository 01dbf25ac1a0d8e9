//! The `flotilla` CLI against a real `flotilla-hub` process: login, register,
//! search, download, audit, tokens, with the exit codes scripts rely on.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::*;

fn flotilla(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env("FLOTILLA_CONFIG", config)
        .env_remove("FLOTILLA_HUB")
        .env_remove("FLOTILLA_TOKEN")
        .env_remove("FLOTILLA_OUTPUT")
        .output()
        .unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", err(o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn an_operator_registers_finds_and_downloads_a_model_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(&dir.path().join("hub"));
    let cfg = dir.path().join("config.toml");
    let o = flotilla(&cfg, &["login", "--hub", &hub.url, "--token", &hub.admin]);
    assert!(o.status.success(), "{}", err(&o));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cfg).unwrap().permissions())
            & 0o777;
    assert_eq!(mode, 0o600, "the saved token is private");

    let m = model(3);
    let file = dir.path().join("fraud.onnx");
    std::fs::write(&file, &m).unwrap();
    let csv = dir.path().join("ref.csv");
    std::fs::write(&csv, "amount,country\n1,FR\n2,DE\n3,DE\n").unwrap();
    let v = json(&flotilla(
        &cfg,
        &[
            "--output",
            "json",
            "model",
            "register",
            file.to_str().unwrap(),
            "--name",
            "fraud",
            "--reason",
            "weekly retrain",
            "--tag",
            "stage=prod",
            "--metric",
            "auc=0.91",
            "--dataset",
            csv.to_str().unwrap(),
        ],
    ));
    assert_eq!(v["version"], 1);
    assert_eq!(v["has_drift_baseline"], true);

    let page = json(&flotilla(
        &cfg,
        &["--output", "json", "model", "list", "--metric", "auc>=0.9"],
    ));
    assert_eq!(page["items"][0]["name"], "fraud", "{page}");
    let o = flotilla(&cfg, &["model", "show", "fraud:1"]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("fraud"),
        "{}",
        err(&o)
    );

    let out = dir.path().join("back.onnx");
    let o = flotilla(
        &cfg,
        &["model", "download", "fraud:1", "-o", out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(std::fs::read(&out).unwrap(), m);

    let o = flotilla(
        &cfg,
        &[
            "model",
            "tag",
            "fraud:1",
            "owner=risk",
            "--reason",
            "ownership",
        ],
    );
    assert!(o.status.success(), "{}", err(&o));
    let o = flotilla(&cfg, &["audit", "verify"]);
    assert!(o.status.success(), "{}", err(&o));
    let log = json(&flotilla(&cfg, &["--output", "json", "audit", "list"]));
    let actions: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"model.register") && actions.contains(&"model.version.tag"),
        "{actions:?}"
    );

    let o = flotilla(&cfg, &["model", "show", "nosuch:1"]);
    assert_eq!(o.status.code(), Some(5), "{}", err(&o));
    let o = flotilla(
        &cfg,
        &[
            "model",
            "register",
            file.to_str().unwrap(),
            "--name",
            "fraud",
            "--reason",
            "x",
            "--tag",
            "novalue",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    let o = flotilla(&cfg, &["model", "delete", "fraud:1", "--reason", "cleanup"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(
        flotilla(&cfg, &["model", "show", "fraud:1"]).status.code(),
        Some(5)
    );
}

#[test]
fn a_viewer_token_is_refused_mutations_with_exit_code_4() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(&dir.path().join("hub"));
    let admin_cfg = dir.path().join("admin.toml");
    assert!(flotilla(
        &admin_cfg,
        &["login", "--hub", &hub.url, "--token", &hub.admin]
    )
    .status
    .success());
    let t = json(&flotilla(
        &admin_cfg,
        &[
            "--output", "json", "token", "create", "dash", "--role", "viewer",
        ],
    ));
    let viewer = t["token"].as_str().unwrap().to_string();

    let cfg = dir.path().join("viewer.toml");
    assert!(
        flotilla(&cfg, &["login", "--hub", &hub.url, "--token", &viewer])
            .status
            .success()
    );
    let file = dir.path().join("m.onnx");
    std::fs::write(&file, model(1)).unwrap();
    let o = flotilla(
        &cfg,
        &[
            "model",
            "register",
            file.to_str().unwrap(),
            "--name",
            "m",
            "--reason",
            "r",
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
    assert_eq!(err(&o).trim().lines().count(), 1, "one line: {}", err(&o));
    assert!(flotilla(&cfg, &["model", "list"]).status.success());

    let o = flotilla(&cfg, &["--token", "flt_wrong", "model", "list"]);
    assert_eq!(o.status.code(), Some(4));
    let o = flotilla(&cfg, &["--hub", "http://127.0.0.1:9", "model", "list"]);
    assert_eq!(o.status.code(), Some(7), "an unreachable hub: {}", err(&o));
}

#[test]
fn a_deployed_version_cannot_be_deleted_or_archived_until_the_endpoint_moves() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(&dir.path().join("hub"));
    let cfg = dir.path().join("config.toml");
    assert!(
        flotilla(&cfg, &["login", "--hub", &hub.url, "--token", &hub.admin])
            .status
            .success()
    );
    let file = dir.path().join("m.onnx");
    for seed in [1, 2] {
        std::fs::write(&file, model(seed)).unwrap();
        let o = flotilla(
            &cfg,
            &[
                "model",
                "register",
                file.to_str().unwrap(),
                "--name",
                "fraud",
                "--reason",
                "r",
            ],
        );
        assert!(o.status.success(), "{}", err(&o));
    }
    let e = json(&flotilla(
        &cfg,
        &[
            "--output",
            "json",
            "endpoint",
            "create",
            "fraud",
            "--selector",
            "site=lyon",
            "--deployment",
            "blue=fraud:1",
            "--deployment",
            "green=fraud:2",
            "--traffic",
            "blue=90,green=10",
            "--mirror",
            "green=5",
            "--p99-objective-ms",
            "50",
            "--reason",
            "canary",
        ],
    ));
    assert_eq!(e["revision"], 1);
    assert_eq!(e["objective_p99_ms"], 50.0);
    let o = flotilla(&cfg, &["endpoint", "show", "fraud"]);
    assert!(o.status.success(), "{}", err(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("p99 objective: 50 ms"), "{text}");
    let v1 = json(&flotilla(
        &cfg,
        &["--output", "json", "model", "show", "fraud:1"],
    ));
    assert_eq!(v1["referenced_by"], serde_json::json!(["fraud/blue"]));

    let o = flotilla(&cfg, &["model", "delete", "fraud:1", "--reason", "cleanup"]);
    assert_eq!(o.status.code(), Some(6), "{}", err(&o));
    assert!(
        err(&o).contains("fraud/blue"),
        "the refusal names the deployment: {}",
        err(&o)
    );
    let o = flotilla(&cfg, &["model", "archive", "fraud:2", "--reason", "old"]);
    assert_eq!(o.status.code(), Some(6), "{}", err(&o));

    let o = flotilla(
        &cfg,
        &[
            "endpoint",
            "set",
            "fraud",
            "--deployment",
            "blue=fraud:1",
            "--traffic",
            "blue=80",
            "--reason",
            "x",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "weights must sum to 100: {}",
        err(&o)
    );
    let o = flotilla(
        &cfg,
        &[
            "endpoint",
            "set",
            "fraud",
            "--deployment",
            "blue=fraud:9",
            "--traffic",
            "blue=100",
            "--reason",
            "x",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "a missing version is refused: {}",
        err(&o)
    );
    let e = json(&flotilla(
        &cfg,
        &[
            "--output",
            "json",
            "endpoint",
            "set",
            "fraud",
            "--deployment",
            "blue=fraud:2",
            "--traffic",
            "blue=100",
            "--reason",
            "promote v2",
        ],
    ));
    assert_eq!(e["revision"], 2);
    assert_eq!(
        e["objective_p99_ms"], 50.0,
        "set keeps the objective when the flag is absent"
    );
    let o = flotilla(
        &cfg,
        &[
            "endpoint",
            "set",
            "fraud",
            "--deployment",
            "blue=fraud:2",
            "--traffic",
            "blue=100",
            "--p99-objective-ms",
            "0",
            "--reason",
            "x",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "a zero objective: {}", err(&o));
    let e = json(&flotilla(
        &cfg,
        &[
            "--output",
            "json",
            "endpoint",
            "set",
            "fraud",
            "--deployment",
            "blue=fraud:2",
            "--traffic",
            "blue=100",
            "--p99-objective-ms",
            "25.5",
            "--reason",
            "tighter",
        ],
    ));
    assert_eq!(e["objective_p99_ms"], 25.5);
    let e = json(&flotilla(
        &cfg,
        &[
            "--output",
            "json",
            "endpoint",
            "set",
            "fraud",
            "--deployment",
            "blue=fraud:2",
            "--traffic",
            "blue=100",
            "--no-p99-objective",
            "--reason",
            "no objective",
        ],
    ));
    assert!(e.get("objective_p99_ms").is_none(), "{e}");
    let shown = json(&flotilla(
        &cfg,
        &["--output", "json", "endpoint", "show", "fraud"],
    ));
    assert!(shown.get("objective_p99_ms").is_none(), "{shown}");
    let o = flotilla(&cfg, &["endpoint", "show", "fraud"]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("objective"));
    let o = flotilla(&cfg, &["model", "delete", "fraud:1", "--reason", "cleanup"]);
    assert!(o.status.success(), "no longer deployed: {}", err(&o));
    let o = flotilla(
        &cfg,
        &[
            "endpoint",
            "create",
            "fraud",
            "--deployment",
            "blue=fraud:2",
            "--traffic",
            "blue=100",
            "--reason",
            "x",
        ],
    );
    assert_eq!(o.status.code(), Some(6));
    assert!(
        flotilla(&cfg, &["endpoint", "delete", "fraud", "--reason", "done"])
            .status
            .success()
    );
    assert!(
        flotilla(&cfg, &["model", "delete", "fraud:2", "--reason", "cleanup"])
            .status
            .success()
    );
    let log = json(&flotilla(&cfg, &["--output", "json", "audit", "list"]));
    let actions: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"endpoint.set") && actions.contains(&"endpoint.delete"),
        "{actions:?}"
    );
    assert!(flotilla(&cfg, &["audit", "verify"]).status.success());
}

#[test]
fn device_tokens_and_hub_info_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(&dir.path().join("hub"));
    let cfg = dir.path().join("config.toml");
    assert!(
        flotilla(&cfg, &["login", "--hub", &hub.url, "--token", &hub.admin])
            .status
            .success()
    );
    let info = json(&flotilla(&cfg, &["--output", "json", "hub", "info"]));
    let fingerprint = info["ca_fingerprint"].as_str().unwrap();
    assert_eq!(fingerprint.len(), 64);
    assert_eq!(info["sync_addr"], hub.sync_addr.to_string());
    let o = flotilla(&cfg, &["hub", "info"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        text.contains(&hub.sync_addr.to_string()) && text.contains(fingerprint),
        "the text form names the QUIC address and the fingerprint: {text}"
    );
    let t = json(&flotilla(
        &cfg,
        &[
            "--output",
            "json",
            "device",
            "token",
            "create",
            "--labels",
            "site=lyon,line=3",
            "--ttl",
            "1h",
        ],
    ));
    assert!(t["token"].as_str().unwrap().starts_with("flt_"));
    assert_eq!(t["labels"]["line"], "3");
    let o = flotilla(&cfg, &["device", "token", "create", "--ttl", "30d"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    let o = flotilla(&cfg, &["device", "show", "dev-nope"]);
    assert_eq!(o.status.code(), Some(5));
    let list = json(&flotilla(&cfg, &["--output", "json", "device", "list"]));
    assert_eq!(list, serde_json::json!([]));
}
