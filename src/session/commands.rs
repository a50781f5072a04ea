//! What a session does with each validated command: local checks first, then the channel actor.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::inflight::Slot;
use super::Session;
use crate::channel::{
    history_page, presence_count, presence_page, publish, publisher_of, ChannelError, History,
    HistoryPage, Publish, Subscribe, Unsubscribe, PRESENCE_PAGE,
};
use crate::protocol::results::{HistoryResult, StoredView};
use crate::protocol::{
    encode, encode_message_data, results, Command, ErrorCode, FrameError, Request, RequestId,
    ServerFrame, UnsubscribedBody,
};

/// What a `presence` or `presence_count` asks.
enum PresenceQuery {
    Page {
        after: Option<String>,
        limit: Option<u64>,
    },
    Count,
}

/// Retry advice sent with `unavailable`.
const RETRY_UNAVAILABLE_MS: u64 = 500;
/// Pause between subscribe attempts while `since` is ahead of what this node has applied.
const RESUME_RETRY: Duration = Duration::from_millis(20);

/// A subscribe in progress (it may be sent again while the node applies up to `since`).
struct SubscribeAttempt {
    /// Tells this attempt from a later subscribe to the same channel.
    number: u64,
    id: RequestId,
    channel: String,
    since: Option<crate::protocol::Position>,
    addr: Addr<crate::channel::ChannelActor>,
    wait_until: Instant,
}

fn channel_error(id: &RequestId, e: &ChannelError) -> (FrameError, Option<u64>) {
    let (code, retry) = match e {
        ChannelError::PresenceDisabled | ChannelError::PublishDisabled => {
            (ErrorCode::Forbidden, None)
        }
        ChannelError::AlreadySubscribed => (ErrorCode::AlreadySubscribed, None),
        ChannelError::Conflict => (ErrorCode::Conflict, None),
        ChannelError::Storage(_) => (ErrorCode::Internal, None),
        _ => (ErrorCode::Unavailable, Some(RETRY_UNAVAILABLE_MS)),
    };
    (
        FrameError::new(Some(id.clone()), code, e.to_string()),
        retry,
    )
}

/// The answer to a subscribe that was still waiting to resume when the client unsubscribed.
fn ended_while_waiting(id: &RequestId) -> (FrameError, Option<u64>) {
    let err = FrameError::new(
        Some(id.clone()),
        ErrorCode::NotSubscribed,
        "unsubscribed before the subscription was established",
    );
    (err, None)
}

fn mailbox_error(id: &RequestId) -> (FrameError, Option<u64>) {
    channel_error(id, &ChannelError::Unavailable)
}

impl Session {
    pub(super) fn dispatch(&mut self, req: Request, ctx: &mut Context<Self>) {
        let Request { id, command } = req;
        match command {
            Command::Ping => return self.reply(&id, &results::empty(), ctx),
            Command::Refresh { token } => return self.refresh(id, &token, ctx),
            _ => {}
        }
        let Some(channel) = command.channel().map(str::to_owned) else {
            return;
        };
        match command {
            Command::Subscribe { since, .. } => self.subscribe(id, channel, since, ctx),
            Command::Unsubscribe { .. } => self.unsubscribe(id, channel, ctx),
            Command::Publish { data, key, .. } => self.publish(id, channel, data, key, ctx),
            Command::Presence { after, limit, .. } => {
                let query = PresenceQuery::Page { after, limit };
                self.presence(id, channel, query, ctx)
            }
            Command::PresenceCount { .. } => self.presence(id, channel, PresenceQuery::Count, ctx),
            Command::History { since, limit, .. } => self.history(id, channel, since, limit, ctx),
            Command::Ping | Command::Refresh { .. } => {}
        }
    }

