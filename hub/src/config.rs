//! The hub's configuration: a TOML file, environment overrides, then flags,
//! validated into [`HubConfig`].
//!
//! Parsing is a pure function of the file text, an environment lookup and the
//! flags, so it is tested without touching the process environment (linkerd's
//! `env.rs` habit). Unknown keys are errors: a typo never silently falls back to
//! a default.
//!
//! ```toml
//! data_dir = "/var/lib/flotilla-hub"
//! keys_dir = "/etc/flotilla/keys"      # default: DATA_DIR/keys
//! [api]
//! listen = "127.0.0.1:8440"           # port 0 picks a free port
//! max_json_bytes = 1048576
//! max_upload_bytes = 8589934592         # registration holds a model in memory once
//! max_pending_uploads = 256
//! [sync]                              # QUIC: enrolment and sync with agents
//! listen = "0.0.0.0:7443"             # port 0 picks a free port
//! advertise = "hub.example:7443"      # what `flotilla hub info` prints; default: bound address
//! cert_names = ["hub.example"]        # extra names in the hub's certificate
//! max_connections = 10000
//! bandwidth_bytes_per_sec = 0         # all chunk traffic together; 0 = unlimited
//! connection_bandwidth_bytes_per_sec = 0  # per connection; 0 = unlimited
//! hello_timeout_secs = 10
//! stall_timeout_secs = 30
//! ```
//! `[mqtt]`, `[telemetry]`, `[webhooks]` and `[[alerts]]` are described in
//! [`crate::telemetry::config`].
//!
//! Environment: `FLOTILLA_HUB_DATA_DIR`, `FLOTILLA_HUB_KEYS_DIR`,
//! `FLOTILLA_HUB_API_LISTEN`, `FLOTILLA_HUB_MAX_UPLOAD_BYTES`,
//! `FLOTILLA_HUB_SYNC_LISTEN` (alias `FLOTILLA_SYNC_LISTEN`),
//! `FLOTILLA_HUB_SYNC_ADVERTISE`, `FLOTILLA_HUB_TIMESTAMP_EXPIRY_SECS`, and for tests
//! only `FLOTILLA_TEST_FAULTS` (see [`crate::sync::faults`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::api::types::AlertRule;
use crate::sync::faults::FaultSpec;
use crate::telemetry::config::{
    resolve_alerts, MqttConfig, RawMqtt, RawTelemetry, RawWebhooks, TelemetryConfig, WebhookConfig,
};

use serde::Deserialize;

/// A config that cannot be used; the message names the key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Validated hub configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct HubConfig {
    /// Where the database, chunks, uploads and (by default) keys live.
    pub data_dir: PathBuf,
    /// The keys directory (`flotilla keys init` layout).
    pub keys_dir: PathBuf,
    /// REST API listen address.
    pub api_listen: SocketAddr,
    /// Largest JSON request body.
    pub max_json_bytes: usize,
    /// Largest single upload PATCH body.
    pub max_patch_bytes: usize,
    /// Largest file one upload may declare; also the memory one registration may use.
    pub max_upload_bytes: u64,
    /// Most uploads in progress at once.
    pub max_pending_uploads: usize,
    /// The QUIC listener agents enrol and sync with.
    pub sync: SyncConfig,
    /// Lifetime of each signed timestamp.json (`[trust] timestamp_expiry_secs`,
    /// `FLOTILLA_HUB_TIMESTAMP_EXPIRY_SECS`): how long an agent cut off from
    /// the hub keeps accepting updates. The hub re-signs at half-life.
    pub timestamp_expiry_secs: i64,
    /// Test-only faults the hub injects (`FLOTILLA_TEST_FAULTS`); none in production.
    pub faults: FaultSpec,
    /// `[mqtt]`: the broker and the fleet.
    pub mqtt: MqttConfig,
    /// `[telemetry]`: retention, default alert rules.
    pub telemetry: TelemetryConfig,
    /// `[webhooks]`: delivery retries.
    pub webhooks: WebhookConfig,
    /// `[[alerts]]`: alert rules from the file.
    pub alerts: Vec<AlertRule>,
}

