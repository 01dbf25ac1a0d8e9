//! `flotilla device …` and `flotilla hub info`: enrolment tokens, devices,
//! labels, revocation, and the CA fingerprint technicians pin.

use std::collections::BTreeMap;

use clap::Subcommand;
use serde::Serialize;

use super::client::{segment, HubClient};
use super::credentials::{self, HubFlags};
use super::model::syntax;
use super::text::{human_bytes, table};
use super::{emit, CliError, Output, Report};
use crate::api::types::{
    CreateEnrolToken, DeviceMetrics, DeviceStatus, DeviceView, EnrolTokenView, HubInfo, ReasonBody,
    UpdateLabels,
};
use crate::devices::service::labels_text;

#[derive(Debug, Subcommand)]
pub(crate) enum DeviceCommand {
    /// Enrolment tokens: one-time and expiring.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List enrolled devices.
    List,
    /// Show one device.
    Show {
        /// Device id.
        id: String,
    },
    /// Set labels (KEY=VALUE) and remove labels (-KEY) of a device.
    #[command(
        after_help = "Example:\n  flotilla device label dev-1a2b3c site=lyon gpu=a100 -- -legacy --reason \"moved\""
    )]
    Label {
        /// Device id.
        id: String,
        /// KEY=VALUE to set, or -KEY to remove.
        #[arg(required = true, allow_hyphen_values = true)]
        changes: Vec<String>,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// A device's telemetry: its latest window and, per deployment over the
    /// last hour, requests, errors, p50 and p99 latency.
    #[command(
        after_help = "Example:\n  flotilla device metrics dev-1a2b3c\n  flotilla device metrics dev-1a2b3c --output json"
    )]
    Metrics {
        /// Device id.
        id: String,
    },
    /// Revoke a device: it is refused at its next handshake.
    Revoke {
        /// Device id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a one-time enrolment token for a technician.
    #[command(
        after_help = "Example:\n  flotilla device token create --labels site=lyon,line=3 --ttl 1h"
    )]
    Create {
        /// Labels the enrolled device gets: KEY=VALUE[,KEY=VALUE...].
        #[arg(long, value_parser = parse_labels, default_value = "")]
        labels: LabelMap,
        /// How long the token stays valid: 90s, 30m, 1h, 2d (at most 7d).
        #[arg(long, value_parser = parse_ttl, default_value = "1h")]
        ttl: u64,
    },
}

/// Parsed `--labels`.
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelMap(BTreeMap<String, String>);

fn parse_labels(s: &str) -> Result<LabelMap, String> {
    let mut m = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = syntax::tag(part)?;
        m.insert(k, v);
    }
    Ok(LabelMap(m))
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("ttl {s:?} must look like 90s, 30m, 1h or 2d"))?;
    let mult = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("ttl {s:?}: unit must be s, m, h or d")),
    };
    Ok(n.saturating_mul(mult))
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Token(EnrolTokenView);

impl Report for Token {
    fn text(&self) -> String {
        format!(
            "enrolment token (one use, expires {}, labels {}):\n  {}",
            self.0.expires_at,
            labels_text(&self.0.labels),
            self.0.token
        )
    }
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Devices(Vec<DeviceView>);

impl Report for Devices {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "no devices".into();
        }
        table(
            &["ID", "STATUS", "CONNECTED", "LABELS", "LAST SEEN"],
            self.0
                .iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        status(d.status).into(),
                        if d.connected { "yes" } else { "no" }.into(),
                        labels_text(&d.labels),
                        d.last_seen.clone().unwrap_or_else(|| "never".into()),
                    ]
                })
                .collect(),
        )
    }
}

fn status(s: DeviceStatus) -> &'static str {
    match s {
        DeviceStatus::Active => "active",
        DeviceStatus::Revoked => "revoked",
    }
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Device(DeviceView);

