//! The channel actor: subscribers, presence and the feed of one channel.
//!
//! It does not decide the order of messages: the node's applier applies committed log entries to the
//! store and hands the channel each applied message ([`Delivered`]), in log order. The actor pushes it
//! into the channel's [`Feed`] and wakes its subscribers' cursors; each connection's writer then takes
//! the message when its socket has room ([`super::cursor`]). The actor never waits for a socket and never
//! queues messages per subscriber. A subscriber that falls behind is left to catch up; every lag check
//! the actor measures how far behind each one is and cuts (4001) only those behind longer than
//! `session.max_lag_ms`. Until then, retention keeps the history they still need.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::applier::{Delivered, ResetApplied};
use super::cursor::{Cursor, CursorShared};
use super::feed::{Feed, WindowItem};
use super::Hub;
use super::{ChannelError, Evict, Outbox, RemotePresence, Subscribe, Unsubscribe};
use crate::config::NamespaceOptions;
use crate::history::{HistoryError, Retention, StoredMessage};
use crate::protocol::{self, encode, results, CloseCode, Outgoing, PresenceBody, ServerFrame};
use crate::stats::Stats;

pub(super) struct Subscriber {
    pub(super) user: Option<Arc<str>>,
    pub(super) since_ms: u64,
    pub(super) encoding: crate::protocol::Encoding,
    /// The connection's outbox, for `join`/`leave`.
    pub(super) outbox: Outbox,
    pub(super) evict: super::Evictor,
    pub(super) cursor: Arc<CursorShared>,
}

/// The actor of one channel. See the module docs of [`crate::channel`].
pub struct ChannelActor {
    pub(super) name: Arc<str>,
    pub(super) node: Arc<Hub>,
    pub(super) ns: NamespaceOptions,
    pub(super) epoch: Arc<str>,
    /// Offset of the last message applied and delivered.
    pub(super) durable: u64,
    pub(super) subscribers: HashMap<Arc<str>, Subscriber>,
    feed: Arc<Feed>,
    /// Subscribers found behind at the last lag check (this channel's share of
    /// `herald_subscribers_catching_up`).
    behind: i64,
    pub(super) last_activity: Instant,
    pub(super) last_publish_ms: Option<u64>,
    /// Budget of `join`/`leave` frames (`channel.join_leave_per_second`); `None` when the namespace
    /// sends none.
    join_leave_budget: Option<governor::DefaultDirectRateLimiter>,
    /// Span of this channel; entered by the handlers.
    pub(super) span: tracing::Span,
}

impl ChannelActor {
    /// Loads the channel's state from the store.
    pub fn load(name: Arc<str>, node: Arc<Hub>) -> Result<Self, ChannelError> {
        let store_err = |e: HistoryError| ChannelError::from_store(&e);
        // A channel this node has no history of: in a cluster its epoch is the log's (every node must
        // agree, so none is minted here; before the cluster's generation is known there is none yet);
        // a local log lets the store mint one.
        let state = match node.store.peek_state(&name).map_err(store_err)? {
            Some(s) => s,
            None if node.log.decides_epochs() => match node.log.epoch_for(&name) {
                Some(epoch) => crate::history::ChannelState {
                    epoch,
                    head: 0,
                    oldest: None,
                },
                None => return Err(ChannelError::Unavailable),
            },
            None => node.store.channel_state(&name).map_err(store_err)?,
        };
        let ns = node.config.namespace(namespace_of(&name));
        let join_leave_budget = ns.join_leave.then(|| {
            let rate = std::num::NonZeroU32::new(node.config.channel.join_leave_per_second)
                .unwrap_or(std::num::NonZeroU32::MIN);
            governor::RateLimiter::direct_with_clock(
                governor::Quota::per_second(rate),
                node.clock.clone(),
            )
        });
        let epoch: Arc<str> = Arc::from(state.epoch.as_str());
        let feed = Arc::new(Feed::new(
            name.clone(),
            node.store.clone(),
            epoch.clone(),
            state.head,
            node.config.channel.window,
            node.config.channel.window_bytes,
        ));
        Ok(ChannelActor {
            join_leave_budget,
            span: tracing::info_span!("channel", channel = %name),
            name,
            ns,
            epoch,
            durable: state.head,
            subscribers: HashMap::new(),
            feed,
            behind: 0,
            last_activity: Instant::now(),
            last_publish_ms: None,
            node,
        })
    }

