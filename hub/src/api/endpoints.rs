//! `/api/v1/endpoints`: endpoints (deployments, traffic weights, mirror,
//! device selector).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::types::{EndpointSpec, EndpointView, Problem, ReasonBody, Role};
use super::{blocking, AppState};

/// Create or replace an endpoint.
#[utoipa::path(put, path = "/api/v1/endpoints/{name}", params(("name" = String, Path)), request_body = EndpointSpec,
    responses((status = 200, body = EndpointView), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub(super) async fn put(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<EndpointSpec>,
) -> Result<Json<EndpointView>, ApiError> {
    caller.require(Role::Operator)?;
    let r = s.registry.clone();
    Ok(Json(
        blocking(move || r.put_endpoint(&caller.name, &name, spec)).await?,
    ))
}

/// All endpoints.
#[utoipa::path(get, path = "/api/v1/endpoints", responses((status = 200, body = Vec<EndpointView>)))]
pub(super) async fn list(
    State(s): State<AppState>,
    _c: Caller,
) -> Result<Json<Vec<EndpointView>>, ApiError> {
    let r = s.registry.clone();
    Ok(Json(blocking(move || r.endpoints()).await?))
}

/// One endpoint.
#[utoipa::path(get, path = "/api/v1/endpoints/{name}", params(("name" = String, Path)),
    responses((status = 200, body = EndpointView), (status = 404, body = Problem)))]
pub(super) async fn show(
    State(s): State<AppState>,
    _c: Caller,
    Path(name): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    let r = s.registry.clone();
    Ok(Json(blocking(move || r.endpoint(&name)).await?))
}

/// Delete an endpoint (its versions become deletable again).
#[utoipa::path(delete, path = "/api/v1/endpoints/{name}", params(("name" = String, Path)), request_body = ReasonBody,
    responses((status = 204), (status = 404, body = Problem)))]
pub(super) async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    let reason = super::extract::optional_reason(&body)?;
    let r = s.registry.clone();
    blocking(move || r.delete_endpoint(&caller.name, &name, &reason)).await?;
    Ok(StatusCode::NO_CONTENT)
}
