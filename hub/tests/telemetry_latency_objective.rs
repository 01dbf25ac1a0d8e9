//! The default `latency-objective` rule at a real hub: an endpoint with a
//! p99 objective whose windows run slower than it fires `alert.fired` on the
//! third window (with the p99 and the objective in the details), and taking
//! the objective away resolves the alert. A bad objective is a 400 that names
//! the field.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::telemetry::*;
use support::*;

fn events(c: &Client, kind: &str) -> Vec<serde_json::Value> {
    let (s, page) = c.get(&format!("/api/v1/events?type={kind}"));
    assert_eq!(s, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

fn wait_for_event(c: &Client, kind: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(e) = events(c, kind).into_iter().next() {
            return e;
        }
        assert!(Instant::now() < deadline, "no {kind} event");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn endpoint(objective_p99_ms: Option<f64>) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "deployments": [{"name": "blue", "model": "fraud", "version": 1}],
        "traffic": {"blue": 100},
        "reason": "latency objective",
    });
    if let Some(ms) = objective_p99_ms {
        spec["objective_p99_ms"] = ms.into();
    }
    spec
}

#[test]
fn p99_above_the_objective_fires_on_the_third_window_and_resolves_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = unique_fleet("latency");
    let hub = HubProcess::start_with_env(dir.path(), &[("FLOTILLA_HUB_MQTT_FLEET", &fleet)]);
    let c = hub.client(&hub.admin);
    let up = c.upload("m.onnx", &flotilla_runtime::generate::mlp(&[8, 4], 1));
    assert_eq!(
        c.register("fraud", serde_json::json!({"upload": up})).0,
        201
    );

    let (s, problem) = c.send("PUT", "/api/v1/endpoints/fraud", endpoint(Some(0.0)));
    assert_eq!(s, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("objective_p99_ms"),
        "{problem}"
    );
    let (s, e) = c.send("PUT", "/api/v1/endpoints/fraud", endpoint(Some(10.0)));
    assert_eq!(s, 200, "{e}");
    assert_eq!(e["objective_p99_ms"], 10.0);

    let device = enrol(&c, serde_json::json!({}));
    let rt = runtime();
    rt.block_on(async {
        let agent = SimAgent::connect(&hub.mqtt_addr, &fleet, &device).await;
        let t0 = now();
        // 200 requests at 40 ms a window: p99 four times the objective.
        let slow: Vec<_> = (1..=3)
            .map(|seq| window(&device, 1, seq, 200, 0, 40_000, t0 + 10 * seq as i64))
            .collect();
        assert!(agent.deliver_all(&slow[..2], Duration::from_secs(30)).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            events(&c, "alert.fired").is_empty(),
            "not after two slow windows"
        );
        assert!(agent.deliver_all(&slow, Duration::from_secs(30)).await);
    });

    let fired = wait_for_event(&c, "alert.fired");
    let alert = &fired["data"];
    assert_eq!(alert["rule"], "latency-objective", "{fired}");
    assert_eq!(alert["metric"], "p99_over_objective");
    assert_eq!(alert["subject"], "endpoint/fraud/blue");
    assert!(
        alert["details"]["p99_ms"].as_f64().unwrap() >= 40.0,
        "{fired}"
    );
    assert_eq!(alert["details"]["objective_p99_ms"], 10.0);
    assert!(alert["value"].as_f64().unwrap() >= 4.0, "{fired}");
    let (_, active) = c.get("/api/v1/alerts");
    assert_eq!(active[0]["rule"], "latency-objective", "{active}");

    // Without an objective the endpoint is no longer judged: the alert
    // resolves (at the next presence check, within seconds).
    let (s, e) = c.send("PUT", "/api/v1/endpoints/fraud", endpoint(None));
    assert_eq!(s, 200, "{e}");
    assert!(e.get("objective_p99_ms").is_none(), "{e}");
    let resolved = wait_for_event(&c, "alert.resolved");
    assert_eq!(resolved["data"]["rule"], "latency-objective", "{resolved}");
    let (_, active) = c.get("/api/v1/alerts");
    assert_eq!(active, serde_json::json!([]));
}