    fn retention(&self) -> Retention {
        retention_of(&self.ns)
    }

    /// The first offset some subscriber still has to be sent, if any is behind: retention keeps it.
    pub(super) fn retention_floor(&self) -> Option<u64> {
        self.subscribers
            .values()
            .map(|s| s.cursor.pos())
            .filter(|&p| p < self.durable)
            .min()
            .map(|p| p + 1)
    }

    fn trim(&self) {
        let floor = self.retention_floor();
        match self
            .node
            .store
            .trim(&self.name, &self.retention(), protocol::now_ms(), floor)
        {
            Ok(n) => Stats::add(&self.node.stats.history_trimmed, n),
            Err(e) => tracing::warn!(channel = %self.name, error = %e, "history trim failed"),
        }
    }

    /// Cuts a subscriber that cannot catch up and asks its session to close with 4001.
    fn evict_slow(&mut self, session: &Arc<str>, reason: &str) {
        if let Some(sub) = self.remove_subscriber(session, true) {
            // Counted by the session when it closes: once per session, however many channels cut it.
            if !sub.outbox.is_closed() {
                sub.evict.do_send(Evict {
                    code: CloseCode::SlowConsumer,
                    reason: Some(reason.to_string()),
                });
            }
        }
    }

    fn remove_subscriber(&mut self, session: &Arc<str>, announce: bool) -> Option<Subscriber> {
        let sub = self.subscribers.remove(session)?;
        sub.cursor.cancel();
        Stats::gauge(&self.node.stats.subscriptions, -1);
        self.node.cluster_state.local_leave(&self.name, session);
        if announce && self.ns.join_leave {
            self.announce(false, session, sub.user.as_deref());
        }
        Some(sub)
    }

    /// Sends `join` or `leave` to every other subscriber, within the channel's join/leave budget.
    fn announce(&mut self, join: bool, session: &str, user: Option<&str>) {
        match &self.join_leave_budget {
            Some(budget) if budget.check().is_ok() => {}
            _ => {
                Stats::add(&self.node.stats.join_leave_suppressed, 1);
                return;
            }
        }
        let body = PresenceBody {
            channel: &self.name,
            session,
            user,
        };
        let frame = if join {
            ServerFrame::Join(body)
        } else {
            ServerFrame::Leave(body)
        };
        let mut cache: [Option<Outgoing>; 2] = [None, None];
        let mut slow = Vec::new();
        for (id, sub) in &self.subscribers {
            if &**id == session {
                continue;
            }
            let slot = &mut cache[sub.encoding as usize];
            if slot.is_none() {
                *slot = encode(sub.encoding, &frame).ok();
            }
            if let Some(out) = slot {
                if sub.outbox.try_send(out.clone()).is_err() {
                    slow.push(id.clone());
                }
            }
        }
        for id in slow {
            self.evict_slow(&id, "the connection's control frames are not being read");
        }
    }

    /// Measures every subscriber's lag, cuts those behind longer than `session.max_lag_ms`, and lets
    /// the window forget what every subscriber has been sent.
    fn check_lag(&mut self) {
        let now = protocol::now_ms();
        let max_lag = self.node.config.session.max_lag_ms;
        let (mut behind, mut cut) = (0i64, Vec::new());
        let mut lowest = self.durable;
        for (id, sub) in &self.subscribers {
            let pos = sub.cursor.pos();
            lowest = lowest.min(pos);
            // Behind since the oldest message it has not been sent, or since it subscribed when that
            // message is older (a resume with a backlog is not late for what it missed while away).
            let lag_ms = match self.feed.ts_after(pos) {
                Ok(ts) => ts.map_or(0, |ts| now.saturating_sub(ts.max(sub.since_ms))),
                Err(e) => {
                    tracing::warn!(channel = %self.name, error = %e, "lag check failed");
                    0
                }
            };
            self.node
                .stats
                .subscriber_lag
                .observe(lag_ms as f64 / 1000.0);
            if pos < self.durable {
                behind += 1;
            }
            if lag_ms > max_lag {
                cut.push(id.clone());
            }
        }
        Stats::gauge(&self.node.stats.catching_up, behind - self.behind);
        self.behind = behind;
        self.feed.forget_through(lowest);
        for id in cut {
            self.evict_slow(
                &id,
                "behind by more than session.max_lag_ms; resume with since",
            );
        }
    }