    /// Replaces the connection's token with a fresh one for the same user and re-arms the expiry timer.
    fn refresh(&mut self, id: RequestId, token: &str, ctx: &mut Context<Self>) {
        let forbidden = |m: String| {
            (
                FrameError::new(Some(id.clone()), ErrorCode::Forbidden, m),
                None,
            )
        };
        let Some(current) = &self.claims else {
            return self.fail(
                forbidden("anonymous connections cannot refresh".into()),
                ctx,
            );
        };
        match self.node.auth.verify(token) {
            Ok(claims) if claims.sub == current.sub => {
                let exp = claims.exp;
                // Subscriptions the new token no longer allows end first, each with an
                // `unsubscribed` frame, so the reply comes after the last of them.
                let mut ended: Vec<String> = self
                    .subscriptions
                    .iter()
                    .filter(|ch| !claims.may_subscribe(ch))
                    .map(|ch| ch.to_string())
                    .collect();
                ended.sort();
                self.claims = Some(Box::new(claims));
                self.arm_expiry(ctx);
                // Each channel confirms the unsubscribe first: after that it queues nothing more for
                // this session, so no message of an ended channel follows its `unsubscribed` frame.
                let confirmations: Vec<_> = ended
                    .iter()
                    .filter(|ch| self.subscriptions.remove(ch.as_str()))
                    .filter_map(|ch| self.node.channels.get(ch))
                    .map(|addr| {
                        addr.send(Unsubscribe {
                            session: self.id.clone(),
                        })
                    })
                    .collect();
                futures_util::future::join_all(confirmations)
                    .into_actor(self)
                    .map(move |_, act, ctx| {
                        for channel in &ended {
                            let body = UnsubscribedBody {
                                channel,
                                reason: "the refreshed token does not allow this channel",
                            };
                            act.send(ServerFrame::Unsubscribed(body), ctx);
                        }
                        act.reply(&id, &results::refreshed(exp), ctx);
                    })
                    .spawn(ctx);
            }
            Ok(_) => self.fail(forbidden("the new token is for another user".into()), ctx),
            Err(e) => {
                self.node.stats.auth_failures[e.index()]
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.fail(forbidden(format!("refresh refused: {e}")), ctx)
            }
        }
    }

    /// `forbidden` unless the token's claims allow `channel` (claims without patterns allow everything
    /// the namespace allows).
    fn check_claims(
        &mut self,
        id: &RequestId,
        channel: &str,
        publish: bool,
        ctx: &mut Context<Self>,
    ) -> bool {
        // `history` and `presence` read the channel: they need the right to subscribe to it.
        let ok = self.claims.as_ref().is_none_or(|c| {
            if publish {
                c.may_publish(channel)
            } else {
                c.may_subscribe(channel)
            }
        });
        if !ok {
            let what = if publish {
                "publish to"
            } else {
                "subscribe to"
            };
            let err = FrameError::new(
                Some(id.clone()),
                ErrorCode::Forbidden,
                format!("the token does not allow you to {what} {channel}"),
            );
            self.fail((err, None), ctx);
        }
        ok
    }

    fn fail(&mut self, (err, retry): (FrameError, Option<u64>), ctx: &mut Context<Self>) {
        self.error(&err, retry, ctx);
    }

    fn channel_addr(
        &mut self,
        id: &RequestId,
        channel: &str,
        ctx: &mut Context<Self>,
    ) -> Option<Addr<crate::channel::ChannelActor>> {
        match self.node.channels.get_or_start(&self.node.hub, channel) {
            Ok(addr) => Some(addr),
            Err(e) => {
                self.fail(channel_error(id, &e), ctx);
                None
            }
        }
    }

    fn subscribe(
        &mut self,
        id: RequestId,
        channel: String,
        since: Option<crate::protocol::Position>,
        ctx: &mut Context<Self>,
    ) {
        if !self.check_claims(&id, &channel, false, ctx) {
            return;
        }
        if self.subscriptions.contains(channel.as_str()) {
            return self.fail(channel_error(&id, &ChannelError::AlreadySubscribed), ctx);
        }
        if self.subscriptions.len() >= self.node.config.limits.max_subscriptions_per_connection {
            let err = FrameError::new(
                Some(id),
                ErrorCode::TooManySubscriptions,
                "subscription limit of this connection reached",
            );
            return self.fail((err, None), ctx);
        }
        let Some(addr) = self.channel_addr(&id, &channel, ctx) else {
            return;
        };
        // Recorded before the answer so a disconnect meanwhile still unsubscribes.
        self.subscriptions.insert(channel.as_str().into());
        self.next_attempt += 1;
        self.attempts.insert(channel.clone(), self.next_attempt);
        let attempt = SubscribeAttempt {
            number: self.next_attempt,
            id,
            channel,
            since,
            addr,
            wait_until: Instant::now()
                + Duration::from_millis(self.node.config.session.resume_wait_ms),
        };
        let slot = self.gate.enter();
        self.send_subscribe(attempt, slot, ctx);
    }

