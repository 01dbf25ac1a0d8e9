//! Telemetry end to end: a real agent scores requests and publishes its
//! windows over MQTT to a real hub, through the hub's embedded broker and
//! through a Mosquitto process of its own. Windows produced while the broker
//! or the hub is down, and across agent `kill -9`s, reach the hub's store
//! exactly once (the sum of stored request counts equals the requests
//! answered); an overflowing outbox merges windows instead of dropping them;
//! drift recorded in the agent's scoring path reaches the hub's drift view.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_runtime::generate::mlp;
use support::{active_on, free_tcp_port, free_udp_port, write_model, Agent, Hub};

const WAIT: Duration = Duration::from_secs(90);
const WIDTH: usize = 4;

/// One-second windows, so the test sees many.
const FAST: &[(&str, &str)] = &[("FLOTILLA_AGENT_WINDOW_SECS", "1")];

/// A reference dataset: columns a..d uniform in [0, 1).
fn dataset(dir: &Path) -> PathBuf {
    let mut csv = String::from("a,b,c,d\n");
    let mut x: u64 = 7;
    for _ in 0..2000 {
        let mut row = Vec::new();
        for _ in 0..WIDTH {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            row.push(format!("{:.4}", (x >> 11) as f64 / (1u64 << 53) as f64));
        }
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    let p = dir.join("reference.csv");
    std::fs::write(&p, csv).unwrap();
    p
}

/// Registers the model with its baseline, points endpoint `fraud` at it for
/// site `a`, enrols an agent; returns the target.
fn deploy(hub: &Hub, dir: &Path) -> (Agent, String) {
    let model = write_model(dir, "m.onnx", &mlp(&[WIDTH, 8, 2], 3));
    let data = dataset(dir);
    let v = hub.json(&[
        "model",
        "register",
        model.to_str().unwrap(),
        "--name",
        "fraud",
        "--dataset",
        data.to_str().unwrap(),
        "--reason",
        "telemetry test",
    ]);
    assert_eq!(v["version"], 1, "{v}");
    hub.set_endpoint("fraud", "fraud", 1, "a", true);
    let agent = Agent::enrol(hub, &dir.join("agent"), "a");
    (agent, "models/fraud/1/manifest.cbor".to_string())
}

/// Scores `n` requests of two rows each, features drawn around `center`;
/// every one must succeed.
fn score(agent: &Agent, n: usize, center: f32) {
    let url = format!(
        "{}/v2/models/fraud/infer",
        agent.scoring.as_deref().unwrap()
    );
    for i in 0..n {
        let data: Vec<f32> = (0..2 * WIDTH)
            .map(|j| center + ((i * 7 + j * 13) % 100) as f32 / 100.0 - 0.5)
            .collect();
        let body = serde_json::json!({
            "inputs": [{"name": "input", "shape": [2, WIDTH], "datatype": "FP32", "data": data}]
        });
        let r = ureq::post(&url).send_json(body);
        assert!(r.is_ok(), "request {i} failed: {r:?}");
    }
}

/// Whether the agent's scoring server holds the model.
fn serving(s: &serde_json::Value) -> bool {
    s["serving"]["fraud/blue"] == "models/fraud/1/manifest.cbor"
}

fn telemetry(agent: &Agent) -> serde_json::Value {
    agent
        .status()
        .map(|s| s["telemetry"].clone())
        .unwrap_or_default()
}

/// Waits until the agent has closed `windows` more windows than now (what
/// was scored before is in its outbox then).
fn wait_windows(agent: &Agent, windows: u64) {
    let start = telemetry(agent)["next_seq"].as_u64().unwrap_or(0);
    agent.wait_for("windows to close", WAIT, |s| {
        s["telemetry"]["next_seq"].as_u64().unwrap_or(0) >= start + windows
    });
}

/// Waits until the hub acknowledged everything the agent holds.
fn wait_drained(agent: &Agent) -> serde_json::Value {
    agent.wait_for("the outbox to drain", WAIT, |s| {
        let t = &s["telemetry"];
        t["connected"] == true
            && t["outbox_windows"] == 0
            && t["acked_seq"].as_u64().unwrap_or(0) + 1
                >= t["next_seq"].as_u64().unwrap_or(u64::MAX)
    })
}

/// The device's stored windows at the hub: (total requests, windows), after
/// checking that no two stored windows share a sequence number.
fn stored(hub: &Hub, device: &str) -> (u64, Vec<serde_json::Value>) {
    let url = format!(
        "{}/api/v1/devices/{device}/windows?since=0&limit=100000",
        hub.url
    );
    let v: serde_json::Value = ureq::get(&url)
        .set("authorization", &format!("Bearer {}", hub.admin))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let windows = v
        .as_array()
        .or_else(|| v["windows"].as_array())
        .unwrap_or_else(|| panic!("no windows in {v}"))
        .clone();
    let mut ranges: Vec<(u64, u64, u64)> = windows
        .iter()
        .map(|w| {
            (
                w["epoch"].as_u64().unwrap(),
                w["first_seq"].as_u64().unwrap(),
                w["last_seq"].as_u64().unwrap(),
            )
        })
        .collect();
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        assert!(
            pair[0].0 != pair[1].0 || pair[0].2 < pair[1].1,
            "stored windows overlap: {pair:?}"
        );
    }
    let total = windows
        .iter()
        .map(|w| w["requests"].as_u64().unwrap())
        .sum();
    (total, windows)
}