impl Report for Device {
    fn text(&self) -> String {
        let d = &self.0;
        let mut out = format!(
            "device {} ({}, {})\n  labels: {}\n  enrolled: {}\n  certificate sha256: {}\n  director version: {}\n  last seen: {}",
            d.id,
            status(d.status),
            if d.connected { "connected" } else { "not connected" },
            labels_text(&d.labels),
            d.enrolled_at,
            d.cert_sha256,
            d.director_version,
            d.last_seen.as_deref().unwrap_or("never"),
        );
        if let Some(t) = &d.revoked_at {
            out.push_str(&format!("\n  revoked: {t}"));
        }
        if let Some(v) = &d.agent_version {
            out.push_str(&format!("\n  agent version: {v}"));
        }
        if let Some(i) = &d.inventory {
            let accel: Vec<String> = i
                .accelerators
                .iter()
                .map(|a| format!("{} {} ({})", a.kind, a.name, human_bytes(a.memory_bytes)))
                .collect();
            out.push_str(&format!(
                "\n  hardware: {} CPUs, {} memory{}",
                i.cpus,
                human_bytes(i.memory_bytes),
                if accel.is_empty() {
                    String::new()
                } else {
                    format!(", {}", accel.join(", "))
                }
            ));
        }
        if !d.deployments.is_empty() {
            out.push_str("\n  deployments:\n");
            out.push_str(&table(
                &["ENDPOINT", "DEPLOYMENT", "STATE", "TARGET", "SINCE"],
                d.deployments
                    .iter()
                    .map(|r| {
                        let state = match (&r.reason, r.have_bytes, r.need_bytes) {
                            (Some(why), _, _) => format!("{} ({why})", r.state),
                            (None, Some(have), Some(need)) => {
                                format!("{} ({have}/{need} bytes)", r.state)
                            }
                            _ => r.state.clone(),
                        };
                        vec![
                            r.endpoint.clone(),
                            r.deployment.clone(),
                            state,
                            r.target.clone(),
                            r.since.clone(),
                        ]
                    })
                    .collect(),
            ));
        }
        out
    }
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Info(HubInfo);

impl Report for Info {
    fn text(&self) -> String {
        format!(
            "hub version {}\n  QUIC sync address: {}\n  MQTT broker: {} (fleet {})\n  device CA fingerprint (sha256): {}\n\nenrol a node with:\n  flotilla-agent enroll --hub {} --hub-ca-fingerprint {} --token TOKEN",
            self.0.version,
            self.0.sync_addr,
            self.0.mqtt_addr.as_deref().unwrap_or("none"),
            self.0.fleet,
            self.0.ca_fingerprint,
            self.0.sync_addr,
            self.0.ca_fingerprint,
        )
    }
}

pub(crate) fn run(cmd: DeviceCommand, output: Output, flags: &HubFlags) -> Result<(), CliError> {
    let client = HubClient::new(credentials::connection(flags)?);
    let err = |e| client.cli_error(e);
    let path = |id: &str| format!("/api/v1/devices/{}", segment(id));
    match cmd {
        DeviceCommand::Token(TokenCommand::Create { labels, ttl }) => {
            let t: EnrolTokenView = client
                .send(
                    "POST",
                    "/api/v1/devices/tokens",
                    &CreateEnrolToken {
                        labels: labels.0,
                        ttl_secs: ttl,
                    },
                )
                .map_err(err)?;
            emit(output, &Token(t));
        }
        DeviceCommand::List => {
            let ds: Vec<DeviceView> = client.get("/api/v1/devices", &[]).map_err(err)?;
            emit(output, &Devices(ds));
        }
        DeviceCommand::Show { id } => {
            let d: DeviceView = client.get(&path(&id), &[]).map_err(err)?;
            emit(output, &Device(d));
        }
        DeviceCommand::Metrics { id } => {
            let m: DeviceMetrics = client
                .get(&format!("{}/metrics", path(&id)), &[])
                .map_err(err)?;
            emit(output, &super::metrics::Metrics(m));
        }
        DeviceCommand::Label {
            id,
            changes,
            reason,
        } => {
            let mut body = UpdateLabels {
                set: BTreeMap::new(),
                remove: Vec::new(),
                reason,
            };
            for c in changes {
                if let Some(k) = c.strip_prefix('-') {
                    body.remove.push(k.to_string());
                } else {
                    let (k, v) = syntax::tag(&c).map_err(|m| CliError {
                        code: super::exit::USAGE,
                        message: m,
                    })?;
                    body.set.insert(k, v);
                }
            }
            let d: DeviceView = client
                .send("PATCH", &format!("{}/labels", path(&id)), &body)
                .map_err(err)?;
            emit(output, &Device(d));
        }
        DeviceCommand::Revoke { id, reason } => {
            let d: DeviceView = client
                .send(
                    "POST",
                    &format!("{}/revoke", path(&id)),
                    &ReasonBody { reason },
                )
                .map_err(err)?;
            emit(output, &Device(d));
        }
    }
    Ok(())
}

/// `flotilla hub info`.
pub(crate) fn info(output: Output, flags: &HubFlags) -> Result<(), CliError> {
    let client = HubClient::new(credentials::connection(flags)?);
    let i: HubInfo = client
        .get("/api/v1/hub", &[])
        .map_err(|e| client.cli_error(e))?;
    emit(output, &Info(i));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_and_labels_parse() {
        assert_eq!(parse_ttl("90s").unwrap(), 90);
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("2d").unwrap(), 172_800);
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
        assert_eq!(parse_labels("site=lyon,line=3").unwrap().0.len(), 2);
        assert!(parse_labels("site").is_err());
    }
}
