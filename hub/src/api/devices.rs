//! `/api/v1/devices`, `/api/v1/enroll`, `/api/v1/hub`: device identity.
//!
//! Enrolment carries its own credential (the one-time token), so it needs no
//! bearer token. Agents enrol over QUIC (`crate::sync`), where they pin the CA
//! by fingerprint before they send their token; `POST /api/v1/enroll` remains
//! for tools that fetched the CA fingerprint some other trusted way.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::types::*;
use super::{blocking, AppState};

/// Create a one-time, expiring enrolment token.
#[utoipa::path(post, path = "/api/v1/devices/tokens", request_body = CreateEnrolToken,
    responses((status = 201, body = EnrolTokenView), (status = 400, body = Problem)))]
pub(super) async fn create_token(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateEnrolToken>,
) -> Result<(StatusCode, Json<EnrolTokenView>), ApiError> {
    caller.require(Role::Operator)?;
    let r = s.registry.clone();
    Ok((
        StatusCode::CREATED,
        Json(blocking(move || r.create_enrol_token(&caller.name, req)).await?),
    ))
}

/// Enrol a device with a one-time token and a CSR.
#[utoipa::path(post, path = "/api/v1/enroll", request_body = EnrolRequest, security(()),
    responses((status = 201, body = EnrolResponse), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub(super) async fn enroll(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<EnrolRequest>,
) -> Result<(StatusCode, Json<EnrolResponse>), ApiError> {
    let r = s.registry.clone();
    let root = s.roots.last().map(|(_, r)| r.clone()).unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        Json(blocking(move || r.enroll(req, &root)).await?),
    ))
}

/// All devices.
#[utoipa::path(get, path = "/api/v1/devices", responses((status = 200, body = Vec<DeviceView>)))]
pub(super) async fn list(
    State(s): State<AppState>,
    _c: Caller,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    let r = s.registry.clone();
    Ok(Json(blocking(move || r.devices()).await?))
}

/// One device.
#[utoipa::path(get, path = "/api/v1/devices/{id}", params(("id" = String, Path)),
    responses((status = 200, body = DeviceView), (status = 404, body = Problem)))]
pub(super) async fn show(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    let r = s.registry.clone();
    Ok(Json(blocking(move || r.device(&id)).await?))
}

/// Set and remove labels.
#[utoipa::path(patch, path = "/api/v1/devices/{id}/labels", params(("id" = String, Path)), request_body = UpdateLabels,
    responses((status = 200, body = DeviceView), (status = 404, body = Problem)))]
pub(super) async fn labels(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateLabels>,
) -> Result<Json<DeviceView>, ApiError> {
    caller.require(Role::Operator)?;
    let r = s.registry.clone();
    Ok(Json(
        blocking(move || r.update_labels(&caller.name, &id, req)).await?,
    ))
}

/// Revoke a device.
#[utoipa::path(post, path = "/api/v1/devices/{id}/revoke", params(("id" = String, Path)), request_body = ReasonBody,
    responses((status = 200, body = DeviceView), (status = 404, body = Problem)))]
pub(super) async fn revoke(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ReasonBody>,
) -> Result<Json<DeviceView>, ApiError> {
    caller.require(Role::Operator)?;
    let r = s.registry.clone();
    Ok(Json(
        blocking(move || r.revoke_device(&caller.name, &id, &req.reason)).await?,
    ))
}

/// The device's signed director document (what it must run now).
#[utoipa::path(get, path = "/api/v1/devices/{id}/director", params(("id" = String, Path)),
    responses((status = 200, content_type = "application/json", body = Object), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(super) async fn director(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = s.registry.clone();
    let doc = blocking(move || r.director_for(&id)).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], doc).into_response())
}

/// Where agents connect (the QUIC address, the MQTT broker and fleet) and
/// what technicians pin (the device CA's fingerprint). Any authenticated caller. Also served at
/// `/api/v1/hub/info`.
#[utoipa::path(get, path = "/api/v1/hub", responses((status = 200, body = HubInfo), (status = 401, body = Problem)))]
pub(super) async fn info(State(s): State<AppState>, _c: Caller) -> Json<HubInfo> {
    let ca = s.registry.ca();
    Json(HubInfo {
        sync_addr: s.sync_addr.clone(),
        ca_fingerprint: ca.fingerprint(),
        ca_pem: ca.cert_pem(),
        version: env!("CARGO_PKG_VERSION").into(),
        mqtt_addr: Some(s.telemetry.mqtt_addr.clone()),
        fleet: s.telemetry.fleet.clone(),
    })
}
