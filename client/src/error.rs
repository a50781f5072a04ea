//! Errors of the client.
//!
//! One `thiserror` enum for everything a caller can see, so applications can match on the cause
//! (server refusal, connection given up, local misuse) instead of parsing strings.

use std::fmt;

/// An error returned by a [`crate::Client`] call or reported on a subscription stream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server answered the command with an `error` frame (see the error codes of the protocol).
    #[error("server error {code}: {message}")]
    Server {
        /// The protocol error code, e.g. `forbidden`, `rate_limited`.
        code: String,
        /// The human-readable message of the server.
        message: String,
        /// The server's advice on when to retry, if any.
        retry_after_ms: Option<u64>,
    },
    /// The client stopped reconnecting (attempt limit reached, a "do not reconnect" close code,
    /// or the handshake was refused with 401/403 and the token provider had nothing new).
    #[error("gave up connecting: {0}")]
    GaveUp(String),
    /// The client was closed by the application (or every handle was dropped).
    #[error("client closed")]
    Closed,
    /// The channel is already subscribed by this client.
    #[error("already subscribed to {0}")]
    AlreadySubscribed(String),
    /// The channel is not subscribed by this client.
    #[error("not subscribed to {0}")]
    NotSubscribed(String),
    /// A value could not be converted to or from the wire representation.
    #[error("encoding error: {0}")]
    Encode(String),
    /// The URL or an option is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The server's reply could not be understood.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

impl Error {
    pub(crate) fn encode(e: impl fmt::Display) -> Self {
        Error::Encode(e.to_string())
    }

    /// The protocol error code when the server refused the command.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Shorthand result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
