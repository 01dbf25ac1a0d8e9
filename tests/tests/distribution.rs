//! Distribution end to end: real `flotilla-hub`, `flotilla` and
//! `flotilla-agent` processes on loopback, in temp dirs. An agent enrols over
//! QUIC with a pinned CA, pulls what its endpoint names, verifies, stages and
//! activates it; a new version moves only the chunks that changed; the agent
//! survives `kill -9` at any point, corrupted chunks, replayed documents,
//! revocation and a hub restart.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use flotilla_runtime::generate::{mlp, with_replaced_initializer};
use support::{active_on, free_udp_port, infer, write_model, Agent, Hub};

const WAIT: Duration = Duration::from_secs(90);

/// An MLP of about 24 MiB: 24 layers of 512x512 float32 weights (1 MiB each),
/// so one changed tensor is a small part of the model.
fn model(seed: u64) -> Vec<u8> {
    let mut layers = vec![512usize; 24];
    layers.push(10);
    mlp(&layers, seed)
}

fn target(name: &str, v: u64) -> String {
    format!("models/{name}/{v}/manifest.cbor")
}

/// The bytes of the model file the agent serves for `target`.
fn served_file(agent: &Agent, target: &str) -> Option<Vec<u8>> {
    // DATA/deployments/ENDPOINT/DEPLOYMENT/DIR/: find the dir whose manifest
    // is this target's and read its .onnx file.
    let root = agent.data.join("deployments");
    for ep in std::fs::read_dir(&root).ok()?.flatten() {
        for dep in std::fs::read_dir(ep.path()).ok()?.flatten() {
            for ver in std::fs::read_dir(dep.path()).ok()?.flatten() {
                // Staging happens in hidden directories renamed into place.
                if ver.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let m = std::fs::read(ver.path().join("manifest.cbor")).ok()?;
                let manifest =
                    flotilla_protocol::manifest::BundleManifest::decode(&m, &Default::default())
                        .ok()?;
                if manifest.target_path() == target {
                    return std::fs::read(ver.path().join(&manifest.entrypoint)).ok();
                }
            }
        }
    }
    None
}

fn fetched(s: &serde_json::Value) -> u64 {
    s["fetched_bytes"].as_u64().unwrap()
}

fn setup(dir: &Path, faults: Option<&str>) -> (Hub, Agent, Vec<u8>) {
    let hub = Hub::start(&dir.join("hub"), "127.0.0.1:0", faults);
    let v1 = model(1);
    let p1 = write_model(dir, "v1.onnx", &v1);
    assert_eq!(hub.register(&p1, "fraud"), 1);
    hub.set_endpoint("fraud", "fraud", 1, "a", true);
    let agent = Agent::enrol(&hub, &dir.join("agent"), "a");
    (hub, agent, v1)
}