    /// Periodic housekeeping: forget subscribers whose session is gone, apply TTL, stop when idle.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        let gone: Vec<Arc<str>> = self
            .subscribers
            .iter()
            .filter(|(_, s)| s.outbox.is_closed())
            .map(|(k, _)| k.clone())
            .collect();
        for id in gone {
            self.remove_subscriber(&id, true);
        }
        if self.ns.history_ttl_secs > 0 {
            self.trim();
        }
        let idle = Duration::from_millis(self.node.config.channel.idle_ms);
        if self.subscribers.is_empty()
            && self.last_activity.elapsed() >= idle
            && self.node.channels.remove_if(&self.name, &ctx.address())
        {
            ctx.stop();
        }
    }
}

/// The retention a namespace asks for.
pub fn retention_of(ns: &NamespaceOptions) -> Retention {
    Retention {
        max_len: ns.history_size,
        max_age: (ns.history_ttl_secs > 0).then(|| Duration::from_secs(ns.history_ttl_secs)),
    }
}

/// The namespace of a channel name: the part before the first `:`, or the default namespace.
pub fn namespace_of(channel: &str) -> &str {
    match channel.split_once(':') {
        Some((ns, _)) => ns,
        None => crate::config::DEFAULT_NAMESPACE,
    }
}

impl Actor for ChannelActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        Stats::gauge(&self.node.stats.channels, 1);
        self.trim();
        let every = Duration::from_millis((self.node.config.channel.idle_ms / 2).clamp(50, 5_000));
        ctx.run_interval(every, |act, ctx| act.tick(ctx));
        let lag_every =
            Duration::from_millis((self.node.config.session.max_lag_ms / 4).clamp(50, 1_000));
        ctx.run_interval(lag_every, |act, _| {
            let _span = act.span.clone().entered();
            act.check_lag();
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for (id, s) in &self.subscribers {
            s.cursor.cancel();
            self.node.cluster_state.local_leave(&self.name, id);
        }
        Stats::gauge(&self.node.stats.catching_up, -self.behind);
        Stats::gauge(&self.node.stats.channels, -1);
        Stats::gauge(
            &self.node.stats.subscriptions,
            -(self.subscribers.len() as i64),
        );
    }
}

impl Handler<Delivered> for ChannelActor {
    type Result = ();

    /// A message the applier applied: delivered once, in log order. Offsets this actor already holds
    /// (applied before it loaded its state) are skipped.
    fn handle(&mut self, msg: Delivered, _ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        if msg.offset <= self.durable || *msg.epoch != *self.epoch {
            return;
        }
        self.last_activity = Instant::now();
        self.last_publish_ms = Some(msg.ts);
        let waited = protocol::now_ms().saturating_sub(msg.ts);
        self.node
            .stats
            .publish_to_deliver
            .observe_duration(Duration::from_millis(waited));
        let offset = msg.offset;
        let message = StoredMessage {
            offset,
            id: msg.id,
            ts_ms: msg.ts,
            from: msg.from,
            data: msg.data,
        };
        self.feed.push(WindowItem::new(message, self.epoch.clone()));
        for sub in self.subscribers.values() {
            sub.cursor.wake();
        }
        self.durable = offset;
        self.trim();
    }
}

impl Handler<ResetApplied> for ChannelActor {
    type Result = ();

    fn handle(&mut self, msg: ResetApplied, _ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        tracing::warn!(channel = %self.name, epoch = %msg.epoch, "channel history reset");
        self.epoch = Arc::from(msg.epoch.as_str());
        self.durable = 0;
        self.feed.reset(self.epoch.clone());
        for sub in self.subscribers.values() {
            sub.cursor.wake();
        }
    }
}