/// `[sync]`: the QUIC listener and its limits (docs/security.md, "QUIC sync limits").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// Listen address (UDP).
    pub listen: SocketAddr,
    /// Address agents are told to dial; `None`: the bound address.
    pub advertise: Option<String>,
    /// Names (DNS or IP) the hub's certificate carries besides `flotilla-hub`.
    pub cert_names: Vec<String>,
    /// Most connections at once, handshakes included; more are refused.
    pub max_connections: usize,
    /// Chunk bytes per second to all agents together (0: unlimited).
    pub bandwidth_bytes_per_sec: u64,
    /// Chunk bytes per second to one agent (0: unlimited).
    pub connection_bandwidth_bytes_per_sec: u64,
    /// Longest wait for a handshake, an agent's hello or an enrolment request.
    pub hello_timeout: Duration,
    /// Longest silence on a chunk stream before it is dropped.
    pub stall_timeout: Duration,
}

/// Default QUIC address.
pub const DEFAULT_SYNC_LISTEN: &str = "0.0.0.0:7443";
/// Default connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Default largest upload. Registration reads a model (and a reference
/// dataset) into memory once, so this is also the hub's per-registration memory
/// budget: raise it only on hubs with the memory to match.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// Default lifetime of a signed timestamp.json: 7 days.
pub const DEFAULT_TIMESTAMP_EXPIRY_SECS: i64 = 7 * 86_400;

/// Default API address.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8440";
/// Largest upload PATCH body (the CLI sends 8 MiB).
pub const MAX_PATCH_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    keys_dir: Option<PathBuf>,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    trust: RawTrust,
    #[serde(default)]
    mqtt: RawMqtt,
    #[serde(default)]
    telemetry: RawTelemetry,
    #[serde(default)]
    webhooks: RawWebhooks,
    #[serde(default)]
    alerts: Vec<AlertRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    timestamp_expiry_secs: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    listen: Option<String>,
    advertise: Option<String>,
    cert_names: Option<Vec<String>>,
    max_connections: Option<usize>,
    bandwidth_bytes_per_sec: Option<u64>,
    connection_bandwidth_bytes_per_sec: Option<u64>,
    hello_timeout_secs: Option<u64>,
    stall_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<String>,
    max_json_bytes: Option<usize>,
    max_upload_bytes: Option<u64>,
    max_pending_uploads: Option<usize>,
}

/// Command-line overrides (highest precedence).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--api-listen`.
    pub api_listen: Option<String>,
    /// `--sync-listen`.
    pub sync_listen: Option<String>,
    /// `--mqtt-mode` (`embedded` or `external`).
    pub mqtt_mode: Option<String>,
    /// `--mqtt-listen` (embedded broker).
    pub mqtt_listen: Option<String>,
    /// `--mqtt-url` (external broker).
    pub mqtt_url: Option<String>,
    /// `--fleet`.
    pub fleet: Option<String>,
}

