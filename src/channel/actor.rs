//! The channel actor: fan-out, subscribers and presence of one channel.
//!
//! It does not decide the order of messages: the node's applier applies committed log entries to the
//! store and hands the channel each applied message ([`Delivered`]), in log order, which it encodes once
//! per encoding and queues for its subscribers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::applier::{Delivered, ResetApplied};
use super::replay::{self, ReplayDone, ReplayJob, ReplayTicket};
use super::{ChannelError, Evict, Outbox, Subscribe, Unsubscribe};
use crate::config::NamespaceOptions;
use crate::history::{HistoryError, Retention};
use crate::node::{Node, Stats};
use crate::protocol::{
    self, encode, results, CloseCode, Encoding, MessageBody, Outgoing, PresenceBody, ServerFrame,
};

/// One message encoded for each encoding some subscriber uses.
struct Delivery {
    json: Option<Outgoing>,
    msgpack: Option<Outgoing>,
}

impl Delivery {
    fn get(&self, e: Encoding) -> Option<&Outgoing> {
        match e {
            Encoding::Json => self.json.as_ref(),
            Encoding::Msgpack => self.msgpack.as_ref(),
        }
    }
}

pub(super) struct Subscriber {
    pub(super) user: Option<Arc<str>>,
    pub(super) since_ms: u64,
    pub(super) encoding: Encoding,
    pub(super) outbox: Outbox,
    pub(super) evict: Recipient<Evict>,
    /// Set while history is being replayed to this subscriber: live messages wait in `buffer`.
    pub(super) replay: Option<ReplayState>,
}

pub(super) struct ReplayState {
    ticket: Arc<ReplayTicket>,
    /// First offset being replayed; retention must not trim from here on.
    floor: u64,
    buffer: Vec<Arc<Delivery>>,
}

/// The actor of one channel. See the module docs of [`crate::channel`].
pub struct ChannelActor {
    pub(super) name: Arc<str>,
    pub(super) node: Arc<Node>,
    pub(super) ns: NamespaceOptions,
    pub(super) epoch: Arc<str>,
    /// Offset of the last message applied and delivered.
    pub(super) durable: u64,
    pub(super) subscribers: HashMap<Arc<str>, Subscriber>,
    /// Subscribers per encoding (JSON, MessagePack), so a delivery knows which encodings to build
    /// without walking every subscriber.
    per_encoding: [usize; 2],
    /// Id of the next replay ([`ReplayTicket`]).
    next_replay: u64,
    pub(super) last_activity: Instant,
    pub(super) last_publish_ms: Option<u64>,
    /// Budget of `join`/`leave` frames (`channel.join_leave_per_second`); `None` when the namespace
    /// sends none.
    join_leave_budget: Option<governor::DefaultDirectRateLimiter>,
    /// Span of this channel; entered by the handlers.
    pub(super) span: tracing::Span,
}

fn encoding_slot(e: Encoding) -> usize {
    match e {
        Encoding::Json => 0,
        Encoding::Msgpack => 1,
    }
}

impl ChannelActor {
    /// Loads the channel's state from the store.
    pub fn load(name: Arc<str>, node: Arc<Node>) -> Result<Self, HistoryError> {
        let state = node.store.channel_state(&name)?;
        let ns = node.config.namespace(namespace_of(&name));
        let join_leave_budget = ns.join_leave.then(|| {
            let rate = std::num::NonZeroU32::new(node.config.channel.join_leave_per_second)
                .unwrap_or(std::num::NonZeroU32::MIN);
            governor::RateLimiter::direct_with_clock(
                governor::Quota::per_second(rate),
                node.clock.clone(),
            )
        });
        Ok(ChannelActor {
            join_leave_budget,
            span: tracing::info_span!("channel", channel = %name),
            name,
            ns,
            epoch: Arc::from(state.epoch.as_str()),
            durable: state.head,
            subscribers: HashMap::new(),
            per_encoding: [0, 0],
            next_replay: 0,
            last_activity: Instant::now(),
            last_publish_ms: None,
            node,
        })
    }

    fn retention(&self) -> Retention {
        retention_of(&self.ns)
    }

