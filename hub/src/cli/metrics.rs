//! `flotilla device metrics ID` and `flotilla drift ENDPOINT`: telemetry as
//! the hub has stored it.

use clap::Args;
use serde::Serialize;

use super::client::{segment, HubClient};
use super::credentials::{self, HubFlags};
use super::text::{human_bytes, table};
use super::{emit, CliError, Output, Report};
use crate::api::types::{DeploymentMetrics, DeviceMetrics, DriftReport};

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn deployment_rows(ds: &[DeploymentMetrics]) -> Vec<Vec<String>> {
    ds.iter()
        .map(|d| {
            vec![
                d.endpoint.clone(),
                d.deployment.clone(),
                d.requests.to_string(),
                format!("{} ({:.2}%)", d.errors, d.error_rate * 100.0),
                opt_ms(d.p50_ms),
                opt_ms(d.p99_ms),
                d.max_queue_depth.to_string(),
            ]
        })
        .collect()
}

const HEADER: [&str; 7] = [
    "ENDPOINT",
    "DEPLOYMENT",
    "REQUESTS",
    "ERRORS",
    "P50 MS",
    "P99 MS",
    "MAX QUEUE",
];

/// A device's metrics, printable.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(crate) struct Metrics(pub(crate) DeviceMetrics);

impl Report for Metrics {
    fn text(&self) -> String {
        let m = &self.0;
        let Some(l) = &m.latest else {
            return format!("device {}: no telemetry stored yet", m.device);
        };
        let mut out = format!(
            "device {} ({} windows stored)\nlatest window: {} .. {} (epoch {}, seq {}..={})\n  agent {} up {}s, sync {}, outbox dropped {}\n  cpu {:.1}%, memory {} / {}, disk {} / {}, load {:.2}",
            m.device,
            m.windows_stored,
            l.start,
            l.end,
            l.epoch,
            l.first_seq,
            l.last_seq,
            l.agent_version,
            l.uptime_secs,
            l.sync_state,
            l.outbox_dropped,
            l.cpu_percent,
            human_bytes(l.memory_used_bytes),
            human_bytes(l.memory_total_bytes),
            human_bytes(l.disk_used_bytes),
            human_bytes(l.disk_total_bytes),
            l.load1,
        );
        if !l.deployments.is_empty() {
            out += "\n\nlatest window:\n";
            out += &table(&HEADER, deployment_rows(&l.deployments));
        }
        if !m.last_hour.is_empty() {
            out += "\n\nlast hour:\n";
            out += &table(&HEADER, deployment_rows(&m.last_hour));
        }
        out
    }
}

/// `flotilla drift ENDPOINT`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  flotilla drift fraud\n  flotilla drift fraud --window-secs 86400 --output json"
)]
pub(crate) struct DriftArgs {
    /// Endpoint name.
    endpoint: String,
    /// Seconds of telemetry to merge (default: the last hour).
    #[arg(long, default_value_t = 3600)]
    window_secs: u64,
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Drift(DriftReport);

impl Report for Drift {
    fn text(&self) -> String {
        let r = &self.0;
        if r.deployments.is_empty() {
            return format!(
                "endpoint {}: no drift counts in the last {}s",
                r.endpoint, r.window_secs
            );
        }
        let mut out = format!(
            "endpoint {}, last {}s, merged across devices",
            r.endpoint, r.window_secs
        );
        for d in &r.deployments {
            out += &format!(
                "\n\ndeployment {} ({}): {} devices, {} windows",
                d.deployment, d.target, d.devices, d.windows
            );
            if let Some(e) = &d.error {
                out += &format!("\n  {e}");
            }
            if !d.features.is_empty() {
                out += "\n";
                out += &table(
                    &[
                        "FEATURE",
                        "KIND",
                        "PSI",
                        "JS",
                        "KS",
                        "MISSING",
                        "OUT OF RANGE",
                        "COUNT",
                    ],
                    d.features
                        .iter()
                        .map(|f| {
                            vec![
                                f.name.clone(),
                                f.kind.clone(),
                                format!("{:.3}{}", f.psi, if f.psi > 0.2 { " !" } else { "" }),
                                format!("{:.3}", f.js),
                                format!("{:.3}", f.ks),
                                format!("{:.2}%", f.missing_rate * 100.0),
                                format!("{:.2}%", f.out_of_range_rate * 100.0),
                                f.count.to_string(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        out
    }
}

/// Runs `flotilla drift`.
pub(crate) fn drift(a: DriftArgs, output: Output, flags: &HubFlags) -> Result<(), CliError> {
    let client = HubClient::new(credentials::connection(flags)?);
    let r: DriftReport = client
        .get(
            &format!("/api/v1/endpoints/{}/drift", segment(&a.endpoint)),
            &[("window_secs", a.window_secs.to_string())],
        )
        .map_err(|e| client.cli_error(e))?;
    emit(output, &Drift(r));
    Ok(())
}
