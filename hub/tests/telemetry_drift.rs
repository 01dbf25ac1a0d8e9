//! Drift at a real hub: a registered model's reference dataset is its drift
//! baseline; windows whose inputs are drawn from that distribution never
//! fire the default rule (PSI > 0.2 for 3 windows) over many windows, and a
//! shifted distribution fires `drift.detected` then `alert.fired` on exactly
//! the third shifted window.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use flotilla_protocol::manifest::BundleManifest;
use flotilla_protocol::telemetry::{DriftObservation, FeatureRecorder, FeatureValue};
use support::telemetry::*;
use support::*;

/// A small deterministic generator (SplitMix64), uniform in `[0, 1)`.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn count_events(c: &Client, kind: &str) -> usize {
    let (s, page) = c.get(&format!("/api/v1/events?type={kind}"));
    assert_eq!(s, 200, "{page}");
    page["items"].as_array().unwrap().len()
}

#[test]
fn baseline_inputs_stay_quiet_and_a_shift_fires_drift_on_the_third_window() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = unique_fleet("drift");
    let hub = HubProcess::start_with_env(dir.path(), &[("FLOTILLA_HUB_MQTT_FLEET", &fleet)]);
    let c = hub.client(&hub.admin);

    // The model and its reference dataset: `amount` uniform on [0, 1000).
    let mut rng = Rng(7);
    let mut csv = String::from("amount\n");
    for _ in 0..5000 {
        csv += &format!("{:.3}\n", rng.unit() * 1000.0);
    }
    let model = c.upload("m.onnx", &flotilla_runtime::generate::mlp(&[8, 4], 1));
    let data = c.upload("ref.csv", csv.as_bytes());
    let (s, v) = c.register(
        "fraud",
        serde_json::json!({"upload": model, "dataset_upload": data}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["has_drift_baseline"], true);
    let target = v["target"].as_str().unwrap().to_string();
    let manifest = BundleManifest::decode(
        &c.bytes("/api/v1/models/fraud/versions/1/manifest"),
        &Default::default(),
    )
    .unwrap();
    let baseline = manifest.drift_baseline.unwrap();
    let mut recorder = FeatureRecorder::new(&baseline.features[0]).unwrap();

    let device = enrol(&c, serde_json::json!({}));
    let rt = runtime();
    rt.block_on(async {
        let agent = SimAgent::connect(&hub.mqtt_addr, &fleet, &device).await;
        let t0 = now();
        let mut seq = 0;
        // One window of 500 requests whose `amount` is drawn by `draw`.
        let mut send = |draw: &dyn Fn(&mut Rng) -> f64| {
            seq += 1;
            for _ in 0..500 {
                recorder.record(FeatureValue::Number(draw(&mut rng)));
            }
            let mut w = window(&device, 9, seq, 500, 0, 3_000, t0 + 10 * seq as i64);
            w.drift.push(DriftObservation {
                endpoint: "fraud".into(),
                deployment: "blue".into(),
                target: target.clone(),
                inputs: vec![recorder.take()],
                outputs: vec![],
            });
            w
        };
        let baseline_draw = |r: &mut Rng| r.unit() * 1000.0;
        let shifted_draw = |r: &mut Rng| 600.0 + r.unit() * 400.0;
        let quiet: Vec<_> = (0..40).map(|_| send(&baseline_draw)).collect();
        assert!(agent.deliver_all(&quiet, Duration::from_secs(60)).await);
        // Alerts are evaluated before the ack is sent, and events are
        // recorded right after: give the recorder a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            count_events(&c, "drift.detected"),
            0,
            "40 baseline windows: no false alarm"
        );
        assert_eq!(count_events(&c, "alert.fired"), 0);

        for n in 1..=3 {
            let w = send(&shifted_draw);
            assert!(
                agent
                    .deliver_all(std::slice::from_ref(&w), Duration::from_secs(30))
                    .await
            );
            if n < 3 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(
                    count_events(&c, "drift.detected"),
                    0,
                    "not after {n} shifted windows"
                );
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while count_events(&c, "alert.fired") == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no alert.fired after the third shifted window"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, page) = c.get("/api/v1/events?type=drift.detected,alert.fired");
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{page}");
        assert_eq!(
            items[0]["type"], "drift.detected",
            "drift first, then the alert"
        );
        assert_eq!(items[0]["object"], "endpoint/fraud/blue");
        let psi = items[0]["data"]["features"][0]["psi"].as_f64().unwrap();
        assert!(psi > 0.2, "{psi}");
        assert_eq!(items[1]["data"]["rule"], "drift");

        let (_, active) = c.get("/api/v1/alerts");
        assert_eq!(active[0]["rule"], "drift");
        assert_eq!(active[0]["subject"], "endpoint/fraud/blue");

        let (s, report) = c.get("/api/v1/endpoints/fraud/drift");
        assert_eq!(s, 200, "{report}");
        let d = &report["deployments"][0];
        assert_eq!(
            (d["deployment"].as_str(), d["windows"].as_u64()),
            (Some("blue"), Some(43))
        );
        assert_eq!(d["features"][0]["name"], "amount");
        assert_eq!(d["features"][0]["count"], 43 * 500);

        // Back to the baseline: the alert resolves.
        let w = send(&baseline_draw);
        assert!(
            agent
                .deliver_all(std::slice::from_ref(&w), Duration::from_secs(30))
                .await
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while count_events(&c, "alert.resolved") == 0 {
            assert!(std::time::Instant::now() < deadline, "no alert.resolved");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, active) = c.get("/api/v1/alerts");
        assert_eq!(active.as_array().unwrap().len(), 0);
    });
}
