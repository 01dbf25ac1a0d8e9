//! The agent's configuration: `DATA/agent.toml`, written by `enroll`, with
//! environment overrides and command-line flags on top.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, `FLOTILLA_AGENT_*`
//! environment variables, flags. Every path the agent writes lives under
//! `data_dir`; the files enrolment leaves there are named by [`DataFiles`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a configuration is unusable; one line each.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("config {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A value is out of range or an override does not parse.
    #[error("config: {0}")]
    Invalid(String),
}

/// Everything `flotilla-agent run` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the agent keeps its key, certificates, store and bundles.
    pub data_dir: PathBuf,
    /// The device id the hub assigned at enrolment.
    pub device_id: String,
    /// The hub.
    pub hub: HubSection,
    /// Sync pacing.
    #[serde(default)]
    pub sync: SyncSection,
    /// The scoring API.
    #[serde(default)]
    pub serve: ServeSection,
    /// Telemetry over MQTT.
    #[serde(default)]
    pub telemetry: TelemetrySection,
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// Publish telemetry at all.
    pub enabled: bool,
    /// The MQTT broker, `HOST:PORT` (enrolment writes what the hub says);
    /// none: telemetry is off.
    pub mqtt: Option<String>,
    /// The fleet: one topic level, `flotilla/v1/{fleet}/{device}/...`.
    pub fleet: String,
    /// Seconds per telemetry window.
    pub window_secs: u64,
    /// Bytes the outbox may hold while the hub does not acknowledge; past it
    /// the oldest windows are merged into coarser ones.
    pub outbox_bytes: u64,
    /// Speak MQTT over TLS, presenting the device certificate (for a broker
    /// that maps certificate identities to users, docs/mosquitto.md).
    pub tls: bool,
    /// PEM file of the CA(s) that issued the broker's certificate; default:
    /// the hub's device CA pinned at enrolment (`DATA/hub-ca.pem`).
    pub ca_file: Option<PathBuf>,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            enabled: true,
            mqtt: None,
            fleet: "default".into(),
            window_secs: DEFAULT_WINDOW_SECS,
            outbox_bytes: DEFAULT_OUTBOX_BYTES,
            tls: false,
            ca_file: None,
        }
    }
}

/// Default telemetry window.
pub const DEFAULT_WINDOW_SECS: u64 = 10;
/// Default outbox budget: 4 MiB.
pub const DEFAULT_OUTBOX_BYTES: u64 = 4 << 20;

/// `[serve]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSection {
    /// Where applications call the agent (Open Inference Protocol v2); port 0
    /// picks a free one. The agent prints the bound address on stdout.
    pub listen: SocketAddr,
}

impl Default for ServeSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_SCORING_PORT)),
        }
    }
}

/// Smallest outbox budget accepted: a few windows.
pub const MIN_OUTBOX_BYTES: u64 = 16 * 1024;

/// Default scoring port.
pub const DEFAULT_SCORING_PORT: u16 = 8441;

/// `[hub]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// The hub's QUIC address, `HOST:PORT`.
    pub addr: String,
}

/// `[sync]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSection {
    /// First reconnect delay, in milliseconds (doubles up to the maximum, with jitter).
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay, in milliseconds.
    pub reconnect_max_ms: u64,
    /// Parallel chunk streams.
    pub chunk_streams: usize,
    /// Seconds a new version's trial (load and self-test) may take.
    pub trial_timeout_secs: u64,
}

impl Default for SyncSection {
    fn default() -> Self {
        Self {
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            chunk_streams: 4,
            trial_timeout_secs: 120,
        }
    }
}

/// The files in a data directory.
#[derive(Debug, Clone)]
pub struct DataFiles {
    dir: PathBuf,
}

impl DataFiles {
    /// The files under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `agent.toml`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }
    /// The device's private key (PEM, 0600; never leaves the node).
    pub fn key(&self) -> PathBuf {
        self.dir.join("device-key.pem")
    }
    /// The device certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("device.pem")
    }
    /// The hub's device CA (PEM), pinned at enrolment.
    pub fn hub_ca(&self) -> PathBuf {
        self.dir.join("hub-ca.pem")
    }
    /// The TUF root pinned at enrolment.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.json")
    }
    /// The agent's redb store.
    pub fn store(&self) -> PathBuf {
        self.dir.join("agent.redb")
    }
    /// Staged and active bundles.
    pub fn deployments(&self) -> PathBuf {
        self.dir.join("deployments")
    }
    /// The running agent's status (JSON, replaced atomically).
    pub fn status(&self) -> PathBuf {
        self.dir.join("status.json")
    }
}

