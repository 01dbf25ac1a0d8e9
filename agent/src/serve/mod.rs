//! Serving on the node: the scoring server applications call, speaking the Open
//! Inference Protocol v2 over HTTP/1.1, with each endpoint's traffic split,
//! mirror, backpressure, optional dynamic batching and metrics.
//!
//! The sync loop owns a [`Serving`] and tells it what to serve:
//! [`Serving::set_routes`] with the director document's endpoints (weights,
//! mirror), [`Serving::activate`] when a deployment's trial passed, and
//! [`Serving::retire`] when it is gone. [`bind`] serves the HTTP API on a
//! local address until its shutdown future completes. `flotilla-agent serve`
//! uses the same pieces without a hub ([`local`]).
//!
//! Design: every change builds a new immutable routing table and swaps it in
//! (`RwLock<Arc<Table>>`, the lock held only to clone or replace the `Arc`). A
//! request routes on the snapshot it took and holds its model version by `Arc`,
//! so weight changes and version swaps never fail, drop or re-route a request
//! in flight, and the old version is freed when its last request is done.
//!
//! It does not fetch, verify, stage or trial models (that is [`crate::sync`] and
//! [`crate::slots`]), and it does not ship metrics anywhere (the telemetry
//! publisher, [`crate::telemetry`], takes [`Serving::take_window`]).
//!
//! # Layout
//!
//! - `http`: the axum router, handlers and [`bind`].
//! - `infer`: one inference request end to end: route, read, decode, validate,
//!   queue, run, mirror, encode, record.
//! - `routing`: the routing table, traffic split, sticky and pinned routing.
//! - `active`: a deployment's loaded model version.
//! - `admission`: the execution semaphore and the bounded queue.
//! - `batch`: dynamic batching per model version.
//! - `exec`: running a model on a blocking thread.
//! - `wire`, `tensors`, `json_data`, `datatype`: the protocol's JSON and binary
//!   bodies.
//! - `validate`: inputs against the model signature.
//! - `drift`: input and output values over the bundle's drift baseline.
//! - [`metrics`]: counters and mergeable histograms, Prometheus text.
//! - [`local`]: loading an ONNX file or a verified bundle for `serve`.
//! - `error`: why a request failed, as status code and metrics kind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use flotilla_protocol::director::EndpointAssignment;
use flotilla_protocol::reconcile::DeploymentKey;
use flotilla_protocol::telemetry::{DriftObservation, EndpointStats};

use crate::slots::LoadedModel;

mod active;
mod admission;
mod batch;
mod datatype;
mod drift;
mod error;
mod exec;
mod http;
mod infer;
mod json_data;
pub mod local;
pub mod metrics;
mod routing;
mod tensors;
#[cfg(test)]
mod testing;
mod validate;
mod wire;

pub use http::bind;
pub use metrics::MetricsSnapshot;

use active::ActiveModel;
use admission::Admission;
use metrics::Metrics;
use routing::{Draws, Table};

/// How the scoring server bounds its work. Defaults: one execution per CPU,
/// 128 waiting, 30 s per request, no batching, batches of up to 32 rows, 64 MiB
/// bodies.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Model executions running at once (at least 1).
    pub max_concurrency: usize,
    /// Requests waiting for an execution before new ones get 429. With batching,
    /// requests waiting in a batch window count too, and the queue is at least
    /// `max_batch`.
    pub max_queue: usize,
    /// How long decoding, queueing, the run and encoding may take once the body
    /// has arrived (504 past it; a run already started finishes on its blocking
    /// thread and is discarded). The body may take as long, but at least 10 s
    /// (408 past it).
    pub request_timeout: Duration,
    /// `Some`: batch requests for the same model version that arrive within this
    /// window of the first, when every input has a leading batch dim.
    pub batch_window: Option<Duration>,
    /// Most rows (sum of the requests' leading dims) in one batch (at least 1).
    pub max_batch: usize,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_concurrency: std::thread::available_parallelism().map_or(4, |n| n.get()),
            max_queue: 128,
            request_timeout: Duration::from_secs(30),
            batch_window: None,
            max_batch: 32,
            max_body_bytes: 64 << 20,
        }
    }
}

/// What the sync loop last said: routes and loaded models.
#[derive(Debug, Default)]
struct Desired {
    routes: Vec<EndpointAssignment>,
    active: HashMap<DeploymentKey, Arc<ActiveModel>>,
}

