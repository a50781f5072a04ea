//! Error codes of `error` frames and the error a bad client frame turns into.

use super::RequestId;

/// The `code` of an `error` frame. Each is documented in `docs/protocol.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    UnsupportedVersion,
    Forbidden,
    NotSubscribed,
    AlreadySubscribed,
    TooLarge,
    RateLimited,
    TooManySubscriptions,
    Unavailable,
    Internal,
    /// An idempotency key was reused by the same publisher with different data.
    Conflict,
}

impl ErrorCode {
    /// The wire name of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Conflict => "conflict",
        }
    }
}

/// Why a client frame could not be turned into a request. `id` is the frame's id when it was readable, so
/// the `error` frame can echo it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct FrameError {
    pub id: Option<RequestId>,
    pub code: ErrorCode,
    pub message: String,
}

impl FrameError {
    pub fn new(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        FrameError {
            id,
            code,
            message: message.into(),
        }
    }

    pub fn bad(id: Option<RequestId>, message: impl Into<String>) -> Self {
        FrameError::new(id, ErrorCode::BadRequest, message)
    }
}
