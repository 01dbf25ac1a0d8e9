//! The fleet part of `flotilla demo`: real agents against the embedded hub.
//!
//! With the demo model registered, it creates endpoint `demo` (version 1 for
//! devices labelled `site=demo`), enrols [`AGENTS`] agents over QUIC exactly
//! as `flotilla-agent enroll` does (each in its own data dir, each with its
//! own thread and runtime, as separate processes would be), waits until they
//! pulled, verified and activated the bundle, scores requests through each
//! agent's Open Inference Protocol API, then moves 10% of traffic to version 2
//! as a canary and scores again, and finally reads the fleet's request counts
//! and latencies back from the hub's telemetry (windows published by the
//! agents over the embedded MQTT broker).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_agent::config::{AgentConfig, DataFiles};
use flotilla_agent::sync::AgentStatus;
use serde::Serialize;

use super::client::HubClient;
use super::CliError;
use crate::api::types::{
    CreateEnrolToken, DeploymentMetrics, DeploymentSpec, EndpointSpec, EnrolTokenView,
};

/// Agents the demo runs.
pub(super) const AGENTS: usize = 2;
/// Requests each agent scores before and during the canary.
const REQUESTS: usize = 100;
/// Longest wait for a rollout or for telemetry.
const WAIT: Duration = Duration::from_secs(180);

/// What the fleet part did.
#[derive(Debug, Serialize)]
pub(super) struct FleetDemo {
    /// Per agent: its device id, scoring URL and what it served.
    pub(super) agents: Vec<AgentDemo>,
    /// During the canary (90/10): requests answered per deployment, all agents.
    pub(super) canary_split: BTreeMap<String, u64>,
    /// The hub's fleet view of endpoint `demo` from the agents' telemetry.
    pub(super) fleet_metrics: Vec<DeploymentMetrics>,
}

/// One agent of the demo.
#[derive(Debug, Serialize)]
pub(super) struct AgentDemo {
    /// Device id the hub assigned.
    pub(super) device_id: String,
    /// Its scoring API.
    pub(super) scoring: String,
    /// Model bytes pulled from the hub over QUIC.
    pub(super) fetched_bytes: u64,
}

impl FleetDemo {
    pub(super) fn text(&self) -> String {
        let mut s = String::new();
        for a in &self.agents {
            s += &format!(
                "  agent {} pulled {:.1} MiB over QUIC, verified and activated it; scoring on {}\n",
                a.device_id,
                a.fetched_bytes as f64 / (1024.0 * 1024.0),
                a.scoring
            );
        }
        let split: Vec<String> = self
            .canary_split
            .iter()
            .map(|(d, n)| format!("{d} {n}"))
            .collect();
        s += &format!("  canary 90/10, requests answered: {}\n", split.join(", "));
        s += "  fleet telemetry at the hub (windows over MQTT):\n";
        for m in &self.fleet_metrics {
            let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} ms"));
            s += &format!(
                "    demo/{}: {} requests, {} errors, p50 {}, p99 {}\n",
                m.deployment,
                m.requests,
                m.errors,
                ms(m.p50_ms),
                ms(m.p99_ms)
            );
        }
        s
    }
}

