//! Ingest counters and fleet aggregates, and their Prometheus text rendering
//! for the hub's `/metrics`.
//!
//! Fleet aggregates are kept in memory from the windows ingest stores: per
//! endpoint and deployment, request and error counters (Prometheus counters:
//! they restart from zero with the hub) and the latency histograms of the
//! last five minutes, merged across devices for the fleet p99. Nothing here
//! reads the store; long-range views are the API's (`crate::telemetry::query`).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_protocol::telemetry::{Histogram, TelemetryWindow};
use flotilla_protocol::time::UtcTime;

/// Minutes of latency histograms kept per series for the recent p99.
pub const RECENT_MINUTES: i64 = 5;
/// Most (endpoint, deployment) series kept; windows naming more are counted
/// in the totals only.
pub const MAX_SERIES: usize = 10_000;

/// Monotonic counters of the telemetry side.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages received on window topics.
    pub windows_received: AtomicU64,
    /// Windows stored (new or partly new).
    pub windows_stored: AtomicU64,
    /// Windows already stored (acknowledged again, not stored).
    pub duplicates: AtomicU64,
    /// Sequence numbers stored twice through partly overlapping merged windows.
    pub overlap_seqs: AtomicU64,
    /// Window payloads that did not decode or validate.
    pub decode_errors: AtomicU64,
    /// Windows refused: unknown or revoked device, or a device id that is not the topic's.
    pub rejected: AtomicU64,
    /// Batches whose store commit failed (not acknowledged; agents resend).
    pub store_errors: AtomicU64,
    /// Acks published.
    pub acks_sent: AtomicU64,
    /// Events stored.
    pub events_stored: AtomicU64,
    /// Events the recorder missed (it fell behind the bus).
    pub events_lost: AtomicU64,
    /// Webhook attempts answered 2xx.
    pub webhook_delivered: AtomicU64,
    /// Webhook attempts that failed.
    pub webhook_failed: AtomicU64,
    /// Events a webhook gave up on after its last attempt.
    pub webhook_gave_up: AtomicU64,
}

/// Adds one to a counter.
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, Default)]
struct Series {
    requests: u64,
    errors: u64,
    // invariant: minutes ascending, at most RECENT_MINUTES entries.
    recent: VecDeque<(i64, Histogram)>,
}

/// Fleet aggregates per endpoint and deployment.
#[derive(Debug, Default)]
pub struct FleetStats {
    series: BTreeMap<(String, String), Series>,
}

/// One row of [`FleetStats::rows`].
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRow {
    /// Endpoint.
    pub endpoint: String,
    /// Deployment.
    pub deployment: String,
    /// Requests since the hub started.
    pub requests: u64,
    /// Errors since the hub started.
    pub errors: u64,
    /// p99 latency in seconds over the last minutes, if any request.
    pub p99_secs: Option<f64>,
}

impl FleetStats {
    /// Adds a stored window, received at `now` (hub clock).
    pub fn add(&mut self, now: UtcTime, w: &TelemetryWindow) {
        let minute = now.0.div_euclid(60);
        for e in &w.endpoints {
            let key = (e.endpoint.clone(), e.deployment.clone());
            if !self.series.contains_key(&key) && self.series.len() >= MAX_SERIES {
                continue;
            }
            let s = self.series.entry(key).or_default();
            s.requests = s.requests.saturating_add(e.requests);
            s.errors = s.errors.saturating_add(e.errors_total());
            match s.recent.back_mut() {
                Some((m, h)) if *m == minute => h.merge(&e.latency_us),
                _ => {
                    s.recent.push_back((minute, e.latency_us.clone()));
                }
            }
            while s
                .recent
                .front()
                .is_some_and(|(m, _)| *m <= minute - RECENT_MINUTES)
            {
                s.recent.pop_front();
            }
        }
    }

    /// Every series, with the p99 over the minutes before `now`.
    pub fn rows(&self, now: UtcTime) -> Vec<SeriesRow> {
        let minute = now.0.div_euclid(60);
        self.series
            .iter()
            .map(|((endpoint, deployment), s)| {
                let mut h = Histogram::new();
                for (m, part) in &s.recent {
                    if *m > minute - RECENT_MINUTES {
                        h.merge(part);
                    }
                }
                SeriesRow {
                    endpoint: endpoint.clone(),
                    deployment: deployment.clone(),
                    requests: s.requests,
                    errors: s.errors,
                    p99_secs: h.quantile(0.99).map(|us| us as f64 / 1e6),
                }
            })
            .collect()
    }
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Gauges the renderer needs from outside the counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Devices enrolled and not revoked.
    pub devices: u64,
    /// Devices online (QUIC or MQTT).
    pub devices_online: u64,
    /// Active alerts.
    pub alerts_active: u64,
    /// Whether the hub's MQTT client is connected.
    pub mqtt_connected: bool,
}

