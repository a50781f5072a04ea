//! Typed events handed to the application.
//!
//! Exists so that applications never see raw frames: a subscription yields [`SubscriptionEvent`]s
//! (messages already de-duplicated, plus the explicit "not recovered" signal), and the connection
//! yields [`ConnectionState`] changes, each stamped with the instant it happened so reconnect
//! timing can be observed (and tested).

use crate::error::Error;
use crate::frame::MessageFields;
use futures_util::Stream;
use rmpv::Value;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A channel message delivered to the application (exactly once, in offset order).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Channel name.
    pub channel: String,
    /// Message id (a ULID), stable across replays.
    pub id: String,
    /// Epoch of the channel.
    pub epoch: String,
    /// Offset of the message in its epoch.
    pub offset: u64,
    /// The published value (any JSON or MessagePack value).
    pub data: Value,
    /// The publisher's user; `None` for anonymous and server publishes.
    pub from: Option<String>,
}

impl Message {
    /// Deserializes `data` into `T`.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        rmpv::ext::from_value(self.data.clone()).map_err(Error::encode)
    }

    /// `data` as a JSON value (binary becomes an array of bytes, as JSON subscribers see it).
    pub fn data_json(&self) -> Result<serde_json::Value, Error> {
        serde_json::to_value(&self.data).map_err(Error::encode)
    }
}

impl From<MessageFields> for Message {
    fn from(f: MessageFields) -> Self {
        Message {
            channel: f.channel,
            id: f.id,
            epoch: f.epoch,
            offset: f.offset,
            data: f.data,
            from: f.from,
        }
    }
}

/// An event of one subscription.
#[derive(Debug, Clone)]
pub enum SubscriptionEvent {
    /// A message, never delivered twice.
    Message(Message),
    /// After a reconnect the server could not replay what was missed (history lost or expired):
    /// the application must refetch its state. Live delivery continues after `head`.
    NotRecovered {
        /// The channel's current epoch.
        epoch: String,
        /// The channel's head offset; messages after it follow.
        head: u64,
    },
    /// A session joined the channel (namespaces with `join_leave`).
    Join {
        /// Session id.
        session: String,
        /// Its user.
        user: Option<String>,
    },
    /// A session left the channel.
    Leave {
        /// Session id.
        session: String,
        /// Its user.
        user: Option<String>,
    },
    /// The subscription ended with an error (resubscribe refused, client gave up); the stream ends
    /// after it.
    Ended(Error),
}

/// A change of the connection's state.
#[derive(Debug, Clone)]
pub enum ConnectionState {
    /// A connection attempt starts. `attempt` counts attempts since the last successful connection
    /// (1 for the first).
    Connecting {
        /// Attempt number.
        attempt: u32,
        /// When the attempt started.
        at: Instant,
    },
    /// The handshake succeeded and the `welcome` frame arrived.
    Connected {
        /// The endpoint this connection went to: the URL given to [`crate::Client::start`], or
        /// the one of the list given to [`crate::Client::start_any`] that this attempt used.
        url: String,
        /// Session id given by the server.
        session: String,
        /// Authenticated user, `None` when anonymous.
        user: Option<String>,
        /// The server's ping interval.
        heartbeat_ms: u64,
        /// When.
        at: Instant,
    },
    /// The connection was lost or an attempt failed.
    Disconnected {
        /// Close code (from the close frame or the `disconnect` frame, or the HTTP status of a
        /// refused handshake), `None` when the transport just broke.
        code: Option<u16>,
        /// Why.
        reason: String,
        /// When.
        at: Instant,
    },
    /// The next attempt will start after `delay`, to another URL of the list given to
    /// [`crate::Client::start_any`] (to the same URL when there is one).
    Reconnecting {
        /// The number of the attempt that will be made.
        attempt: u32,
        /// Delay drawn from the backoff window (or the server's `retry_after_ms`).
        delay: Duration,
        /// When the delay started.
        at: Instant,
    },
    /// The client stopped trying; every pending call failed with [`Error::GaveUp`].
    GaveUp {
        /// Why.
        reason: String,
        /// When.
        at: Instant,
    },
    /// The application closed the client.
    Closed,
}

/// Stream of [`SubscriptionEvent`]s of one channel. Dropping it unsubscribes.
pub struct Subscription {
    pub(crate) channel: String,
    pub(crate) rx: mpsc::Receiver<SubscriptionEvent>,
    pub(crate) on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Subscription {
    /// The channel of the subscription.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Waits for the next event; `None` once the subscription ended.
    pub async fn next_event(&mut self) -> Option<SubscriptionEvent> {
        self.rx.recv().await
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .finish()
    }
}

impl Stream for Subscription {
    type Item = SubscriptionEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

/// Stream of [`ConnectionState`] changes, buffered up to `ClientOptions::state_buffer` (newer ones are
/// dropped while it is full).
#[derive(Debug)]
pub struct StateStream {
    pub(crate) rx: mpsc::Receiver<ConnectionState>,
}

impl StateStream {
    /// Waits for the next state change; `None` once the client stopped for good.
    pub async fn next_state(&mut self) -> Option<ConnectionState> {
        self.rx.recv().await
    }
}

impl Stream for StateStream {
    type Item = ConnectionState;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}
