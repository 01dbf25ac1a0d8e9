//! Request extractors: the authenticated caller, and JSON bodies whose
//! rejections are problem details.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::types::Role;
use super::AppState;

/// Who is calling, from `Authorization: Bearer TOKEN`.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token name.
    pub name: String,
    /// Role.
    pub role: Role,
}

impl Caller {
    /// Refuses callers below `role` with 403.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token {} has role {:?}; this needs {:?} or higher",
                    self.name, self.role, role
                )
                .to_lowercase(),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing Authorization header: send `Authorization: Bearer TOKEN` (see `flotilla login`)"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or_else(|| unauthorized("Authorization header must be `Bearer TOKEN`"))?;
        let record = state
            .registry
            .store()
            .token(&crate::tokens::hash(token))?
            .ok_or_else(|| unauthorized("unknown or revoked token"))?;
        Ok(Caller {
            name: record.name,
            role: record.role,
        })
    }
}

/// A JSON body; malformed JSON, unknown fields and wrong types become a 400
/// (415 without a JSON content type, 413 past the size limit) with the parser's
/// message.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => {
            ApiError::bad_request(format!("invalid request body: {}", e.body_text()))
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request(format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON with `Content-Type: application/json`",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is larger than this hub accepts (api.max_json_bytes)",
        ),
        other => ApiError::new(other.status(), other.body_text()),
    }
}

/// The reason of a DELETE, whose JSON body (`{"reason": …}`) is optional:
/// no body records an empty reason.
pub(super) fn optional_reason(body: &[u8]) -> Result<String, ApiError> {
    if body.is_empty() {
        return Ok(String::new());
    }
    serde_json::from_slice::<super::types::ReasonBody>(body)
        .map(|b| b.reason)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}
