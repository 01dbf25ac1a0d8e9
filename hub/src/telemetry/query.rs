//! Read views over stored telemetry: a device's latest window and its last
//! hour per deployment, an endpoint's drift merged across devices, and the
//! Prometheus text of `/metrics`. All blocking (redb reads).
//!
//! Time ranges use the windows' end times, which are the agents' clocks: a
//! device's "last hour" ends at its latest window (so a skewed clock still
//! shows its data), a fleet view ends at the hub's now.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_protocol::telemetry::{EndpointStats, FeatureDrift, ObservedFeature, TelemetryWindow};

use super::stats::{render, Gauges};
use super::{lock, Telemetry};
use crate::alerts::eval::view;
use crate::api::types::{
    DeploymentDrift, DeploymentMetrics, DeviceMetrics, DriftReport, WindowRef, WindowSummary,
};
use crate::registry::RegistryError;

/// Most windows one query reads per device.
pub const MAX_QUERY_WINDOWS: usize = 100_000;

/// Longest drift window: the raw retention's default.
pub const MAX_DRIFT_SECS: u64 = 7 * 86_400;

fn ms(us: Option<u64>) -> Option<f64> {
    us.map(|us| us as f64 / 1000.0)
}

fn metrics(e: &EndpointStats) -> DeploymentMetrics {
    let errors = e.errors_total();
    DeploymentMetrics {
        endpoint: e.endpoint.clone(),
        deployment: e.deployment.clone(),
        requests: e.requests,
        errors,
        error_rate: if e.requests == 0 {
            0.0
        } else {
            errors as f64 / e.requests as f64
        },
        p50_ms: ms(e.latency_us.quantile(0.5)),
        p99_ms: ms(e.latency_us.quantile(0.99)),
        max_queue_depth: e.max_queue_depth,
    }
}

/// The API summary of a window.
pub fn summary(w: &TelemetryWindow) -> WindowSummary {
    WindowSummary {
        epoch: w.epoch,
        first_seq: w.first_seq,
        last_seq: w.last_seq,
        start: w.start.to_string(),
        end: w.end.to_string(),
        cpu_percent: w.system.cpu_percent,
        memory_used_bytes: w.system.memory_used_bytes,
        memory_total_bytes: w.system.memory_total_bytes,
        disk_used_bytes: w.system.disk_used_bytes,
        disk_total_bytes: w.system.disk_total_bytes,
        load1: w.system.load1,
        temperatures_c: w.system.temperatures_c.clone(),
        agent_version: w.agent.version.clone(),
        uptime_secs: w.agent.uptime_secs,
        sync_state: w.agent.sync_state.clone(),
        outbox_dropped: w.agent.outbox_dropped,
        deployments: w.endpoints.iter().map(metrics).collect(),
    }
}

/// Per (endpoint, deployment), the windows' request stats merged.
fn merged_endpoints<'a>(
    windows: impl IntoIterator<Item = &'a TelemetryWindow>,
) -> Vec<DeploymentMetrics> {
    let mut acc: BTreeMap<(String, String), EndpointStats> = BTreeMap::new();
    for w in windows {
        for e in &w.endpoints {
            acc.entry((e.endpoint.clone(), e.deployment.clone()))
                .or_insert_with(|| EndpointStats::new(&e.endpoint, &e.deployment))
                .merge(e);
        }
    }
    acc.values().map(metrics).collect()
}

impl Telemetry {
    /// `GET /api/v1/devices/{id}/metrics`.
    pub fn device_metrics(&self, device: &str) -> Result<DeviceMetrics, RegistryError> {
        self.registry.device(device)?;
        let latest = self.store.latest_window(device)?;
        let last_hour = match &latest {
            Some(l) => {
                let ws = self.store.windows_between(
                    device,
                    l.end.0.saturating_sub(3600),
                    l.end.0,
                    MAX_QUERY_WINDOWS,
                )?;
                merged_endpoints(&ws)
            }
            None => Vec::new(),
        };
        Ok(DeviceMetrics {
            device: device.to_string(),
            windows_stored: self.store.window_count(device)?,
            latest: latest.as_ref().map(summary),
            last_hour,
        })
    }

    /// `GET /api/v1/devices/{id}/windows`: the stored windows of a device
    /// that ended at or after `since` (seconds), oldest first.
    pub fn device_windows(
        &self,
        device: &str,
        since: i64,
        limit: usize,
    ) -> Result<Vec<WindowRef>, RegistryError> {
        self.registry.device(device)?;
        Ok(self
            .store
            .windows_between(device, since, i64::MAX, limit)?
            .iter()
            .map(|w| WindowRef {
                epoch: w.epoch,
                first_seq: w.first_seq,
                last_seq: w.last_seq,
                span_count: w.span_count,
                end: w.end.to_string(),
                requests: w.requests_total(),
            })
            .collect())
    }

