//! Connection options and the token provider.
//!
//! Exists to keep every tunable of the client (encoding, reconnect policy, timeouts) in one
//! documented place with its default, and to define how credentials are obtained: the client asks
//! the [`TokenProvider`] before every connection attempt, so an application can hand out a fresh
//! token after `4003 token_expired` or an HTTP 401/403 at the handshake.

use crate::backoff::BackoffPolicy;
use crate::dedup::DEFAULT_ID_MEMORY;
use crate::frame::Encoding;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The future returned by a [`TokenProvider`].
pub type TokenFuture = Pin<Box<dyn Future<Output = Option<String>> + Send + 'static>>;

/// Supplies the bearer token sent as `Authorization: Bearer <token>` on each handshake
/// (`None`: connect anonymously).
///
/// Implemented for every `Fn() -> impl Future<Output = Option<String>>` closure:
///
/// ```
/// use herald_client::TokenProvider;
/// fn takes(_: impl TokenProvider) {}
/// takes(|| async { Some("my-jwt".to_string()) });
/// ```
pub trait TokenProvider: Send + Sync + 'static {
    /// Returns the token for the next connection attempt.
    fn token(&self) -> TokenFuture;
}

impl<F, Fut> TokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<String>> + Send + 'static,
{
    fn token(&self) -> TokenFuture {
        Box::pin(self())
    }
}

/// A provider for anonymous connections.
pub fn no_token() -> impl TokenProvider {
    || async { None }
}

/// A provider that always returns the same token.
pub fn static_token(token: impl Into<String>) -> impl TokenProvider {
    let token = token.into();
    move || {
        let t = token.clone();
        async move { Some(t) }
    }
}

/// Options of a [`crate::Client`]. All fields have documented defaults (`ClientOptions::default()`).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Wire encoding (default JSON).
    pub encoding: Encoding,
    /// Reconnect policy (default: 0.5 s doubling to 20 s, full jitter, unlimited attempts).
    pub backoff: BackoffPolicy,
    /// Time allowed for TCP connect, WebSocket upgrade and the `welcome` frame (default 10 s).
    pub connect_timeout: Duration,
    /// Added to `2 × heartbeat_ms` of the welcome before a silent connection is declared dead
    /// (default 2 s).
    pub heartbeat_margin: Duration,
    /// How often a command refused with `rate_limited` or `unavailable` is re-sent (after
    /// `retry_after_ms`, or 500 ms when the server gives none) before the error reaches the
    /// caller (default 3).
    pub command_retries: u32,
    /// Recent message ids remembered per channel for duplicate suppression (default 4096).
    pub id_memory: usize,
    /// How long a connection must last before losing it restarts the backoff at its base delay
    /// (default 5 s). A connection lost sooner counts as a failed attempt, so a server that accepts and
    /// drops at once is retried with growing delays, not hammered.
    pub stable_after: Duration,
    /// Events one [`crate::Subscription`] holds for the application (default 1024). When the application
    /// reads slower than messages arrive and a subscription's buffer is full, the client stops reading the
    /// socket until the application catches up: memory stays bounded, the server sees a slow consumer
    /// and may close the connection (4001), and the client then reconnects and resumes where the
    /// application is. Nothing is lost or doubled.
    pub event_buffer: usize,
    /// Connection-state events kept for the [`crate::StateStream`] (default 64). When the application
    /// does not read them, newer ones are dropped; [`crate::Client::is_connected`] always tells the
    /// current state.
    pub state_buffer: usize,
    /// Commands queued for the connection task (default 1024); beyond it, commands wait for room.
    pub command_buffer: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            encoding: Encoding::Json,
            backoff: BackoffPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            heartbeat_margin: Duration::from_secs(2),
            command_retries: 3,
            id_memory: DEFAULT_ID_MEMORY,
            stable_after: Duration::from_secs(5),
            event_buffer: 1024,
            state_buffer: 64,
            command_buffer: 1024,
        }
    }
}
