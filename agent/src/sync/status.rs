//! The running agent's status, written to `DATA/status.json` after every event
//! (replaced atomically) and read by `flotilla-agent status`, which must work
//! while the agent holds the store's lock.

use std::collections::BTreeMap;
use std::path::Path;

use flotilla_protocol::wire::{DeploymentState, DeploymentStatus, TrustedVersions};
use serde::{Deserialize, Serialize};

/// Chunks held in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkStats {
    /// Distinct chunks.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What `flotilla-agent status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// This device.
    pub device_id: String,
    /// The hub's address.
    pub hub: String,
    /// Whether a hub connection is up.
    pub connected: bool,
    /// When this was written.
    pub updated_at: String,
    /// The agent's process id.
    pub pid: u32,
    /// The last problem (rejected update, lost connection), if it persists.
    pub last_error: Option<String>,
    /// Trusted metadata versions.
    pub trusted: TrustedVersions,
    /// Every deployment's last reported status.
    pub deployments: Vec<DeploymentStatus>,
    /// What the scoring server holds now: `endpoint/deployment` → target.
    pub serving: BTreeMap<String, String>,
    /// The chunk store.
    pub chunks: Option<ChunkStats>,
    /// Verified chunk bytes received from the hub since this process started.
    pub fetched_bytes: u64,
    /// The last completed fetch: from the first request to the last chunk.
    pub last_fetch: Option<FetchRun>,
    /// The telemetry publisher, when it runs.
    #[serde(default)]
    pub telemetry: Option<crate::telemetry::TelemetryStatus>,
    /// Where applications call this agent (`http://ADDR`).
    #[serde(default)]
    pub scoring: Option<String>,
}

/// One fetch, from the first chunk request until nothing was outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FetchRun {
    /// Verified chunk bytes received.
    pub bytes: u64,
    /// Wall-clock seconds.
    pub secs: f64,
}

impl AgentStatus {
    /// Writes atomically (temporary file, rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }

    /// Reads the status file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "no status at {} ({e}); is this an agent data dir, and has the agent run?",
                path.display()
            )
        })?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Human-readable text.
    pub fn text(&self) -> String {
        let mut out = format!(
            "device      {}\nhub         {} ({})\nupdated     {}\n",
            self.device_id,
            self.hub,
            if self.connected {
                "connected"
            } else {
                "not connected"
            },
            self.updated_at
        );
        if let Some(url) = &self.scoring {
            out.push_str(&format!("scoring     {url}\n"));
        }
        let t = &self.trusted;
        let v = |x: Option<u64>| x.map_or("-".to_string(), |v| v.to_string());
        out.push_str(&format!(
            "trusted     root v{} timestamp v{} snapshot v{} targets v{} director v{}\n",
            t.root,
            v(t.timestamp),
            v(t.snapshot),
            v(t.targets),
            v(t.director)
        ));
        if let Some(c) = &self.chunks {
            out.push_str(&format!(
                "chunks      {} ({:.1} MiB)\n",
                c.count,
                c.bytes as f64 / (1024.0 * 1024.0)
            ));
        }
        out.push_str(&format!(
            "fetched     {} bytes since start\n",
            self.fetched_bytes
        ));
        if let Some(e) = &self.last_error {
            out.push_str(&format!("last error  {e}\n"));
        }
        match &self.telemetry {
            Some(t) => out.push_str(&format!(
                "telemetry   {} {}, {} windows ({} bytes) waiting for the hub, acked up to #{}, {} dropped{}\n",
                t.broker,
                if t.connected { "connected" } else { "not connected" },
                t.outbox_windows,
                t.outbox_bytes,
                t.acked_seq,
                t.dropped,
                t.last_error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )),
            None => out.push_str("telemetry   off\n"),
        }
        if self.deployments.is_empty() {
            out.push_str("deployments none\n");
        }
        for d in &self.deployments {
            let state = match &d.state {
                DeploymentState::Fetching { have, need } => {
                    format!("fetching {have}/{need} bytes")
                }
                DeploymentState::Staged => "staged".into(),
                DeploymentState::Trial => "trial".into(),
                DeploymentState::Active => "active".into(),
                DeploymentState::Failed { reason } => format!("failed: {reason}"),
                DeploymentState::RolledBack { reason } => format!("rolled back: {reason}"),
                other => format!("{other:?}"),
            };
            out.push_str(&format!(
                "{}/{}  {}  {}  (serving {})\n",
                d.endpoint,
                d.deployment,
                d.target,
                state,
                d.active.as_deref().unwrap_or("nothing")
            ));
        }
        out
    }
}
