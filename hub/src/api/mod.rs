//! The hub's REST API under `/api/v1`: JSON bodies, bearer-token auth with
//! roles, RFC 9457 problem details for every error, and an OpenAPI document
//! generated from the handlers and types below (`/api/v1/openapi.json`).
//!
//! Handlers are thin: they authenticate, parse, and call the registry on a
//! blocking thread. `/api/v1/health` and `/api/v1/openapi.json` need no token;
//! everything else does, and only operators and admins may change anything.
//!
//! # Layout
//! - [`types`]: request and response bodies (shared with the CLI).
//! - [`error`]: problem details.
//! - [`extract`]: the caller and JSON body extractors.
//! - `uploads`, `models`, `endpoints`, `devices`, `audit`, `tokens`, `trust`: one resource each.
//! - `events`, `webhooks`, `alerts`, `telemetry`: the telemetry side (event
//!   log and stream, webhooks, alert rules and alerts, device metrics, drift,
//!   `/metrics`).

mod alerts;
mod audit;
mod devices;
mod endpoints;
pub mod error;
mod events;
pub mod extract;
mod models;
mod telemetry;
mod tokens;
mod trust;
pub mod types;
mod uploads;
mod webhooks;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use utoipa::OpenApi;

use crate::registry::{Registry, RegistryError};
use error::ApiError;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The registry.
    pub registry: Arc<Registry>,
    /// The root chain (version, bytes), for `/api/v1/trust`.
    pub roots: Arc<Vec<(u64, Vec<u8>)>>,
    /// Largest upload PATCH body.
    pub max_patch_bytes: usize,
    /// The QUIC address agents are told to dial (`GET /api/v1/hub`).
    pub sync_addr: String,
    /// The telemetry side.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}

/// Runs registry work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(format!("worker failed: {e}"))),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Flotilla hub API", description = "Model registry, trust metadata and audit log of a Flotilla fleet."),
    paths(
        uploads::create, uploads::get, uploads::append, uploads::delete,
        models::register, models::list, models::show, models::versions, models::version,
        models::tags, models::archive, models::delete, models::file, models::manifest,
        audit::list, audit::verify,
        tokens::whoami, tokens::create, tokens::list, tokens::revoke,
        endpoints::put, endpoints::list, endpoints::show, endpoints::delete,
        devices::create_token, devices::enroll, devices::list, devices::show, devices::labels,
        devices::revoke, devices::director, devices::info,
        trust::document, health,
        events::list, events::stream,
        webhooks::create, webhooks::list, webhooks::delete, webhooks::deliveries,
        alerts::active, alerts::rules, alerts::create_rule, alerts::delete_rule,
        telemetry::device_metrics, telemetry::device_windows, telemetry::drift, telemetry::endpoint_metrics, telemetry::prometheus,
    ),
    components(schemas(types::Problem, types::Role, types::VersionStatus, types::AlertMetric, types::AlertCondition, types::AlertScope)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Liveness: no token needed.
#[utoipa::path(get, path = "/api/v1/health", responses((status = 200, body = Object)), security(()))]
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} (see /api/v1/openapi.json)",
            uri.path()
        ),
    )
}

/// The router of `/api/v1`.
pub fn router(state: AppState, max_json_bytes: usize) -> Router {
    let patch_limit = state.max_patch_bytes;
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/whoami", get(tokens::whoami))
        .route("/api/v1/uploads", post(uploads::create))
        .route(
            "/api/v1/uploads/{id}",
            get(uploads::get)
                .patch(uploads::append)
                .delete(uploads::delete)
                .layer(DefaultBodyLimit::max(patch_limit)),
        )
        .route("/api/v1/models", get(models::list))
        .route("/api/v1/models/{name}", get(models::show))
        .route(
            "/api/v1/models/{name}/versions",
            get(models::versions).post(models::register),
        )
        .route(
            "/api/v1/models/{name}/versions/{version}",
            get(models::version).delete(models::delete),
        )
        .route(
            "/api/v1/models/{name}/versions/{version}/tags",
            patch(models::tags),
        )
        .route(
            "/api/v1/models/{name}/versions/{version}/archive",
            post(models::archive),
        )
        .route(
            "/api/v1/models/{name}/versions/{version}/file",
            get(models::file),
        )
        .route(
            "/api/v1/models/{name}/versions/{version}/manifest",
            get(models::manifest),
        )
        .route("/api/v1/endpoints", get(endpoints::list))
        .route(
            "/api/v1/endpoints/{name}",
            get(endpoints::show)
                .put(endpoints::put)
                .delete(endpoints::delete),
        )
        .route("/api/v1/enroll", post(devices::enroll))
        .route("/api/v1/hub", get(devices::info))
        // The first release's path, kept for its clients.
        .route("/api/v1/hub/info", get(devices::info))
        .route("/api/v1/devices", get(devices::list))
        .route("/api/v1/devices/tokens", post(devices::create_token))
        .route("/api/v1/devices/{id}", get(devices::show))
        .route("/api/v1/devices/{id}/labels", patch(devices::labels))
        .route("/api/v1/devices/{id}/revoke", post(devices::revoke))
        .route("/api/v1/devices/{id}/director", get(devices::director))
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/audit/verify", get(audit::verify))
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route(
            "/api/v1/tokens/{name}",
            axum::routing::delete(tokens::revoke),
        )
        .route("/api/v1/trust/{document}", get(trust::document))
        .route(
            "/api/v1/devices/{id}/metrics",
            get(telemetry::device_metrics),
        )
        .route(
            "/api/v1/devices/{id}/windows",
            get(telemetry::device_windows),
        )
        .route("/api/v1/endpoints/{name}/drift", get(telemetry::drift))
        .route(
            "/api/v1/endpoints/{name}/metrics",
            get(telemetry::endpoint_metrics),
        )
        .route("/api/v1/events", get(events::list))
        .route("/api/v1/events/stream", get(events::stream))
        .route(
            "/api/v1/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            "/api/v1/webhooks/{id}",
            axum::routing::delete(webhooks::delete),
        )
        .route(
            "/api/v1/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        )
        .route("/api/v1/alerts", get(alerts::active))
        .route(
            "/api/v1/alerts/rules",
            get(alerts::rules).post(alerts::create_rule),
        )
        .route(
            "/api/v1/alerts/rules/{name}",
            axum::routing::delete(alerts::delete_rule),
        )
        .route("/metrics", get(telemetry::prometheus))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_json_bytes))
        .with_state(state)
}
