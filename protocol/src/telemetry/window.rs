//! [`TelemetryWindow`]: what an agent publishes per window, and how two
//! windows merge into one coarser window.
//!
//! A window carries, for one device and one stretch of time, per endpoint and
//! deployment the request counters, a latency histogram, the deepest queue and
//! the batch sizes; the node's system gauges; the agent's own state; and per
//! deployment the drift counts of every input and output feature over its
//! bundle's baseline bins (the bundle named by its target path, so the hub
//! looks the baseline up itself).
//!
//! Every window is numbered by the agent's outbox: `first_seq..=last_seq` in
//! the seq space of one outbox `epoch`. A window as produced covers one
//! number; a window the outbox compacted covers the range of the windows it
//! was merged from, and `span_count` says how many there were. Merging adds
//! counters and histograms, keeps the maximum of high-water gauges and the
//! later window's system and agent snapshot; it loses only time resolution.
//!
//! This module does not number, publish or store windows: see
//! [`super::outbox`] and [`super::dedupe`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::drift::{FeatureCounts, ObservedFeature};
use super::histogram::Histogram;
use super::{codec, TelemetryError, TELEMETRY_SCHEMA_VERSION};
use crate::limits::Limits;
use crate::time::UtcTime;
use crate::wire::DeploymentStatus;

mod validate;

/// One device's telemetry for one window (or a merged run of windows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryWindow {
    /// Always [`TELEMETRY_SCHEMA_VERSION`] for windows this code accepts.
    pub schema_version: u32,
    /// Device id, as in its certificate and its topics.
    pub device: String,
    /// The outbox that numbered this window: picked at random when the agent
    /// creates its outbox, so that a wiped or reinstalled agent, which
    /// numbers from 1 again, is not mistaken for duplicates of its past.
    pub epoch: u64,
    /// Sequence number of the first window this one covers.
    // invariant: 1 <= first_seq <= last_seq.
    pub first_seq: u64,
    /// Sequence number of the last window this one covers.
    pub last_seq: u64,
    /// How many windows were merged into this one: 1 as produced. Less than
    /// the width of the range when the outbox dropped windows in between.
    // invariant: 1 <= span_count <= last_seq - first_seq + 1.
    pub span_count: u64,
    /// Start of the window (the agent's clock).
    pub start: UtcTime,
    /// End of the window.
    // invariant: start <= end.
    pub end: UtcTime,
    /// Per endpoint and deployment request statistics.
    // invariant: (endpoint, deployment) unique.
    pub endpoints: Vec<EndpointStats>,
    /// The node at the end of the window.
    pub system: SystemStats,
    /// The agent at the end of the window.
    pub agent: AgentStats,
    /// Per endpoint, deployment and bundle, the drift counts.
    // invariant: (endpoint, deployment, target) unique.
    pub drift: Vec<DriftObservation>,
}

/// Requests to one deployment of one endpoint during the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// Endpoint name.
    pub endpoint: String,
    /// Deployment name within the endpoint.
    pub deployment: String,
    /// Requests served (mirror copies excluded).
    pub requests: u64,
    /// Failed requests by kind (`bad_input`, `runtime`, `overloaded` …).
    pub errors: BTreeMap<String, u64>,
    /// Request latency, in microseconds.
    pub latency_us: Histogram,
    /// Deepest the request queue got (a high-water gauge).
    pub max_queue_depth: u64,
    /// Rows per executed batch.
    pub batch_sizes: Histogram,
    /// Mirror copies of requests sent to this deployment.
    pub mirror_requests: u64,
    /// Mirror copies that failed.
    pub mirror_errors: u64,
}

/// The node's resources, as sampled at the end of the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemStats {
    /// CPU use over all cores, in percent (0–100).
    pub cpu_percent: f64,
    /// Memory in use, in bytes.
    pub memory_used_bytes: u64,
    /// Physical memory, in bytes.
    pub memory_total_bytes: u64,
    /// Disk space in use on the agent's data volume, in bytes.
    pub disk_used_bytes: u64,
    /// Size of the agent's data volume, in bytes.
    pub disk_total_bytes: u64,
    /// One-minute load average.
    pub load1: f64,
    /// Temperature per sensor, in degrees Celsius, where the node reports them.
    pub temperatures_c: BTreeMap<String, f64>,
    /// Accelerators, where the node reports them.
    pub accelerators: Vec<AcceleratorStats>,
}

