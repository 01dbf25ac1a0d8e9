//! `/api/v1/uploads`: resumable uploads of model files and datasets.
//!
//! A client creates an upload with its size, then sends bytes with `PATCH` and
//! `Upload-Offset: N`, where N must be what the hub has durably received. After a
//! broken connection it asks (`GET`) where the upload stands and continues from
//! there; bytes past the acknowledged offset are discarded, so a torn write
//! cannot corrupt the file. The hub hashes the file itself at registration.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::types::{CreateUpload, Problem, Role, UploadState};
use super::{blocking, AppState};

/// Header carrying the offset a PATCH starts at.
pub(super) const UPLOAD_OFFSET: &str = "upload-offset";

/// Start an upload.
#[utoipa::path(post, path = "/api/v1/uploads", request_body = CreateUpload,
    responses((status = 201, body = UploadState), (status = 400, body = Problem), (status = 413, body = Problem)))]
pub(super) async fn create(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateUpload>,
) -> Result<(StatusCode, Json<UploadState>), ApiError> {
    caller.require(Role::Operator)?;
    let r = s.registry.clone();
    let state = blocking(move || r.create_upload(&caller.name, req)).await?;
    Ok((StatusCode::CREATED, Json(state)))
}

/// Where an upload stands.
#[utoipa::path(get, path = "/api/v1/uploads/{id}", params(("id" = String, Path)),
    responses((status = 200, body = UploadState), (status = 404, body = Problem)))]
pub(super) async fn get(
    State(s): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<UploadState>, ApiError> {
    let r = s.registry.clone();
    Ok(Json(blocking(move || r.upload_state(&id)).await?))
}

/// Append bytes at `Upload-Offset`.
#[utoipa::path(patch, path = "/api/v1/uploads/{id}", params(("id" = String, Path), ("Upload-Offset" = u64, Header)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = UploadState), (status = 409, body = Problem), (status = 413, body = Problem)))]
pub(super) async fn append(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<UploadState>, ApiError> {
    caller.require(Role::Operator)?;
    let offset: u64 = headers
        .get(UPLOAD_OFFSET)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing or invalid Upload-Offset header (the byte offset this body starts at)",
            )
        })?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a PATCH body may be at most {} bytes; send smaller pieces",
                    s.max_patch_bytes
                ),
            )
        } else {
            ApiError::bad_request(format!("reading the body failed: {}", e.body_text()))
        }
    })?;
    let r = s.registry.clone();
    Ok(Json(
        blocking(move || r.append_upload(&id, offset, &body)).await?,
    ))
}

/// Abandon an upload.
#[utoipa::path(delete, path = "/api/v1/uploads/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)))]
pub(super) async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    let r = s.registry.clone();
    blocking(move || r.delete_upload(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