    /// Sends one subscribe attempt. While `since` is ahead of what the node has applied and the wait is
    /// not over, the channel answers `NotAppliedYet` and the attempt is sent again shortly, holding its
    /// in-flight slot; an `unsubscribe` meanwhile ends it.
    fn send_subscribe(&mut self, a: SubscribeAttempt, slot: Slot, ctx: &mut Context<Self>) {
        let msg = Subscribe {
            session: self.id.clone(),
            user: self.user.clone(),
            encoding: self.encoding,
            outbox: self.outbox.clone(),
            evict: self.evictor(ctx),
            request: a.id.clone(),
            since: a.since.clone(),
            may_wait: Instant::now() < a.wait_until,
        };
        a.addr
            .send(msg)
            .into_actor(self)
            .map(move |res, act, ctx| {
                let current = act.attempts.get(&a.channel) == Some(&a.number);
                let err = match res {
                    Ok(Err(ChannelError::NotAppliedYet)) if current => {
                        ctx.run_later(RESUME_RETRY, move |act, ctx| {
                            if act.attempts.get(&a.channel) == Some(&a.number) {
                                act.send_subscribe(a, slot, ctx);
                            } else {
                                // Unsubscribed while waiting: the subscribe still gets its answer.
                                drop(slot);
                                act.fail(ended_while_waiting(&a.id), ctx);
                            }
                        });
                        return;
                    }
                    Ok(Err(ChannelError::NotAppliedYet)) => Some(ended_while_waiting(&a.id)),
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(channel_error(&a.id, &e)),
                    Err(_) => Some(mailbox_error(&a.id)),
                };
                drop(slot);
                if current {
                    act.attempts.remove(&a.channel);
                    if act.attempts.is_empty() {
                        // Usually empty: its table goes rather than stay for the connection's life.
                        act.attempts = HashMap::new();
                    }
                }
                if let Some(err) = err {
                    if current {
                        act.subscriptions.remove(a.channel.as_str());
                    }
                    act.fail(err, ctx);
                }
            })
            .spawn(ctx);
    }

    fn unsubscribe(&mut self, id: RequestId, channel: String, ctx: &mut Context<Self>) {
        // A subscribe still waiting to resume ends here too.
        self.attempts.remove(&channel);
        if !self.subscriptions.remove(channel.as_str()) {
            let err = FrameError::new(Some(id), ErrorCode::NotSubscribed, "not subscribed");
            return self.fail((err, None), ctx);
        }
        let Some(addr) = self.node.channels.get(&channel) else {
            // The channel's actor is gone, and the subscription with it.
            return self.reply(&id, &results::empty(), ctx);
        };
        let slot = self.gate.enter();
        addr.send(Unsubscribe {
            session: self.id.clone(),
        })
        .into_actor(self)
        .map(move |_res, act, ctx| {
            drop(slot);
            act.reply(&id, &results::empty(), ctx)
        })
        .spawn(ctx);
    }

    fn publish(
        &mut self,
        id: RequestId,
        channel: String,
        data: rmpv::Value,
        key: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let ns = self
            .node
            .config
            .namespace(crate::channel::namespace_of(&channel));
        if !self.check_claims(&id, &channel, true, ctx) {
            return;
        }
        if !ns.allow_publish {
            return self.fail(channel_error(&id, &ChannelError::PublishDisabled), ctx);
        }
        let raw = match encode_message_data(&data) {
            Ok(raw) => raw,
            Err(m) => return self.fail((FrameError::bad(Some(id), m), None), ctx),
        };
        let max = self.node.config.limits.max_publish_bytes;
        if raw.len() > max {
            let err = FrameError::new(
                Some(id),
                ErrorCode::TooLarge,
                format!("data is {} bytes encoded; the limit is {max}", raw.len()),
            );
            return self.fail((err, None), ctx);
        }
        let msg = Publish {
            channel,
            raw,
            publisher: publisher_of(self.user.as_deref()),
            from: self.user.clone(),
            key,
        };
        let slot = self.gate.enter();
        publish(&self.node.hub, msg)
            .into_actor(self)
            .map(move |res, act, ctx| {
                drop(slot);
                match res {
                    Ok(p) => act.reply(&id, &results::published(&p.id, &p.epoch, p.offset), ctx),
                    Err(e) => act.fail(channel_error(&id, &e), ctx),
                }
            })
            .spawn(ctx);
    }

