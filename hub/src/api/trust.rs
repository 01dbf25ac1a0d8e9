//! `/api/v1/trust`: the fleet's TUF repository (root chain, timestamp, snapshot,
//! targets) and signed manifests, for agents and for offline verification.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::extract::Caller;
use super::types::Problem;
use super::AppState;

fn json(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// A trust metadata document: `root.json` (newest), `N.root.json`,
/// `timestamp.json`, `snapshot.json` or `targets.json`.
#[utoipa::path(get, path = "/api/v1/trust/{document}", params(("document" = String, Path)),
    responses((status = 200, content_type = "application/json", body = Object), (status = 404, body = Problem)))]
pub(super) async fn document(
    State(s): State<AppState>,
    _c: Caller,
    Path(doc): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("trust document {doc:?} does not exist"),
        )
    };
    if doc == "root.json" {
        return s
            .roots
            .last()
            .map(|(_, r)| json(r.clone()))
            .ok_or_else(not_found);
    }
    if let Some(v) = doc
        .strip_suffix(".root.json")
        .and_then(|v| v.parse::<u64>().ok())
    {
        return s
            .roots
            .iter()
            .find(|(n, _)| *n == v)
            .map(|(_, r)| json(r.clone()))
            .ok_or_else(not_found);
    }
    let Some((_, p)) = s.registry.store().trust()? else {
        return Err(not_found());
    };
    match doc.as_str() {
        "timestamp.json" => Ok(json(p.timestamp)),
        "snapshot.json" => Ok(json(p.snapshot)),
        "targets.json" => Ok(json(p.targets)),
        _ => Err(not_found()),
    }
}
