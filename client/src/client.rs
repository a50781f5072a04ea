//! The application-facing handle.
//!
//! Exists to give applications a small async API (`subscribe`, `publish`, `unsubscribe`,
//! `presence`, `history`) that does not change while the connection underneath drops and comes
//! back: every call is a message to the driver task, answered through a oneshot channel.

use crate::driver::{Cmd, Driver, Status};
use crate::endpoints::Endpoints;
use crate::error::{Error, Result};
use crate::events::{StateStream, Subscription};
use crate::frame::{self, Command, HistoryPage, Presence, PublishAck};
use crate::options::{ClientOptions, TokenProvider};
use rmpv::Value;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// A herald client. Cheap to clone; all clones share one connection. The connection task stops
/// when [`Client::close`] is called or every clone and every [`Subscription`] is dropped.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Cmd>,
    event_buffer: usize,
    status: watch::Receiver<Status>,
    sub_ids: Arc<AtomicU64>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl Client {
    /// Starts the client for one server without waiting: the connection task runs in the background
    /// (on the current tokio runtime) and commands issued before it connects are queued.
    ///
    /// The same as [`Client::start_any`] with a list of one URL. Fails with [`Error::Config`] when
    /// `url` is not a `ws://` or `wss://` URL.
    pub fn start(
        url: impl Into<String>,
        tokens: impl TokenProvider,
        options: ClientOptions,
    ) -> Result<(Client, StateStream)> {
        Client::start_any(vec![url.into()], tokens, options)
    }

    /// Starts the client for a list of equivalent servers (the nodes of one cluster) without
    /// waiting: the connection task runs in the background (on the current tokio runtime) and
    /// commands issued before it connects are queued.
    ///
    /// The first attempt goes to a uniformly random URL of the list, so many clients spread over
    /// the nodes. After a failed attempt, and after a connection is lost and the close code allows
    /// reconnecting (e.g. 1001 when a node shuts down or drains, or a broken TCP connection), the
    /// next attempt goes to another URL of the list, picked uniformly among the others (so the
    /// clients of a draining node spread over the remaining ones). The delays between attempts are
    /// those of [`ClientOptions::backoff`], whatever the URL. Subscriptions resume on the new node
    /// from their last position: every node of a cluster holds the same channel log, so delivery
    /// stays exactly once and in order. [`crate::ConnectionState::Connected`] tells which URL a
    /// connection went to. The URLs must be nodes of one cluster: a server that does not hold the
    /// channel's log cannot resume a subscription, which then reports
    /// [`crate::SubscriptionEvent::NotRecovered`].
    ///
    /// Fails with [`Error::Config`] when the list is empty or one of its entries is not a `ws://` or
    /// `wss://` URL.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), herald_client::Error> {
    /// use herald_client::{no_token, Client, ClientOptions};
    /// let nodes = vec![
    ///     "ws://10.0.0.1:8000/ws".to_string(),
    ///     "ws://10.0.0.2:8000/ws".to_string(),
    ///     "ws://10.0.0.3:8000/ws".to_string(),
    /// ];
    /// let (client, _states) = Client::start_any(nodes, no_token(), ClientOptions::default())?;
    /// client.wait_connected().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_any(
        urls: Vec<String>,
        tokens: impl TokenProvider,
        options: ClientOptions,
    ) -> Result<(Client, StateStream)> {
        let endpoints = Endpoints::new(urls)?;
        let (tx, cmd_rx) = mpsc::channel(options.command_buffer.max(1));
        let (state_tx, state_rx) = mpsc::channel(options.state_buffer.max(1));
        let event_buffer = options.event_buffer.max(2);
        let (status_tx, status) = watch::channel(Status::Connecting);
        let driver = Driver::new(
            endpoints,
            Arc::new(tokens),
            options,
            cmd_rx,
            state_tx,
            status_tx,
        );
        tokio::spawn(driver.run());
        Ok((
            Client {
                tx,
                event_buffer,
                status,
                sub_ids: Arc::new(AtomicU64::new(1)),
            },
            StateStream { rx: state_rx },
        ))
    }

    /// Starts the client for one server and waits until the first connection is established
    /// (retrying per the backoff policy). Fails with [`Error::GaveUp`] if the client gives up first.
    ///
    /// The same as [`Client::connect_any`] with a list of one URL.
    pub async fn connect(
        url: impl Into<String>,
        tokens: impl TokenProvider,
        options: ClientOptions,
    ) -> Result<(Client, StateStream)> {
        Client::connect_any(vec![url.into()], tokens, options).await
    }

    /// Starts the client for a list of equivalent servers (see [`Client::start_any`]: random first
    /// URL, then a random other one after each failure) and waits until the first connection is established (retrying per
    /// the backoff policy). Fails with [`Error::Config`] like [`Client::start_any`], and with
    /// [`Error::GaveUp`] if the client gives up first.
    pub async fn connect_any(
        urls: Vec<String>,
        tokens: impl TokenProvider,
        options: ClientOptions,
    ) -> Result<(Client, StateStream)> {
        let (client, states) = Client::start_any(urls, tokens, options)?;
        client.wait_connected().await?;
        Ok((client, states))
    }

    /// Waits until the client is connected (returns at once if it is).
    pub async fn wait_connected(&self) -> Result<()> {
        let mut status = self.status.clone();
        loop {
            match &*status.borrow_and_update() {
                Status::Connected => return Ok(()),
                Status::GaveUp(r) => return Err(Error::GaveUp(r.clone())),
                Status::Closed => return Err(Error::Closed),
                Status::Connecting => {}
            }
            if status.changed().await.is_err() {
                return Err(self.stopped());
            }
        }
    }

    /// Whether a connection is currently established.
    pub fn is_connected(&self) -> bool {
        *self.status.borrow() == Status::Connected
    }

    fn stopped(&self) -> Error {
        match &*self.status.borrow() {
            Status::GaveUp(r) => Error::GaveUp(r.clone()),
            _ => Error::Closed,
        }
    }

    async fn send(&self, cmd: Cmd) -> Result<()> {
        self.tx.send(cmd).await.map_err(|_| self.stopped())
    }

    /// Subscribes to `channel`. Returns once the server accepted the subscription; the stream then
    /// yields every message published after that point exactly once, in order, across reconnects.
    pub async fn subscribe(&self, channel: impl Into<String>) -> Result<Subscription> {
        let channel = channel.into();
        let sub_id = self.sub_ids.fetch_add(1, Ordering::Relaxed);
        let (events, rx) = mpsc::channel(self.event_buffer);
        let (reply, wait) = oneshot::channel();
        self.send(Cmd::Subscribe {
            channel: channel.clone(),
            sub_id,
            events,
            reply,
        })
        .await?;
        wait.await.map_err(|_| self.stopped())??;
        let tx = self.tx.clone();
        let ch = channel.clone();
        Ok(Subscription {
            channel,
            rx,
            on_drop: Some(Box::new(move || {
                let cmd = Cmd::Unsubscribe {
                    channel: ch,
                    sub_id: Some(sub_id),
                    reply: None,
                };
                // A full command queue must not lose the unsubscribe: hand it to a task that waits.
                if let Err(mpsc::error::TrySendError::Full(cmd)) = tx.try_send(cmd) {
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(async move {
                            let _ = tx.send(cmd).await;
                        });
                    }
                }
            })),
        })
    }

    /// Unsubscribes from `channel`; its [`Subscription`] stream ends.
    pub async fn unsubscribe(&self, channel: impl Into<String>) -> Result<()> {
        let (reply, wait) = oneshot::channel();
        self.send(Cmd::Unsubscribe {
            channel: channel.into(),
            sub_id: None,
            reply: Some(reply),
        })
        .await?;
        wait.await.map_err(|_| self.stopped())?
    }

    async fn request(&self, cmd: Command) -> Result<Value> {
        let (reply, wait) = oneshot::channel();
        self.send(Cmd::Request { cmd, reply }).await?;
        wait.await.map_err(|_| self.stopped())?
    }

    /// Publishes any serializable value. A fresh idempotency key (a ULID) is attached, so a
    /// publish interrupted by a reconnect is re-sent and stored once.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: impl Into<String>,
        data: &T,
    ) -> Result<PublishAck> {
        let value = rmpv::ext::to_value(data).map_err(Error::encode)?;
        self.publish_value(channel, value, None).await
    }

    /// Publishes a raw value with an explicit idempotency key (`None`: a fresh ULID).
    pub async fn publish_value(
        &self,
        channel: impl Into<String>,
        data: Value,
        key: Option<String>,
    ) -> Result<PublishAck> {
        let key = key.unwrap_or_else(|| ulid::Ulid::new().to_string());
        let result = self
            .request(Command::Publish {
                channel: channel.into(),
                data,
                key: Some(key),
            })
            .await?;
        frame::result_as(result)
    }

    /// The sessions subscribed to `channel`.
    pub async fn presence(&self, channel: impl Into<String>) -> Result<Presence> {
        let result = self
            .request(Command::Presence {
                channel: channel.into(),
            })
            .await?;
        frame::result_as(result)
    }

    /// One page of retained messages with offset greater than `since` (server default 0), at most
    /// `limit` (server default 100).
    pub async fn history(
        &self,
        channel: impl Into<String>,
        since: Option<u64>,
        limit: Option<u32>,
    ) -> Result<HistoryPage> {
        let result = self
            .request(Command::History {
                channel: channel.into(),
                since,
                limit,
            })
            .await?;
        frame::result_as(result)
    }

    /// Application-level ping; resolves when the server answers.
    pub async fn ping(&self) -> Result<()> {
        self.request(Command::Ping).await.map(|_| ())
    }

    /// Closes the connection (code 1000) and stops reconnecting. Pending calls fail with
    /// [`Error::Closed`].
    pub async fn close(&self) {
        let (reply, wait) = oneshot::channel();
        if self.tx.send(Cmd::Close { reply }).await.is_ok() {
            let _ = wait.await;
        }
    }
}
