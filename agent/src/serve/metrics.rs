//! Scoring metrics per endpoint and deployment, and mirrored traffic apart:
//! requests by status code, errors by kind, a latency histogram, batch sizes,
//! queue depth and executions in flight, and mirror outcomes.
//!
//! Design: histograms keep per-bucket counts over fixed bounds
//! ([`LATENCY_BOUNDS`], [`BATCH_BOUNDS`]), so that two snapshots of the same
//! series merge by adding counts ([`HistogramSnapshot::merge`]); the telemetry
//! issue ships [`MetricsSnapshot`]s as they are. `/metrics` renders the same
//! snapshot as Prometheus text. Series are never removed (Prometheus counters
//! must not go back), so a retired deployment keeps its last counts.
//!
//! Beside the cumulative counts every series keeps what happened since the
//! last telemetry window ([`Metrics::take_window`]): request and error
//! counts, microsecond latencies and batch sizes in the protocol's mergeable
//! [`Histogram`], and the queue's high-water mark.
//!
//! It does not push anything anywhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_protocol::telemetry::{EndpointStats, Histogram};
use serde::Serialize;

/// Upper bounds (seconds) of the request latency buckets; `+Inf` is implied.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the batch size buckets (requests per execution); `+Inf` is implied.
pub const BATCH_BOUNDS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// A histogram's state: counts per bucket, not cumulative.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    /// Bucket upper bounds, ascending.
    pub bounds: Vec<f64>,
    /// Observations per bucket; one more entry than `bounds` (the `+Inf` bucket).
    // invariant: counts.len() == bounds.len() + 1; their sum is `count`.
    pub counts: Vec<u64>,
    /// Sum of observed values.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl HistogramSnapshot {
    fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// Adds `other`'s observations; false (and nothing changed) when the bounds
    /// differ.
    pub fn merge(&mut self, other: &Self) -> bool {
        if self.bounds != other.bounds || self.counts.len() != other.counts.len() {
            return false;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
        true
    }
}

/// One series: an endpoint's deployment, for its own or for mirrored traffic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesSnapshot {
    /// Endpoint name.
    pub endpoint: String,
    /// Deployment name.
    pub deployment: String,
    /// True for the copies a mirror sent.
    pub mirror: bool,
    /// Requests answered, by HTTP status code.
    pub requests: BTreeMap<u16, u64>,
    /// Failed requests by kind (`invalid_input`, `overloaded`, `timeout`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Request latency in seconds, from routing to the response body.
    pub latency_seconds: HistogramSnapshot,
    /// Requests per model execution.
    pub batch_size: HistogramSnapshot,
    /// Mirror outcomes (`ok`, `error`, `invalid`, `dropped`); mirror series only.
    pub mirror_results: BTreeMap<String, u64>,
    /// Requests waiting for an execution slot now.
    pub queue_depth: i64,
    /// Executions running now.
    pub in_flight: i64,
}

/// All series at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Per endpoint, deployment and mirror flag, sorted.
    pub series: Vec<SeriesSnapshot>,
    /// Requests for an endpoint that is not served here.
    pub unknown_model_requests: u64,
}

#[derive(Debug)]
struct Counts {
    requests: BTreeMap<u16, u64>,
    errors: BTreeMap<&'static str, u64>,
    latency: HistogramSnapshot,
    batch: HistogramSnapshot,
    mirror_results: BTreeMap<&'static str, u64>,
    window: WindowCounts,
}

/// What a series saw since the last telemetry window was taken.
#[derive(Debug, Default)]
struct WindowCounts {
    requests: u64,
    errors: BTreeMap<&'static str, u64>,
    latency_us: Histogram,
    batch: Histogram,
}

/// Deployment name in telemetry for requests no deployment took.
pub const UNROUTED: &str = "unrouted";

/// The live counters of one series.
#[derive(Debug)]
pub(crate) struct Series {
    counts: Mutex<Counts>,
    queue_depth: AtomicI64,
    in_flight: AtomicI64,
    /// Deepest the queue got since the last window.
    window_max_queue: AtomicU64,
}

/// Which gauge a [`GaugeGuard`] holds up.
#[derive(Debug, Clone, Copy)]
enum Gauge {
    Queued,
    Running,
}

