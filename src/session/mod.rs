//! Sessions: one actix actor per connection, whatever its transport (WebSocket, or HTTP long-polling
//! through [`polling`]: the same actor, outbox, limits and close codes; only the way bytes leave
//! differs).
//!
//! The session actor lives on the worker thread that accepted the connection. It reads frames from the
//! socket (`ctx.add_stream`), decodes and validates each through [`crate::protocol`], applies rate limits,
//! checks permissions and forwards commands to channel actors. Everything it sends goes through the
//! connection's outbox (bounded in frames and in bytes, see [`crate::channel::Outbox`]), drained by the
//! [`socket::writer`]. At most `session.max_inflight` commands run at once ([`inflight`]); beyond that the
//! session stops reading its socket. Frames over the rate limit are refused before they are decoded,
//! and a client that keeps sending after `rate_limited` is closed with 4007. It sends WebSocket pings,
//! closes connections that stop answering, and on the way out removes itself from every channel it
//! joined.

mod commands;
pub mod echo;
pub mod handshake;
pub mod inflight;
pub mod output;
pub mod polling;
pub mod socket;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::oneshot;

use crate::admission::Ticket;
use crate::auth::Claims;
use crate::channel::{Evict, Evictor, Outbox, OutboxReceiver, Unsubscribe};
use crate::node::{Node, SessionEntry, Stats};
use crate::protocol::{
    encode, CloseCode, DisconnectBody, Encoding, ErrorBody, ErrorCode, FrameError, Outgoing,
    RequestId, ServerFrame, WelcomeBody,
};
use socket::{CloseRequest, Incoming, WsError};

pub use crate::node::Transport;

/// The actor of one connection.
pub struct Session {
    id: Arc<str>,
    transport: Transport,
    user: Option<Arc<str>>,
    /// Claims of the connection's token; `None` for anonymous connections.
    claims: Option<Box<Claims>>,
    /// The admission slot, given back when the session is dropped.
    _ticket: Ticket,
    /// The connection's timer (see `tick`).
    timer: Option<SpawnHandle>,
    /// When the token expires (4003), if there is one.
    expires_at: Option<Instant>,
    peer: Option<SocketAddr>,
    encoding: Encoding,
    node: Arc<Node>,
    outbox: Outbox,
    /// This session's address for evictions, made once and shared (see [`Evictor`]).
    evictor: Option<Evictor>,
    closer: Option<oneshot::Sender<CloseRequest>>,
    /// The channels subscribed to (their actors are found through the registry: an `Addr` kept per
    /// subscription would cost an allocation of its own).
    subscriptions: HashSet<Box<str>>,
    /// Subscribes in progress by channel, with their attempt number (see `commands::SubscribeAttempt`).
    attempts: HashMap<String, u64>,
    next_attempt: u64,
    limiter: DefaultDirectRateLimiter,
    /// Frames refused by the rate limit in a row.
    rate_limited: u32,
    /// Commands in flight.
    gate: inflight::Gate,
    bad_frames: u32,
    last_seen: Instant,
    /// When the last WebSocket ping was queued (the connection's start before the first).
    last_ping: Instant,
    opened: Instant,
    /// Span of this connection (session id, user, peer), at debug level; entered by every handler.
    span: tracing::Span,
}