/// The Prometheus text exposition of the hub's telemetry side.
pub fn render(c: &Counters, rows: &[SeriesRow], g: Gauges) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    metric(
        "flotilla_telemetry_windows_received_total",
        "counter",
        "Messages received on window topics.",
        get(&c.windows_received),
    );
    metric(
        "flotilla_telemetry_windows_stored_total",
        "counter",
        "Windows stored.",
        get(&c.windows_stored),
    );
    metric(
        "flotilla_telemetry_duplicates_total",
        "counter",
        "Windows already stored, acknowledged again.",
        get(&c.duplicates),
    );
    metric(
        "flotilla_telemetry_overlap_seqs_total",
        "counter",
        "Sequence numbers stored twice through partly overlapping merged windows.",
        get(&c.overlap_seqs),
    );
    metric(
        "flotilla_telemetry_decode_errors_total",
        "counter",
        "Window payloads that did not decode or validate.",
        get(&c.decode_errors),
    );
    metric(
        "flotilla_telemetry_rejected_total",
        "counter",
        "Windows from unknown or revoked devices, or whose device is not the topic's.",
        get(&c.rejected),
    );
    metric(
        "flotilla_telemetry_store_errors_total",
        "counter",
        "Ingest batches whose commit failed.",
        get(&c.store_errors),
    );
    metric(
        "flotilla_telemetry_acks_sent_total",
        "counter",
        "End-to-end acks published.",
        get(&c.acks_sent),
    );
    metric(
        "flotilla_events_stored_total",
        "counter",
        "Events stored.",
        get(&c.events_stored),
    );
    metric(
        "flotilla_events_lost_total",
        "counter",
        "Events the recorder missed.",
        get(&c.events_lost),
    );
    metric(
        "flotilla_webhook_delivered_total",
        "counter",
        "Webhook attempts answered 2xx.",
        get(&c.webhook_delivered),
    );
    metric(
        "flotilla_webhook_failed_total",
        "counter",
        "Webhook attempts that failed.",
        get(&c.webhook_failed),
    );
    metric(
        "flotilla_webhook_gave_up_total",
        "counter",
        "Events a webhook gave up on.",
        get(&c.webhook_gave_up),
    );
    metric(
        "flotilla_devices",
        "gauge",
        "Devices enrolled and not revoked.",
        g.devices,
    );
    metric(
        "flotilla_devices_online",
        "gauge",
        "Devices online over QUIC or MQTT.",
        g.devices_online,
    );
    metric(
        "flotilla_alerts_active",
        "gauge",
        "Alerts fired and not resolved.",
        g.alerts_active,
    );
    metric(
        "flotilla_mqtt_connected",
        "gauge",
        "Whether the hub's MQTT client is connected.",
        u64::from(g.mqtt_connected),
    );
    let series = |out: &mut String,
                  name: &str,
                  kind: &str,
                  help: &str,
                  value: &dyn Fn(&SeriesRow) -> Option<String>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in rows {
            if let Some(v) = value(r) {
                let _ = writeln!(
                    out,
                    "{name}{{endpoint=\"{}\",deployment=\"{}\"}} {v}",
                    label(&r.endpoint),
                    label(&r.deployment)
                );
            }
        }
    };
    series(
        &mut out,
        "flotilla_requests_total",
        "counter",
        "Requests served across the fleet (since the hub started).",
        &|r| Some(r.requests.to_string()),
    );
    series(
        &mut out,
        "flotilla_request_errors_total",
        "counter",
        "Failed requests across the fleet (since the hub started).",
        &|r| Some(r.errors.to_string()),
    );
    series(
        &mut out,
        "flotilla_request_latency_p99_seconds",
        "gauge",
        "Fleet p99 latency over the last five minutes.",
        &|r| r.p99_secs.map(|v| v.to_string()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::telemetry::EndpointStats;

    fn window(requests: u64, latency_us: u64) -> TelemetryWindow {
        let mut w = TelemetryWindow::new("d", UtcTime(0), UtcTime(10));
        let mut e = EndpointStats::new("fraud", "blue\"x");
        e.requests = requests;
        e.errors.insert("runtime".into(), 1);
        e.latency_us.record_n(latency_us, requests);
        w.endpoints.push(e);
        w
    }

    #[test]
    fn fleet_rows_add_across_devices_and_forget_old_latencies() {
        let mut f = FleetStats::default();
        f.add(UtcTime(0), &window(100, 1_000));
        f.add(UtcTime(30), &window(100, 200_000));
        let rows = f.rows(UtcTime(59));
        assert_eq!((rows[0].requests, rows[0].errors), (200, 2));
        assert!(rows[0].p99_secs.unwrap() >= 0.2);
        f.add(UtcTime(600), &window(10, 1_000));
        let rows = f.rows(UtcTime(600));
        assert!(rows[0].p99_secs.unwrap() < 0.01, "old minutes are gone");
        let text = render(&Counters::default(), &rows, Gauges::default());
        assert!(
            text.contains(
                "flotilla_requests_total{endpoint=\"fraud\",deployment=\"blue\\\"x\"} 210"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE flotilla_devices_online gauge"));
    }
}