/// Holds a gauge one higher until dropped (also when the request is cancelled).
#[derive(Debug)]
pub(crate) struct GaugeGuard {
    series: Arc<Series>,
    gauge: Gauge,
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.series
            .gauge(self.gauge)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Series {
    fn new() -> Self {
        Self {
            counts: Mutex::new(Counts {
                requests: BTreeMap::new(),
                errors: BTreeMap::new(),
                latency: HistogramSnapshot::new(&LATENCY_BOUNDS),
                batch: HistogramSnapshot::new(&BATCH_BOUNDS),
                mirror_results: BTreeMap::new(),
                window: WindowCounts::default(),
            }),
            queue_depth: AtomicI64::new(0),
            in_flight: AtomicI64::new(0),
            window_max_queue: AtomicU64::new(0),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gauge(&self, g: Gauge) -> &AtomicI64 {
        match g {
            Gauge::Queued => &self.queue_depth,
            Gauge::Running => &self.in_flight,
        }
    }

    /// Records one answered request.
    pub(crate) fn record(&self, code: u16, error: Option<&'static str>, latency: Duration) {
        let mut c = self.counts();
        *c.requests.entry(code).or_default() += 1;
        if let Some(kind) = error {
            *c.errors.entry(kind).or_default() += 1;
        }
        c.latency.observe(latency.as_secs_f64());
        c.window.requests += 1;
        if let Some(kind) = error {
            *c.window.errors.entry(kind).or_default() += 1;
        }
        c.window
            .latency_us
            .record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one execution of `size` requests.
    pub(crate) fn record_batch(&self, size: usize) {
        let mut c = self.counts();
        c.batch.observe(size as f64);
        c.window.batch.record(size as u64);
    }

    /// Records a mirror outcome.
    pub(crate) fn record_mirror(&self, result: &'static str) {
        *self.counts().mirror_results.entry(result).or_default() += 1;
    }

    /// Counts one request as waiting until the guard drops.
    pub(crate) fn queued(self: &Arc<Self>) -> GaugeGuard {
        self.guard(Gauge::Queued)
    }

    /// Counts one execution as running until the guard drops.
    pub(crate) fn running(self: &Arc<Self>) -> GaugeGuard {
        self.guard(Gauge::Running)
    }

    fn guard(self: &Arc<Self>, gauge: Gauge) -> GaugeGuard {
        let now = self.gauge(gauge).fetch_add(1, Ordering::Relaxed) + 1;
        if let Gauge::Queued = gauge {
            self.window_max_queue
                .fetch_max(u64::try_from(now).unwrap_or(0), Ordering::Relaxed);
        }
        GaugeGuard {
            series: Arc::clone(self),
            gauge,
        }
    }
}

/// Every series of a server.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    series: Mutex<BTreeMap<(String, String, bool), Arc<Series>>>,
    unknown_model: AtomicU64,
}

impl Metrics {
    /// The series of `endpoint`/`deployment` (mirrored traffic when `mirror`),
    /// created on first use.
    pub(crate) fn series(&self, endpoint: &str, deployment: &str, mirror: bool) -> Arc<Series> {
        let mut map = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            map.entry((endpoint.to_owned(), deployment.to_owned(), mirror))
                .or_insert_with(|| Arc::new(Series::new())),
        )
    }

    /// Counts a request for an endpoint not served here.
    pub(crate) fn unknown_model(&self) {
        self.unknown_model.fetch_add(1, Ordering::Relaxed);
    }

    /// Every series now.
    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let map = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let series = map
            .iter()
            .map(|((endpoint, deployment, mirror), s)| {
                let c = s.counts();
                SeriesSnapshot {
                    endpoint: endpoint.clone(),
                    deployment: deployment.clone(),
                    mirror: *mirror,
                    requests: c.requests.clone(),
                    errors: c
                        .errors
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), *v))
                        .collect(),
                    latency_seconds: c.latency.clone(),
                    batch_size: c.batch.clone(),
                    mirror_results: c
                        .mirror_results
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), *v))
                        .collect(),
                    queue_depth: s.queue_depth.load(Ordering::Relaxed),
                    in_flight: s.in_flight.load(Ordering::Relaxed),
                }
            })
            .collect();
        MetricsSnapshot {
            series,
            unknown_model_requests: self.unknown_model.load(Ordering::Relaxed),
        }
    }
}