#[test]
fn an_enrolled_agent_pulls_activates_and_moves_only_changed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, mut agent, v1) = setup(dir.path(), None);
    // Enrolment left a complete data dir.
    for f in [
        "agent.toml",
        "device.pem",
        "device-key.pem",
        "hub-ca.pem",
        "root.json",
    ] {
        assert!(agent.data.join(f).exists(), "{f} missing");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(agent.data.join("device-key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the device key is private");

    agent.start();
    let t1 = target("fraud", 1);
    let s = agent.wait_for("v1 active", WAIT, |s| active_on(s, &t1));
    assert_eq!(
        served_file(&agent, &t1).as_deref(),
        Some(&v1[..]),
        "v1 staged byte for byte"
    );
    let first = fetched(&s);
    assert!(
        first as usize >= v1.len(),
        "fetched {first} of {}",
        v1.len()
    );

    // The hub sees the device and its deployment.
    let devices = hub.json(&["device", "list"]);
    let id = s["device_id"].as_str().unwrap();
    assert!(devices.to_string().contains(id), "{devices}");

    // v2 changes one tensor: the agent fetches a small fraction of it.
    let v2 = with_replaced_initializer(&v1, "fc5.weight", 77).unwrap();
    let p2 = write_model(dir.path(), "v2.onnx", &v2);
    assert_eq!(hub.register(&p2, "fraud"), 2);
    hub.set_endpoint("fraud", "fraud", 2, "a", false);
    let t2 = target("fraud", 2);
    let s = agent.wait_for("v2 active", WAIT, |s| active_on(s, &t2));
    assert_eq!(served_file(&agent, &t2).as_deref(), Some(&v2[..]));
    let (code, version, _) = infer(&agent, "fraud", 512);
    assert_eq!(
        (code, version.as_str()),
        (200, t2.as_str()),
        "v2 answers now"
    );
    let delta = fetched(&s) - first;
    eprintln!(
        "v2: fetched {delta} of {} bytes ({:.1}%)",
        v2.len(),
        100.0 * delta as f64 / v2.len() as f64
    );
    assert!(
        delta * 5 < v2.len() as u64,
        "a one-tensor change moved {delta} of {} bytes",
        v2.len()
    );
}

#[test]
fn the_agent_survives_kill_9_at_random_points_and_never_serves_a_partial_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, mut agent, v1) = setup(dir.path(), None);
    agent.start();
    agent.wait_for("v1 active", WAIT, |s| active_on(s, &target("fraud", 1)));
    agent.kill9();
    // Versions 2..=6, each with other tensors changed, so every round has
    // chunks to fetch (the agent keeps only active and previous) and a version
    // to stage, activate and trial.
    let mut versions = vec![v1.clone()];
    for v in 2..=6u64 {
        let changed = with_replaced_initializer(&v1, &format!("fc{v}.weight"), v).unwrap();
        let changed =
            with_replaced_initializer(&changed, &format!("fc{}.weight", v + 10), v).unwrap();
        let p = write_model(dir.path(), &format!("v{v}.onnx"), &changed);
        assert_eq!(hub.register(&p, "fraud"), v);
        versions.push(changed);
    }
    let bytes_of = |t: &str| {
        let v: usize = t.split('/').nth(2).unwrap().parse().unwrap();
        &versions[v - 1]
    };

    // Deterministic "random" kill points (xorshift), 0..1200 ms after start.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut mid_change = 0;
    let mut want = 1;
    for round in 0..20u64 {
        want = 2 + round % 5;
        hub.set_endpoint("fraud", "fraud", want, "a", false);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        agent.start();
        std::thread::sleep(Duration::from_millis(x % 1200));
        agent.kill9();
        // Whatever the agent says serves must be complete on disk, byte for byte.
        let Some(s) = agent.status() else { continue };
        if !active_on(&s, &target("fraud", want)) {
            mid_change += 1;
        }
        for (_, t) in s["serving"].as_object().unwrap() {
            let t = t.as_str().unwrap();
            let on_disk = served_file(&agent, t);
            assert!(
                on_disk.as_deref() == Some(&bytes_of(t)[..]),
                "round {round}: serving {t} but its file is {:?} bytes, expected {}",
                on_disk.map(|b| b.len()),
                bytes_of(t).len()
            );
        }
    }
    eprintln!("{mid_change} of 20 kills landed before the new version was active");
    assert!(
        mid_change >= 5,
        "only {mid_change} kills interrupted a change"
    );
    agent.start();
    let t = target("fraud", want);
    agent.wait_for("the last version active after the kills", WAIT, |s| {
        active_on(s, &t)
    });
    assert_eq!(served_file(&agent, &t).as_deref(), Some(&bytes_of(&t)[..]));
}

#[test]
fn corrupted_chunks_are_refetched_and_replayed_directors_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, mut agent, v1) = setup(dir.path(), Some("corrupt-chunks=3,replay-director"));
    agent.start();
    let t1 = target("fraud", 1);
    agent.wait_for("v1 active despite corrupt chunks", WAIT, |s| {
        active_on(s, &t1)
    });
    assert_eq!(served_file(&agent, &t1).as_deref(), Some(&v1[..]));
    assert!(
        agent.log_text().contains("chunk rejected"),
        "the corrupt chunks were seen and rejected:\n{}",
        agent.log_text()
    );
    // A second version makes the hub replay the first director document.
    let v2 = with_replaced_initializer(&v1, "fc2.weight", 9).unwrap();
    let p2 = write_model(dir.path(), "v2.onnx", &v2);
    hub.register(&p2, "fraud");
    hub.set_endpoint("fraud", "fraud", 2, "a", false);
    let t2 = target("fraud", 2);
    agent.wait_for("v2 active", WAIT, |s| active_on(s, &t2));
    std::thread::sleep(Duration::from_millis(500));
    let s = agent.status().unwrap();
    assert!(
        active_on(&s, &t2),
        "the replayed document did not roll the agent back: {s:#}"
    );
    assert!(
        agent.log_text().contains("director document rejected"),
        "the replay was seen and rejected:\n{}",
        agent.log_text()
    );
}