    /// Lowest offset an in-progress replay still needs.
    pub(super) fn replay_floor(&self) -> Option<u64> {
        self.subscribers
            .values()
            .filter_map(|s| s.replay.as_ref().map(|r| r.floor))
            .min()
    }

    fn trim(&self) {
        let floor = self.replay_floor();
        if let Err(e) =
            self.node
                .store
                .trim(&self.name, &self.retention(), protocol::now_ms(), floor)
        {
            tracing::warn!(channel = %self.name, error = %e, "history trim failed");
        }
    }

    /// Encodes a message once per encoding in use and queues it on every subscriber's outbox.
    fn deliver(&mut self, m: &Delivered, data: &rmpv::Value) {
        let body = MessageBody {
            channel: &self.name,
            id: &m.id,
            epoch: &self.epoch,
            offset: m.offset,
            data,
            from: m.from.as_deref(),
        };
        let frame = ServerFrame::Message(body);
        let enc = |e: Encoding| {
            if self.per_encoding[encoding_slot(e)] == 0 {
                return None;
            }
            encode(e, &frame)
                .map_err(|err| tracing::error!(error = %err, "message encoding failed"))
                .ok()
        };
        let delivery = Arc::new(Delivery {
            json: enc(Encoding::Json),
            msgpack: enc(Encoding::Msgpack),
        });
        let buffer_cap = self.node.config.channel.replay_buffer;
        let mut slow = Vec::new();
        let mut sent = 0u64;
        for (id, sub) in self.subscribers.iter_mut() {
            if let Some(r) = sub.replay.as_mut() {
                if r.buffer.len() >= buffer_cap {
                    slow.push(id.clone());
                } else {
                    r.buffer.push(delivery.clone());
                }
                continue;
            }
            let Some(out) = delivery.get(sub.encoding) else {
                continue;
            };
            if sub.outbox.try_send(out.clone()).is_ok() {
                sent += 1;
            } else {
                slow.push(id.clone());
            }
        }
        Stats::add(&self.node.stats.messages_out, sent);
        for id in slow {
            self.evict_slow(&id);
        }
    }

    /// Drops a subscriber whose outbox is full (or closed) and asks its session to close with 4001.
    fn evict_slow(&mut self, session: &Arc<str>) {
        if let Some(sub) = self.remove_subscriber(session, true) {
            // Counted by the session when it closes: once per session, however many channels cut it.
            if !sub.outbox.is_closed() {
                sub.evict.do_send(Evict {
                    code: CloseCode::SlowConsumer,
                    reason: None,
                });
            }
        }
    }

    fn remove_subscriber(&mut self, session: &Arc<str>, announce: bool) -> Option<Subscriber> {
        let sub = self.subscribers.remove(session)?;
        if let Some(r) = &sub.replay {
            r.ticket.cancel();
        }
        self.per_encoding[encoding_slot(sub.encoding)] -= 1;
        Stats::gauge(&self.node.stats.subscriptions, -1);
        if announce && self.ns.join_leave {
            self.announce(false, session, sub.user.as_deref());
        }
        Some(sub)
    }

    /// Sends `join` or `leave` to every other live subscriber, within the channel's join/leave budget.
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
            if &**id == session || sub.replay.is_some() {
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
            self.evict_slow(&id);
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
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for r in self.subscribers.values().filter_map(|s| s.replay.as_ref()) {
            r.ticket.cancel();
        }
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
        match rmpv::decode::read_value(&mut &msg.data[..]) {
            Ok(data) => self.deliver(&msg, &data),
            Err(e) => {
                tracing::error!(channel = %self.name, offset = msg.offset, error = %e, "applied message does not decode")
            }
        }
        let waited = protocol::now_ms().saturating_sub(msg.ts);
        self.node
            .stats
            .publish_to_deliver
            .observe_duration(Duration::from_millis(waited));
        self.durable = msg.offset;
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
    }
}

