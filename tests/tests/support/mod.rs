//! A small fleet of real processes for end-to-end tests: a `flotilla-hub` on
//! ephemeral loopback ports in a temp dir, the `flotilla` CLI pointed at it,
//! and `flotilla-agent` processes with their own data dirs.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The directory holding the workspace's binaries (target/debug), found from
/// this test executable (target/debug/deps/NAME-HASH).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --bins` (or `cargo test --workspace`, which builds it) first",
        path.display()
    );
    path
}

/// A TCP port free right now on 127.0.0.1 (for a broker that must come back
/// on the same address after a restart).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port free right now on 127.0.0.1 (for a hub that must come back on
/// the same address after a restart).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Hub {
    pub child: Child,
    pub url: String,
    pub sync_addr: String,
    pub data: PathBuf,
    pub admin: String,
    pub cli_config: PathBuf,
}

impl Hub {
    /// Starts a hub on `data` with its QUIC sync on `sync_listen`.
    pub fn start(data: &Path, sync_listen: &str, faults: Option<&str>) -> Self {
        Self::start_with_env(data, sync_listen, faults, &[])
    }

    /// Like [`Hub::start`], with extra environment variables.
    pub fn start_with_env(
        data: &Path,
        sync_listen: &str,
        faults: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(bin("flotilla-hub"));
        cmd.env("FLOTILLA_HUB_MQTT_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied());
        cmd.args(["serve", "--data-dir"])
            .arg(data)
            .args(["--api-listen", "127.0.0.1:0"])
            .env("FLOTILLA_SYNC_LISTEN", sync_listen)
            .env("FLOTILLA_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        match faults {
            Some(f) => cmd.env("FLOTILLA_TEST_FAULTS", f),
            None => cmd.env_remove("FLOTILLA_TEST_FAULTS"),
        };
        let mut child = cmd.spawn().expect("hub starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let (mut url, mut sync) = (None, None);
        while url.is_none() || sync.is_none() {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .expect("hub prints its addresses");
            assert!(n > 0, "hub exited before printing its addresses");
            let last = line.trim().rsplit(' ').next().unwrap_or("").to_string();
            if last.starts_with("http://") {
                url = Some(last);
            } else if line.contains("sync") {
                let addr = line
                    .split_whitespace()
                    .find(|w| w.parse::<std::net::SocketAddr>().is_ok())
                    .unwrap_or_else(|| panic!("no address in {line:?}"));
                sync = Some(addr.to_string());
            }
        }
        // Keep draining stdout so the hub never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        let admin = std::fs::read_to_string(data.join("admin-token"))
            .expect("admin token")
            .trim()
            .to_string();
        Self {
            child,
            url: url.unwrap(),
            sync_addr: sync.unwrap(),
            data: data.to_path_buf(),
            admin,
            cli_config: data.with_extension("cli.toml"),
        }
    }

    /// Runs the `flotilla` CLI against this hub as admin.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("flotilla"))
            .args(args)
            .env("FLOTILLA_CONFIG", &self.cli_config)
            .env("FLOTILLA_HUB", &self.url)
            .env("FLOTILLA_TOKEN", &self.admin)
            .env_remove("FLOTILLA_OUTPUT")
            .output()
            .unwrap()
    }

    /// Runs the CLI with `--output json` and parses stdout; panics on failure.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let o = self.cli(&all);
        assert!(
            o.status.success(),
            "flotilla {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
    }

    /// Registers `model` under `name`; returns the version.
    pub fn register(&self, model: &Path, name: &str) -> u64 {
        let v = self.json(&[
            "model",
            "register",
            model.to_str().unwrap(),
            "--name",
            name,
            "--reason",
            "e2e test",
        ]);
        v["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("no version in {v}"))
    }

    /// Points endpoint `name` at `model:version` for devices labelled `site=SITE`.
    pub fn set_endpoint(&self, name: &str, model: &str, version: u64, site: &str, create: bool) {
        let dep = format!("blue={model}:{version}");
        let sel = format!("site={site}");
        let o = self.cli(&[
            "endpoint",
            if create { "create" } else { "set" },
            name,
            "--deployment",
            &dep,
            "--traffic",
            "blue=100",
            "--selector",
            &sel,
            "--reason",
            "e2e test",
        ]);
        assert!(
            o.status.success(),
            "endpoint {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// A one-time enrolment token for a device labelled `site=SITE`.
    pub fn enrol_token(&self, site: &str) -> String {
        let labels = format!("site={site}");
        let v = self.json(&[
            "device", "token", "create", "--labels", &labels, "--ttl", "1h",
        ]);
        v["token"].as_str().unwrap().to_string()
    }

    /// The CA fingerprint technicians pin.
    pub fn fingerprint(&self) -> String {
        let v = self.json(&["hub", "info"]);
        v["ca_fingerprint"].as_str().unwrap().to_string()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Agent {
    pub data: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// The scoring API of the running process (`http://ADDR`).
    pub scoring: Option<String>,
}

impl Agent {
    /// Enrols a new agent in `data` with the hub.
    pub fn enrol(hub: &Hub, data: &Path, site: &str) -> Self {
        let token = hub.enrol_token(site);
        let o = Command::new(bin("flotilla-agent"))
            .args(["enroll", "--data-dir"])
            .arg(data)
            .args(["--hub", &hub.sync_addr, "--token", &token])
            .args(["--hub-ca-fingerprint", &hub.fingerprint()])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "enroll failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Self {
            data: data.to_path_buf(),
            child: None,
            log: data.with_extension("log"),
            scoring: None,
        }
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Like [`Agent::start`], with extra environment variables.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(bin("flotilla-agent"))
            .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data)
            .env("RUST_LOG", "info,quinn=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        // The agent prints its scoring address as one line once bound.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        self.scoring = line
            .trim()
            .strip_prefix("scoring listening on ")
            .map(str::to_string);
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        self.child = Some(child);
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let o = Command::new(bin("flotilla-agent"))
            .args(["status", "--output", "json", "--data-dir"])
            .arg(&self.data)
            .output()
            .unwrap();
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).ok())
            .flatten()
    }

    /// Waits until `pred` holds for the status; panics with the last status
    /// and the agent's log after `limit`.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < limit {
            if let Some(s) = self.status() {
                if pred(&s) {
                    return s;
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}; last status {last:#?}\nagent log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether `endpoint/deployment` is active on `target` in a status.
pub fn active_on(s: &serde_json::Value, target: &str) -> bool {
    s["deployments"].as_array().is_some_and(|ds| {
        ds.iter()
            .any(|d| d["target"] == target && d["state"] == "active")
    })
}

/// Writes an ONNX MLP and returns its path.
pub fn write_model(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Scores one all-0.5 row of `width` features on `endpoint` through the
/// agent's Open Inference Protocol API; returns the HTTP status, the version
/// (target) that answered, and the body.
pub fn infer(agent: &Agent, endpoint: &str, width: usize) -> (u16, String, serde_json::Value) {
    let url = format!(
        "{}/v2/models/{endpoint}/infer",
        agent
            .scoring
            .as_deref()
            .expect("the agent printed its scoring address")
    );
    let body = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, width], "datatype": "FP32", "data": vec![0.5f32; width]}]
    });
    match ureq::post(&url).send_json(body) {
        Ok(r) => {
            let version = r
                .header("x-flotilla-model-version")
                .unwrap_or("")
                .to_string();
            (r.status(), version, r.into_json().unwrap_or_default())
        }
        Err(ureq::Error::Status(code, r)) => {
            (code, String::new(), r.into_json().unwrap_or_default())
        }
        Err(e) => panic!("scoring request failed: {e}"),
    }
}
