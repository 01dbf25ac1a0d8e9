//! API bodies of the hub's telemetry side: events, webhooks, alert rules and
//! alerts, device metrics and drift reports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A stored lifecycle event (`GET /api/v1/events`, the SSE stream, webhook
/// bodies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventRecord {
    /// Increasing id, assigned when the hub stored the event; receivers
    /// deduplicate redeliveries by it.
    pub id: u64,
    /// Event type (`model.registered`, `drift.detected` …).
    #[serde(rename = "type")]
    pub kind: String,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// What it concerns (`device/dev-1`, `model/fraud/3`).
    pub object: String,
    /// Who or what caused it.
    pub actor: String,
    /// Event-specific details.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// `POST /api/v1/webhooks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where to POST events (`http://` or `https://`).
    pub url: String,
    /// Event types to deliver; empty: every type.
    #[serde(default)]
    pub events: Vec<String>,
    /// HMAC-SHA256 key for `X-Flotilla-Signature`; the hub generates one (and
    /// returns it once) when absent.
    #[serde(default)]
    pub secret: Option<String>,
}

/// A webhook as the API shows it (never with its secret, except once in the
/// answer to its creation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    /// Id (`wh-…`).
    pub id: String,
    /// Target URL.
    pub url: String,
    /// Event types delivered; empty: all.
    pub events: Vec<String>,
    /// When created.
    pub created_at: String,
    /// Who created it.
    pub created_by: String,
    /// Id of the last event this webhook is done with (delivered or given up).
    pub cursor: u64,
    /// The signing secret: only in the answer to `POST /api/v1/webhooks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// One delivery attempt of one event to one webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// The event.
    pub event_id: u64,
    /// The event's type.
    pub event_type: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// HTTP status the receiver answered, if it answered.
    pub status: Option<u16>,
    /// Transport error, if it did not.
    pub error: Option<String>,
    /// `delivered`, `retrying` (another attempt follows) or `gave_up`.
    pub outcome: String,
    /// When the attempt ended.
    pub time: String,
}

/// What an alert rule measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertMetric {
    /// Largest PSI over the input features of a deployment, against its
    /// bundle's drift baseline, over at least `min_samples` rows.
    Psi,
    /// Failed requests over requests (0–1), over at least `min_samples` requests.
    ErrorRate,
    /// 99th percentile latency in milliseconds, over at least `min_samples` requests.
    P99Ms,
    /// The 99th percentile latency over the endpoint's `objective_p99_ms`
    /// (above 1: slower than the objective), over at least `min_samples`
    /// requests. Endpoints without an objective are never judged.
    P99OverObjective,
    /// Seconds since an offline device was last heard from (QUIC or MQTT).
    DeviceOfflineSecs,
}

/// How a value is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum AlertCondition {
    /// Above.
    #[serde(rename = ">")]
    Above,
    /// At or above.
    #[serde(rename = ">=")]
    AtLeast,
    /// Below.
    #[serde(rename = "<")]
    Below,
    /// At or below.
    #[serde(rename = "<=")]
    AtMost,
}

impl AlertCondition {
    /// Whether `value` breaches `threshold`.
    pub fn breached(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Above => value > threshold,
            Self::AtLeast => value >= threshold,
            Self::Below => value < threshold,
            Self::AtMost => value <= threshold,
        }
    }

    /// `>`, `>=` …
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Above => ">",
            Self::AtLeast => ">=",
            Self::Below => "<",
            Self::AtMost => "<=",
        }
    }
}

/// Which telemetry a rule looks at; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertScope {
    /// Only this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Only this deployment (of any endpoint unless `endpoint` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// Only this device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Only devices carrying all these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// An alert rule (`[[alerts]]` in the config, or `POST /api/v1/alerts/rules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Unique name.
    pub name: String,
    /// What is measured.
    pub metric: AlertMetric,
    /// Which telemetry.
    #[serde(default)]
    pub scope: AlertScope,
    /// Comparison with `threshold` (default `>`).
    #[serde(default = "default_condition")]
    pub condition: AlertCondition,
    /// The threshold.
    pub threshold: f64,
    /// Consecutive breaching evaluations before the alert fires (default 1).
    /// One evaluation covers at least `min_samples` rows or requests, so
    /// several quiet windows may make one.
    #[serde(default = "default_for_windows")]
    pub for_windows: u32,
    /// Rows (psi) or requests (error_rate, p99_ms, p99_over_objective) one
    /// evaluation needs; default 300 for psi, 100 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    /// Judge each device apart (default: the fleet together, per endpoint and
    /// deployment).
    #[serde(default)]
    pub per_device: bool,
}

fn default_condition() -> AlertCondition {
    AlertCondition::Above
}