impl Metrics {
    /// Per endpoint and deployment, what happened since the last call (the
    /// first call: since start), and starts the next window. Mirror series
    /// count as `mirror_requests`/`mirror_errors` of their deployment.
    /// Series with nothing to report are left out.
    pub(crate) fn take_window(&self) -> Vec<EndpointStats> {
        let map = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: BTreeMap<(String, String), EndpointStats> = BTreeMap::new();
        for ((endpoint, deployment, mirror), s) in map.iter() {
            let w = std::mem::take(&mut s.counts().window);
            let depth = u64::try_from(s.queue_depth.load(Ordering::Relaxed)).unwrap_or(0);
            let max_queue = s.window_max_queue.swap(depth, Ordering::Relaxed);
            if w.requests == 0 && w.batch.is_empty() && max_queue == 0 {
                continue;
            }
            let deployment = if deployment.is_empty() {
                UNROUTED
            } else {
                deployment.as_str()
            };
            let stats = out
                .entry((endpoint.clone(), deployment.to_owned()))
                .or_insert_with(|| EndpointStats::new(endpoint.as_str(), deployment));
            if *mirror {
                stats.mirror_requests += w.requests;
                stats.mirror_errors += w.errors.values().sum::<u64>();
            } else {
                stats.requests += w.requests;
                for (kind, n) in w.errors {
                    *stats.errors.entry(kind.to_owned()).or_default() += n;
                }
                stats.latency_us.merge(&w.latency_us);
                stats.batch_sizes.merge(&w.batch);
                stats.max_queue_depth = stats.max_queue_depth.max(max_queue);
            }
        }
        out.into_values().collect()
    }
}