/// A running in-process agent.
struct RunningAgent {
    data: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningAgent {
    fn status(&self) -> Option<AgentStatus> {
        AgentStatus::read(&DataFiles::new(&self.data).status()).ok()
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn agent_error(e: impl std::fmt::Display) -> CliError {
    CliError::input(format!("demo agent: {e}"))
}

/// Runs the fleet part against the hub `client` talks to.
pub(super) fn run(
    client: &HubClient,
    dir: &Path,
    say: &dyn Fn(&str),
    model_width: usize,
) -> Result<FleetDemo, CliError> {
    let info: serde_json::Value = client
        .get("/api/v1/hub", &[])
        .map_err(|e| client.cli_error(e))?;
    let sync_addr = info["sync_addr"].as_str().unwrap_or_default().to_string();
    let fingerprint = info["ca_fingerprint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let selector: BTreeMap<String, String> = [("site".to_string(), "demo".to_string())].into();
    let endpoint = |traffic: &[(&str, u32)], reason: &str| -> Result<(), CliError> {
        let spec = EndpointSpec {
            selector: selector.clone(),
            deployments: vec![
                DeploymentSpec {
                    name: "blue".into(),
                    model: "demo-mlp".into(),
                    version: 1,
                },
                DeploymentSpec {
                    name: "green".into(),
                    model: "demo-mlp".into(),
                    version: 2,
                },
            ]
            .into_iter()
            .filter(|d| traffic.iter().any(|(n, _)| *n == d.name))
            .collect(),
            traffic: traffic
                .iter()
                .map(|(n, w)| ((*n).to_string(), *w))
                .collect(),
            mirror: None,
            objective_p99_ms: None,
            reason: reason.into(),
        };
        client
            .send::<_, serde_json::Value>("PUT", "/api/v1/endpoints/demo", &spec)
            .map(|_| ())
            .map_err(|e| client.cli_error(e))
    };
    say("creating endpoint demo: version 1 for devices labelled site=demo");
    endpoint(&[("blue", 100)], "flotilla demo: first rollout")?;

    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let data = dir.join(format!("agent-{i}"));
        let token: EnrolTokenView = client
            .send(
                "POST",
                "/api/v1/devices/tokens",
                &CreateEnrolToken {
                    labels: selector.clone(),
                    ttl_secs: 3600,
                },
            )
            .map_err(|e| client.cli_error(e))?;
        say(&format!(
            "enrolling agent {i} over QUIC (CA pinned by fingerprint) in {}",
            data.display()
        ));
        agents.push(start_agent(&data, &sync_addr, &token.token, &fingerprint)?);
    }

    say("waiting for the agents to pull, verify, stage and activate version 1");
    let target = |v: u64| format!("models/demo-mlp/{v}/manifest.cbor");
    wait_active(&agents, "blue", &target(1))?;
    let urls: Vec<String> = agents
        .iter()
        .map(|a| a.status().and_then(|s| s.scoring).unwrap_or_default())
        .collect();
    say(&format!(
        "scoring {REQUESTS} requests on each agent (Open Inference Protocol v2)"
    ));
    let mut scored = 0u64;
    for url in &urls {
        score(url, REQUESTS, model_width, &mut BTreeMap::new())?;
        scored += REQUESTS as u64;
    }

    say("canary: 10% of traffic to version 2 (last layer retrained; agents fetch only changed chunks)");
    endpoint(&[("blue", 90), ("green", 10)], "flotilla demo: canary")?;
    wait_active(&agents, "green", &target(2))?;
    let mut split = BTreeMap::new();
    for url in &urls {
        score(url, REQUESTS, model_width, &mut split)?;
        scored += REQUESTS as u64;
    }

    say("waiting for the agents' telemetry windows to reach the hub");
    let started = Instant::now();
    let fleet_metrics = loop {
        let m: Vec<DeploymentMetrics> = client
            .get(
                "/api/v1/endpoints/demo/metrics",
                &[("window_secs", "3600".to_string())],
            )
            .map_err(|e| client.cli_error(e))?;
        let seen: u64 = m.iter().map(|d| d.requests).sum();
        if seen >= scored {
            break m;
        }
        if started.elapsed() > WAIT {
            return Err(agent_error(format!(
                "the hub saw {seen} of {scored} requests in telemetry after {}s",
                WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let agents_out = agents
        .iter()
        .zip(&urls)
        .map(|(a, url)| {
            let s = a.status();
            AgentDemo {
                device_id: s.as_ref().map(|s| s.device_id.clone()).unwrap_or_default(),
                scoring: url.clone(),
                fetched_bytes: s.map_or(0, |s| s.fetched_bytes),
            }
        })
        .collect();
    say("stopping the agents");
    drop(agents);
    Ok(FleetDemo {
        agents: agents_out,
        canary_split: split,
        fleet_metrics,
    })
}

/// Enrols an agent in `data` and runs it on its own thread and runtime.
fn start_agent(
    data: &Path,
    hub: &str,
    token: &str,
    fingerprint: &str,
) -> Result<RunningAgent, CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(agent_error)?;
    runtime
        .block_on(flotilla_agent::enrol::enrol(
            &flotilla_agent::enrol::EnrolOptions {
                data_dir: data.to_path_buf(),
                hub: hub.to_string(),
                token: token.to_string(),
                fingerprint: fingerprint.to_string(),
                force: true,
            },
        ))
        .map_err(agent_error)?;
    let mut config = AgentConfig::load(&DataFiles::new(data).config()).map_err(agent_error)?;
    config.serve.listen = "127.0.0.1:0".parse().map_err(agent_error)?;
    config.telemetry.window_secs = 1;
    let mut agent = flotilla_agent::sync::Agent::open(config).map_err(agent_error)?;
    agent.set_announce(false);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("demo-agent".into())
        .spawn(move || {
            let result = runtime.block_on(agent.run(async {
                let _ = stopped.await;
            }));
            if let Err(e) = result {
                eprintln!("demo agent stopped: {e:#}");
            }
            runtime.shutdown_timeout(Duration::from_secs(2));
        })
        .map_err(agent_error)?;
    Ok(RunningAgent {
        data: data.to_path_buf(),
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Waits until every agent serves `target` on `deployment`.
fn wait_active(agents: &[RunningAgent], deployment: &str, target: &str) -> Result<(), CliError> {
    let started = Instant::now();
    loop {
        let statuses: Vec<Option<AgentStatus>> = agents.iter().map(RunningAgent::status).collect();
        let done = statuses.iter().all(|s| {
            s.as_ref().is_some_and(|s| {
                s.scoring.is_some()
                    && s.serving
                        .get(&format!("demo/{deployment}"))
                        .map(String::as_str)
                        == Some(target)
            })
        });
        if done {
            return Ok(());
        }
        if started.elapsed() > WAIT {
            let last = statuses
                .iter()
                .flatten()
                .map(|s| s.last_error.clone().unwrap_or_else(|| "no error".into()))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(agent_error(format!(
                "{target} not active on every agent after {}s ({last})",
                WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Scores `n` one-row requests on `url`, counting who answered.
fn score(
    url: &str,
    n: usize,
    width: usize,
    split: &mut BTreeMap<String, u64>,
) -> Result<(), CliError> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    for i in 0..n {
        let data: Vec<f32> = (0..width)
            .map(|j| ((i * 31 + j * 17) % 97) as f32 / 97.0)
            .collect();
        let body = serde_json::json!({
            "inputs": [{"name": "input", "shape": [1, width], "datatype": "FP32", "data": data}]
        });
        let r = agent
            .post(&format!("{url}/v2/models/demo/infer"))
            .send_json(body)
            .map_err(|e| agent_error(format!("scoring on {url}: {e}")))?;
        let who = r.header("x-flotilla-deployment").unwrap_or("?").to_string();
        *split.entry(who).or_default() += 1;
    }
    Ok(())
}