fn default_for_windows() -> u32 {
    1
}

/// A rule and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertRuleView {
    /// The rule.
    #[serde(flatten)]
    pub rule: AlertRule,
    /// `default` (built in), `config` (`[[alerts]]`) or `api`; only `api`
    /// rules can be deleted.
    pub source: String,
}

/// A fired alert that has not resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActiveAlert {
    /// The rule.
    pub rule: String,
    /// What it is about: `endpoint/fraud/blue`, `device/dev-1/fraud/blue`, `device/dev-1`.
    pub subject: String,
    /// The metric.
    pub metric: AlertMetric,
    /// The value of the evaluation that fired it (or the latest breaching one).
    pub value: f64,
    /// The rule's threshold.
    pub threshold: f64,
    /// When it fired.
    pub since: String,
    /// Details (per-feature drift for psi; endpoint, deployment, requests,
    /// errors for request metrics, with `p99_ms` and, for
    /// `p99_over_objective`, `objective_p99_ms`).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// One deployment's requests over some windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentMetrics {
    /// Endpoint.
    pub endpoint: String,
    /// Deployment.
    pub deployment: String,
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// `errors / requests` (0 without requests).
    pub error_rate: f64,
    /// Median latency in ms (histogram bucket bound, at most 25% high).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in ms.
    pub p99_ms: Option<f64>,
    /// Deepest queue.
    pub max_queue_depth: u64,
}

/// A summary of one stored window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WindowSummary {
    /// Outbox epoch.
    pub epoch: u64,
    /// First sequence number covered.
    pub first_seq: u64,
    /// Last sequence number covered.
    pub last_seq: u64,
    /// Start (the agent's clock).
    pub start: String,
    /// End (the agent's clock).
    pub end: String,
    /// CPU use, percent.
    pub cpu_percent: f64,
    /// Memory used, bytes.
    pub memory_used_bytes: u64,
    /// Memory total, bytes.
    pub memory_total_bytes: u64,
    /// Disk used, bytes.
    pub disk_used_bytes: u64,
    /// Disk total, bytes.
    pub disk_total_bytes: u64,
    /// One-minute load.
    pub load1: f64,
    /// Temperatures by sensor, °C.
    pub temperatures_c: BTreeMap<String, f64>,
    /// Agent version.
    pub agent_version: String,
    /// Agent uptime, seconds.
    pub uptime_secs: u64,
    /// Agent sync state.
    pub sync_state: String,
    /// Windows the agent's outbox has dropped.
    pub outbox_dropped: u64,
    /// Per deployment, this window's requests.
    pub deployments: Vec<DeploymentMetrics>,
}

/// `GET /api/v1/devices/{id}/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeviceMetrics {
    /// Device id.
    pub device: String,
    /// Windows stored for it.
    pub windows_stored: u64,
    /// Its latest window, if any.
    pub latest: Option<WindowSummary>,
    /// Per deployment over the last hour (by window end time).
    pub last_hour: Vec<DeploymentMetrics>,
}

/// A stored window, as `GET /api/v1/devices/{id}/windows` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WindowRef {
    /// Outbox epoch.
    pub epoch: u64,
    /// First sequence number covered.
    pub first_seq: u64,
    /// Last sequence number covered.
    pub last_seq: u64,
    /// Windows merged into it.
    pub span_count: u64,
    /// End (the agent's clock).
    pub end: String,
    /// Requests over every deployment.
    pub requests: u64,
}

/// Drift of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FeatureDriftView {
    /// Feature name.
    pub name: String,
    /// `input` or `output`.
    pub kind: String,
    /// Population stability index.
    pub psi: f64,
    /// Jensen–Shannon distance.
    pub js: f64,
    /// KS statistic on the binned CDFs (total variation for categories).
    pub ks: f64,
    /// Share of values missing.
    pub missing_rate: f64,
    /// Share of present values outside the baseline's support.
    pub out_of_range_rate: f64,
    /// Values counted.
    pub count: u64,
}

/// Drift of one deployment (one bundle) merged across devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentDrift {
    /// Deployment.
    pub deployment: String,
    /// Bundle target path whose baseline the counts are binned over.
    pub target: String,
    /// Devices that contributed.
    pub devices: u64,
    /// Windows merged.
    pub windows: u64,
    /// Per feature; empty when the bundle has no baseline (see `error`).
    pub features: Vec<FeatureDriftView>,
    /// Why drift could not be computed, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /api/v1/endpoints/{name}/drift`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DriftReport {
    /// Endpoint.
    pub endpoint: String,
    /// Seconds of telemetry merged (by window end time).
    pub window_secs: u64,
    /// Per deployment and bundle.
    pub deployments: Vec<DeploymentDrift>,
}
