//! Errors of the admin API: every failure is JSON `{"error": {"code", "message"}}` with the right status.
//!
//! Exists so that no handler builds error bodies by hand and so that actix-web's own extractor failures
//! (bad query string, bad path, bad JSON body) become 400s in the same shape instead of plain-text responses.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::channel::ChannelError;

/// Seconds a client should wait before retrying after `unavailable`.
const RETRY_AFTER_SECS: &str = "1";

/// An admin API error: a status, a stable machine-readable code and a message for humans.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The JSON body of every error response.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable code: `unauthorized`, `forbidden`, `bad_request`, `not_found`, `too_large`, `unavailable`,
    /// `internal`.
    #[schema(example = "bad_request")]
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// A channel actor refused or could not answer.
    pub fn from_channel(e: &ChannelError) -> Self {
        match e {
            ChannelError::Storage(m) => {
                tracing::error!(error = %m, "admin request failed in storage");
                Self::internal(format!("storage failure: {m}"))
            }
            ChannelError::PresenceDisabled | ChannelError::PublishDisabled => {
                Self::forbidden(e.to_string())
            }
            ChannelError::AlreadySubscribed | ChannelError::Conflict => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            _ => Self::unavailable(e.to_string()),
        }
    }

    /// The channel actor's mailbox is closed (it stopped meanwhile).
    pub fn mailbox(_e: actix::MailboxError) -> Self {
        Self::unavailable("the channel is restarting; retry")
    }

    /// Reading the store failed.
    pub fn storage(e: &crate::history::HistoryError) -> Self {
        tracing::error!(error = %e, "admin request failed in storage");
        Self::internal(format!("storage failure: {e}"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.insert_header(("Retry-After", RETRY_AFTER_SECS));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header(("WWW-Authenticate", "Bearer realm=\"herald-admin\""));
        }
        res.json(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
            },
        })
    }
}

/// Unknown paths (and wrong methods) get a JSON 404.
pub(crate) async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::not_found(format!("no such endpoint: {} {}", req.method(), req.path()))
        .error_response()
}

/// Query strings that do not parse become 400 with the parser's message.
pub(crate) fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|e, _| ApiError::bad_request(format!("bad query string: {e}")).into())
}

/// Path segments that do not parse become 400.
pub(crate) fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|e, _| ApiError::bad_request(format!("bad path: {e}")).into())
}

/// Bodies that are not the expected JSON become 400 (413 if too large).
pub(crate) fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(1024 * 1024)
        .error_handler(|e, _| {
            use actix_web::error::JsonPayloadError;
            let err = match &e {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
                }
                JsonPayloadError::ContentType => {
                    ApiError::bad_request("the body must be JSON (Content-Type: application/json)")
                }
                _ => ApiError::bad_request(format!("bad JSON body: {e}")),
            };
            err.into()
        })
}
