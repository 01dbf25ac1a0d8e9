//! API errors as RFC 9457 problem details (`application/problem+json`).
//!
//! Every error answer carries a `detail` a person can act on; the CLI prints it
//! as its one-line message.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::types::Problem;
use crate::registry::RegistryError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What happened and what to do.
    pub detail: String,
}

impl ApiError {
    /// An error with `status` and `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }

    /// 400.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 500, logged.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the hub failed: {detail}"),
        )
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let status = match &e {
            RegistryError::BadRequest(_) => StatusCode::BAD_REQUEST,
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::Conflict(_) => StatusCode::CONFLICT,
            RegistryError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RegistryError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RegistryError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            RegistryError::Internal(m) => return ApiError::internal(m),
        };
        Self::new(status, e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        RegistryError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self
            .status
            .canonical_reason()
            .unwrap_or("Error")
            .to_string();
        let problem = Problem {
            type_: format!("https://flotilla.dev/problems/{}", self.status.as_u16()),
            title,
            status: self.status.as_u16(),
            detail: self.detail,
            instance: None,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}
