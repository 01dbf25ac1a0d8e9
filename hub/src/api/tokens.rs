//! `/api/v1/tokens` and `/api/v1/whoami`: API tokens (admin only) and the
//! caller's identity.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::types::{CreateToken, Problem, Role, TokenView, WhoAmI};
use super::{blocking, AppState};

/// Who the token belongs to.
#[utoipa::path(get, path = "/api/v1/whoami", responses((status = 200, body = WhoAmI), (status = 401, body = Problem)))]
pub(super) async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: caller.name,
        role: caller.role,
    })
}

/// Create a token (its secret is in this answer only).
#[utoipa::path(post, path = "/api/v1/tokens", request_body = CreateToken,
    responses((status = 201, body = TokenView), (status = 403, body = Problem), (status = 409, body = Problem)))]
pub(super) async fn create(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<TokenView>), ApiError> {
    caller.require(Role::Admin)?;
    let r = s.registry.clone();
    Ok((
        StatusCode::CREATED,
        Json(blocking(move || r.create_token(&caller.name, req)).await?),
    ))
}

/// List tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", responses((status = 200, body = Vec<TokenView>), (status = 403, body = Problem)))]
pub(super) async fn list(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    caller.require(Role::Admin)?;
    let tokens = s.registry.store().tokens()?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| TokenView {
                name: t.name,
                role: t.role,
                created_at: t.created_at,
                token: None,
            })
            .collect(),
    ))
}

/// Revoke a token.
#[utoipa::path(delete, path = "/api/v1/tokens/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub(super) async fn revoke(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    let r = s.registry.clone();
    blocking(move || r.revoke_token(&caller.name, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}
