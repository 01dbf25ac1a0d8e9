//! `/api/v1/models`: register, search, show, tag, archive, delete, download.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_protocol::manifest::BundleManifest;

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::types::*;
use super::{blocking, AppState};
use crate::registry::filter::Filter;

/// Parsed query string: repeated `tag` and `metric`, single `name`, `limit`, `cursor`.
#[derive(Debug, Default)]
pub(super) struct Query {
    name: Option<String>,
    filters: Vec<Filter>,
    limit: usize,
    cursor: Option<String>,
}

fn parse_query(raw: Option<String>) -> Result<Query, ApiError> {
    let mut q = Query {
        limit: 100,
        ..Query::default()
    };
    let raw = raw.unwrap_or_default();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| {
            ApiError::bad_request(format!("query parameter {k} is not valid percent-encoding"))
        })?;
        match k {
            "name" => q.name = Some(v),
            "tag" => q
                .filters
                .push(Filter::tag(&v).map_err(ApiError::bad_request)?),
            "metric" => q
                .filters
                .push(Filter::metric(&v).map_err(ApiError::bad_request)?),
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=1000).contains(l))
                    .ok_or_else(|| ApiError::bad_request("limit must be 1-1000"))?
            }
            "cursor" => q.cursor = Some(v),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (use name, tag, metric, limit, cursor)"
                )))
            }
        }
    }
    Ok(q)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn parse_version(v: &str) -> Result<u64, ApiError> {
    v.parse()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::bad_request(format!("version {v:?} is not a positive integer")))
}

/// Register the next version of a model.
#[utoipa::path(post, path = "/api/v1/models/{name}/versions", params(("name" = String, Path)), request_body = RegisterVersion,
    responses((status = 201, body = VersionView), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub(super) async fn register(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<RegisterVersion>,
) -> Result<(StatusCode, Json<VersionView>), ApiError> {
    caller.require(Role::Operator)?;
    let r = s.registry.clone();
    let view = blocking(move || r.register(&caller.name, &name, req)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Search models.
#[utoipa::path(get, path = "/api/v1/models",
    params(("name" = Option<String>, Query, description = "substring of the name"),
           ("tag" = Option<String>, Query, description = "KEY=VALUE; repeatable"),
           ("metric" = Option<String>, Query, description = "NAME>=NUMBER (>= <= > < =); repeatable"),
           ("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<ModelView>), (status = 400, body = Problem)))]
pub(super) async fn list(
    State(s): State<AppState>,
    _c: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<ModelView>>, ApiError> {
    let q = parse_query(raw)?;
    let r = s.registry.clone();
    Ok(Json(
        blocking(move || r.models(q.name.as_deref(), &q.filters, q.limit, q.cursor.as_deref()))
            .await?,
    ))
}

/// One model.
#[utoipa::path(get, path = "/api/v1/models/{name}", params(("name" = String, Path)),
    responses((status = 200, body = ModelView), (status = 404, body = Problem)))]
pub(super) async fn show(
    State(s): State<AppState>,
    _c: Caller,
    Path(name): Path<String>,
) -> Result<Json<ModelView>, ApiError> {
    let r = s.registry.clone();
    Ok(Json(blocking(move || r.model(&name)).await?))
}

/// Versions of a model.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions", params(("name" = String, Path),
    ("tag" = Option<String>, Query), ("metric" = Option<String>, Query), ("limit" = Option<usize>, Query), ("cursor" = Option<u64>, Query)),
    responses((status = 200, body = Page<VersionView>), (status = 404, body = Problem)))]
pub(super) async fn versions(
    State(s): State<AppState>,
    _c: Caller,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<VersionView>>, ApiError> {
    let q = parse_query(raw)?;
    let cursor = q.cursor.as_deref().map(parse_version).transpose()?;
    let r = s.registry.clone();
    Ok(Json(
        blocking(move || r.versions(&name, &q.filters, q.limit, cursor)).await?,
    ))
}

/// One version.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}", params(("name" = String, Path), ("version" = u64, Path)),
    responses((status = 200, body = VersionView), (status = 404, body = Problem)))]
