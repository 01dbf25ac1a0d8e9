//! Topic ACLs on a real Mosquitto: a second instance started on a free port
//! with the configuration docs/mosquitto.md describes (one login per device,
//! the device id as user name, a pattern ACL on `%u`). A device cannot
//! publish windows as another device, nor read another device's acks; the
//! hub, with its own login, ingests what each device publishes as itself.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::telemetry::*;
use support::*;

/// A Mosquitto process; killed when dropped.
struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto_installed() -> bool {
    Command::new("mosquitto")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn passwd(file: &std::path::Path, user: &str, password: &str) {
    let mut cmd = Command::new("mosquitto_passwd");
    if !file.exists() {
        cmd.arg("-c");
    }
    let st = cmd
        .arg("-b")
        .arg(file)
        .args([user, password])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Starts Mosquitto on `port` with logins for the hub and `devices`, and the
/// fleet's ACL.
fn start_mosquitto(dir: &std::path::Path, port: u16, fleet: &str, devices: &[&str]) -> Mosquitto {
    let pw = dir.join("passwd");
    passwd(&pw, "flotilla-hub", "hub-password");
    for d in devices {
        passwd(&pw, d, &format!("pw-{d}"));
    }
    // As in docs/mosquitto.md.
    let acl = format!(
        "user flotilla-hub\n\
         topic readwrite flotilla/v1/{fleet}/#\n\
         \n\
         pattern write flotilla/v1/{fleet}/%u/telemetry\n\
         pattern readwrite flotilla/v1/{fleet}/%u/status\n\
         pattern read flotilla/v1/{fleet}/%u/ack\n\
         pattern read flotilla/v1/{fleet}/events/#\n"
    );
    std::fs::write(dir.join("acl"), acl).unwrap();
    let mut conf = format!(
        "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\n",
        pw.display(),
        dir.join("acl").display()
    );
    if running_as_root() {
        // Mosquitto run as root drops to its own user, which cannot read a
        // private temp dir; stay root in this throwaway instance.
        conf += "user root\n";
    }
    std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Mosquitto(child)
}

/// Whether this process runs as root (uid 0), from /proc.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn stored(c: &Client, device: &str) -> usize {
    let (s, ws) = c.get(&format!("/api/v1/devices/{device}/windows"));
    assert_eq!(s, 200, "{ws}");
    ws.as_array().unwrap().len()
}

#[test]
fn a_device_cannot_publish_as_another_through_the_mosquitto_acl() {
    if !mosquitto_installed() {
        eprintln!("SKIPPED: mosquitto is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fleet = unique_fleet("acl");
    let port = free_port();
    let broker = format!("127.0.0.1:{port}");
    let hub = HubProcess::start_with_env(
        &dir.path().join("hub"),
        &[
            ("FLOTILLA_HUB_MQTT_MODE", "external"),
            ("FLOTILLA_HUB_MQTT_URL", &broker),
            ("FLOTILLA_HUB_MQTT_FLEET", &fleet),
            ("FLOTILLA_HUB_MQTT_USERNAME", "flotilla-hub"),
            ("FLOTILLA_HUB_MQTT_PASSWORD", "hub-password"),
        ],
    );
    let c = hub.client(&hub.admin);
    let (a, b) = (
        enrol(&c, serde_json::json!({})),
        enrol(&c, serde_json::json!({})),
    );
    let _mosquitto = start_mosquitto(dir.path(), port, &fleet, &[&a, &b]);
    let pw_a = format!("pw-{a}");
    let pw_b = format!("pw-{b}");
    let rt = runtime();
    rt.block_on(async {
        let t0 = now();
        // Device A, logged in as A, publishes a window in B's name on B's topic.
        let forger = SimAgent::connect_as(&broker, &fleet, &b, Some((&a, &pw_a))).await;
        let forged = window(&b, 1, 1, 50, 0, 100, t0);
        assert!(
            !forger
                .deliver_all(std::slice::from_ref(&forged), Duration::from_secs(4))
                .await,
            "no ack reaches a device on another's ack topic"
        );
        assert_eq!(stored(&c, &b), 0, "the broker dropped the forged window");
        forger.stop().await;

        // Each device as itself gets through.
        let agent_a = SimAgent::connect_as(&broker, &fleet, &a, Some((&a, &pw_a))).await;
        assert!(
            agent_a
                .deliver_all(&[window(&a, 1, 1, 50, 0, 100, t0)], Duration::from_secs(30))
                .await
        );
        let agent_b = SimAgent::connect_as(&broker, &fleet, &b, Some((&b, &pw_b))).await;
        assert!(
            agent_b
                .deliver_all(std::slice::from_ref(&forged), Duration::from_secs(30))
                .await
        );
        assert_eq!((stored(&c, &a), stored(&c, &b)), (1, 1));
        let m = metrics_text(&c);
        assert_eq!(
            metric(&m, "flotilla_telemetry_windows_received_total"),
            2,
            "the forgery never reached the hub"
        );
        agent_a.stop().await;
        agent_b.stop().await;
    });
}
