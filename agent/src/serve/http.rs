//! The HTTP API (axum): Open Inference Protocol v2 REST plus `/metrics`.
//!
//! - `GET /v2/health/live`, `GET /v2/health/ready` (ready when every routed
//!   deployment has a model; 400 otherwise, as the protocol's 4xx asks)
//! - `GET /v2` server metadata
//! - `GET /v2/models/{name}[/versions/{version}]` model metadata,
//!   `.../ready` model readiness
//! - `POST /v2/models/{name}[/versions/{version}]/infer`
//! - `GET /metrics` Prometheus text
//!
//! Every infer response names the deployment that served it
//! (`x-flotilla-deployment`) and its target (`x-flotilla-model-version`).
//! Errors are `{"error": "..."}`. Bodies are read here, as a stream, and
//! refused past `max_body_bytes` without buffering more.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt as _;
use serde_json::json;

use super::datatype::{metadata_shape, DataType};
use super::error::ServeError;
use super::infer::{Answer, InferCall};
use super::wire::HEADER_LENGTH;
use super::Serving;

/// Response header: the deployment that served the request.
pub(crate) const DEPLOYMENT_HEADER: &str = "x-flotilla-deployment";
/// Request header: route by a hash of this key.
pub(crate) const SESSION_HEADER: &str = "x-flotilla-session";
/// Response header: the TUF target of the model version that served it.
pub(crate) const VERSION_HEADER: &str = "x-flotilla-model-version";

/// Binds `listen` (port 0 picks a free one) and returns the bound address and a
/// future that serves `serving` until `shutdown` completes; then it stops
/// accepting, lets requests in flight finish, and resolves.
///
/// # Errors
///
/// The address cannot be bound (bind), or accepting fails (the future).
pub async fn bind(
    serving: Arc<Serving>,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>> + Send)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = router(serving);
    let served = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    };
    Ok((addr, served))
}

fn router(serving: Arc<Serving>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_version_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_version),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such route".to_owned()) })
        .with_state(serving)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(status: StatusCode, message: String) -> Response {
    json_response(status, &json!({ "error": message }))
}

fn serve_error(e: &ServeError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_response(status, e.to_string())
}

async fn server_metadata() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "name": "flotilla-agent",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": ["binary_tensor_data"],
        }),
    )
}

async fn live() -> Response {
    json_response(StatusCode::OK, &json!({ "live": true }))
}

async fn ready(State(s): State<Arc<Serving>>) -> Response {
    let ready = s.table().ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    json_response(status, &json!({ "ready": ready }))
}

fn metadata(s: &Serving, name: &str, version: Option<&str>) -> Response {
    let table = s.table();
    let Some(endpoint) = table.endpoints.get(name) else {
        return serve_error(&ServeError::UnknownModel(name.to_owned()));
    };
    let active = match endpoint.metadata_model(version) {
        Ok(a) => a,
        Err(e) => return serve_error(&e),
    };
    let sig = active.model.signature();
    let tensors = |specs: &[flotilla_protocol::manifest::TensorSpec]| {
        specs
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "datatype": DataType::of_element(t.elem_type).name(),
                    "shape": metadata_shape(t),
                })
            })
            .collect::<Vec<_>>()
    };
    let versions = match version {
        Some(v) => vec![v.to_owned()],
        None => endpoint.versions(),
    };
    json_response(
        StatusCode::OK,
        &json!({
            "name": name,
            "versions": versions,
            "platform": "onnx",
            "inputs": tensors(&sig.inputs),
            "outputs": tensors(&sig.outputs),
        }),
    )
}

async fn model_metadata(State(s): State<Arc<Serving>>, Path(name): Path<String>) -> Response {
    metadata(&s, &name, None)
}

async fn model_version_metadata(
    State(s): State<Arc<Serving>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    metadata(&s, &name, Some(&version))
}

fn model_readiness(s: &Serving, name: &str, version: Option<&str>) -> Response {
    let table = s.table();
    let Some(endpoint) = table.endpoints.get(name) else {
        return serve_error(&ServeError::UnknownModel(name.to_owned()));
    };
    let ready = endpoint.ready_for(version);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    json_response(status, &json!({ "name": name, "ready": ready }))
}

async fn model_ready(State(s): State<Arc<Serving>>, Path(name): Path<String>) -> Response {
    model_readiness(&s, &name, None)
}

async fn model_version_ready(
    State(s): State<Arc<Serving>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    model_readiness(&s, &name, Some(&version))
}

async fn metrics(State(s): State<Arc<Serving>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics_text(),
    )
        .into_response()
}

async fn infer(
    State(s): State<Arc<Serving>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_common(s, &name, None, &headers, body).await
}

async fn infer_version(
    State(s): State<Arc<Serving>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_common(s, &name, Some(&version), &headers, body).await
}

async fn infer_common(
    s: Arc<Serving>,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let text = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    let call = InferCall {
        model: name,
        version,
        pin: text(DEPLOYMENT_HEADER),
        session: text(SESSION_HEADER),
        header_len: text(HEADER_LENGTH),
    };
    let limit = s.config.max_body_bytes;
    let declared = text(header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
    let answer = s.infer(call, read_body(body, limit, declared)).await;
    answer_response(answer)
}

/// How much of a body past the limit is read and discarded before answering
/// 413, so that a client still sending gets the answer instead of a broken pipe.
/// Past this the connection is simply closed.
const DRAIN_BYTES: u64 = 16 << 20;

/// The body, at most `limit` bytes.
async fn read_body(body: Body, limit: usize, declared: Option<u64>) -> Result<Vec<u8>, ServeError> {
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > limit as u64) {
        drain(&mut stream, 0).await;
        return Err(ServeError::TooLarge { limit });
    }
    let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit).min(limit));
    let mut buf = Vec::with_capacity(capacity);
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ServeError::Malformed(format!("reading the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            drain(&mut stream, chunk.len() as u64).await;
            return Err(ServeError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Reads and drops what is left of a body, up to [`DRAIN_BYTES`] in all.
async fn drain(stream: &mut axum::body::BodyDataStream, mut drained: u64) {
    while drained < DRAIN_BYTES {
        match stream.next().await {
            Some(Ok(chunk)) => drained += chunk.len() as u64,
            _ => return,
        }
    }
}

fn answer_response(a: Answer) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Body::from(a.body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    match a.json_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(HeaderName::from_static(HEADER_LENGTH), HeaderValue::from(n));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    if let Some((deployment, target)) = &a.served_by {
        // Names that are not valid header values are left out, not mangled.
        if let Ok(v) = HeaderValue::from_str(deployment) {
            h.insert(HeaderName::from_static(DEPLOYMENT_HEADER), v);
        }
        if let Ok(v) = HeaderValue::from_str(target) {
            h.insert(HeaderName::from_static(VERSION_HEADER), v);
        }
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