pub(super) async fn version(
    State(s): State<AppState>,
    _c: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<VersionView>, ApiError> {
    let v = parse_version(&version)?;
    let r = s.registry.clone();
    Ok(Json(blocking(move || r.version(&name, v)).await?))
}

/// Set and remove tags.
#[utoipa::path(patch, path = "/api/v1/models/{name}/versions/{version}/tags", params(("name" = String, Path), ("version" = u64, Path)),
    request_body = UpdateTags, responses((status = 200, body = VersionView), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub(super) async fn tags(
    State(s): State<AppState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
    ApiJson(req): ApiJson<UpdateTags>,
) -> Result<Json<VersionView>, ApiError> {
    caller.require(Role::Operator)?;
    let v = parse_version(&version)?;
    let r = s.registry.clone();
    Ok(Json(
        blocking(move || r.update_tags(&caller.name, &name, v, req)).await?,
    ))
}

/// Archive a version.
#[utoipa::path(post, path = "/api/v1/models/{name}/versions/{version}/archive", params(("name" = String, Path), ("version" = u64, Path)),
    request_body = ReasonBody, responses((status = 200, body = VersionView), (status = 409, body = Problem)))]
pub(super) async fn archive(
    State(s): State<AppState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
    ApiJson(req): ApiJson<ReasonBody>,
) -> Result<Json<VersionView>, ApiError> {
    caller.require(Role::Operator)?;
    let v = parse_version(&version)?;
    let r = s.registry.clone();
    Ok(Json(
        blocking(move || r.archive(&caller.name, &name, v, &req.reason)).await?,
    ))
}

/// Delete a version (409 while a deployment uses it).
#[utoipa::path(delete, path = "/api/v1/models/{name}/versions/{version}", params(("name" = String, Path), ("version" = u64, Path)),
    request_body = ReasonBody, responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(super) async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    let v = parse_version(&version)?;
    let reason = super::extract::optional_reason(&body)?;
    let r = s.registry.clone();
    blocking(move || r.delete(&caller.name, &name, v, &reason)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Download a version's model file.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}/file", params(("name" = String, Path), ("version" = u64, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>, headers(("x-flotilla-sha256" = String))),
              (status = 404, body = Problem)))]
pub(super) async fn file(
    State(s): State<AppState>,
    _c: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let v = parse_version(&version)?;
    let r = s.registry.clone();
    let manifest: BundleManifest = blocking(move || r.manifest(&name, v)).await?;
    let Some(file) = manifest.files.first().cloned() else {
        return Err(ApiError::internal("manifest lists no file"));
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(4);
    let r = s.registry.clone();
    tokio::task::spawn_blocking(move || {
        for c in &file.chunks {
            let item = r
                .chunk(&c.digest)
                .map(axum::body::Bytes::from)
                .map_err(std::io::Error::other);
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                break;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, manifest.files[0].size.to_string()),
        (
            header::HeaderName::from_static("x-flotilla-sha256"),
            manifest.files[0].sha256.to_hex(),
        ),
        (
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}\"",
                manifest.files[0].path.replace('"', "")
            ),
        ),
    ];
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// The signed bundle manifest (CBOR) of a version: a TUF target listed in
/// `/api/v1/trust/targets.json`.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}/manifest", params(("name" = String, Path), ("version" = u64, Path)),
    responses((status = 200, content_type = "application/cbor", body = Vec<u8>), (status = 404, body = Problem)))]
pub(super) async fn manifest(
    State(s): State<AppState>,
    _c: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let v = parse_version(&version)?;
    let r = s.registry.clone();
    let bytes = blocking(move || {
        let view = r.version(&name, v)?;
        r.store().manifest(&view.target)?.ok_or_else(|| {
            crate::registry::RegistryError::Internal(format!(
                "manifest of {} is missing",
                view.target
            ))
        })
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/cbor")], bytes).into_response())
}
