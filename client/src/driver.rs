//! The background task that owns the connection.
//!
//! Exists because reconnecting, resuming and re-sending must happen without the application's
//! help: one task per client holds the socket, the server endpoints (which one the next attempt
//! goes to: `endpoints.rs`), the subscriptions (with their resume positions, per channel and not per
//! endpoint) and every command that has not been answered yet. Commands from [`crate::Client`] arrive on a
//! channel and are queued while disconnected; after each reconnect the task resubscribes with
//! `since` and re-sends unanswered commands (publishes keep their idempotency `key`, so a publish
//! lost in flight is stored once and its caller still gets the reply).

use crate::backoff::Backoff;
use crate::connect::{self, Advice, Conn, OpenError};
use crate::dedup::{ChannelTracker, ReplyOutcome};
use crate::endpoints::Endpoints;
use crate::error::Error;
use crate::events::{ConnectionState, Message, SubscriptionEvent};
use crate::frame::{self, Command, ServerFrame, SubscribeReply};
use crate::options::{ClientOptions, TokenProvider};
use futures_util::{SinkExt, StreamExt};
use rmpv::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Requests from the [`crate::Client`] handles.
pub(crate) enum Cmd {
    Subscribe {
        channel: String,
        sub_id: u64,
        events: mpsc::Sender<SubscriptionEvent>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Unsubscribe {
        channel: String,
        /// Only unsubscribe if the subscription is still this one (drop of a stale handle).
        sub_id: Option<u64>,
        reply: Option<oneshot::Sender<Result<(), Error>>>,
    },
    Request {
        cmd: Command,
        reply: oneshot::Sender<Result<Value, Error>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Coarse status shared with the handles.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Status {
    Connecting,
    Connected,
    GaveUp(String),
    Closed,
}

struct Sub {
    sub_id: u64,
    events: mpsc::Sender<SubscriptionEvent>,
    /// Events that did not fit in `events` (at most those of one frame): delivered first, and while any
    /// are waiting the socket is not read.
    overflow: VecDeque<SubscriptionEvent>,
    tracker: ChannelTracker,
    first: Option<oneshot::Sender<Result<(), Error>>>,
    /// The subscribe of the current connection was answered.
    confirmed: bool,
}

enum Reply {
    None,
    Value(oneshot::Sender<Result<Value, Error>>),
    Unit(oneshot::Sender<Result<(), Error>>),
}

struct Op {
    cmd: Command,
    reply: Reply,
    sub_id: u64,
    sent: bool,
    not_before: Option<Instant>,
    retries: u32,
}

/// How a session ended.
enum End {
    Closed,
    Lost {
        code: Option<u16>,
        reason: String,
        advice: Advice,
        retry_after: Option<Duration>,
    },
}

pub(crate) struct Driver {
    endpoints: Endpoints,
    tokens: Arc<dyn TokenProvider>,
    opts: ClientOptions,
    cmd_rx: mpsc::Receiver<Cmd>,
    states: mpsc::Sender<ConnectionState>,
    status: watch::Sender<Status>,
    backoff: Backoff,
    subs: HashMap<String, Sub>,
    ops: BTreeMap<u64, Op>,
    next_id: u64,
}

impl Driver {
    pub(crate) fn new(
        endpoints: Endpoints,
        tokens: Arc<dyn TokenProvider>,
        opts: ClientOptions,
        cmd_rx: mpsc::Receiver<Cmd>,
        states: mpsc::Sender<ConnectionState>,
        status: watch::Sender<Status>,
    ) -> Self {
        let backoff = Backoff::new(opts.backoff.clone());
        Driver {
            endpoints,
            tokens,
            opts,
            cmd_rx,
            states,
            status,
            backoff,
            subs: HashMap::new(),
            ops: BTreeMap::new(),
            next_id: 1,
        }
    }

    fn emit(&self, s: ConnectionState) {
        // Dropped when the application does not read its state stream (documented).
        let _ = self.states.try_send(s);
    }

    /// Runs until the client is closed or gives up.
    ///
    /// A connection that lasted `stable_after` resets the backoff; one lost sooner counts as a failed
    /// attempt, so the delays keep growing against a server that accepts and drops at once. Every
    /// attempt after the first (after a failed one or a lost connection) goes to the next endpoint.
    pub(crate) async fn run(mut self) {
        let mut last_token: Option<String>;
        loop {
            let attempt = self.backoff.failures() + 1;
            let _ = self.status.send(Status::Connecting);
            self.emit(ConnectionState::Connecting {
                attempt,
                at: Instant::now(),
            });
            let token = self.tokens.token().await;
            last_token = token.clone();
            let url = self.endpoints.current().to_string();
            tracing::debug!(%url, attempt, "herald client connecting");
            let opened = connect::open(
                &url,
                token.as_deref(),
                self.opts.encoding,
                self.opts.connect_timeout,
            )
            .await;
            let (code, reason, retry_after) = match opened {
                Ok(conn) => {
                    // The backoff is reset only once a connection proved stable (below): a server that
                    // accepts and drops at once must not be hammered at the base delay.
                    let connected_at = Instant::now();
                    let _ = self.status.send(Status::Connected);
                    self.emit(ConnectionState::Connected {
                        url,
                        session: conn.session.clone(),
                        user: conn.user.clone(),
                        heartbeat_ms: conn.heartbeat_ms,
                        at: Instant::now(),
                    });
                    match self.session(conn).await {
                        End::Closed => return self.finish_closed(),
                        End::Lost {
                            code,
                            reason,
                            advice,
                            retry_after,
                        } => {
                            self.on_connection_lost();
                            self.emit(ConnectionState::Disconnected {
                                code,
                                reason: reason.clone(),
                                at: Instant::now(),
                            });
                            if advice == Advice::Stop {
                                let why = match code {
                                    Some(c) => {
                                        format!("closed with {c} ({reason}): not reconnecting")
                                    }
                                    None => reason,
                                };
                                return self.give_up(why);
                            }
                            if connected_at.elapsed() >= self.opts.stable_after {
                                self.backoff.reset();
                            } else if !self.backoff.record_failure() {
                                return self.give_up(format!(
                                    "{} attempts failed, last: connection lost after {:?} ({reason})",
                                    self.backoff.failures(),
                                    connected_at.elapsed()
                                ));
                            }
                            (code, reason, retry_after)
                        }
                    }
                }
                Err(e) => {
                    let (code, reason, retry_after) = match e {
                        OpenError::Fatal { status, reason } => {
                            self.emit_failed(status, &reason);
                            return self.give_up(reason);
                        }
                        OpenError::Unauthorized { status, reason } => {
                            self.emit_failed(Some(status), &reason);
                            // Retry only if the provider has something new.
                            let fresh = self.tokens.token().await;
                            if fresh.is_none() || fresh == last_token {
                                return self.give_up(format!(
                                    "handshake refused ({reason}) and no new token"
                                ));
                            }
                            (Some(status), reason, None)
                        }
                        OpenError::Retry {
                            status,
                            reason,
                            retry_after,
                        } => {
                            self.emit_failed(status, &reason);
                            (status, reason, retry_after)
                        }
                    };
                    if !self.backoff.record_failure() {
                        return self.give_up(format!(
                            "{} attempts failed, last: {reason}",
                            self.backoff.failures()
                        ));
                    }
                    (code, reason, retry_after)
                }
            };
            let _ = (code, reason);
            // Whatever failed or went away (this node, the path to it), the next attempt tries
            // another node of the list; a list of one stays where it is.
            self.endpoints.advance();
            let mut delay = self.backoff.delay();
            if let Some(ra) = retry_after {
                delay = delay.max(ra);
            }
            self.emit(ConnectionState::Reconnecting {
                attempt: self.backoff.failures() + 1,
                delay,
                at: Instant::now(),
            });
            if self.wait_offline(delay).await {
                return self.finish_closed();
            }
        }
    }

    fn emit_failed(&self, code: Option<u16>, reason: &str) {
        self.emit(ConnectionState::Disconnected {
            code,
            reason: reason.to_string(),
            at: Instant::now(),
        });
    }

    /// Waits `delay` while queueing commands. Returns true if the client was closed.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return false,
                cmd = self.cmd_rx.recv() => match cmd {
                    None => return true,
                    Some(Cmd::Close { reply }) => {
                        let _ = reply.send(());
                        return true;
                    }
                    Some(c) => self.on_cmd(c, false),
                },
            }
        }
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn push_op(&mut self, cmd: Command, reply: Reply, sub_id: u64) {
        let id = self.alloc_id();
        self.ops.insert(
            id,
            Op {
                cmd,
                reply,
                sub_id,
                sent: false,
                not_before: None,
                retries: 0,
            },
        );
    }

    fn on_cmd(&mut self, cmd: Cmd, online: bool) {
        match cmd {
            Cmd::Subscribe {
                channel,
                sub_id,
                events,
                reply,
            } => {
                if self.subs.contains_key(&channel) {
                    let _ = reply.send(Err(Error::AlreadySubscribed(channel)));
                    return;
                }
                self.subs.insert(
                    channel.clone(),
                    Sub {
                        sub_id,
                        events,
                        overflow: VecDeque::new(),
                        tracker: ChannelTracker::new(self.opts.id_memory),
                        first: Some(reply),
                        confirmed: false,
                    },
                );
                if online {
                    let cmd = Command::Subscribe {
                        channel,
                        since: None,
                    };
                    self.push_op(cmd, Reply::None, sub_id);
                }
            }
            Cmd::Unsubscribe {
                channel,
                sub_id,
                reply,
            } => {
                let matches = match (self.subs.get(&channel), sub_id) {
                    (None, _) => false,
                    (Some(s), Some(id)) => s.sub_id == id,
                    (Some(_), None) => true,
                };
                if !matches {
                    if let Some(r) = reply {
                        let _ = r.send(Err(Error::NotSubscribed(channel)));
                    }
                    return;
                }
                self.subs.remove(&channel);
                // Forget a subscribe that was not sent yet.
                self.ops
                    .retain(|_, op| op.sent || !matches!(&op.cmd, Command::Subscribe { channel: c, .. } if *c == channel));
                let reply = reply.map(Reply::Unit).unwrap_or(Reply::None);
                if online {
                    self.push_op(Command::Unsubscribe { channel }, reply, 0);
                } else if let Reply::Unit(r) = reply {
                    let _ = r.send(Ok(()));
                }
            }
            Cmd::Request { cmd, reply } => self.push_op(cmd, Reply::Value(reply), 0),
            Cmd::Close { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// After a connection is gone: unanswered commands are sent again on the next connection,
    /// subscribes are rebuilt from the subscriptions, unsubscribes are done (the new session does
    /// not hold the channel).
    fn on_connection_lost(&mut self) {
        let ops = std::mem::take(&mut self.ops);
        for (id, mut op) in ops {
            match op.cmd {
                Command::Subscribe { .. } => {}
                Command::Unsubscribe { .. } => {
                    if let Reply::Unit(r) = op.reply {
                        let _ = r.send(Ok(()));
                    }
                }
                _ => {
                    op.sent = false;
                    self.ops.insert(id, op);
                }
            }
        }
        for sub in self.subs.values_mut() {
            sub.confirmed = false;
        }
    }

    /// Queues the subscribes of a new connection, resuming where each channel stopped.
    fn resubscribe(&mut self) {
        let subs: Vec<(String, u64, Option<frame::Position>)> = self
            .subs
            .iter()
            .map(|(c, s)| (c.clone(), s.sub_id, s.tracker.position().cloned()))
            .collect();
        for (channel, sub_id, since) in subs {
            let id = self.alloc_id();
            // Subscribes go before the re-sent commands: give them lower ids than all pending.
            self.ops.insert(
                id,
                Op {
                    cmd: Command::Subscribe { channel, since },
                    reply: Reply::None,
                    sub_id,
                    sent: false,
                    not_before: None,
                    retries: 0,
                },
            );
        }
    }

    fn fail_all(&mut self, err: Error) {
        for (_, op) in std::mem::take(&mut self.ops) {
            match op.reply {
                Reply::Value(r) => {
                    let _ = r.send(Err(err.clone()));
                }
                Reply::Unit(r) => {
                    let _ = r.send(Err(err.clone()));
                }
                Reply::None => {}
            }
        }
        for (_, mut sub) in self.subs.drain() {
            match sub.first.take() {
                Some(first) => {
                    let _ = first.send(Err(err.clone()));
                }
                None => {
                    let _ = sub.events.try_send(SubscriptionEvent::Ended(err.clone()));
                }
            }
        }
    }

    fn give_up(&mut self, reason: String) {
        tracing::warn!(%reason, "herald client gave up");
        self.fail_all(Error::GaveUp(reason.clone()));
        let _ = self.status.send(Status::GaveUp(reason.clone()));
        self.emit(ConnectionState::GaveUp {
            reason,
            at: Instant::now(),
        });
        // Answer commands that raced with giving up.
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            self.on_cmd(cmd, false);
        }
        let reason = match self.status.borrow().clone() {
            Status::GaveUp(r) => r,
            _ => String::new(),
        };
        self.fail_all(Error::GaveUp(reason));
    }

    fn finish_closed(&mut self) {
        self.fail_all(Error::Closed);
        let _ = self.status.send(Status::Closed);
        self.emit(ConnectionState::Closed);
    }
}

#[path = "session.rs"]
mod session;
