//! The telemetry sections of the hub's configuration: `[mqtt]`, `[telemetry]`,
//! `[webhooks]` and `[[alerts]]`, validated into types.
//!
//! ```toml
//! [mqtt]
//! mode = "embedded"                 # or "external": the hub is a client of another broker
//! listen = "127.0.0.1:1884"         # embedded broker (MQTT 3.1.1, plain TCP); port 0 picks one
//! tls_listen = "0.0.0.0:8883"       # embedded broker, TLS for devices (device certificates required)
//! advertise = "hub.example:1884"    # what agents are told (GET /api/v1/hub); default: bound address
//! url = "mqtt://127.0.0.1:1883"     # external broker: mqtt://HOST:PORT or HOST:PORT
//! fleet = "default"                 # topics live under flotilla/v1/{fleet}/
//! client_id = "flotilla-hub-default" # the hub's MQTT session (persistent); default from the fleet
//! username = "flotilla-hub"         # external broker login; password: FLOTILLA_HUB_MQTT_PASSWORD
//! [telemetry]
//! retention_secs = 604800           # raw windows: 7 days
//! hourly_retention_secs = 7776000   # hourly merges: 90 days
//! sweep_interval_secs = 300         # how often retention runs
//! default_alerts = true             # the built-in rules (see crate::alerts)
//! [webhooks]
//! max_attempts = 6                  # per event and webhook
//! backoff_initial_ms = 1000         # 1 s, 2 s, 4 s … between attempts
//! backoff_max_ms = 300000
//! timeout_secs = 10
//! [[alerts]]                        # any number; see crate::alerts::AlertRule
//! name = "fraud-drift"
//! metric = "psi"                    # psi | error_rate | p99_ms | p99_over_objective | device_offline_secs
//! condition = ">"                   # > >= < <=
//! threshold = 0.2
//! for_windows = 3
//! scope = { endpoint = "fraud" }    # endpoint, deployment, device, labels
//! ```
//! Environment: `FLOTILLA_HUB_MQTT_MODE`, `FLOTILLA_HUB_MQTT_LISTEN`,
//! `FLOTILLA_HUB_MQTT_URL`, `FLOTILLA_HUB_MQTT_FLEET`, `FLOTILLA_HUB_MQTT_ADVERTISE`,
//! `FLOTILLA_HUB_MQTT_TLS_LISTEN`,
//! `FLOTILLA_HUB_MQTT_USERNAME`, `FLOTILLA_HUB_MQTT_PASSWORD`,
//! `FLOTILLA_HUB_TELEMETRY_RETENTION_SECS`, `FLOTILLA_HUB_WEBHOOK_BACKOFF_MS`
//! and `FLOTILLA_HUB_WEBHOOK_MAX_ATTEMPTS`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::api::types::AlertRule;
use crate::config::{ConfigError, Flags};

/// Default address of the embedded broker. Not 1883: that is where a
/// machine's own Mosquitto usually listens.
pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1884";
/// Default fleet name.
pub const DEFAULT_FLEET: &str = "default";
/// Default raw-window retention: 7 days.
pub const DEFAULT_RETENTION_SECS: u64 = 7 * 86_400;
/// Default retention of hourly merges: 90 days.
pub const DEFAULT_HOURLY_RETENTION_SECS: u64 = 90 * 86_400;

/// Which broker the hub uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerMode {
    /// rumqttd inside the hub, listening on this address.
    Embedded {
        /// Listen address (port 0 allowed).
        listen: SocketAddr,
    },
    /// Another broker, at `host:port`.
    External {
        /// Host name or IP.
        host: String,
        /// TCP port.
        port: u16,
    },
}

/// `[mqtt]`.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// Embedded or external broker.
    pub mode: BrokerMode,
    /// Address agents are told to publish to; `None`: the broker's address.
    pub advertise: Option<String>,
    /// Fleet name: one topic level.
    pub fleet: String,
    /// The hub's MQTT client id (its persistent session on the broker).
    pub client_id: String,
    /// Login at an external broker.
    pub username: Option<String>,
    /// Password at an external broker (environment only, never in the file).
    pub password: Option<String>,
    /// A second listener of the embedded broker for devices: MQTT over TLS
    /// with a certificate issued by the device CA, clients must present
    /// their device certificate. Agents are told to use it.
    pub tls_listen: Option<SocketAddr>,
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("mode", &self.mode)
            .field("advertise", &self.advertise)
            .field("fleet", &self.fleet)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls_listen", &self.tls_listen)
            .finish()
    }
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// How long raw windows are kept.
    pub retention: Duration,
    /// How long hourly merges are kept.
    pub hourly_retention: Duration,
    /// How often retention runs.
    pub sweep_interval: Duration,
    /// Whether the built-in alert rules apply (config rules of the same name
    /// replace them either way).
    pub default_alerts: bool,
}