#[test]
fn a_revoked_device_is_refused_and_a_hub_restart_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let sync = format!("127.0.0.1:{port}");
    let mut hub = Hub::start(&dir.path().join("hub"), &sync, None);
    let v1 = model(1);
    let p1 = write_model(dir.path(), "v1.onnx", &v1);
    hub.register(&p1, "fraud");
    hub.set_endpoint("fraud", "fraud", 1, "a", true);
    let mut a = Agent::enrol(&hub, &dir.path().join("a"), "a");
    let mut b = Agent::enrol(&hub, &dir.path().join("b"), "a");
    a.start();
    b.start();
    let t1 = target("fraud", 1);
    a.wait_for("a active", WAIT, |s| active_on(s, &t1));
    let sb = b.wait_for("b active", WAIT, |s| active_on(s, &t1));

    // Revoke b: its connection is closed and it cannot come back.
    let id_b = sb["device_id"].as_str().unwrap().to_string();
    let o = hub.cli(&["device", "revoke", &id_b, "--reason", "stolen"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    b.wait_for("b disconnected", WAIT, |s| s["connected"] == false);

    // Restart the hub on the same address: a reconnects, b stays out.
    hub.kill();
    let hub = Hub::start(&dir.path().join("hub"), &sync, None);
    let v2 = with_replaced_initializer(&v1, "fc1.weight", 3).unwrap();
    let p2 = write_model(dir.path(), "v2.onnx", &v2);
    hub.register(&p2, "fraud");
    hub.set_endpoint("fraud", "fraud", 2, "a", false);
    let t2 = target("fraud", 2);
    a.wait_for("a on v2 after the hub restart", WAIT, |s| active_on(s, &t2));
    std::thread::sleep(Duration::from_secs(2));
    let sb = b.status().unwrap();
    assert_eq!(
        sb["connected"], false,
        "a revoked device got back in: {sb:#}"
    );
    assert!(
        active_on(&sb, &t1),
        "the revoked device keeps what it had: {sb:#}"
    );
    assert!(!active_on(&sb, &t2));
}

#[test]
fn an_expired_timestamp_stops_updates_but_the_current_version_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hub");
    // Timestamps live 6 s and the hub never re-signs them (test fault).
    let hub = Hub::start_with_env(
        &data,
        "127.0.0.1:0",
        Some("freeze-timestamp"),
        &[("FLOTILLA_HUB_TIMESTAMP_EXPIRY_SECS", "6")],
    );
    let v1 = model(1);
    let v2 = with_replaced_initializer(&v1, "fc4.weight", 4).unwrap();
    let p1 = write_model(dir.path(), "v1.onnx", &v1);
    let p2 = write_model(dir.path(), "v2.onnx", &v2);
    hub.register(&p1, "fraud");
    // v2 is registered now, so that no new publication happens later.
    hub.register(&p2, "fraud");
    hub.set_endpoint("fraud", "fraud", 1, "a", true);
    let mut agent = Agent::enrol(&hub, &dir.path().join("agent"), "a");
    agent.start();
    let t1 = target("fraud", 1);
    agent.wait_for("v1 active", WAIT, |s| active_on(s, &t1));
    // Let the timestamp expire, then point the endpoint at v2: the hub pushes
    // a new director with the expired timestamp.
    std::thread::sleep(Duration::from_secs(7));
    hub.set_endpoint("fraud", "fraud", 2, "a", false);
    let s = agent.wait_for("the expired update refused", WAIT, |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("expired"))
    });
    assert!(active_on(&s, &t1), "v1 keeps serving: {s:#}");
    assert_eq!(s["serving"]["fraud/blue"], t1.as_str());
    assert!(served_file(&agent, &t1).is_some());
}
