//! `/api/v1/webhooks`: register, list and remove webhooks, and read each
//! one's delivery log. Registering and removing need an operator token: a
//! webhook receives every event it subscribes to.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::types::{CreateWebhook, DeliveryView, Problem, Role, WebhookView};
use super::{blocking, AppState};

/// Register a webhook. The answer holds its secret, once.
#[utoipa::path(post, path = "/api/v1/webhooks", request_body = CreateWebhook,
    responses((status = 201, body = WebhookView), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub(super) async fn create(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    caller.require(Role::Operator)?;
    let t = s.telemetry.clone();
    let view = blocking(move || t.create_webhook(&caller.name, req)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Every webhook (without secrets).
#[utoipa::path(get, path = "/api/v1/webhooks", responses((status = 200, body = Vec<WebhookView>)))]
pub(super) async fn list(
    State(s): State<AppState>,
    _c: Caller,
) -> Result<Json<Vec<WebhookView>>, ApiError> {
    let t = s.telemetry.clone();
    Ok(Json(blocking(move || t.list_webhooks()).await?))
}

/// Remove a webhook; its pending deliveries stop.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)))]
pub(super) async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    let t = s.telemetry.clone();
    blocking(move || t.delete_webhook(&caller.name, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveriesQuery {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// The webhook's latest delivery attempts, oldest first.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", params(("id" = String, Path), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = Vec<DeliveryView>), (status = 404, body = Problem)))]
pub(super) async fn deliveries(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<String>,
    q: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<DeliveryView>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.clamp(1, 1000);
    let t = s.telemetry.clone();
    Ok(Json(
        blocking(move || t.webhook_deliveries(&id, limit)).await?,
    ))
}