/// `[webhooks]`: delivery retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Attempts per event and webhook, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles after each failure.
    pub backoff_initial: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Connect and response timeout of one attempt.
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqtt {
    mode: Option<String>,
    listen: Option<String>,
    advertise: Option<String>,
    url: Option<String>,
    fleet: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
    tls_listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTelemetry {
    retention_secs: Option<u64>,
    hourly_retention_secs: Option<u64>,
    sweep_interval_secs: Option<u64>,
    default_alerts: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhooks {
    max_attempts: Option<u32>,
    backoff_initial_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    timeout_secs: Option<u64>,
}

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| ConfigError(format!("{key} {v:?} is not a number")))
}

/// Splits `mqtt://host:port`, `tcp://host:port` or `host:port`.
fn parse_broker_url(url: &str) -> Result<(String, u16), ConfigError> {
    let bad = || {
        ConfigError(format!(
            "mqtt.url {url:?} must be mqtt://HOST:PORT or HOST:PORT (TLS brokers: see docs/mosquitto.md)"
        ))
    };
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .unwrap_or(url);
    if rest.contains("://") || rest.contains('/') {
        return Err(bad());
    }
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.chars().any(|c| c.is_whitespace()) {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

impl MqttConfig {
    pub(crate) fn resolve(raw: RawMqtt, env: Env<'_>, flags: &Flags) -> Result<Self, ConfigError> {
        let mode = flags
            .mqtt_mode
            .clone()
            .or_else(|| env("FLOTILLA_HUB_MQTT_MODE"))
            .or(raw.mode)
            .unwrap_or_else(|| "embedded".into());
        let mode = match mode.as_str() {
            "embedded" => {
                let listen = flags
                    .mqtt_listen
                    .clone()
                    .or_else(|| env("FLOTILLA_HUB_MQTT_LISTEN"))
                    .or(raw.listen)
                    .unwrap_or_else(|| DEFAULT_MQTT_LISTEN.into());
                let listen = listen.parse().map_err(|_| {
                    ConfigError(format!(
                        "mqtt.listen {listen:?} is not an address like {DEFAULT_MQTT_LISTEN}"
                    ))
                })?;
                BrokerMode::Embedded { listen }
            }
            "external" => {
                let url = flags
                    .mqtt_url
                    .clone()
                    .or_else(|| env("FLOTILLA_HUB_MQTT_URL"))
                    .or(raw.url)
                    .ok_or_else(|| {
                        ConfigError(
                            "mqtt.url is not set; mode \"external\" needs the broker's address"
                                .into(),
                        )
                    })?;
                let (host, port) = parse_broker_url(&url)?;
                BrokerMode::External { host, port }
            }
            other => {
                return Err(ConfigError(format!(
                    "mqtt.mode {other:?} must be \"embedded\" or \"external\""
                )))
            }
        };
        let fleet = flags
            .fleet
            .clone()
            .or_else(|| env("FLOTILLA_HUB_MQTT_FLEET"))
            .or(raw.fleet)
            .unwrap_or_else(|| DEFAULT_FLEET.into());
        flotilla_protocol::telemetry::topics::check_segment("fleet", &fleet)
            .map_err(|e| ConfigError(format!("mqtt.fleet: {e}")))?;
        if fleet == flotilla_protocol::telemetry::topics::EVENTS_LEVEL {
            return Err(ConfigError("mqtt.fleet \"events\" is reserved".into()));
        }
        let advertise = env("FLOTILLA_HUB_MQTT_ADVERTISE").or(raw.advertise);
        if let Some(a) = &advertise {
            if a.is_empty() || a.len() > 255 || a.chars().any(|c| c.is_whitespace()) {
                return Err(ConfigError(format!(
                    "mqtt.advertise {a:?} must be a HOST:PORT without spaces"
                )));
            }
        }
        let client_id = raw
            .client_id
            .unwrap_or_else(|| format!("flotilla-hub-{fleet}"));
        if client_id.is_empty()
            || client_id.len() > 128
            || client_id.chars().any(|c| c.is_control())
        {
            return Err(ConfigError(format!(
                "mqtt.client_id {client_id:?} must be 1 to 128 printable characters"
            )));
        }
        let tls_listen = env("FLOTILLA_HUB_MQTT_TLS_LISTEN")
            .or(raw.tls_listen)
            .filter(|t| !t.trim().is_empty())
            .map(|t| {
                t.trim().parse::<SocketAddr>().map_err(|_| {
                    ConfigError(format!(
                        "mqtt.tls_listen {t:?} is not an address like 0.0.0.0:8883"
                    ))
                })
            })
            .transpose()?;
        if tls_listen.is_some() && matches!(mode, BrokerMode::External { .. }) {
            return Err(ConfigError(
                "mqtt.tls_listen is for the embedded broker; an external broker has its own TLS (docs/mosquitto.md)".into(),
            ));
        }
        Ok(Self {
            tls_listen,
            mode,
            advertise,
            fleet,
            client_id,
            username: env("FLOTILLA_HUB_MQTT_USERNAME").or(raw.username),
            password: env("FLOTILLA_HUB_MQTT_PASSWORD"),
        })
    }
}

impl TelemetryConfig {
    pub(crate) fn resolve(raw: RawTelemetry, env: Env<'_>) -> Result<Self, ConfigError> {
        let retention = match env("FLOTILLA_HUB_TELEMETRY_RETENTION_SECS") {
            Some(v) => parse_num("FLOTILLA_HUB_TELEMETRY_RETENTION_SECS", &v)?,
            None => raw.retention_secs.unwrap_or(DEFAULT_RETENTION_SECS),
        };
        let hourly = raw
            .hourly_retention_secs
            .unwrap_or(DEFAULT_HOURLY_RETENTION_SECS);
        let sweep = raw.sweep_interval_secs.unwrap_or(300);
        if !(60..=366 * 86_400).contains(&retention) {
            return Err(ConfigError(format!(
                "telemetry.retention_secs {retention} must be between 60 and 31622400 (366 days)"
            )));
        }
        if hourly < retention || hourly > 10 * 366 * 86_400 {
            return Err(ConfigError(format!(
                "telemetry.hourly_retention_secs {hourly} must be at least retention_secs ({retention}) and at most ten years"
            )));
        }
        if !(1..=86_400).contains(&sweep) {
            return Err(ConfigError(format!(
                "telemetry.sweep_interval_secs {sweep} must be between 1 and 86400"
            )));
        }
        Ok(Self {
            retention: Duration::from_secs(retention),
            hourly_retention: Duration::from_secs(hourly),
            sweep_interval: Duration::from_secs(sweep),
            default_alerts: raw.default_alerts.unwrap_or(true),
        })
    }
}

impl WebhookConfig {
    pub(crate) fn resolve(raw: RawWebhooks, env: Env<'_>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let max_attempts = match env("FLOTILLA_HUB_WEBHOOK_MAX_ATTEMPTS") {
            Some(v) => parse_num("FLOTILLA_HUB_WEBHOOK_MAX_ATTEMPTS", &v)?,
            None => raw.max_attempts.unwrap_or(d.max_attempts),
        };
        let initial: u64 = match env("FLOTILLA_HUB_WEBHOOK_BACKOFF_MS") {
            Some(v) => parse_num("FLOTILLA_HUB_WEBHOOK_BACKOFF_MS", &v)?,
            None => raw
                .backoff_initial_ms
                .unwrap_or(d.backoff_initial.as_millis() as u64),
        };
        let max = raw
            .backoff_max_ms
            .unwrap_or(d.backoff_max.as_millis() as u64)
            .max(initial);
        let timeout = raw.timeout_secs.unwrap_or(d.timeout.as_secs());
        if !(1..=100).contains(&max_attempts) {
            return Err(ConfigError(format!(
                "webhooks.max_attempts {max_attempts} must be between 1 and 100"
            )));
        }
        if !(1..=3_600_000).contains(&initial) || max > 86_400_000 {
            return Err(ConfigError(format!(
                "webhooks.backoff_initial_ms {initial} must be between 1 and 3600000, backoff_max_ms at most 86400000"
            )));
        }
        if !(1..=300).contains(&timeout) {
            return Err(ConfigError(format!(
                "webhooks.timeout_secs {timeout} must be between 1 and 300"
            )));
        }
        Ok(Self {
            max_attempts,
            backoff_initial: Duration::from_millis(initial),
            backoff_max: Duration::from_millis(max),
            timeout: Duration::from_secs(timeout),
        })
    }
}

/// Validates `[[alerts]]` rules: unique names, each rule valid.
pub(crate) fn resolve_alerts(raw: Vec<AlertRule>) -> Result<Vec<AlertRule>, ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for r in &raw {
        r.validate()
            .map_err(|e| ConfigError(format!("alerts {:?}: {e}", r.name)))?;
        if !seen.insert(r.name.clone()) {
            return Err(ConfigError(format!(
                "alerts: rule name {:?} is used twice",
                r.name
            )));
        }
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn broker_urls_take_a_scheme_or_none() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883)
        );
        assert_eq!(
            parse_broker_url("broker.example:1884").unwrap(),
            ("broker.example".into(), 1884)
        );
        for bad in [
            "mqtts://b:8883",
            "b",
            "b:0",
            ":1883",
            "mqtt://b:1883/x",
            "b:port",
        ] {
            assert!(parse_broker_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mqtt_defaults_to_an_embedded_broker_beside_mosquitto() {
        let c = MqttConfig::resolve(RawMqtt::default(), &no_env, &Flags::default()).unwrap();
        assert_eq!(
            c.mode,
            BrokerMode::Embedded {
                listen: DEFAULT_MQTT_LISTEN.parse().unwrap()
            }
        );
        assert_eq!(
            (c.fleet.as_str(), c.client_id.as_str()),
            ("default", "flotilla-hub-default")
        );
        let env = |k: &str| match k {
            "FLOTILLA_HUB_MQTT_MODE" => Some("external".to_string()),
            "FLOTILLA_HUB_MQTT_URL" => Some("127.0.0.1:1883".to_string()),
            "FLOTILLA_HUB_MQTT_PASSWORD" => Some("s3cret".to_string()),
            _ => None,
        };
        let c = MqttConfig::resolve(RawMqtt::default(), &env, &Flags::default()).unwrap();
        assert_eq!(
            c.mode,
            BrokerMode::External {
                host: "127.0.0.1".into(),
                port: 1883
            }
        );
        assert!(!format!("{c:?}").contains("s3cret"), "no password in logs");
    }

    #[test]
    fn bad_mqtt_and_retention_settings_name_their_key() {
        let raw = RawMqtt {
            mode: Some("bridge".into()),
            ..RawMqtt::default()
        };
        let e = MqttConfig::resolve(raw, &no_env, &Flags::default()).unwrap_err();
        assert!(e.to_string().contains("mqtt.mode"), "{e}");
        let raw = RawMqtt {
            fleet: Some("a/b".into()),
            ..RawMqtt::default()
        };
        let e = MqttConfig::resolve(raw, &no_env, &Flags::default()).unwrap_err();
        assert!(e.to_string().contains("mqtt.fleet"), "{e}");
        let raw = RawMqtt {
            mode: Some("external".into()),
            ..RawMqtt::default()
        };
        let e = MqttConfig::resolve(raw, &no_env, &Flags::default()).unwrap_err();
        assert!(e.to_string().contains("mqtt.url"), "{e}");
        let raw = RawTelemetry {
            retention_secs: Some(10 * 86_400),
            hourly_retention_secs: Some(86_400),
            ..RawTelemetry::default()
        };
        let e = TelemetryConfig::resolve(raw, &no_env).unwrap_err();
        assert!(e.to_string().contains("hourly_retention_secs"), "{e}");
        let env = |k: &str| (k == "FLOTILLA_HUB_WEBHOOK_BACKOFF_MS").then(|| "20".to_string());
        let w = WebhookConfig::resolve(RawWebhooks::default(), &env).unwrap();
        assert_eq!(w.backoff_initial, Duration::from_millis(20));
        let raw = RawWebhooks {
            max_attempts: Some(0),
            ..RawWebhooks::default()
        };
        assert!(WebhookConfig::resolve(raw, &no_env).is_err());
    }
}
