//! [`ServeError`]: why a scoring request was not answered with outputs, with the
//! HTTP status and the metrics label each reason maps to.

use std::time::Duration;

/// Why a request failed. The message is the `error` of the response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ServeError {
    /// No endpoint of that name is routed here.
    #[error("model {0:?} is not served here")]
    UnknownModel(String),
    /// The version or pinned deployment is not one of the endpoint's.
    #[error("{0}")]
    UnknownDeployment(String),
    /// The endpoint (or the version or deployment asked for) has no model loaded.
    #[error("{0}")]
    NotReady(String),
    /// The body is not an inference request (bad JSON, bad binary framing).
    #[error("{0}")]
    Malformed(String),
    /// The request does not fit the model's signature.
    #[error("{0}")]
    Invalid(String),
    /// The body is larger than `ServeConfig::max_body_bytes`.
    #[error("request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Every execution slot is busy and the queue is full.
    #[error("the scoring queue is full; retry later")]
    Overloaded,
    /// The body did not arrive within `ServeConfig::request_timeout`.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    /// The request was not answered within `ServeConfig::request_timeout` of
    /// its body arriving.
    #[error("the request did not finish within {0:?}")]
    Timeout(Duration),
    /// The model failed to run.
    #[error("{0}")]
    Execution(String),
}

impl ServeError {
    /// The HTTP status code.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Self::UnknownModel(_) | Self::UnknownDeployment(_) => 404,
            Self::NotReady(_) => 503,
            Self::Malformed(_) | Self::Invalid(_) => 400,
            Self::TooLarge { .. } => 413,
            Self::Overloaded => 429,
            Self::BodyTimeout(_) => 408,
            Self::Timeout(_) => 504,
            Self::Execution(_) => 500,
        }
    }

    /// The `kind` label of `flotilla_agent_errors_total`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::UnknownModel(_) => "unknown_model",
            Self::UnknownDeployment(_) => "unknown_deployment",
            Self::NotReady(_) => "not_ready",
            Self::Malformed(_) => "malformed",
            Self::Invalid(_) => "invalid_input",
            Self::TooLarge { .. } => "too_large",
            Self::Overloaded => "overloaded",
            Self::BodyTimeout(_) => "body_timeout",
            Self::Timeout(_) => "timeout",
            Self::Execution(_) => "execution",
        }
    }
}