/// One accelerator's state; each field only where the driver reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceleratorStats {
    /// Name as the driver reports it (`NVIDIA H200`).
    pub name: String,
    /// Compute use, in percent.
    pub utilization_percent: Option<f64>,
    /// Device memory in use, in bytes.
    pub memory_used_bytes: Option<u64>,
    /// Device memory, in bytes.
    pub memory_total_bytes: Option<u64>,
    /// Temperature, in degrees Celsius.
    pub temperature_c: Option<f64>,
}

/// The agent itself, at the end of the window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStats {
    /// Agent version (semver).
    pub version: String,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// Where the agent's sync with the hub stands (`connected`, `syncing`,
    /// `offline` …), free-form for display.
    pub sync_state: String,
    /// Every deployment's activation state, as on the control stream.
    pub activations: Vec<DeploymentStatus>,
    /// Windows the outbox has dropped since it was created (a counter: it
    /// only grows within one epoch). Non-zero means telemetry was lost.
    pub outbox_dropped: u64,
}

/// Drift counts of one deployment's features over its bundle's baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftObservation {
    /// Endpoint name.
    pub endpoint: String,
    /// Deployment name within the endpoint.
    pub deployment: String,
    /// TUF target path of the bundle manifest whose drift baseline the
    /// counts are binned over.
    pub target: String,
    /// Input features.
    // invariant: names unique.
    pub inputs: Vec<ObservedFeature>,
    /// Output features.
    // invariant: names unique.
    pub outputs: Vec<ObservedFeature>,
}

/// What identifies a window for deduplication: its device, outbox epoch and
/// sequence range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowKey<'a> {
    /// Device id.
    pub device: &'a str,
    /// Outbox epoch.
    pub epoch: u64,
    /// First sequence number covered.
    pub first_seq: u64,
    /// Last sequence number covered.
    pub last_seq: u64,
}

/// Two windows that cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// They come from different devices or different outbox epochs.
    #[error("windows of {left}/{left_epoch} and {right}/{right_epoch} cannot merge")]
    DifferentSource {
        /// Device of the receiving window.
        left: String,
        /// Its epoch.
        left_epoch: u64,
        /// Device of the other window.
        right: String,
        /// Its epoch.
        right_epoch: u64,
    },
    /// Their sequence ranges overlap: one would be counted twice.
    #[error("sequence ranges {left:?} and {right:?} overlap")]
    Overlap {
        /// Range of the receiving window.
        left: (u64, u64),
        /// Range of the other window.
        right: (u64, u64),
    },
    /// Drift counts of one feature have different shapes in the two windows.
    #[error("drift counts of {target} feature {feature:?} have different shapes")]
    DriftShape {
        /// Target path of the bundle.
        target: String,
        /// The feature.
        feature: String,
    },
}

impl EndpointStats {
    /// Empty statistics for `deployment` of `endpoint`.
    pub fn new(endpoint: impl Into<String>, deployment: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            deployment: deployment.into(),
            requests: 0,
            errors: BTreeMap::new(),
            latency_us: Histogram::new(),
            max_queue_depth: 0,
            batch_sizes: Histogram::new(),
            mirror_requests: 0,
            mirror_errors: 0,
        }
    }

    /// Failed requests of every kind.
    pub fn errors_total(&self) -> u64 {
        self.errors.values().fold(0, |a, b| a.saturating_add(*b))
    }

    /// Adds `other`'s counts: counters add, histograms merge, the queue
    /// high-water mark takes the maximum.
    pub fn merge(&mut self, other: &EndpointStats) {
        self.requests = self.requests.saturating_add(other.requests);
        for (kind, n) in &other.errors {
            let e = self.errors.entry(kind.clone()).or_insert(0);
            *e = e.saturating_add(*n);
        }
        self.latency_us.merge(&other.latency_us);
        self.max_queue_depth = self.max_queue_depth.max(other.max_queue_depth);
        self.batch_sizes.merge(&other.batch_sizes);
        self.mirror_requests = self.mirror_requests.saturating_add(other.mirror_requests);
        self.mirror_errors = self.mirror_errors.saturating_add(other.mirror_errors);
    }

    fn key(&self) -> (&str, &str) {
        (&self.endpoint, &self.deployment)
    }
}

impl DriftObservation {
    fn key(&self) -> (&str, &str, &str) {
        (&self.endpoint, &self.deployment, &self.target)
    }