impl MetricsSnapshot {
    /// Prometheus text exposition format (version 0.0.4).
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        let labels = |s: &SeriesSnapshot| {
            format!(
                "endpoint=\"{}\",deployment=\"{}\",mirror=\"{}\"",
                escape(&s.endpoint),
                escape(&s.deployment),
                s.mirror
            )
        };
        family(
            &mut out,
            "requests_total",
            "counter",
            "Scoring requests answered, by HTTP status code.",
        );
        for s in &self.series {
            for (code, n) in &s.requests {
                let _ = writeln!(
                    out,
                    "flotilla_agent_requests_total{{{},code=\"{code}\"}} {n}",
                    labels(s)
                );
            }
        }
        family(
            &mut out,
            "errors_total",
            "counter",
            "Failed scoring requests, by kind.",
        );
        for s in &self.series {
            for (kind, n) in &s.errors {
                let _ = writeln!(
                    out,
                    "flotilla_agent_errors_total{{{},kind=\"{}\"}} {n}",
                    labels(s),
                    escape(kind)
                );
            }
        }
        family(
            &mut out,
            "request_duration_seconds",
            "histogram",
            "Scoring request latency from routing to the response body.",
        );
        for s in &self.series {
            histogram(
                &mut out,
                "request_duration_seconds",
                &labels(s),
                &s.latency_seconds,
            );
        }
        family(
            &mut out,
            "batch_size",
            "histogram",
            "Requests per model execution.",
        );
        for s in &self.series {
            histogram(&mut out, "batch_size", &labels(s), &s.batch_size);
        }
        family(
            &mut out,
            "queue_depth",
            "gauge",
            "Requests waiting for an execution slot.",
        );
        for s in &self.series {
            let _ = writeln!(
                out,
                "flotilla_agent_queue_depth{{{}}} {}",
                labels(s),
                s.queue_depth
            );
        }
        family(&mut out, "in_flight", "gauge", "Model executions running.");
        for s in &self.series {
            let _ = writeln!(
                out,
                "flotilla_agent_in_flight{{{}}} {}",
                labels(s),
                s.in_flight
            );
        }
        family(
            &mut out,
            "mirror_results_total",
            "counter",
            "Outcomes of mirrored requests (ok, error, invalid, dropped).",
        );
        for s in &self.series {
            for (result, n) in &s.mirror_results {
                let _ = writeln!(
                    out,
                    "flotilla_agent_mirror_results_total{{{},result=\"{}\"}} {n}",
                    labels(s),
                    escape(result)
                );
            }
        }
        family(
            &mut out,
            "unknown_model_requests_total",
            "counter",
            "Requests for a model that is not served here.",
        );
        let _ = writeln!(
            out,
            "flotilla_agent_unknown_model_requests_total {}",
            self.unknown_model_requests
        );
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP flotilla_agent_{name} {help}");
    let _ = writeln!(out, "# TYPE flotilla_agent_{name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    let mut cumulative = 0u64;
    for (i, count) in h.counts.iter().enumerate() {
        cumulative += count;
        let le = h
            .bounds
            .get(i)
            .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
        let _ = writeln!(
            out,
            "flotilla_agent_{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(out, "flotilla_agent_{name}_sum{{{labels}}} {}", h.sum);
    let _ = writeln!(out, "flotilla_agent_{name}_count{{{labels}}} {}", h.count);
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_merge_by_adding_bucket_counts() {
        let mut a = HistogramSnapshot::new(&LATENCY_BOUNDS);
        let mut b = HistogramSnapshot::new(&LATENCY_BOUNDS);
        a.observe(0.000_1);
        b.observe(0.003);
        b.observe(100.0);
        assert!(a.merge(&b));
        assert_eq!(a.count, 3);
        assert_eq!(a.counts[0], 1);
        assert_eq!(a.counts[3], 1);
        assert_eq!(a.counts[LATENCY_BOUNDS.len()], 1);
        assert!(!a.merge(&HistogramSnapshot::new(&BATCH_BOUNDS)));
    }

    #[test]
    fn the_text_format_has_cumulative_buckets_and_escaped_labels() {
        let m = Metrics::default();
        let s = m.series("fr\"aud", "blue", false);
        s.record(200, None, Duration::from_millis(3));
        s.record(400, Some("invalid_input"), Duration::from_millis(30));
        let text = m.snapshot().prometheus_text();
        let l = "endpoint=\"fr\\\"aud\",deployment=\"blue\",mirror=\"false\"";
        assert!(text.contains(&format!(
            "flotilla_agent_requests_total{{{l},code=\"200\"}} 1"
        )));
        assert!(text.contains(&format!(
            "flotilla_agent_errors_total{{{l},kind=\"invalid_input\"}} 1"
        )));
        assert!(text.contains(&format!(
            "flotilla_agent_request_duration_seconds_bucket{{{l},le=\"0.005\"}} 1"
        )));
        assert!(text.contains(&format!(
            "flotilla_agent_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} 2"
        )));
    }

    #[test]
    fn windows_hold_what_happened_since_the_last_one() {
        let m = Metrics::default();
        let s = m.series("fraud", "blue", false);
        let shadow = m.series("fraud", "green", true);
        let q1 = s.queued();
        let q2 = s.queued();
        drop((q1, q2));
        s.record(200, None, Duration::from_micros(300));
        s.record(500, Some("runtime"), Duration::from_millis(2));
        s.record_batch(4);
        shadow.record(200, None, Duration::from_millis(1));
        shadow.record(500, Some("runtime"), Duration::from_millis(1));
        m.series("fraud", "", false)
            .record(404, Some("unknown_version"), Duration::from_micros(5));
        let w = m.take_window();
        assert_eq!(w.len(), 3, "{w:?}");
        let blue = w.iter().find(|e| e.deployment == "blue").unwrap();
        assert_eq!(blue.requests, 2);
        assert_eq!(blue.errors.get("runtime"), Some(&1));
        assert_eq!(blue.latency_us.count(), 2);
        assert_eq!(blue.batch_sizes.count(), 1);
        assert_eq!(blue.max_queue_depth, 2);
        let green = w.iter().find(|e| e.deployment == "green").unwrap();
        assert_eq!(
            (green.requests, green.mirror_requests, green.mirror_errors),
            (0, 2, 1)
        );
        assert!(w.iter().any(|e| e.deployment == UNROUTED));
        // The next window starts from zero; the cumulative counts do not.
        s.record(200, None, Duration::from_micros(100));
        let w = m.take_window();
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].requests, w[0].max_queue_depth), (1, 0));
        assert_eq!(
            m.snapshot()
                .series
                .iter()
                .find(|x| x.deployment == "blue")
                .unwrap()
                .latency_seconds
                .count,
            3
        );
    }

    #[test]
    fn gauges_fall_back_when_their_guards_drop() {
        let m = Metrics::default();
        let s = m.series("e", "d", false);
        let q = s.queued();
        let r = s.running();
        assert_eq!(m.snapshot().series[0].queue_depth, 1);
        drop((q, r));
        let snap = m.snapshot();
        assert_eq!(
            (snap.series[0].queue_depth, snap.series[0].in_flight),
            (0, 0)
        );
    }
}
