//! Telemetry load generator for `bench/telemetry/run.sh`: many simulated
//! agents in one process, each running the agent's real telemetry
//! [`Publisher`] (its own redb outbox, MQTT session, ack handling) against a
//! running hub.
//!
//! Each simulated agent is enrolled over the hub's HTTP enrolment API (a
//! fresh key and CSR), gets a scoring state whose traffic a load task feeds
//! (`Serving::record_external`, a few requests per window), and publishes a
//! window every `--window-secs`. After `--secs` it stops them all and prints
//! one JSON line: windows acknowledged, windows per second, end-to-end ack
//! latency (publish to the hub's ack) p50/p99 over all agents, dropped windows.
//!
//! ```sh
//! cargo run --release -p flotilla-agent --example telemetry_load -- \
//!     --hub http://127.0.0.1:8440 --token "$(cat hub-data/admin-token)" \
//!     --agents 1000 --secs 60 --window-secs 10 --dir /tmp/load
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_agent::config::{
    AgentConfig, HubSection, ServeSection, SyncSection, TelemetrySection,
};
use flotilla_agent::serve::{ServeConfig, Serving};
use flotilla_agent::store::AgentStore;
use flotilla_agent::telemetry::{AgentView, Publisher, TelemetryStatus};
use flotilla_protocol::telemetry::Histogram;

struct Args {
    hub: String,
    token: String,
    agents: usize,
    secs: u64,
    window_secs: u64,
    dir: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        hub: "http://127.0.0.1:8440".into(),
        token: String::new(),
        agents: 100,
        secs: 60,
        window_secs: 10,
        dir: std::env::temp_dir().join("flotilla-telemetry-load"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--hub" => a.hub = v,
            "--token" => a.token = v.trim().to_string(),
            "--agents" => a.agents = v.parse().expect("--agents N"),
            "--secs" => a.secs = v.parse().expect("--secs N"),
            "--window-secs" => a.window_secs = v.parse().expect("--window-secs N"),
            "--dir" => a.dir = PathBuf::from(v),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Enrols one device over HTTP; returns its id.
fn enrol(http: &ureq::Agent, a: &Args) -> String {
    let token: serde_json::Value = http
        .post(&format!("{}/api/v1/devices/tokens", a.hub))
        .set("authorization", &format!("Bearer {}", a.token))
        .send_json(serde_json::json!({"labels": {"bench": "telemetry"}, "ttl_secs": 3600}))
        .expect("creating an enrolment token")
        .into_json()
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "flotilla-device");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let enrolled: serde_json::Value = http
        .post(&format!("{}/api/v1/enroll", a.hub))
        .send_json(serde_json::json!({"token": token["token"], "csr_pem": csr}))
        .expect("enrolling")
        .into_json()
        .unwrap();
    enrolled["device_id"].as_str().unwrap().to_string()
}

fn main() {
    let a = args();
    let http = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let info: serde_json::Value = http
        .get(&format!("{}/api/v1/hub", a.hub))
        .set("authorization", &format!("Bearer {}", a.token))
        .call()
        .expect("GET /api/v1/hub")
        .into_json()
        .unwrap();
    let mqtt = info["mqtt_addr"]
        .as_str()
        .expect("the hub names its MQTT broker")
        .to_string();
    let fleet = info["fleet"].as_str().unwrap_or("default").to_string();
    let _ = std::fs::remove_dir_all(&a.dir);
    let started = Instant::now();
    let devices: Vec<String> = (0..a.agents).map(|_| enrol(&http, &a)).collect();
    eprintln!(
        "enrolled {} devices in {:.1}s; publishing to {mqtt}",
        devices.len(),
        started.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut statuses: Vec<Arc<Mutex<TelemetryStatus>>> = Vec::new();
    let mut servings = Vec::new();
    let _guard = rt.enter();
    for (i, device) in devices.iter().enumerate() {
        let config = AgentConfig {
            data_dir: a.dir.join(format!("agent-{i}")),
            device_id: device.clone(),
            hub: HubSection {
                addr: "127.0.0.1:1".into(),
            },
            sync: SyncSection::default(),
            serve: ServeSection::default(),
            telemetry: TelemetrySection {
                mqtt: Some(mqtt.clone()),
                fleet: fleet.clone(),
                window_secs: a.window_secs,
                ..TelemetrySection::default()
            },
        };
        let store = Arc::new(AgentStore::open(&config.data_dir).unwrap());
        let serving = Serving::new(ServeConfig::default());
        let (_view_tx, view) = tokio::sync::watch::channel(AgentView {
            sync_state: "connected".into(),
            activations: Vec::new(),
        });
        let publisher = Publisher::open(&config, store, Arc::clone(&serving), view).unwrap();
        statuses.push(publisher.status());
        servings.push(serving);
        let mut stop = stop_rx.clone();
        tasks.push(rt.spawn(publisher.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    // Traffic: a few requests per agent per window, spread over time.
    let load = {
        let servings = servings.clone();
        let window = a.window_secs;
        let mut stop = stop_rx.clone();
        rt.spawn(async move {
            let mut n: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tick.tick() => {}
                }
                // 5 requests per agent per window, in 10 slices per second.
                let per_slice = (servings.len() as u64 * 5).div_ceil(window * 10);
                for _ in 0..per_slice {
                    n += 1;
                    let s = &servings[(n as usize) % servings.len()];
                    let us = 200 + (n * 7919) % 5000;
                    let error = n.is_multiple_of(50).then_some("runtime");
                    s.record_external(
                        "fraud",
                        "blue",
                        if error.is_some() { 500 } else { 200 },
                        error,
                        Duration::from_micros(us),
                    );
                }
            }
        })
    };
    let run_started = Instant::now();
    std::thread::sleep(Duration::from_secs(a.secs));
    let _ = stop_tx.send(true);
    let elapsed = run_started.elapsed().as_secs_f64();
    rt.block_on(async {
        let _ = load.await;
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    });
    let mut latency = Histogram::new();
    let (mut acked, mut published, mut dropped, mut waiting, mut connected) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for s in &statuses {
        let s = s.lock().unwrap();
        acked += s.acked_seq;
        published += s.published;
        dropped += s.dropped;
        waiting += s.outbox_windows;
        connected += u64::from(s.acked_seq > 0);
        latency.merge(&s.ack_latency_us);
    }
    let ms = |q: f64| latency.quantile(q).map_or(0.0, |us| us as f64 / 1000.0);
    println!(
        "{}",
        serde_json::json!({
            "agents": a.agents,
            "agents_acked": connected,
            "window_secs": a.window_secs,
            "secs": elapsed,
            "windows_acked": acked,
            "windows_per_sec": acked as f64 / elapsed,
            "published": published,
            "waiting_at_stop": waiting,
            "dropped": dropped,
            "ack_latency_p50_ms": ms(0.5),
            "ack_latency_p99_ms": ms(0.99),
        })
    );
}