    /// Adds `other`'s counts feature by feature (by name); features only in
    /// `other` are appended. Fails, leaving `self` unchanged, when a feature
    /// has another shape.
    fn merge(&mut self, other: &DriftObservation) -> Result<(), MergeError> {
        for (mine, theirs) in [
            (&self.inputs, &other.inputs),
            (&self.outputs, &other.outputs),
        ] {
            for f in theirs {
                if let Some(m) = mine.iter().find(|m| m.name == f.name) {
                    if !m.counts.same_shape(&f.counts) {
                        return Err(MergeError::DriftShape {
                            target: self.target.clone(),
                            feature: f.name.clone(),
                        });
                    }
                }
            }
        }
        for (mine, theirs) in [
            (&mut self.inputs, &other.inputs),
            (&mut self.outputs, &other.outputs),
        ] {
            for f in theirs {
                match mine.iter_mut().find(|m| m.name == f.name) {
                    // Shapes were checked above.
                    Some(m) => {
                        m.counts.merge(&f.counts);
                    }
                    None => mine.push(f.clone()),
                }
            }
        }
        Ok(())
    }
}

impl TelemetryWindow {
    /// An empty window of `device` from `start` to `end`, not yet numbered
    /// (the outbox numbers it when it is pushed).
    pub fn new(device: impl Into<String>, start: UtcTime, end: UtcTime) -> Self {
        Self {
            schema_version: TELEMETRY_SCHEMA_VERSION,
            device: device.into(),
            epoch: 0,
            first_seq: 0,
            last_seq: 0,
            span_count: 1,
            start,
            end,
            endpoints: Vec::new(),
            system: SystemStats::default(),
            agent: AgentStats::default(),
            drift: Vec::new(),
        }
    }