/// The scoring server's shared state.
#[derive(Debug)]
pub struct Serving {
    config: ServeConfig,
    admission: Arc<Admission>,
    metrics: Metrics,
    draws: Draws,
    desired: Mutex<Desired>,
    // invariant: built from `desired` after its last change.
    table: RwLock<Arc<Table>>,
    /// More Prometheus text for `/metrics` (the telemetry publisher's).
    extra_metrics: RwLock<Option<ExtraMetrics>>,
}

/// Renders more Prometheus text.
struct ExtraMetrics(Box<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for ExtraMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExtraMetrics")
    }
}

impl Serving {
    /// A server with nothing routed; `max_concurrency` and `max_batch` below 1
    /// count as 1.
    pub fn new(mut config: ServeConfig) -> Arc<Self> {
        config.max_concurrency = config.max_concurrency.max(1);
        config.max_batch = config.max_batch.max(1);
        if config.batch_window.is_some() {
            config.max_queue = config.max_queue.max(config.max_batch);
        }
        Arc::new(Self {
            admission: Admission::new(config.max_concurrency, config.max_queue),
            config,
            metrics: Metrics::default(),
            draws: Draws::new(),
            desired: Mutex::new(Desired::default()),
            table: RwLock::new(Arc::new(Table::default())),
            extra_metrics: RwLock::new(None),
        })
    }

    /// Routing for every endpoint from the director document (weights, mirror).
    /// Endpoints not named are removed. A deployment named before its model is
    /// activated takes no traffic until then.
    pub fn set_routes(&self, endpoints: &[EndpointAssignment]) {
        self.change(|d| d.routes = endpoints.to_vec());
    }

    /// `key` serves `model` (version = target path) from now on; in-flight
    /// requests on the old model finish on it.
    pub fn activate(&self, key: &DeploymentKey, target: &str, model: Arc<LoadedModel>) {
        tracing::info!(endpoint = %key.endpoint, deployment = %key.deployment, %target, "serving");
        let active = Arc::new(ActiveModel::new(target, &key.deployment, model));
        self.change(|d| {
            d.active.insert(key.clone(), active);
        });
    }

    /// `key` serves nothing any more.
    pub fn retire(&self, key: &DeploymentKey) {
        tracing::info!(endpoint = %key.endpoint, deployment = %key.deployment, "not serving");
        self.change(|d| {
            d.active.remove(key);
        });
    }

    /// Prometheus text of all metrics.
    pub fn metrics_text(&self) -> String {
        let mut text = self.metrics.snapshot().prometheus_text();
        if let Some(extra) = &*self
            .extra_metrics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
        {
            text.push_str(&(extra.0)());
        }
        text
    }

    /// Records a request to `deployment` of `endpoint` answered outside this
    /// server (a sidecar, or a load generator exercising the telemetry path):
    /// it counts in `/metrics` and in the next telemetry window like any other.
    pub fn record_external(
        &self,
        endpoint: &str,
        deployment: &str,
        status: u16,
        error: Option<&'static str>,
        latency: Duration,
    ) {
        self.metrics
            .series(endpoint, deployment, false)
            .record(status, error, latency);
    }

    /// Appends `render`'s text to every `/metrics` answer from now on.
    pub fn set_extra_metrics(&self, render: Box<dyn Fn() -> String + Send + Sync>) {
        *self
            .extra_metrics
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(ExtraMetrics(render));
    }

    /// All metrics, for shipping.
    pub fn metrics_snapshot(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// What happened since the last call, for a telemetry window: per
    /// endpoint and deployment the request statistics, and the drift counts
    /// of every active version with a baseline.
    pub fn take_window(&self) -> (Vec<EndpointStats>, Vec<DriftObservation>) {
        let endpoints = self.metrics.take_window();
        let desired = self.desired.lock().unwrap_or_else(PoisonError::into_inner);
        let drift = desired
            .active
            .iter()
            .filter_map(|(k, a)| a.drift.as_ref()?.take(&k.endpoint, &k.deployment))
            .collect();
        (endpoints, drift)
    }

    /// The configuration in force (after the adjustments [`Serving::new`] makes).
    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    /// Applies `f` and swaps in the table built from the result.
    fn change(&self, f: impl FnOnce(&mut Desired)) {
        let mut desired = self.desired.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut desired);
        let table = Arc::new(Table::build(
            &desired.routes,
            &desired.active,
            &self.metrics,
        ));
        // Swapped while `desired` is locked, so tables are installed in order.
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = table;
    }

    /// The routing table now.
    fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests;
