//! The telemetry commands of the `flotilla` CLI against a real hub with a
//! simulated agent: device metrics, drift, alerts, events (list, tail,
//! follow) and webhooks, in text and JSON.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::telemetry::*;
use support::*;

fn flotilla(hub: &HubProcess, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env("FLOTILLA_HUB", &hub.url)
        .env("FLOTILLA_TOKEN", &hub.admin)
        .env("FLOTILLA_CONFIG", hub.data.join("cli.toml"))
        .env_remove("FLOTILLA_OUTPUT")
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn json(hub: &HubProcess, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(flotilla(hub, &all))).unwrap()
}

#[test]
fn the_cli_shows_metrics_alerts_events_and_manages_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = unique_fleet("cli");
    let hub = HubProcess::start_with_env(dir.path(), &[("FLOTILLA_HUB_MQTT_FLEET", &fleet)]);
    let c = hub.client(&hub.admin);
    let device = enrol(&c, serde_json::json!({}));
    let rt = runtime();
    rt.block_on(async {
        let agent = SimAgent::connect(&hub.mqtt_addr, &fleet, &device).await;
        let t0 = now();
        // 200 requests, 30 of them failed: above the default 5% error-rate rule.
        let ws = vec![
            window(&device, 1, 1, 100, 0, 1_500, t0),
            window(&device, 1, 2, 200, 30, 40_000, t0 + 10),
        ];
        assert!(agent.deliver_all(&ws, Duration::from_secs(30)).await);
    });

    let text = ok(flotilla(&hub, &["device", "metrics", &device]));
    assert!(text.contains("latest window"), "{text}");
    assert!(text.contains("fraud"), "{text}");
    let m = json(&hub, &["device", "metrics", &device]);
    assert_eq!(m["last_hour"][0]["requests"], 300);
    assert_eq!(m["last_hour"][0]["errors"], 30);
    let o = flotilla(&hub, &["device", "metrics", "nobody"]);
    assert_eq!(o.status.code(), Some(5), "unknown device: not found");

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let alerts = loop {
        let a = json(&hub, &["alerts", "list"]);
        if !a.as_array().unwrap().is_empty() || std::time::Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(alerts[0]["rule"], "error-rate", "{alerts}");
    assert!(ok(flotilla(&hub, &["alerts", "list"])).contains("endpoint/fraud/blue"));
    let rules = json(&hub, &["alerts", "rules"]);
    assert_eq!(rules.as_array().unwrap().len(), 4, "the defaults: {rules}");
    let text = ok(flotilla(&hub, &["alerts", "rules"]));
    assert!(text.contains("device-offline"), "{text}");
    assert!(
        text.contains("latency-objective") && text.contains("p99_over_objective"),
        "{text}"
    );

    let drift = ok(flotilla(&hub, &["drift", "fraud"]));
    assert!(drift.contains("no drift counts"), "{drift}");

    let added = json(
        &hub,
        &[
            "webhook",
            "add",
            "http://127.0.0.1:9/x",
            "--events",
            "alert.fired,drift.detected",
        ],
    );
    let id = added["id"].as_str().unwrap().to_string();
    assert_eq!(
        added["secret"].as_str().unwrap().len(),
        64,
        "a generated secret, shown once"
    );
    let list = json(&hub, &["webhook", "list"]);
    assert_eq!(
        list[0]["events"],
        serde_json::json!(["alert.fired", "drift.detected"])
    );
    assert!(list[0].get("secret").is_none());
    assert!(ok(flotilla(&hub, &["webhook", "deliveries", &id])).contains("no deliveries"));
    let o = flotilla(&hub, &["webhook", "add", "ftp://x"]);
    assert_eq!(o.status.code(), Some(2), "a bad URL is a usage error");
    ok(flotilla(&hub, &["webhook", "remove", &id]));
    assert_eq!(
        flotilla(&hub, &["webhook", "remove", &id]).status.code(),
        Some(5)
    );

    let events = json(&hub, &["events", "list", "--type", "alert.fired"]);
    assert_eq!(events[0]["data"]["rule"], "error-rate");
    let tail = json(&hub, &["events", "tail", "-n", "1"]);
    assert_eq!(tail.as_array().unwrap().len(), 1);

    // Following: a new event shows up as one JSON line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "--output",
            "json",
            "events",
            "tail",
            "-n",
            "0",
            "--follow",
            "--type",
            "device.enrolled",
        ])
        .env("FLOTILLA_HUB", &hub.url)
        .env("FLOTILLA_TOKEN", &hub.admin)
        .env("FLOTILLA_CONFIG", hub.data.join("cli.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let second = enrol(&c, serde_json::json!({}));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let e: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(e["type"], "device.enrolled");
    assert_eq!(e["object"], format!("device/{second}"));
}