fn device_id(agent: &Agent) -> String {
    agent.status().unwrap()["device_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A Mosquitto of the test's own on `port`, anonymous, no persistence.
struct Mosquitto {
    child: Child,
}

impl Mosquitto {
    fn start(dir: &Path, port: u16) -> Self {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        Self::with_config(&conf, port)
    }

    /// Starts Mosquitto with `conf` and waits until `port` accepts.
    fn with_config(conf: &Path, port: u16) -> Self {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("this test needs the mosquitto binary (apt-get install mosquitto); .ci/run installs it");
        let child = Command::new(bin)
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The scenario both brokers go through: steady scoring; the broker (and
/// the hub) down while windows keep coming; the agent killed with windows in
/// its outbox; the hub killed mid-stream. `restart_broker` brings the broker
/// back (for the embedded broker: the hub).
fn nothing_is_lost(
    hub: &mut Hub,
    agent: &mut Agent,
    mut stop_broker: impl FnMut(&mut Hub),
    mut restart_broker: impl FnMut(&mut Hub),
) {
    agent.start_with_env(FAST);
    agent.wait_for("activation", WAIT, |s| {
        active_on(s, "models/fraud/1/manifest.cbor") && serving(s)
    });
    let device = device_id(agent);
    let mut answered = 0u64;

    // Steady state.
    score(agent, 10, 0.5);
    answered += 10;
    wait_windows(agent, 2);
    wait_drained(agent);

    // The broker goes down; the agent keeps scoring and windowing.
    stop_broker(hub);
    score(agent, 5, 0.5);
    answered += 5;
    wait_windows(agent, 2);
    let t = telemetry(agent);
    assert!(t["outbox_windows"].as_u64().unwrap() >= 1, "{t}");

    // kill -9 with windows in the outbox; the new process restores them.
    agent.kill9();
    agent.start_with_env(FAST);
    let pid = agent.child.as_ref().unwrap().id();
    agent.wait_for("the model to load again", WAIT, |s| {
        s["pid"] == pid && serving(s)
    });
    score(agent, 4, 0.5);
    answered += 4;
    wait_windows(agent, 2);

    // The broker comes back: everything arrives.
    restart_broker(hub);
    wait_drained(agent);
    let (total, windows) = stored(hub, &device);
    assert_eq!(
        total,
        answered,
        "stored request counts after the outage; stored windows {windows:#?}\nagent log:\n{}",
        agent.log_text()
    );

    // The hub dies mid-stream and comes back.
    score(agent, 6, 0.5);
    answered += 6;
    hub.kill();
    restart_broker(hub);
    wait_windows(agent, 2);
    wait_drained(agent);
    let (total, windows) = stored(hub, &device);
    assert_eq!(total, answered, "stored request counts after a hub restart");
    assert!(windows.len() >= 8, "{} windows", windows.len());
    assert_eq!(telemetry(agent)["dropped"], 0);
}

#[test]
fn windows_arrive_exactly_once_through_the_embedded_broker() {
    let dir = tempfile::tempdir().unwrap();
    let sync = format!("127.0.0.1:{}", free_udp_port());
    let mqtt = format!("127.0.0.1:{}", free_tcp_port());
    let env = [("FLOTILLA_HUB_MQTT_LISTEN", mqtt.as_str())];
    let data = dir.path().join("hub");
    let mut hub = Hub::start_with_env(&data, &sync, None, &env);
    let (mut agent, _) = deploy(&hub, dir.path());
    let start = |hub: &mut Hub| {
        hub.kill();
        *hub = Hub::start_with_env(&data, &sync, None, &env);
    };
    nothing_is_lost(&mut hub, &mut agent, Hub::kill, start);
}

#[test]
fn windows_arrive_exactly_once_through_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let sync = format!("127.0.0.1:{}", free_udp_port());
    let port = free_tcp_port();
    let url = format!("127.0.0.1:{port}");
    let env = [
        ("FLOTILLA_HUB_MQTT_MODE", "external"),
        ("FLOTILLA_HUB_MQTT_URL", url.as_str()),
    ];
    let data = dir.path().join("hub");
    let mosquitto = std::cell::RefCell::new(Mosquitto::start(dir.path(), port));
    let mut hub = Hub::start_with_env(&data, &sync, None, &env);
    let (mut agent, _) = deploy(&hub, dir.path());
    let config = std::fs::read_to_string(agent.data.join("agent.toml")).unwrap();
    assert!(config.contains(&format!("mqtt = \"{url}\"")), "{config}");
    nothing_is_lost(
        &mut hub,
        &mut agent,
        |_| mosquitto.borrow_mut().kill(),
        |hub| {
            if mosquitto.borrow_mut().child.try_wait().unwrap().is_some() {
                *mosquitto.borrow_mut() = Mosquitto::start(dir.path(), port);
            }
            hub.kill();
            *hub = Hub::start_with_env(&data, &sync, None, &env);
        },
    );
}

#[test]
fn a_full_outbox_merges_windows_and_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let sync = format!("127.0.0.1:{}", free_udp_port());
    let mqtt = format!("127.0.0.1:{}", free_tcp_port());
    let env = [("FLOTILLA_HUB_MQTT_LISTEN", mqtt.as_str())];
    let data = dir.path().join("hub");
    let mut hub = Hub::start_with_env(&data, &sync, None, &env);
    let (mut agent, _) = deploy(&hub, dir.path());
    // The smallest outbox the agent accepts: a handful of windows.
    agent.start_with_env(&[
        ("FLOTILLA_AGENT_WINDOW_SECS", "1"),
        ("FLOTILLA_AGENT_OUTBOX_BYTES", "16384"),
    ]);
    agent.wait_for("activation", WAIT, |s| {
        active_on(s, "models/fraud/1/manifest.cbor") && serving(s)
    });
    let device = device_id(&agent);
    hub.kill();
    // A long outage: every window carries requests and a latency histogram.
    let mut answered = 0;
    for _ in 0..12 {
        score(&agent, 3, 0.5);
        answered += 3;
        wait_windows(&agent, 1);
    }
    wait_windows(&agent, 6);
    let t = telemetry(&agent);
    let produced = t["next_seq"].as_u64().unwrap() - 1;
    assert!(
        t["outbox_windows"].as_u64().unwrap() < produced,
        "the outbox should have merged windows: {t}"
    );
    assert!(t["outbox_bytes"].as_u64().unwrap() <= 16384, "{t}");
    hub = Hub::start_with_env(&data, &sync, None, &env);
    wait_drained(&agent);
    let (total, windows) = stored(&hub, &device);
    assert_eq!(total, answered, "merged windows keep every request");
    assert!(
        windows
            .iter()
            .any(|w| w["span_count"].as_u64().unwrap() > 1),
        "some stored window is a merge: {windows:?}"
    );
    let dropped = telemetry(&agent)["dropped"].as_u64().unwrap();
    assert_eq!(dropped, 0, "nothing had to be dropped");
}

#[test]
fn drift_recorded_by_the_agent_reaches_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(&dir.path().join("hub"), "127.0.0.1:0", None);
    let (mut agent, _) = deploy(&hub, dir.path());
    agent.start_with_env(FAST);
    agent.wait_for("activation", WAIT, |s| {
        active_on(s, "models/fraud/1/manifest.cbor") && serving(s)
    });
    let psi = |hub: &Hub| -> f64 {
        let v = hub.json(&["drift", "fraud", "--window-secs", "3600"]);
        let text = v.to_string();
        let mut max = 0.0f64;
        for_each_psi(&v, &mut |p| max = max.max(p));
        assert!(
            text.contains("\"a\""),
            "feature a in the drift view: {text}"
        );
        max
    };
    // From the baseline's own distribution: quiet.
    score(&agent, 200, 0.5);
    wait_windows(&agent, 2);
    wait_drained(&agent);
    let quiet = psi(&hub);
    assert!(quiet < 0.2, "baseline inputs drifted: psi {quiet}");
    // Shifted far out of the baseline's range.
    score(&agent, 400, 5.0);
    wait_windows(&agent, 2);
    wait_drained(&agent);
    let shifted = psi(&hub);
    assert!(shifted > 0.2, "shifted inputs did not drift: psi {shifted}");
    hub.kill();
}

/// Calls `f` with every number under a key named `psi` in `v`.
fn for_each_psi(v: &serde_json::Value, f: &mut impl FnMut(f64)) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "psi" {
                    if let Some(p) = x.as_f64() {
                        f(p);
                    }
                }
                for_each_psi(x, f);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| for_each_psi(x, f)),
        _ => {}
    }
}

