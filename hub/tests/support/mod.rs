//! A real `flotilla-hub` process on an ephemeral loopback port in a temp dir,
//! and a small HTTP client for the tests.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub mod telemetry;

pub struct HubProcess {
    pub child: Child,
    pub url: String,
    /// The QUIC sync address (UDP, loopback).
    pub sync_addr: SocketAddr,
    /// The MQTT broker (`host:port`): the embedded one, or the external one
    /// the hub was pointed at.
    pub mqtt_addr: String,
    pub data: PathBuf,
    pub admin: String,
}

impl HubProcess {
    pub fn start(data: &Path) -> Self {
        Self::start_with_env(data, &[])
    }

    /// Starts a hub with extra environment variables (e.g. `FLOTILLA_TEST_FAULTS`).
    /// Its embedded MQTT broker takes a free loopback port unless `env` sets
    /// `FLOTILLA_HUB_MQTT_LISTEN` (or `FLOTILLA_HUB_MQTT_MODE=external`).
    pub fn start_with_env(data: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla-hub"))
            .args(["serve", "--data-dir"])
            .arg(data)
            .args(["--api-listen", "127.0.0.1:0"])
            .args(["--sync-listen", "127.0.0.1:0"])
            .env("FLOTILLA_LOG", "warn")
            .env("FLOTILLA_HUB_MQTT_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("hub starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout);
        let mut url = None;
        let mut sync_addr = None;
        let mut mqtt_addr = None;
        // `flotilla-hub: API listening on http://ADDR`, then
        // `flotilla-hub: sync listening on ADDR (QUIC)`, then
        // `flotilla-hub: mqtt listening on ADDR` or `… mqtt broker ADDR (external)`.
        while url.is_none() || sync_addr.is_none() || mqtt_addr.is_none() {
            let mut line = String::new();
            let n = lines
                .read_line(&mut line)
                .expect("hub prints its addresses");
            assert!(n > 0, "the hub exited before printing its addresses");
            let line = line.trim();
            if let Some(u) = line.strip_prefix("flotilla-hub: API listening on ") {
                url = Some(u.to_string());
            } else if let Some(rest) = line.strip_prefix("flotilla-hub: sync listening on ") {
                let addr = rest.strip_suffix(" (QUIC)").unwrap_or(rest);
                sync_addr = Some(addr.parse().expect("a socket address"));
            } else if let Some(addr) = line.strip_prefix("flotilla-hub: mqtt listening on ") {
                mqtt_addr = Some(addr.to_string());
            } else if let Some(rest) = line.strip_prefix("flotilla-hub: mqtt broker ") {
                mqtt_addr = Some(rest.strip_suffix(" (external)").unwrap_or(rest).to_string());
            } else {
                panic!("unexpected line {line:?}");
            }
        }
        let admin = std::fs::read_to_string(data.join("admin-token"))
            .expect("admin token")
            .trim()
            .to_string();
        Self {
            child,
            url: url.unwrap(),
            sync_addr: sync_addr.unwrap(),
            mqtt_addr: mqtt_addr.unwrap(),
            data: data.to_path_buf(),
            admin,
        }
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn client(&self, token: &str) -> Client {
        Client {
            base: self.url.clone(),
            token: token.to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(120))
                // A fresh connection per request: a connection the hub closed
                // after an early error answer must not be reused.
                .max_idle_connections(0)
                .build(),
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Client {
    pub base: String,
    pub token: String,
    pub agent: ureq::Agent,
}

/// Status and JSON body (problem details on errors).
pub type Answer = (u16, serde_json::Value);

fn answer(r: Result<ureq::Response, ureq::Error>) -> Answer {
    match r {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.into_string().unwrap_or_default();
            (
                status,
                serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
            )
        }
        Err(ureq::Error::Status(status, resp)) => {
            assert_eq!(
                resp.header("content-type"),
                Some("application/problem+json"),
                "errors are problem details"
            );
            (status, resp.into_json().unwrap_or(serde_json::Value::Null))
        }
        Err(e) => panic!("transport error: {e}"),
    }
}

impl Client {
    fn req(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    pub fn get(&self, path: &str) -> Answer {
        answer(self.req("GET", path).call())
    }

    pub fn send(&self, method: &str, path: &str, body: serde_json::Value) -> Answer {
        answer(self.req(method, path).send_json(body))
    }

    pub fn send_raw(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Answer {
        answer(
            self.req(method, path)
                .set("Content-Type", content_type)
                .send_bytes(body),
        )
    }

    /// The status code the hub answers to a POST of `body`, read while the
    /// body is still being written: a hub that refuses early (413) may close
    /// the connection before the client has sent everything, which an HTTP
    /// client reports as a broken pipe instead of the answer.
    pub fn status_of_early_refusal(&self, path: &str, body: &[u8]) -> u16 {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://").to_string();
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.token,
            body.len()
        );
        let mut writer = stream.try_clone().unwrap();
        let body = body.to_vec();
        let sender = std::thread::spawn(move || {
            // Errors are expected once the hub has answered and closed.
            let _ = writer.write_all(head.as_bytes());
            let _ = writer.write_all(&body);
        });
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let _ = sender.join();
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
        status
    }

    pub fn bytes(&self, path: &str) -> Vec<u8> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(
            &mut self
                .req("GET", path)
                .call()
                .expect("download")
                .into_reader(),
            &mut out,
        )
        .unwrap();
        out
    }

    pub fn patch(&self, id: &str, offset: u64, data: &[u8]) -> Answer {
        answer(
            self.req("PATCH", &format!("/api/v1/uploads/{id}"))
                .set("Upload-Offset", &offset.to_string())
                .set("Content-Type", "application/octet-stream")
                .send_bytes(data),
        )
    }

    /// Uploads `data` as `file_name` in 4 MiB pieces; returns the upload id.
    pub fn upload(&self, file_name: &str, data: &[u8]) -> String {
        let (s, b) = self.send(
            "POST",
            "/api/v1/uploads",
            serde_json::json!({"file_name": file_name, "size": data.len()}),
        );
        assert_eq!(s, 201, "{b}");
        let id = b["id"].as_str().unwrap().to_string();
        let mut off = 0usize;
        for piece in data.chunks(4 << 20) {
            let (s, b) = self.patch(&id, off as u64, piece);
            assert_eq!(s, 200, "{b}");
            off += piece.len();
            assert_eq!(b["offset"], off as u64);
        }
        id
    }

    pub fn register(&self, name: &str, body: serde_json::Value) -> Answer {
        self.send("POST", &format!("/api/v1/models/{name}/versions"), body)
    }
}

pub fn model(seed: u64) -> Vec<u8> {
    flotilla_runtime::generate::mlp(&[256, 512, 512, 10], seed)
}