impl HubConfig {
    /// Builds the config from the TOML text (if any), an environment lookup and flags.
    pub fn resolve(
        toml_text: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &Flags,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = match toml_text {
            Some(t) => toml::from_str(t).map_err(|e| {
                let line = e
                    .span()
                    .map_or(0, |s| t[..s.start.min(t.len())].matches('\n').count() + 1);
                ConfigError(format!(
                    "line {line}: {}",
                    e.message().split_whitespace().collect::<Vec<_>>().join(" ")
                ))
            })?,
            None => RawConfig::default(),
        };
        let data_dir = flags
            .data_dir
            .clone()
            .or_else(|| env("FLOTILLA_HUB_DATA_DIR").map(PathBuf::from))
            .or(raw.data_dir)
            .ok_or_else(|| ConfigError("data_dir is not set (use --data-dir, FLOTILLA_HUB_DATA_DIR or data_dir in the config file)".into()))?;
        let keys_dir = env("FLOTILLA_HUB_KEYS_DIR")
            .map(PathBuf::from)
            .or(raw.keys_dir)
            .unwrap_or_else(|| data_dir.join("keys"));
        let listen = flags
            .api_listen
            .clone()
            .or_else(|| env("FLOTILLA_HUB_API_LISTEN"))
            .or(raw.api.listen)
            .unwrap_or_else(|| DEFAULT_API_LISTEN.into());
        let api_listen: SocketAddr = listen.parse().map_err(|_| {
            ConfigError(format!(
                "api.listen {listen:?} is not an address like 127.0.0.1:8440"
            ))
        })?;
        let max_upload_bytes = match env("FLOTILLA_HUB_MAX_UPLOAD_BYTES") {
            Some(v) => v.parse().map_err(|_| {
                ConfigError(format!(
                    "FLOTILLA_HUB_MAX_UPLOAD_BYTES {v:?} is not a number"
                ))
            })?,
            None => raw.api.max_upload_bytes.unwrap_or(DEFAULT_MAX_UPLOAD_BYTES),
        };
        let max_json_bytes = raw.api.max_json_bytes.unwrap_or(1024 * 1024);
        if !(1024..=64 * 1024 * 1024).contains(&max_json_bytes) {
            return Err(ConfigError(format!(
                "api.max_json_bytes {max_json_bytes} must be between 1 KiB and 64 MiB"
            )));
        }
        if max_upload_bytes == 0 {
            return Err(ConfigError("api.max_upload_bytes must be positive".into()));
        }
        let max_pending_uploads = raw.api.max_pending_uploads.unwrap_or(256);
        if max_pending_uploads == 0 {
            return Err(ConfigError(
                "api.max_pending_uploads must be positive".into(),
            ));
        }
        let sync = SyncConfig::resolve(raw.sync, env, flags)?;
        let timestamp_expiry_secs = match env("FLOTILLA_HUB_TIMESTAMP_EXPIRY_SECS") {
            Some(v) => v.parse().map_err(|_| {
                ConfigError(format!(
                    "FLOTILLA_HUB_TIMESTAMP_EXPIRY_SECS {v:?} is not a number"
                ))
            })?,
            None => raw
                .trust
                .timestamp_expiry_secs
                .unwrap_or(DEFAULT_TIMESTAMP_EXPIRY_SECS),
        };
        if !(2..=30 * 86_400).contains(&timestamp_expiry_secs) {
            return Err(ConfigError(format!(
                "trust.timestamp_expiry_secs {timestamp_expiry_secs} must be between 2 and 2592000 (30 days)"
            )));
        }
        let mqtt = MqttConfig::resolve(raw.mqtt, env, flags)?;
        let telemetry = TelemetryConfig::resolve(raw.telemetry, env)?;
        let webhooks = WebhookConfig::resolve(raw.webhooks, env)?;
        let alerts = resolve_alerts(raw.alerts)?;
        let faults = match env("FLOTILLA_TEST_FAULTS") {
            Some(v) => FaultSpec::parse(&v)
                .map_err(|e| ConfigError(format!("FLOTILLA_TEST_FAULTS: {e}")))?,
            None => FaultSpec::default(),
        };
        Ok(Self {
            data_dir,
            keys_dir,
            api_listen,
            max_json_bytes,
            max_patch_bytes: MAX_PATCH_BYTES,
            max_upload_bytes,
            max_pending_uploads,
            sync,
            timestamp_expiry_secs,
            faults,
            mqtt,
            telemetry,
            webhooks,
            alerts,
        })
    }
}