/// A CA and a broker certificate for 127.0.0.1 it issued: (ca.pem, cert.pem, key.pem).
fn broker_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test broker CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "test broker");
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let paths = (
        dir.join("broker-ca.pem"),
        dir.join("broker.pem"),
        dir.join("broker-key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// The production setup of docs/mosquitto.md: devices on a TLS listener that
/// requires their certificate and takes its common name (the device id) as
/// the MQTT user name, a pattern ACL on it; the hub on a loopback listener.
#[test]
fn agents_publish_over_tls_with_their_device_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, tls) = (free_tcp_port(), free_tcp_port());
    let sync = format!("127.0.0.1:{}", free_udp_port());
    let url = format!("127.0.0.1:{plain}");
    let env = [
        ("FLOTILLA_HUB_MQTT_MODE", "external"),
        ("FLOTILLA_HUB_MQTT_URL", url.as_str()),
    ];
    let hub = Hub::start_with_env(&dir.path().join("hub"), &sync, None, &env);
    let ca_pem = hub.json(&["hub", "info"])["ca_pem"]
        .as_str()
        .unwrap()
        .to_string();
    let device_ca = dir.path().join("device-ca.pem");
    std::fs::write(&device_ca, ca_pem).unwrap();
    let (broker_ca, cert, key) = broker_pki(dir.path());
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "topic readwrite flotilla/v1/default/#\n\
         pattern write flotilla/v1/default/%u/telemetry\n\
         pattern readwrite flotilla/v1/default/%u/status\n\
         pattern read flotilla/v1/default/%u/ack\n",
    )
    .unwrap();
    let conf = dir.path().join("mosquitto-tls.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings true\n\
             listener {plain} 127.0.0.1\nallow_anonymous true\n\
             listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\nuse_identity_as_username true\nallow_anonymous false\nacl_file {}\n",
            device_ca.display(),
            cert.display(),
            key.display(),
            acl.display()
        ),
    )
    .unwrap();
    let mut broker = Mosquitto::with_config(&conf, tls);
    let (mut agent, _) = deploy(&hub, dir.path());
    let tls_addr = format!("127.0.0.1:{tls}");
    let ca = broker_ca.to_str().unwrap().to_string();
    let tls_env = [
        ("FLOTILLA_AGENT_WINDOW_SECS", "1"),
        ("FLOTILLA_AGENT_MQTT", tls_addr.as_str()),
        ("FLOTILLA_AGENT_MQTT_TLS", "true"),
        ("FLOTILLA_AGENT_MQTT_CA", ca.as_str()),
    ];
    agent.start_with_env(&tls_env);
    agent.wait_for("activation", WAIT, |s| {
        active_on(s, "models/fraud/1/manifest.cbor") && serving(s)
    });
    let device = device_id(&agent);
    score(&agent, 7, 0.5);
    wait_windows(&agent, 2);
    wait_drained(&agent);
    assert_eq!(stored(&hub, &device).0, 7);

    // A broker the agent cannot verify (its CA is not the configured one):
    // no session, windows wait in the outbox.
    agent.kill9();
    let wrong = [
        ("FLOTILLA_AGENT_WINDOW_SECS", "1"),
        ("FLOTILLA_AGENT_MQTT", tls_addr.as_str()),
        ("FLOTILLA_AGENT_MQTT_TLS", "true"),
        ("FLOTILLA_AGENT_MQTT_CA", device_ca.to_str().unwrap()),
    ];
    agent.start_with_env(&wrong);
    let s = agent.wait_for("a refused TLS session", WAIT, |s| {
        s["telemetry"]["last_error"].is_string() && s["telemetry"]["connected"] == false
    });
    assert!(
        s["telemetry"]["last_error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{s}"
    );
    broker.kill();
}