    /// The deduplication key.
    pub fn key(&self) -> WindowKey<'_> {
        WindowKey {
            device: &self.device,
            epoch: self.epoch,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
        }
    }

    /// Encodes to CBOR.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes CBOR and validates it against `limits`.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, TelemetryError> {
        let w: Self = codec::decode("telemetry window", bytes, limits.max_telemetry_bytes)?;
        w.validate(limits)?;
        Ok(w)
    }

    /// Merges `other` into this window: see [`TelemetryWindow::merged`].
    /// On error `self` is unchanged.
    pub fn merge(&mut self, other: &TelemetryWindow) -> Result<(), MergeError> {
        *self = self.merged(other)?;
        Ok(())
    }

    /// The window covering both `self` and `other`, which must come from the
    /// same device and epoch and cover disjoint sequence ranges (in either
    /// order; the result does not depend on it). The range, times and span
    /// count cover both; counters add; histograms and drift counts merge;
    /// high-water gauges take the maximum; system and agent stats are the
    /// later window's (the one with the higher sequence numbers), except the
    /// outbox drop counter, which takes the maximum.
    ///
    /// The result can exceed limits the parts respected (the union of their
    /// endpoints, error kinds, features): validate it before sending it.
    pub fn merged(&self, other: &TelemetryWindow) -> Result<TelemetryWindow, MergeError> {
        if self.device != other.device || self.epoch != other.epoch {
            return Err(MergeError::DifferentSource {
                left: self.device.clone(),
                left_epoch: self.epoch,
                right: other.device.clone(),
                right_epoch: other.epoch,
            });
        }
        let (older, newer) = if self.last_seq < other.first_seq {
            (self, other)
        } else if other.last_seq < self.first_seq {
            (other, self)
        } else {
            return Err(MergeError::Overlap {
                left: (self.first_seq, self.last_seq),
                right: (other.first_seq, other.last_seq),
            });
        };
        let mut out = older.clone();
        out.last_seq = newer.last_seq;
        out.span_count = older.span_count.saturating_add(newer.span_count);
        out.start = older.start.min(newer.start);
        out.end = older.end.max(newer.end);
        for e in &newer.endpoints {
            match out.endpoints.iter_mut().find(|o| o.key() == e.key()) {
                Some(o) => o.merge(e),
                None => out.endpoints.push(e.clone()),
            }
        }
        out.system = newer.system.clone();
        out.agent = AgentStats {
            outbox_dropped: older.agent.outbox_dropped.max(newer.agent.outbox_dropped),
            ..newer.agent.clone()
        };
        for d in &newer.drift {
            match out.drift.iter_mut().find(|o| o.key() == d.key()) {
                Some(o) => o.merge(d)?,
                None => out.drift.push(d.clone()),
            }
        }
        Ok(out)
    }

    /// Requests over every endpoint and deployment.
    pub fn requests_total(&self) -> u64 {
        self.endpoints
            .iter()
            .fold(0, |a, e| a.saturating_add(e.requests))
    }

    /// Drift counts of one feature, if the window has them.
    pub fn drift_counts(
        &self,
        endpoint: &str,
        deployment: &str,
        feature: &str,
    ) -> Option<&FeatureCounts> {
        self.drift
            .iter()
            .filter(|d| d.endpoint == endpoint && d.deployment == deployment)
            .flat_map(|d| d.inputs.iter().chain(&d.outputs))
            .find(|f| f.name == feature)
            .map(|f| &f.counts)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::telemetry::drift::FeatureCounts;
    use crate::wire::DeploymentState;
    use proptest::prelude::*;

    /// A window with one endpoint, `requests` requests of latency `latency_us`,
    /// one error, and drift counts over two bins.
    pub(crate) fn sample(seq: u64, requests: u64, latency_us: u64) -> TelemetryWindow {
        let mut w = TelemetryWindow::new(
            "dev-1",
            UtcTime(1_700_000_000 + 10 * seq as i64),
            UtcTime(1_700_000_010 + 10 * seq as i64),
        );
        w.epoch = 42;
        w.first_seq = seq;
        w.last_seq = seq;
        let mut e = EndpointStats::new("fraud", "blue");
        e.requests = requests;
        e.errors.insert("runtime".into(), 1);
        e.latency_us.record_n(latency_us, requests);
        e.batch_sizes.record_n(8, requests / 8 + 1);
        e.max_queue_depth = seq;
        w.endpoints.push(e);
        w.system = SystemStats {
            cpu_percent: 12.5,
            memory_used_bytes: seq,
            memory_total_bytes: 1 << 30,
            load1: 0.5,
            temperatures_c: [("cpu".to_string(), 51.0)].into(),
            ..SystemStats::default()
        };
        w.agent = AgentStats {
            version: "0.1.0".into(),
            uptime_secs: 10 * seq,
            sync_state: "connected".into(),
            activations: vec![DeploymentStatus {
                endpoint: "fraud".into(),
                deployment: "blue".into(),
                target: "models/fraud/3/manifest.cbor".into(),
                state: DeploymentState::Active,
                active: Some("models/fraud/3/manifest.cbor".into()),
                director_version: 1,
                since: UtcTime(1_700_000_000),
            }],
            outbox_dropped: 0,
        };
        w.drift.push(DriftObservation {
            endpoint: "fraud".into(),
            deployment: "blue".into(),
            target: "models/fraud/3/manifest.cbor".into(),
            inputs: vec![ObservedFeature {
                name: "amount".into(),
                counts: FeatureCounts::Numeric {
                    bins: vec![requests / 2, requests - requests / 2],
                    below: 0,
                    above: 0,
                    missing: 0,
                },
            }],
            outputs: vec![],
        });
        w
    }

    #[test]
    fn a_window_round_trips_through_cbor() {
        let w = sample(3, 100, 2_000);
        let bytes = w.encode();
        assert_eq!(TelemetryWindow::decode(&bytes, &Limits::default()), Ok(w));
    }

    #[test]
    fn the_schema_version_comes_first_and_a_future_one_is_refused() {
        let mut w = sample(1, 1, 1);
        // CBOR map header, then the text key "schema_version".
        assert_eq!(&w.encode()[1..16], b"\x6eschema_version");
        w.schema_version = 2;
        assert_eq!(
            TelemetryWindow::decode(&w.encode(), &Limits::default()),
            Err(TelemetryError::UnsupportedSchema {
                what: "telemetry window",
                version: 2
            })
        );
    }

    #[test]
    fn limits_and_invariants_are_enforced_on_decode() {
        let limits = Limits::default();
        let refused = |w: &TelemetryWindow, limits: &Limits| {
            TelemetryWindow::decode(&w.encode(), limits).is_err()
        };
        let w = sample(5, 10, 10);
        assert!(!refused(&w, &limits));
        assert!(refused(
            &w,
            &Limits {
                max_telemetry_bytes: 100,
                ..limits
            }
        ));
        assert!(refused(
            &w,
            &Limits {
                max_window_series: 0,
                ..limits
            }
        ));
        assert!(refused(
            &w,
            &Limits {
                max_feature_bins: 1,
                ..limits
            }
        ));
        let mut bad = w.clone();
        bad.first_seq = 0;
        assert!(refused(&bad, &limits));
        let mut bad = w.clone();
        bad.span_count = 2;
        assert!(
            refused(&bad, &limits),
            "two windows cannot cover one number"
        );
        let mut bad = w.clone();
        bad.endpoints.push(bad.endpoints[0].clone());
        assert!(refused(&bad, &limits), "duplicate endpoint");
        let mut bad = w.clone();
        bad.device = "dev/1".into();
        assert!(refused(&bad, &limits), "device id with a topic separator");
        let mut bad = w.clone();
        bad.system.cpu_percent = f64::NAN;
        assert!(refused(&bad, &limits));
        let mut bad = w.clone();
        bad.end = UtcTime(0);
        assert!(refused(&bad, &limits));
        let mut bad = w;
        let dup = bad.drift[0].inputs[0].clone();
        bad.drift[0].inputs.push(dup);
        assert!(refused(&bad, &limits), "duplicate feature");
    }

    #[test]
    fn merging_adds_counters_merges_histograms_and_keeps_the_later_snapshot() {
        let (a, b) = (sample(1, 10, 1_000), sample(2, 30, 50_000));
        let m = a.merged(&b).unwrap();
        assert_eq!(m, b.merged(&a).unwrap(), "order does not matter");
        assert_eq!((m.first_seq, m.last_seq, m.span_count), (1, 2, 2));
        assert_eq!((m.start, m.end), (a.start, b.end));
        let e = &m.endpoints[0];
        assert_eq!(e.requests, 40);
        assert_eq!(e.errors_total(), 2);
        assert_eq!(e.latency_us.count(), 40);
        assert_eq!(e.max_queue_depth, 2);
        assert_eq!(m.system, b.system);
        assert_eq!(m.agent, b.agent);
        let FeatureCounts::Numeric { bins, .. } =
            m.drift_counts("fraud", "blue", "amount").unwrap()
        else {
            panic!("numeric counts expected")
        };
        assert_eq!(bins, &vec![20, 20]);
        assert_eq!(
            TelemetryWindow::decode(&m.encode(), &Limits::default()),
            Ok(m)
        );
    }

    #[test]
    fn windows_that_overlap_or_differ_in_source_do_not_merge() {
        let a = sample(1, 1, 1);
        assert!(matches!(a.merged(&a), Err(MergeError::Overlap { .. })));
        let mut other = sample(2, 1, 1);
        other.device = "dev-2".into();
        assert!(matches!(
            a.merged(&other),
            Err(MergeError::DifferentSource { .. })
        ));
        let mut other = sample(2, 1, 1);
        other.epoch = 7;
        assert!(a.merged(&other).is_err());
        let mut reshaped = sample(2, 1, 1);
        reshaped.drift[0].inputs[0].counts = FeatureCounts::Numeric {
            bins: vec![1],
            below: 0,
            above: 0,
            missing: 0,
        };
        let mut kept = a.clone();
        assert!(matches!(
            kept.merge(&reshaped),
            Err(MergeError::DriftShape { .. })
        ));
        assert_eq!(kept, a, "a failed merge leaves the window unchanged");
    }

    #[test]
    fn new_endpoints_and_features_are_added_by_a_merge() {
        let a = sample(1, 4, 1);
        let mut b = sample(2, 4, 1);
        b.endpoints[0].deployment = "green".into();
        b.drift[0].inputs[0].name = "age".into();
        let m = a.merged(&b).unwrap();
        assert_eq!(m.endpoints.len(), 2);
        assert_eq!(m.drift[0].inputs.len(), 2);
        assert_eq!(m.requests_total(), 8);
    }

    proptest! {
        #[test]
        fn merging_any_split_of_windows_keeps_every_count(
            requests in proptest::collection::vec(0u64..1_000, 2..12),
            split in 1usize..11,
        ) {
            let windows: Vec<TelemetryWindow> = requests
                .iter()
                .enumerate()
                .map(|(i, r)| sample(i as u64 + 1, *r, 100 * (i as u64 + 1)))
                .collect();
            let split = split.min(windows.len() - 1);
            let fold = |ws: &[TelemetryWindow]| {
                let mut acc = ws[0].clone();
                for w in &ws[1..] {
                    acc.merge(w).unwrap();
                }
                acc
            };
            let left = fold(&windows[..split]);
            let right = fold(&windows[split..]);
            let all = fold(&windows);
            prop_assert_eq!(left.merged(&right).unwrap(), all.clone());
            prop_assert_eq!(all.requests_total(), requests.iter().sum::<u64>());
            prop_assert_eq!(all.span_count, requests.len() as u64);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = TelemetryWindow::decode(&bytes, &Limits::default());
        }
    }
}
