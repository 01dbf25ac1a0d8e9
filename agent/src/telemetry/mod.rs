//! Telemetry: what the agent publishes to the hub over MQTT, with nothing lost.
//!
//! Every `window_secs` the [`Publisher`] builds a
//! [`TelemetryWindow`](flotilla_protocol::telemetry::TelemetryWindow): per
//! endpoint and deployment the scoring statistics and drift counts
//! ([`crate::serve::Serving::take_window`]), the node's gauges ([`system`]) and
//! the agent's own state ([`AgentView`], from the sync loop). It pushes the
//! window into the protocol's sans-IO
//! [`Outbox`](flotilla_protocol::telemetry::Outbox), applies the outbox's
//! changes to `agent.redb` in one durable transaction, and only then publishes
//! (CBOR, QoS 1, `flotilla/v1/{fleet}/{device}/telemetry`). A window leaves
//! the outbox only when the hub's end-to-end ack (`.../ack`) covers it; the
//! outbox is bounded in bytes and merges the oldest windows when full.
//!
//! Ordering matters to the hub's deduplication (it keeps a watermark per
//! device, so a window must never overtake an older unacknowledged one):
//! - the MQTT session is clean, so the client's own queue is dropped at each
//!   reconnect; on every new session (`ConnAck`) the publisher republishes
//!   every pending window oldest first, before anything new;
//! - within a session windows go out in sequence order on one topic;
//! - when no ack has advanced for [`ACK_OVERDUE`] although windows wait (a
//!   broker that dropped messages queued for an absent hub), everything
//!   pending is published again, oldest first.
//!
//! Presence: the retained status message is `online` from each new session,
//! with a retained last will `offline`; a clean stop publishes `offline`
//! itself.

mod publisher;
pub mod system;

use serde::{Deserialize, Serialize};

pub use publisher::{Publisher, ACK_OVERDUE};

use flotilla_protocol::telemetry::Histogram;
use flotilla_protocol::wire::DeploymentStatus;

/// The agent's own state for the next window, kept current by the sync loop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentView {
    /// `connected`, `syncing` or `offline`.
    pub sync_state: String,
    /// Every deployment's activation state.
    pub activations: Vec<DeploymentStatus>,
}

/// Where the publisher stands, for `status.json` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryStatus {
    /// The broker, `HOST:PORT`.
    pub broker: String,
    /// Whether an MQTT session is up.
    pub connected: bool,
    /// Windows waiting for the hub's ack.
    pub outbox_windows: u64,
    /// Their bytes.
    pub outbox_bytes: u64,
    /// The outbox's byte budget.
    pub outbox_budget: u64,
    /// Original windows dropped since the outbox was created (non-zero:
    /// telemetry was lost).
    pub dropped: u64,
    /// Highest sequence number the hub acknowledged.
    pub acked_seq: u64,
    /// The sequence number the next window gets.
    pub next_seq: u64,
    /// Windows (or republished copies) handed to the broker by this process.
    pub published: u64,
    /// From handing a window to the broker to the hub's ack covering it, in
    /// microseconds, over this process's life.
    #[serde(default)]
    pub ack_latency_us: Histogram,
    /// The last problem (broker unreachable, store write failed), if it persists.
    pub last_error: Option<String>,
}

impl TelemetryStatus {
    /// Prometheus text for the agent's `/metrics`.
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, kind: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP flotilla_agent_telemetry_{name} {help}\n# TYPE flotilla_agent_telemetry_{name} {kind}\nflotilla_agent_telemetry_{name} {v}\n"
            ));
        };
        gauge(
            "connected",
            "gauge",
            "1 while an MQTT session with the broker is up.",
            u64::from(self.connected),
        );
        gauge(
            "outbox_windows",
            "gauge",
            "Telemetry windows waiting for the hub's ack.",
            self.outbox_windows,
        );
        gauge(
            "outbox_bytes",
            "gauge",
            "Bytes of the windows waiting.",
            self.outbox_bytes,
        );
        gauge(
            "dropped_windows_total",
            "counter",
            "Windows dropped because the outbox was full and nothing could merge.",
            self.dropped,
        );
        gauge(
            "published_total",
            "counter",
            "Windows handed to the broker, republished copies included.",
            self.published,
        );
        for (q, v) in [(50u32, 0.5), (99, 0.99)] {
            gauge(
                &format!("ack_latency_p{q}_us"),
                "gauge",
                "End-to-end ack latency (publish to the hub's ack), this process's life.",
                self.ack_latency_us.quantile(v).unwrap_or(0),
            );
        }
        gauge(
            "acked_seq",
            "gauge",
            "Highest window sequence number the hub acknowledged.",
            self.acked_seq,
        );
        out
    }
}