    /// `GET /api/v1/endpoints/{name}/drift`: per deployment and bundle, the
    /// drift counts of the last `window_secs` merged across devices and
    /// compared with the bundle's baseline.
    pub fn drift_report(
        &self,
        endpoint: &str,
        window_secs: u64,
    ) -> Result<DriftReport, RegistryError> {
        if window_secs == 0 || window_secs > MAX_DRIFT_SECS {
            return Err(RegistryError::BadRequest(format!(
                "window_secs {window_secs} must be between 1 and {MAX_DRIFT_SECS}"
            )));
        }
        let from = crate::now().0.saturating_sub(window_secs as i64);
        struct Acc {
            devices: BTreeSet<String>,
            windows: u64,
            inputs: Vec<ObservedFeature>,
            outputs: Vec<ObservedFeature>,
        }
        let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
        for device in self.store.devices()? {
            for w in self
                .store
                .windows_between(&device, from, i64::MAX, MAX_QUERY_WINDOWS)?
            {
                for d in w.drift.iter().filter(|d| d.endpoint == endpoint) {
                    let a = acc
                        .entry((d.deployment.clone(), d.target.clone()))
                        .or_insert_with(|| Acc {
                            devices: BTreeSet::new(),
                            windows: 0,
                            inputs: Vec::new(),
                            outputs: Vec::new(),
                        });
                    a.devices.insert(device.clone());
                    a.windows += 1;
                    for (into, from) in [(&mut a.inputs, &d.inputs), (&mut a.outputs, &d.outputs)] {
                        for f in from {
                            match into.iter_mut().find(|i| i.name == f.name) {
                                Some(i) => {
                                    i.counts.merge(&f.counts);
                                }
                                None => into.push(f.clone()),
                            }
                        }
                    }
                }
            }
        }
        let deployments = acc
            .into_iter()
            .map(|((deployment, target), a)| {
                let mut out = DeploymentDrift {
                    deployment,
                    target: target.clone(),
                    devices: a.devices.len() as u64,
                    windows: a.windows,
                    features: Vec::new(),
                    error: None,
                };
                match self.baseline(&target) {
                    None => out.error = Some(format!("bundle {target} has no drift baseline")),
                    Some(base) => {
                        for (kind, list) in [("input", &a.inputs), ("output", &a.outputs)] {
                            for f in list {
                                let Some(b) = base.features.iter().find(|b| b.name == f.name)
                                else {
                                    continue;
                                };
                                match FeatureDrift::compute(b, &f.counts) {
                                    Ok(d) => out.features.push(view(d, kind)),
                                    Err(e) => out.error = Some(e.to_string()),
                                }
                            }
                        }
                    }
                }
                out
            })
            .collect();
        Ok(DriftReport {
            endpoint: endpoint.to_string(),
            window_secs,
            deployments,
        })
    }

    /// `GET /api/v1/endpoints/{name}/metrics`: per deployment, the fleet's
    /// requests, errors and latency quantiles over the last `window_secs`,
    /// histograms merged across devices.
    pub fn endpoint_metrics(
        &self,
        endpoint: &str,
        window_secs: u64,
    ) -> Result<Vec<DeploymentMetrics>, RegistryError> {
        if window_secs == 0 || window_secs > MAX_DRIFT_SECS {
            return Err(RegistryError::BadRequest(format!(
                "window_secs {window_secs} must be between 1 and {MAX_DRIFT_SECS}"
            )));
        }
        let from = crate::now().0.saturating_sub(window_secs as i64);
        let mut windows = Vec::new();
        for device in self.store.devices()? {
            for mut w in self
                .store
                .windows_between(&device, from, i64::MAX, MAX_QUERY_WINDOWS)?
            {
                w.endpoints.retain(|e| e.endpoint == endpoint);
                if !w.endpoints.is_empty() {
                    windows.push(w);
                }
            }
        }
        Ok(merged_endpoints(&windows))
    }

    /// The Prometheus text of `/metrics`.
    pub fn prometheus(&self) -> String {
        let now = crate::now();
        let rows = lock(&self.fleet_stats).rows(now);
        let (devices, devices_online) = self.device_counts();
        let gauges = Gauges {
            devices,
            devices_online,
            alerts_active: self.active_alerts().len() as u64,
            mqtt_connected: self.link().is_some_and(|l| l.is_connected()),
        };
        render(&self.counters, &rows, gauges)
    }
}