impl Handler<Subscribe> for ChannelActor {
    type Result = Result<(), ChannelError>;

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) -> Self::Result {
        let _span = self.span.clone().entered();
        self.last_activity = Instant::now();
        if msg.outbox.is_closed() {
            return Err(ChannelError::Unavailable);
        }
        if self.subscribers.contains_key(&msg.session) {
            return Err(ChannelError::AlreadySubscribed);
        }
        // `head` is what the reply announces: the subscriber gets every message after `start`.
        let (start, head, resume) = match &msg.since {
            None => (self.durable, self.durable, None),
            Some(pos) => {
                let stored = self
                    .node
                    .store
                    .peek_state(&self.name)
                    .map_err(|e| ChannelError::Storage(e.to_string()))?
                    .filter(|s| *s.epoch == *self.epoch);
                // Applied to the store but not yet handed to this actor counts: the cursor waits for it.
                let head = stored
                    .as_ref()
                    .map_or(self.durable, |s| s.head.max(self.durable));
                let oldest = stored.and_then(|s| s.oldest);
                if msg.may_wait && *pos.epoch == *self.epoch && pos.offset > head {
                    return Err(ChannelError::NotAppliedYet);
                }
                // What the log lost below this node (a cluster node that was away longer than the
                // stream's retention) cannot be resumed through, whatever the store still holds.
                let truncated = self
                    .node
                    .store
                    .truncated_below(self.node.log.shard_of(&self.name))
                    .map_err(|e| ChannelError::Storage(e.to_string()))?;
                // Offsets have gaps in a cluster (a channel's first message may be at 256): a client
                // that has seen nothing of the epoch (offset 0) is complete when nothing was trimmed.
                let from_start = pos.offset == 0
                    && self
                        .node
                        .store
                        .holds_the_first_message(&self.name)
                        .map_err(|e| ChannelError::Storage(e.to_string()))?;
                let complete = pos.offset + 1 >= truncated
                    && (pos.offset == head
                        || from_start
                        || oldest.is_some_and(|o| o <= pos.offset + 1));
                if *pos.epoch == *self.epoch && pos.offset <= head && complete {
                    let replayed = self
                        .node
                        .store
                        .count_range(&self.name, pos.offset, head)
                        .map_err(|e| ChannelError::Storage(e.to_string()))?;
                    (pos.offset, head, Some((true, replayed)))
                } else {
                    (self.durable, self.durable, Some((false, 0)))
                }
            }
        };
        let result = results::subscribed(&self.name, &self.epoch, head, resume);
        let reply = ServerFrame::Reply {
            id: &msg.request,
            result: &result,
        };
        let frame =
            encode(msg.encoding, &reply).map_err(|e| ChannelError::Storage(e.to_string()))?;
        let session = msg.session.clone();
        let shared = CursorShared::new(start);
        let cursor = Cursor::new(
            self.node.clone(),
            self.feed.clone(),
            shared.clone(),
            msg.encoding,
            msg.evict.clone(),
        );
        // Registered (and counted) before the reply is queued, so whoever sees the reply sees the
        // subscription, and retention keeps what its cursor still needs from now on.
        let outbox = msg.outbox.clone();
        let evict = msg.evict.clone();
        let user = msg.user.clone();
        self.subscribers.insert(
            msg.session,
            Subscriber {
                since_ms: protocol::now_ms(),
                user: msg.user,
                encoding: msg.encoding,
                outbox: msg.outbox,
                evict: msg.evict,
                cursor: shared,
            },
        );
        Stats::gauge(&self.node.stats.subscriptions, 1);
        self.node
            .cluster_state
            .local_join(&self.name, &session, user.as_deref());
        if outbox.try_attach(frame, cursor).is_err() {
            self.remove_subscriber(&session, false);
            evict.do_send(Evict {
                code: CloseCode::SlowConsumer,
                reason: None,
            });
            return Err(ChannelError::Unavailable);
        }
        if self.ns.join_leave {
            self.announce(true, &session, user.as_deref());
        }
        Ok(())
    }
}

impl Handler<RemotePresence> for ChannelActor {
    type Result = ();

    /// Members of other nodes joined or left: the local subscribers hear it like a local change.
    fn handle(&mut self, msg: RemotePresence, _ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        if !self.ns.join_leave {
            return;
        }
        for e in msg.0 {
            self.announce(e.join, &e.session, e.user.as_deref());
        }
    }
}

impl Handler<Unsubscribe> for ChannelActor {
    type Result = bool;

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Self::Context) -> bool {
        let _span = self.span.clone().entered();
        self.last_activity = Instant::now();
        self.remove_subscriber(&msg.session, true).is_some()
    }
}
