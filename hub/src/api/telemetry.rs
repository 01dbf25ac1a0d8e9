//! Telemetry read views: `/api/v1/devices/{id}/metrics`,
//! `/api/v1/devices/{id}/windows`, `/api/v1/endpoints/{name}/drift`,
//! `/api/v1/endpoints/{name}/metrics` (fleet p50/p99 per deployment), and the
//! Prometheus exposition at `/metrics` (viewer token, like the rest).

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::Caller;
use super::types::{DeploymentMetrics, DeviceMetrics, DriftReport, Problem, WindowRef};
use super::{blocking, AppState};

/// A device's latest window and its last hour per deployment.
#[utoipa::path(get, path = "/api/v1/devices/{id}/metrics", params(("id" = String, Path)),
    responses((status = 200, body = DeviceMetrics), (status = 404, body = Problem)))]
pub(super) async fn device_metrics(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeviceMetrics>, ApiError> {
    let t = s.telemetry.clone();
    Ok(Json(blocking(move || t.device_metrics(&id)).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WindowsQuery {
    #[serde(default)]
    since: i64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    1000
}

/// A device's stored windows that ended at or after `since` (Unix seconds).
#[utoipa::path(get, path = "/api/v1/devices/{id}/windows", params(("id" = String, Path), ("since" = Option<i64>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = Vec<WindowRef>), (status = 404, body = Problem)))]
pub(super) async fn device_windows(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<String>,
    q: Result<Query<WindowsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<WindowRef>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.clamp(1, 10_000);
    let t = s.telemetry.clone();
    Ok(Json(
        blocking(move || t.device_windows(&id, q.since, limit)).await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DriftQuery {
    #[serde(default = "default_window")]
    window_secs: u64,
}

fn default_window() -> u64 {
    3600
}

/// Per deployment and feature, PSI, JS and KS over the last `window_secs`
/// (default one hour), merged across devices.
#[utoipa::path(get, path = "/api/v1/endpoints/{name}/drift", params(("name" = String, Path), ("window_secs" = Option<u64>, Query)),
    responses((status = 200, body = DriftReport), (status = 400, body = Problem)))]
pub(super) async fn drift(
    State(s): State<AppState>,
    _c: Caller,
    Path(name): Path<String>,
    q: Result<Query<DriftQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DriftReport>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let t = s.telemetry.clone();
    Ok(Json(
        blocking(move || t.drift_report(&name, q.window_secs)).await?,
    ))
}

/// Per deployment, the fleet's requests, errors and p50/p99 latency over the
/// last `window_secs` (default one hour), histograms merged across devices.
#[utoipa::path(get, path = "/api/v1/endpoints/{name}/metrics", params(("name" = String, Path), ("window_secs" = Option<u64>, Query)),
    responses((status = 200, body = Vec<DeploymentMetrics>), (status = 400, body = Problem)))]
pub(super) async fn endpoint_metrics(
    State(s): State<AppState>,
    _c: Caller,
    Path(name): Path<String>,
    q: Result<Query<DriftQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<DeploymentMetrics>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let t = s.telemetry.clone();
    Ok(Json(
        blocking(move || t.endpoint_metrics(&name, q.window_secs)).await?,
    ))
}

/// Prometheus text: fleet aggregates and ingest counters.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain", body = String)))]
pub(super) async fn prometheus(
    State(s): State<AppState>,
    _c: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let t = s.telemetry.clone();
    let text = blocking(move || Ok(t.prometheus())).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}