impl Session {
    /// Builds the actor and the writer's ends of its outbox and close signal.
    pub fn new(
        node: Arc<Node>,
        transport: Transport,
        encoding: Encoding,
        claims: Option<Claims>,
        ticket: Ticket,
        peer: Option<SocketAddr>,
    ) -> (Session, OutboxReceiver, oneshot::Receiver<CloseRequest>) {
        let (tx, rx) = Outbox::new(
            node.config.session.outbox_capacity,
            node.config.session.outbox_bytes,
        );
        let (close_tx, close_rx) = oneshot::channel();
        let limits = &node.config.limits;
        let rate = NonZeroU32::new(limits.messages_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.messages_burst).unwrap_or(NonZeroU32::MIN);
        let id: Arc<str> = Arc::from(ulid::Ulid::new().to_string());
        // At debug level only: a span that is enabled costs the subscriber's registry about 500 bytes
        // per connection for as long as the connection lives (measured: S1 in docs/benchmarks.md).
        let span = tracing::debug_span!(
            "session",
            session = %id,
            user = claims.as_ref().map(|c| c.sub.as_str()).unwrap_or("-"),
            peer = %peer.map(|p| p.to_string()).unwrap_or_default(),
        );
        let session = Session {
            id,
            transport,
            span,
            user: claims.as_ref().map(|c| Arc::from(c.sub.as_str())),
            claims: claims.map(Box::new),
            _ticket: ticket,
            timer: None,
            expires_at: None,
            peer,
            encoding,
            outbox: tx,
            evictor: None,
            closer: Some(close_tx),
            subscriptions: HashSet::new(),
            attempts: HashMap::new(),
            next_attempt: 0,
            limiter: RateLimiter::direct_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                node.clock.clone(),
            ),
            rate_limited: 0,
            gate: inflight::Gate::new(node.config.session.max_inflight),
            bad_frames: 0,
            last_seen: Instant::now(),
            last_ping: Instant::now(),
            opened: Instant::now(),
            node,
        };
        (session, rx, close_rx)
    }

    /// This session's address for evictions (channels and cursors keep a clone).
    fn evictor(&mut self, ctx: &mut Context<Self>) -> Evictor {
        self.evictor
            .get_or_insert_with(|| Arc::new(ctx.address().recipient()))
            .clone()
    }

    /// The gate to put in front of this session's incoming frames.
    pub fn gate(&self) -> inflight::Gate {
        self.gate.clone()
    }

    /// Queues a frame; a full outbox makes this connection a slow consumer.
    fn send(&mut self, frame: ServerFrame<'_>, ctx: &mut Context<Self>) {
        match encode(self.encoding, &frame) {
            Ok(out) => self.push(out, ctx),
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "frame encoding failed");
                self.close(CloseCode::Internal, None, ctx);
            }
        }
    }

    fn push(&mut self, out: Outgoing, ctx: &mut Context<Self>) {
        if self.outbox.try_send(out).is_err() {
            self.close(CloseCode::SlowConsumer, None, ctx);
        }
    }

    fn reply(&mut self, id: &RequestId, result: &rmpv::Value, ctx: &mut Context<Self>) {
        self.send(ServerFrame::Reply { id, result }, ctx);
    }

    fn error(&mut self, err: &FrameError, retry_after_ms: Option<u64>, ctx: &mut Context<Self>) {
        self.send(
            ServerFrame::Error(ErrorBody {
                id: err.id.as_ref(),
                code: err.code,
                message: &err.message,
                retry_after_ms,
            }),
            ctx,
        );
    }

    /// Sends `disconnect`, then closes the socket with the same code, and stops the actor.
    fn close(&mut self, code: CloseCode, reason: Option<&str>, ctx: &mut Context<Self>) {
        if self.closer.is_none() {
            return;
        }
        if code == CloseCode::SlowConsumer {
            // Here, not where the outbox was found full: a session cut by several channels at once
            // counts once.
            Stats::add(&self.node.stats.slow_consumers, 1);
        }
        let reason = reason.unwrap_or(code.reason());
        let last = encode(
            self.encoding,
            &ServerFrame::Disconnect(DisconnectBody {
                code: code.code(),
                reason,
                reconnect: code.reconnect(),
            }),
        )
        .ok();
        self.end(last, code.code(), reason, true, ctx);
    }

    /// Answers the client's own close frame with a close frame only (RFC 6455 5.5.1): its code echoed, no
    /// `disconnect` frame before it (the client is leaving; there is nothing to advise).
    fn closed_by_client(&mut self, code: Option<u16>, ctx: &mut Context<Self>) {
        self.end(None, close_reply_code(code), "", false, ctx);
    }

    /// Hands the writer its last frames (`last`, then a close frame with `code`) and stops the actor.
    /// `linger`: the server started the close, so the writer waits for the client's close frame.
    fn end(
        &mut self,
        last: Option<Outgoing>,
        code: u16,
        reason: &str,
        linger: bool,
        ctx: &mut Context<Self>,
    ) {
        let Some(closer) = self.closer.take() else {
            return;
        };
        tracing::debug!(session = %self.id, code, reason, "closing session");
        let _ = closer.send(CloseRequest {
            last,
            code,
            reason: reason.to_string(),
            linger,
        });
        ctx.stop();
    }

    /// A frame was bad: answer it, and close after too many in a row.
    fn bad_frame(&mut self, err: FrameError, ctx: &mut Context<Self>) {
        Stats::add(&self.node.stats.bad_frames, 1);
        self.bad_frames += 1;
        self.error(&err, None, ctx);
        if self.bad_frames >= self.node.config.limits.max_bad_frames {
            self.close(CloseCode::BadFrames, None, ctx);
        }
    }

    fn on_data(&mut self, bytes: &[u8], kind: Encoding, ctx: &mut Context<Self>) {
        Stats::add(&self.node.stats.messages_in, 1);
        if let Err(wait) = self.limiter.check() {
            // Refused before decoding: a frame over budget costs no parsing (so its `id` is unknown).
            Stats::add(&self.node.stats.rate_limited, 1);
            self.rate_limited += 1;
            if self.rate_limited > self.node.config.limits.max_rate_limited {
                Stats::add(&self.node.stats.rate_limit_closes, 1);
                return self.close(CloseCode::RateLimitExceeded, None, ctx);
            }
            let retry = wait
                .wait_time_from(governor::clock::Clock::now(&self.node.clock))
                .as_millis() as u64;
            let err = FrameError::new(None, ErrorCode::RateLimited, "too many frames");
            self.error(&err, Some(retry.max(1)), ctx);
            return;
        }
        self.rate_limited = 0;
        if kind != self.encoding {
            let msg = match self.encoding {
                Encoding::Json => "binary frame on a JSON connection; send text frames",
                Encoding::Msgpack => "text frame on a MessagePack connection; send binary frames",
            };
            return self.bad_frame(FrameError::bad(None, msg), ctx);
        }
        match crate::protocol::decode_request(bytes, self.encoding, &self.limits()) {
            Ok(req) => {
                self.bad_frames = 0;
                self.dispatch(req, ctx);
            }
            Err(e) => self.bad_frame(e, ctx),
        }
    }

    fn limits(&self) -> crate::protocol::DecodeLimits {
        crate::protocol::DecodeLimits {
            max_depth: self.node.config.limits.max_depth,
            max_channel_len: self.node.config.limits.max_channel_len,
        }
    }

    /// Sets when the token expires (4003 then) and re-arms the connection's timer for it.
    fn arm_expiry(&mut self, ctx: &mut Context<Self>) {
        self.expires_at = self.claims.as_ref().map(|c| {
            let now = crate::protocol::now_ms() / 1000;
            let leeway = self.node.config.auth.leeway_secs;
            // `exp` comes from the token: saturate, and cap the wait at a year (tokens live far less).
            let left = c
                .exp
                .saturating_add(leeway)
                .saturating_sub(now)
                .min(365 * 86_400);
            Instant::now() + Duration::from_secs(left)
        });
        self.tick(ctx);
    }

    /// The connection's one timer. It sends WebSocket pings every `session.heartbeat_ms` (not on
    /// long-polling, whose client shows it is alive by polling), closes the connection with 4002 once it
    /// has sent nothing for `session.heartbeat_timeout_ms`, and with 4003 when its token expires. It is
    /// armed for whichever comes first and re-armed when it fires, so a silent client is closed at the
    /// timeout (to the timer's precision, a millisecond), not at the next ping. One timer instead of an
    /// interval and two deadlines: each is an allocation per connection for its whole life, and more than
    /// three items in the actor's context spill its inline list onto the heap.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        let now = Instant::now();
        if self.expires_at.is_some_and(|at| at <= now) {
            return self.close(CloseCode::TokenExpired, None, ctx);
        }
        let session = &self.node.config.session;
        let timeout = Duration::from_millis(session.heartbeat_timeout_ms);
        let silent = now.saturating_duration_since(self.last_seen);
        if silent >= timeout {
            return self.close(CloseCode::HeartbeatTimeout, None, ctx);
        }
        let mut next = timeout - silent;
        if self.transport == Transport::WebSocket {
            let every = Duration::from_millis(session.heartbeat_ms);
            let since_ping = now.saturating_duration_since(self.last_ping);
            if since_ping >= every {
                self.last_ping = now;
                self.push(Outgoing::Ping, ctx);
                next = next.min(every);
            } else {
                next = next.min(every - since_ping);
            }
        }
        if let Some(at) = self.expires_at {
            next = next.min(at - now);
        }
        self.timer = Some(ctx.run_later(next, |act, ctx| {
            act.timer = None;
            act.tick(ctx)
        }));
    }
}