impl AgentConfig {
    /// Reads `path`, then applies environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut c: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: e.message().to_string(),
        })?;
        c.apply_env(|k| std::env::var(k).ok())?;
        c.validate()?;
        Ok(c)
    }

    /// Applies `FLOTILLA_AGENT_HUB`, `FLOTILLA_AGENT_DATA_DIR`,
    /// `FLOTILLA_AGENT_LISTEN`, `FLOTILLA_AGENT_MQTT` (empty: telemetry off),
    /// `FLOTILLA_AGENT_WINDOW_SECS` and `FLOTILLA_AGENT_OUTBOX_BYTES`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(m) = var("FLOTILLA_AGENT_MQTT") {
            self.telemetry.mqtt = (!m.trim().is_empty()).then(|| m.trim().to_owned());
        }
        let number = |name: &str| -> Result<Option<u64>, ConfigError> {
            var(name)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| {
                        ConfigError::Invalid(format!("{name} {v:?} is not a whole number"))
                    })
                })
                .transpose()
        };
        if let Some(w) = number("FLOTILLA_AGENT_WINDOW_SECS")? {
            self.telemetry.window_secs = w;
        }
        if let Some(b) = number("FLOTILLA_AGENT_OUTBOX_BYTES")? {
            self.telemetry.outbox_bytes = b;
        }
        if let Some(t) = var("FLOTILLA_AGENT_MQTT_TLS") {
            self.telemetry.tls = match t.trim() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" | "" => false,
                other => {
                    return Err(ConfigError::Invalid(format!(
                        "FLOTILLA_AGENT_MQTT_TLS {other:?} is not true or false"
                    )))
                }
            };
        }
        if let Some(c) = var("FLOTILLA_AGENT_MQTT_CA") {
            self.telemetry.ca_file = (!c.trim().is_empty()).then(|| PathBuf::from(c.trim()));
        }
        if let Some(l) = var("FLOTILLA_AGENT_LISTEN") {
            self.serve.listen = l.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "FLOTILLA_AGENT_LISTEN {l:?} is not an address like 127.0.0.1:8441"
                ))
            })?;
        }
        if let Some(h) = var("FLOTILLA_AGENT_HUB") {
            self.hub.addr = h;
        }
        if let Some(d) = var("FLOTILLA_AGENT_DATA_DIR") {
            self.data_dir = PathBuf::from(d);
        }
        Ok(())
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.device_id.is_empty() {
            return Err(ConfigError::Invalid("device_id is empty".into()));
        }
        if self.hub.addr.rsplit_once(':').is_none() {
            return Err(ConfigError::Invalid(format!(
                "hub.addr {:?} is not HOST:PORT",
                self.hub.addr
            )));
        }
        let s = &self.sync;
        if !(1..=64).contains(&s.chunk_streams) {
            return Err(ConfigError::Invalid(
                "sync.chunk_streams must be between 1 and 64".into(),
            ));
        }
        if s.reconnect_min_ms == 0 || s.reconnect_max_ms < s.reconnect_min_ms {
            return Err(ConfigError::Invalid(
                "sync.reconnect_min_ms must be > 0 and <= sync.reconnect_max_ms".into(),
            ));
        }
        if s.trial_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "sync.trial_timeout_secs must be > 0".into(),
            ));
        }
        let t = &self.telemetry;
        if !(1..=86_400).contains(&t.window_secs) {
            return Err(ConfigError::Invalid(
                "telemetry.window_secs must be between 1 and 86400".into(),
            ));
        }
        if t.outbox_bytes < MIN_OUTBOX_BYTES {
            return Err(ConfigError::Invalid(format!(
                "telemetry.outbox_bytes must be at least {MIN_OUTBOX_BYTES}"
            )));
        }
        if let Some(m) = &t.mqtt {
            if m.rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(ConfigError::Invalid(format!(
                    "telemetry.mqtt {m:?} is not HOST:PORT"
                )));
            }
        }
        flotilla_protocol::telemetry::topics::check_segment("telemetry.fleet", &t.fleet)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }

    /// The files of this agent's data directory.
    pub fn files(&self) -> DataFiles {
        DataFiles::new(&self.data_dir)
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# flotilla-agent configuration, written by `flotilla-agent enroll`.\n\
             # Environment overrides: FLOTILLA_AGENT_HUB, FLOTILLA_AGENT_DATA_DIR, FLOTILLA_AGENT_LISTEN,\n\
             # FLOTILLA_AGENT_MQTT, FLOTILLA_AGENT_MQTT_TLS, FLOTILLA_AGENT_MQTT_CA,\n\
             # FLOTILLA_AGENT_WINDOW_SECS, FLOTILLA_AGENT_OUTBOX_BYTES.\n",
        );
        out.push_str(&format!(
            "data_dir = {}\ndevice_id = {}\n\n[hub]\naddr = {}\n\n[sync]\nreconnect_min_ms = {}\nreconnect_max_ms = {}\nchunk_streams = {}\ntrial_timeout_secs = {}\n\n[serve]\nlisten = {}\n",
            toml_str(&self.data_dir.display().to_string()),
            toml_str(&self.device_id),
            toml_str(&self.hub.addr),
            self.sync.reconnect_min_ms,
            self.sync.reconnect_max_ms,
            self.sync.chunk_streams,
            self.sync.trial_timeout_secs,
            toml_str(&self.serve.listen.to_string()),
        ));
        let t = &self.telemetry;
        out.push_str(&format!(
            "\n[telemetry]\nenabled = {}\n{}fleet = {}\nwindow_secs = {}\noutbox_bytes = {}\ntls = {}\n{}",
            t.enabled,
            t.mqtt
                .as_ref()
                .map(|m| format!("mqtt = {}\n", toml_str(m)))
                .unwrap_or_default(),
            toml_str(&t.fleet),
            t.window_secs,
            t.outbox_bytes,
            t.tls,
            t.ca_file
                .as_ref()
                .map(|c| format!("ca_file = {}\n", toml_str(&c.display().to_string())))
                .unwrap_or_default(),
        ));
        out
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Resolves `HOST:PORT` to a socket address.
pub async fn resolve(addr: &str) -> Result<SocketAddr, ConfigError> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| ConfigError::Invalid(format!("cannot resolve hub address {addr}: {e}")))?
        .next()
        .ok_or_else(|| ConfigError::Invalid(format!("hub address {addr} resolves to nothing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentConfig {
        AgentConfig {
            data_dir: PathBuf::from("/var/lib/flotilla \"agent\""),
            device_id: "dev-1".into(),
            hub: HubSection {
                addr: "hub.example:7443".into(),
            },
            sync: SyncSection::default(),
            serve: ServeSection::default(),
            telemetry: TelemetrySection {
                mqtt: Some("hub.example:1884".into()),
                ..TelemetrySection::default()
            },
        }
    }

    #[test]
    fn the_written_toml_reads_back_and_env_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, sample().to_toml()).unwrap();
        let back = AgentConfig::load(&path).unwrap();
        assert_eq!(back, sample());
        let mut c = back;
        c.apply_env(|k| (k == "FLOTILLA_AGENT_HUB").then(|| "10.0.0.1:1".to_string()))
            .unwrap();
        assert_eq!(c.hub.addr, "10.0.0.1:1");
    }

    #[test]
    fn bad_values_get_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "data_dir = 3\n").unwrap();
        let e = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(e.starts_with("config "), "{e}");
        let mut c = sample();
        c.sync.chunk_streams = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("chunk_streams"));
        c = sample();
        c.hub.addr = "nohost".into();
        assert!(c.validate().is_err());
        c = sample();
        c.telemetry.fleet = "a/b".into();
        assert!(c.validate().unwrap_err().to_string().contains("fleet"));
        c = sample();
        c.telemetry.window_secs = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("window_secs"));
        c = sample();
        c.telemetry.mqtt = Some("broker".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("telemetry.mqtt"));
        let mut c = sample();
        let e = c
            .apply_env(|k| (k == "FLOTILLA_AGENT_WINDOW_SECS").then(|| "ten".to_string()))
            .unwrap_err();
        assert!(e.to_string().contains("FLOTILLA_AGENT_WINDOW_SECS"), "{e}");
        c.apply_env(|k| (k == "FLOTILLA_AGENT_MQTT").then(String::new))
            .unwrap();
        assert_eq!(c.telemetry.mqtt, None);
    }
}