    fn presence(
        &mut self,
        id: RequestId,
        channel: String,
        query: PresenceQuery,
        ctx: &mut Context<Self>,
    ) {
        let ns = self
            .node
            .config
            .namespace(crate::channel::namespace_of(&channel));
        if !self.check_claims(&id, &channel, false, ctx) {
            return;
        }
        if !ns.presence {
            return self.fail(channel_error(&id, &ChannelError::PresenceDisabled), ctx);
        }
        if let PresenceQuery::Page { limit: Some(0), .. } = query {
            let err = FrameError::bad(Some(id), "`limit` must be at least 1");
            return self.fail((err, None), ctx);
        }
        let node = self.node.clone();
        let slot = self.gate.enter();
        async move {
            match query {
                PresenceQuery::Page { after, limit } => {
                    let limit =
                        limit.map_or(PRESENCE_PAGE, |l| l.min(PRESENCE_PAGE as u64) as usize);
                    let (members, next) =
                        presence_page(&node.hub, &channel, after.as_deref(), limit).await?;
                    Ok(results::presence(&channel, &members, next.as_deref()))
                }
                PresenceQuery::Count => {
                    let (sessions, users) = presence_count(&node.hub, &channel).await?;
                    Ok(results::presence_count(&channel, sessions, users))
                }
            }
        }
        .into_actor(self)
        .map(move |res, act, ctx| {
            drop(slot);
            match res {
                Ok(result) => act.reply(&id, &result, ctx),
                Err(e) => act.fail(channel_error(&id, &e), ctx),
            }
        })
        .spawn(ctx);
    }

    fn history(
        &mut self,
        id: RequestId,
        channel: String,
        since: u64,
        limit: Option<u64>,
        ctx: &mut Context<Self>,
    ) {
        if !self.check_claims(&id, &channel, false, ctx) {
            return;
        }
        let cfg = &self.node.config.history;
        if limit == Some(0) {
            let err = FrameError::bad(Some(id), "`limit` must be at least 1");
            return self.fail((err, None), ctx);
        }
        let q = History {
            since,
            limit: limit.map_or(100.min(cfg.max_page), |l| {
                l.min(cfg.max_page as u64) as usize
            }),
            max_bytes: cfg.max_page_bytes,
        };
        let node = self.node.clone();
        let slot = self.gate.enter();
        async move {
            history_page(&node.hub, &channel, q)
                .await
                .map(|p| (channel, p))
        }
        .into_actor(self)
        .map(move |res, act, ctx| {
            drop(slot);
            match res {
                Ok((channel, page)) => act.reply_history(&id, &channel, &page, ctx),
                Err(e) => act.fail(channel_error(&id, &e), ctx),
            }
        })
        .spawn(ctx);
    }

    /// Encodes a history page straight from its stored bytes into one frame.
    fn reply_history(
        &mut self,
        id: &RequestId,
        channel: &str,
        page: &HistoryPage,
        ctx: &mut Context<Self>,
    ) {
        let views: Vec<StoredView<'_>> = page
            .messages
            .iter()
            .map(|m| StoredView {
                channel,
                id: &m.id,
                epoch: &page.epoch,
                offset: m.offset,
                from: m.from.as_deref(),
                data: &m.data,
            })
            .collect();
        let frame = ServerFrame::HistoryReply {
            id,
            result: HistoryResult {
                channel,
                epoch: &page.epoch,
                head: page.head,
                oldest: page.oldest,
                messages: &views,
                next: page.next,
            },
        };
        match encode(self.encoding, &frame) {
            Ok(out) => self.push(out, ctx),
            Err(e) => {
                let err = ChannelError::Storage(format!("history page cannot be encoded: {e}"));
                self.fail(channel_error(id, &err), ctx)
            }
        }
    }
}