impl Handler<Subscribe> for ChannelActor {
    type Result = Result<(), ChannelError>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Self::Context) -> Self::Result {
        let _span = self.span.clone().entered();
        self.last_activity = Instant::now();
        if msg.outbox.is_closed() {
            return Err(ChannelError::Unavailable);
        }
        if self.subscribers.contains_key(&msg.session) {
            return Err(ChannelError::AlreadySubscribed);
        }
        let mut replay_from = None;
        let resume = match &msg.since {
            None => None,
            Some(pos) => {
                let oldest = self
                    .node
                    .store
                    .peek_state(&self.name)
                    .map_err(|e| ChannelError::Storage(e.to_string()))?
                    .and_then(|s| s.oldest);
                let complete =
                    pos.offset == self.durable || oldest.is_some_and(|o| o <= pos.offset + 1);
                if *pos.epoch == *self.epoch && pos.offset <= self.durable && complete {
                    if pos.offset < self.durable {
                        replay_from = Some(pos.offset);
                    }
                    Some((true, self.durable - pos.offset))
                } else {
                    Some((false, 0))
                }
            }
        };
        let result = results::subscribed(&self.name, &self.epoch, self.durable, resume);
        let reply = ServerFrame::Reply {
            id: &msg.request,
            result: &result,
        };
        let frame =
            encode(msg.encoding, &reply).map_err(|e| ChannelError::Storage(e.to_string()))?;
        let session = msg.session.clone();
        self.next_replay += 1;
        let ticket = ReplayTicket::new(self.next_replay);
        let job = replay_from.map(|after| ReplayJob {
            ticket: ticket.clone(),
            store: self.node.store.clone(),
            channel: self.name.clone(),
            epoch: self.epoch.clone(),
            encoding: msg.encoding,
            outbox: msg.outbox.clone(),
            after,
            upto: self.durable,
        });
        // Registered (and counted) before the reply is queued, so whoever sees the reply sees the
        // subscription. Nothing can be delivered in between: this handler runs to completion.
        let outbox = msg.outbox.clone();
        let evict = msg.evict.clone();
        let user = msg.user.clone();
        self.per_encoding[encoding_slot(msg.encoding)] += 1;
        let replaced = self.subscribers.insert(
            msg.session,
            Subscriber {
                since_ms: protocol::now_ms(),
                user: msg.user,
                encoding: msg.encoding,
                outbox: msg.outbox,
                evict: msg.evict,
                replay: replay_from.map(|after| ReplayState {
                    ticket,
                    floor: after + 1,
                    buffer: Vec::new(),
                }),
            },
        );
        match replaced {
            Some(old) => self.per_encoding[encoding_slot(old.encoding)] -= 1,
            None => Stats::gauge(&self.node.stats.subscriptions, 1),
        }
        if outbox.try_send(frame).is_err() {
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
        if let Some(job) = job {
            let me = ctx.address();
            actix::spawn(async move {
                let replay = job.ticket.id;
                let ok = replay::run(job).await;
                me.do_send(ReplayDone {
                    session,
                    replay,
                    ok,
                });
            });
        }
        Ok(())
    }
}

impl Handler<ReplayDone> for ChannelActor {
    type Result = ();

    fn handle(&mut self, msg: ReplayDone, _ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        let Some(sub) = self.subscribers.get_mut(&msg.session) else {
            return;
        };
        // The end of an older replay (of a subscription since ended) says nothing about this one.
        if sub
            .replay
            .as_ref()
            .is_none_or(|r| r.ticket.id != msg.replay)
        {
            return;
        }
        let Some(state) = sub.replay.take() else {
            return;
        };
        if let Err(e) = msg.ok {
            tracing::error!(channel = %self.name, session = %msg.session, error = %e, "replay failed");
            let evict = sub.evict.clone();
            self.remove_subscriber(&msg.session, true);
            evict.do_send(Evict {
                code: CloseCode::Internal,
                reason: Some("replay failed".into()),
            });
            return;
        }
        let mut full = false;
        for d in &state.buffer {
            if let Some(out) = d.get(sub.encoding) {
                if sub.outbox.try_send(out.clone()).is_err() {
                    full = true;
                    break;
                }
            }
        }
        if full {
            self.evict_slow(&msg.session);
        }
        self.trim();
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
