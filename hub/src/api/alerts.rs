//! `/api/v1/alerts`: active alerts, and alert rules (`/api/v1/alerts/rules`).
//! Rules from the configuration and the built-in defaults are listed but
//! changed only in the configuration.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::types::{ActiveAlert, AlertRule, AlertRuleView, Problem, Role};
use super::{blocking, AppState};

/// Alerts fired and not resolved.
#[utoipa::path(get, path = "/api/v1/alerts", responses((status = 200, body = Vec<ActiveAlert>)))]
pub(super) async fn active(State(s): State<AppState>, _c: Caller) -> Json<Vec<ActiveAlert>> {
    Json(s.telemetry.active_alerts())
}

/// Every rule in effect, with its source (`default`, `config`, `api`).
#[utoipa::path(get, path = "/api/v1/alerts/rules", responses((status = 200, body = Vec<AlertRuleView>)))]
pub(super) async fn rules(
    State(s): State<AppState>,
    _c: Caller,
) -> Result<Json<Vec<AlertRuleView>>, ApiError> {
    let t = s.telemetry.clone();
    Ok(Json(blocking(move || t.alert_rules()).await?))
}

/// Add a rule.
#[utoipa::path(post, path = "/api/v1/alerts/rules", request_body = AlertRule,
    responses((status = 201, body = AlertRuleView), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub(super) async fn create_rule(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(rule): ApiJson<AlertRule>,
) -> Result<(StatusCode, Json<AlertRuleView>), ApiError> {
    caller.require(Role::Operator)?;
    let t = s.telemetry.clone();
    let view = blocking(move || t.create_alert_rule(&caller.name, rule)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Delete a rule added through the API; its active alerts resolve.
#[utoipa::path(delete, path = "/api/v1/alerts/rules/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(super) async fn delete_rule(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    let t = s.telemetry.clone();
    blocking(move || t.delete_alert_rule(&caller.name, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}
