//! `/api/v1/audit`: the hash-chained audit log and its verification.

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::Caller;
use super::types::{AuditEntry, AuditVerification, Page, Problem};
use super::{blocking, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    #[serde(default)]
    since: u64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    1000
}

/// Entries with `seq > since`.
#[utoipa::path(get, path = "/api/v1/audit", params(("since" = Option<u64>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = Page<AuditEntry>), (status = 400, body = Problem)))]
pub(super) async fn list(
    State(s): State<AppState>,
    _c: Caller,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let r = s.registry.clone();
    Ok(Json(blocking(move || r.audit(q.since, q.limit)).await?))
}

/// Check every entry's hash and link.
#[utoipa::path(get, path = "/api/v1/audit/verify", responses((status = 200, body = AuditVerification)))]
pub(super) async fn verify(
    State(s): State<AppState>,
    _c: Caller,
) -> Result<Json<AuditVerification>, ApiError> {
    let r = s.registry.clone();
    Ok(Json(blocking(move || r.audit_verify()).await?))
}