impl SyncConfig {
    fn resolve(
        raw: RawSync,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &Flags,
    ) -> Result<Self, ConfigError> {
        let listen = flags
            .sync_listen
            .clone()
            .or_else(|| env("FLOTILLA_HUB_SYNC_LISTEN"))
            // The shorter name end-to-end harnesses use.
            .or_else(|| env("FLOTILLA_SYNC_LISTEN"))
            .or(raw.listen)
            .unwrap_or_else(|| DEFAULT_SYNC_LISTEN.into());
        let listen: SocketAddr = listen.parse().map_err(|_| {
            ConfigError(format!(
                "sync.listen {listen:?} is not an address like 0.0.0.0:7443"
            ))
        })?;
        let advertise = env("FLOTILLA_HUB_SYNC_ADVERTISE").or(raw.advertise);
        if let Some(a) = &advertise {
            if a.is_empty()
                || a.len() > 255
                || a.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError(format!(
                    "sync.advertise {a:?} must be a HOST:PORT without spaces"
                )));
            }
        }
        let cert_names = raw.cert_names.unwrap_or_default();
        for n in &cert_names {
            let plain = !n.is_empty()
                && n.len() <= 253
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'));
            if !plain {
                return Err(ConfigError(format!(
                    "sync.cert_names: {n:?} is not a DNS name or IP address"
                )));
            }
        }
        let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(ConfigError("sync.max_connections must be positive".into()));
        }
        let secs = |key: &str, v: Option<u64>, default: u64| {
            let v = v.unwrap_or(default);
            if (1..=3600).contains(&v) {
                Ok(Duration::from_secs(v))
            } else {
                Err(ConfigError(format!(
                    "sync.{key} {v} must be between 1 and 3600 seconds"
                )))
            }
        };
        Ok(Self {
            listen,
            advertise,
            cert_names,
            max_connections,
            bandwidth_bytes_per_sec: raw.bandwidth_bytes_per_sec.unwrap_or(0),
            connection_bandwidth_bytes_per_sec: raw.connection_bandwidth_bytes_per_sec.unwrap_or(0),
            hello_timeout: secs("hello_timeout_secs", raw.hello_timeout_secs, 10)?,
            stall_timeout: secs("stall_timeout_secs", raw.stall_timeout_secs, 30)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn flags_beat_environment_beat_file() {
        let file = "data_dir = \"/file\"\n[api]\nlisten = \"127.0.0.1:1\"\n";
        let env = |k: &str| (k == "FLOTILLA_HUB_API_LISTEN").then(|| "127.0.0.1:2".to_string());
        let c = HubConfig::resolve(Some(file), &env, &Flags::default()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/file"));
        assert_eq!(c.api_listen.port(), 2);
        assert_eq!(c.keys_dir, PathBuf::from("/file/keys"));
        let flags = Flags {
            data_dir: Some("/flag".into()),
            api_listen: Some("127.0.0.1:3".into()),
            ..Flags::default()
        };
        let c = HubConfig::resolve(Some(file), &env, &flags).unwrap();
        assert_eq!(
            (c.data_dir, c.api_listen.port()),
            (PathBuf::from("/flag"), 3)
        );
    }

    #[test]
    fn defaults_need_only_a_data_dir() {
        let flags = Flags {
            data_dir: Some("/d".into()),
            ..Flags::default()
        };
        let c = HubConfig::resolve(None, &no_env, &flags).unwrap();
        assert_eq!(c.api_listen.to_string(), DEFAULT_API_LISTEN);
        assert!(HubConfig::resolve(None, &no_env, &Flags::default()).is_err());
    }

    #[test]
    fn bad_configs_get_one_line_naming_the_key() {
        let flags = Flags {
            data_dir: Some("/d".into()),
            ..Flags::default()
        };
        let e =
            HubConfig::resolve(Some("[api]\nlisten = \"nowhere\""), &no_env, &flags).unwrap_err();
        assert!(e.to_string().contains("api.listen"), "{e}");
        let e = HubConfig::resolve(Some("[api]\nlistn = \"x\""), &no_env, &flags).unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
        let e = HubConfig::resolve(Some("data_dir = ["), &no_env, &flags).unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
        let env = |k: &str| (k == "FLOTILLA_HUB_MAX_UPLOAD_BYTES").then(|| "lots".to_string());
        assert!(HubConfig::resolve(None, &env, &flags).is_err());
    }

    #[test]
    fn sync_defaults_and_overrides() {
        let flags = Flags {
            data_dir: Some("/d".into()),
            ..Flags::default()
        };
        let c = HubConfig::resolve(None, &no_env, &flags).unwrap();
        assert_eq!(c.sync.listen.to_string(), DEFAULT_SYNC_LISTEN);
        assert_eq!(c.sync.max_connections, 10_000);
        assert_eq!(
            (
                c.sync.hello_timeout.as_secs(),
                c.sync.stall_timeout.as_secs()
            ),
            (10, 30)
        );
        assert_eq!(c.sync.advertise, None);
        assert_eq!(c.faults, FaultSpec::default());
        let file = "[sync]\nlisten = \"127.0.0.1:1\"\nadvertise = \"hub.example:7443\"\nbandwidth_bytes_per_sec = 1000\n";
        let env = |k: &str| (k == "FLOTILLA_HUB_SYNC_LISTEN").then(|| "127.0.0.1:2".to_string());
        let c = HubConfig::resolve(Some(file), &env, &flags).unwrap();
        assert_eq!(c.sync.listen.port(), 2);
        let short = |k: &str| (k == "FLOTILLA_SYNC_LISTEN").then(|| "127.0.0.1:4".to_string());
        let c4 = HubConfig::resolve(Some(file), &short, &flags).unwrap();
        assert_eq!(c4.sync.listen.port(), 4);
        assert_eq!(c.sync.advertise.as_deref(), Some("hub.example:7443"));
        assert_eq!(c.sync.bandwidth_bytes_per_sec, 1000);
        let flags = Flags {
            sync_listen: Some("127.0.0.1:0".into()),
            ..flags
        };
        let c = HubConfig::resolve(Some(file), &env, &flags).unwrap();
        assert_eq!(c.sync.listen.port(), 0, "port 0 is allowed");
    }

    #[test]
    fn bad_sync_settings_name_their_key() {
        let flags = Flags {
            data_dir: Some("/d".into()),
            ..Flags::default()
        };
        for (file, key) in [
            ("[sync]\nlisten = \"x\"", "sync.listen"),
            ("[sync]\nmax_connections = 0", "sync.max_connections"),
            ("[sync]\nhello_timeout_secs = 0", "sync.hello_timeout_secs"),
            (
                "[sync]\nstall_timeout_secs = 99999",
                "sync.stall_timeout_secs",
            ),
            ("[sync]\ncert_names = [\"a b\"]", "sync.cert_names"),
            ("[sync]\nadvertise = \"\"", "sync.advertise"),
        ] {
            let e = HubConfig::resolve(Some(file), &no_env, &flags).unwrap_err();
            assert!(e.to_string().contains(key), "{file}: {e}");
        }
        let env = |k: &str| (k == "FLOTILLA_TEST_FAULTS").then(|| "explode".to_string());
        let e = HubConfig::resolve(None, &env, &flags).unwrap_err();
        assert!(e.to_string().contains("FLOTILLA_TEST_FAULTS"), "{e}");
    }

    #[test]
    fn telemetry_sections_and_alert_rules_parse_from_the_file() {
        let flags = Flags {
            data_dir: Some("/d".into()),
            ..Flags::default()
        };
        let file = r#"
[mqtt]
mode = "external"
url = "mqtt://127.0.0.1:1883"
fleet = "acme"
[telemetry]
retention_secs = 3600
[webhooks]
max_attempts = 3
[[alerts]]
name = "fraud-drift"
metric = "psi"
threshold = 0.3
for_windows = 2
scope = { endpoint = "fraud" }
[[alerts]]
name = "slow"
metric = "p99_ms"
condition = ">="
threshold = 250
"#;
        let c = HubConfig::resolve(Some(file), &no_env, &flags).unwrap();
        assert_eq!(c.mqtt.fleet, "acme");
        assert_eq!(c.telemetry.retention.as_secs(), 3600);
        assert_eq!(c.webhooks.max_attempts, 3);
        assert_eq!(c.alerts.len(), 2);
        assert_eq!(c.alerts[0].scope.endpoint.as_deref(), Some("fraud"));
        let dup = "[[alerts]]\nname = \"a\"\nmetric = \"psi\"\nthreshold = 1\n[[alerts]]\nname = \"a\"\nmetric = \"psi\"\nthreshold = 1\n";
        let e = HubConfig::resolve(Some(dup), &no_env, &flags).unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");
        let bad = "[[alerts]]\nname = \"a\"\nmetric = \"latency\"\nthreshold = 1\n";
        assert!(HubConfig::resolve(Some(bad), &no_env, &flags).is_err());
        let flags = Flags {
            mqtt_listen: Some("127.0.0.1:0".into()),
            ..flags
        };
        let c = HubConfig::resolve(None, &no_env, &flags).unwrap();
        assert_eq!(
            c.mqtt.mode,
            crate::telemetry::config::BrokerMode::Embedded {
                listen: "127.0.0.1:0".parse().unwrap()
            }
        );
    }
}