/// The hub's embedded broker with its TLS listener for devices: enrolment
/// tells the agent to use it, the agent presents its device certificate and
/// verifies the broker's (issued by the device CA it pinned), and its windows
/// are stored; the same agent speaking plain MQTT to that listener gets no
/// session.
#[test]
fn the_embedded_broker_takes_devices_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("FLOTILLA_HUB_MQTT_TLS_LISTEN", "127.0.0.1:0")];
    let hub = Hub::start_with_env(&dir.path().join("hub"), "127.0.0.1:0", None, &env);
    let (mut agent, _) = deploy(&hub, dir.path());
    let config = std::fs::read_to_string(agent.data.join("agent.toml")).unwrap();
    assert!(config.contains("tls = true"), "{config}");
    agent.start_with_env(FAST);
    agent.wait_for("activation", WAIT, |s| {
        active_on(s, "models/fraud/1/manifest.cbor") && serving(s)
    });
    let device = device_id(&agent);
    score(&agent, 6, 0.5);
    wait_windows(&agent, 2);
    let s = wait_drained(&agent);
    assert_eq!(stored(&hub, &device).0, 6);
    let broker = s["telemetry"]["broker"].as_str().unwrap().to_string();

    agent.kill9();
    agent.start_with_env(&[
        ("FLOTILLA_AGENT_WINDOW_SECS", "1"),
        ("FLOTILLA_AGENT_MQTT_TLS", "false"),
    ]);
    let pid = agent.child.as_ref().unwrap().id();
    let s = agent.wait_for("plain MQTT refused", WAIT, |s| {
        s["pid"] == pid
            && s["telemetry"]["broker"] == broker.as_str()
            && s["telemetry"]["last_error"].is_string()
            && s["telemetry"]["connected"] == false
    });
    assert_eq!(s["telemetry"]["acked_seq"], 0, "{s}");
}