/// Close codes a peer may send (RFC 6455 7.4).
fn valid_close_code(c: u16) -> bool {
    matches!(c, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// The code to answer a peer's close frame with: its own code echoed, 1000 when it sent none, 1002 when it
/// sent one a peer may not send.
pub(crate) fn close_reply_code(code: Option<u16>) -> u16 {
    match code {
        None => CloseCode::Normal.code(),
        Some(c) if valid_close_code(c) => c,
        Some(_) => CloseCode::ProtocolError.code(),
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        tracing::debug!("session started");
        Stats::gauge(&self.node.stats.sessions, 1);
        if self.transport == Transport::LongPolling {
            Stats::gauge(&self.node.stats.polling_sessions, 1);
        }
        Stats::add(&self.node.stats.connections_opened, 1);
        let evict = self.evictor(ctx);
        self.node.sessions.insert(
            self.id.clone(),
            SessionEntry {
                user: self.user.clone(),
                peer: self.peer,
                transport: self.transport,
                connected_at: SystemTime::now(),
                evict,
            },
        );
        let id = self.id.clone();
        let node = self.node.clone();
        let user = self.user.clone();
        self.send(
            ServerFrame::Welcome(WelcomeBody {
                session: &id,
                node: &node.id,
                heartbeat_ms: node.config.session.heartbeat_ms,
                encoding: self.encoding.name(),
                user: user.as_deref(),
            }),
            ctx,
        );
        self.arm_expiry(ctx);
        if self.node.is_draining() {
            self.close(CloseCode::GoingAway, None, ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        for channel in self.subscriptions.drain() {
            if let Some(addr) = self.node.channels.get(&channel) {
                addr.do_send(Unsubscribe {
                    session: self.id.clone(),
                });
            }
        }
        self.node.sessions.remove(&self.id);
        Stats::gauge(&self.node.stats.sessions, -1);
        if self.transport == Transport::LongPolling {
            Stats::gauge(&self.node.stats.polling_sessions, -1);
        }
        Stats::add(&self.node.stats.connections_closed, 1);
        self.node
            .stats
            .connection_lifetime
            .observe_duration(self.opened.elapsed());
        tracing::debug!(session = %self.id, lifetime_ms = self.opened.elapsed().as_millis() as u64, "session ended");
    }
}

impl StreamHandler<Result<Incoming, WsError>> for Session {
    fn handle(&mut self, item: Result<Incoming, WsError>, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.last_seen = Instant::now();
        match item {
            Ok(Incoming::Text(t)) => self.on_data(&t, Encoding::Json, ctx),
            Ok(Incoming::Binary(b)) => self.on_data(&b, Encoding::Msgpack, ctx),
            Ok(Incoming::Ping(p)) => self.push(Outgoing::Pong(p), ctx),
            Ok(Incoming::Pong) => {}
            Ok(Incoming::Close(code)) => self.closed_by_client(code, ctx),
            Err(e) => {
                tracing::debug!(session = %self.id, error = %e, "websocket protocol error");
                self.close(e.close_code(), None, ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Evict> for Session {
    type Result = ();

    fn handle(&mut self, msg: Evict, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.close(msg.code, msg.reason.as_deref(), ctx);
    }
}

/// A client frame that arrived by long-polling (`POST /poll/send`), one per message, in order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Received(pub bytes::Bytes);

impl Handler<Received> for Session {
    type Result = ();

    fn handle(&mut self, msg: Received, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.last_seen = Instant::now();
        let encoding = self.encoding;
        self.on_data(&msg.0, encoding, ctx);
    }
}

/// The long-polling client is there (it polled or sent): the heartbeat timeout starts again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Seen;

impl Handler<Seen> for Session {
    type Result = ();

    fn handle(&mut self, _: Seen, _ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
    }
}

/// The long-polling client closes its session (`POST /poll/close`): the same as a WebSocket close
/// frame with 1000.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientClose;

impl Handler<ClientClose> for Session {
    type Result = ();

    fn handle(&mut self, _: ClientClose, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        self.closed_by_client(Some(CloseCode::Normal.code()), ctx);
    }
}
