//! Read-only questions to a channel (presence, history pages, inspection) and the operator reset.
//!
//! Split from `actor.rs` so the sequencing and fan-out path stays short to read.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use super::actor::{namespace_of, ChannelActor};
use super::{
    ChannelError, ChannelInfo, History, HistoryPage, Inspect, Presence, ResetHistory,
    SubscriberInfo,
};
use crate::history::HistoryError;

impl Handler<Presence> for ChannelActor {
    type Result = Result<Vec<(String, Option<String>)>, ChannelError>;

    fn handle(&mut self, _msg: Presence, _ctx: &mut Self::Context) -> Self::Result {
        if !self.ns.presence {
            return Err(ChannelError::PresenceDisabled);
        }
        let mut members: Vec<_> = self
            .subscribers
            .iter()
            .map(|(s, sub)| (s.to_string(), sub.user.as_deref().map(str::to_owned)))
            .collect();
        members.sort();
        Ok(members)
    }
}

impl Handler<History> for ChannelActor {
    type Result = Result<HistoryPage, ChannelError>;

    fn handle(&mut self, msg: History, _ctx: &mut Self::Context) -> Self::Result {
        self.last_activity = Instant::now();
        let storage = |e: HistoryError| ChannelError::Storage(e.to_string());
        let oldest = self
            .node
            .store
            .peek_state(&self.name)
            .map_err(storage)?
            .and_then(|s| s.oldest);
        let mut messages = if msg.since < self.durable {
            self.node
                .store
                .range(&self.name, msg.since, msg.limit)
                .map_err(storage)?
        } else {
            Vec::new()
        };
        // Appended but not yet durable messages are not history yet.
        messages.retain(|m| m.offset <= self.durable);
        let next = match messages.last() {
            Some(m) if m.offset < self.durable => Some(m.offset),
            _ => None,
        };
        Ok(HistoryPage {
            epoch: self.epoch.to_string(),
            head: self.durable,
            oldest: oldest.filter(|o| *o <= self.durable),
            messages,
            next,
        })
    }
}

impl Handler<Inspect> for ChannelActor {
    type Result = MessageResult<Inspect>;

    fn handle(&mut self, _msg: Inspect, _ctx: &mut Self::Context) -> Self::Result {
        let mut subscribers: Vec<SubscriberInfo> = self
            .subscribers
            .iter()
            .map(|(id, s)| SubscriberInfo {
                session: id.to_string(),
                user: s.user.as_deref().map(str::to_owned),
                since_ms: s.since_ms,
            })
            .collect();
        subscribers.sort_by(|a, b| a.session.cmp(&b.session));
        MessageResult(ChannelInfo {
            name: self.name.to_string(),
            namespace: namespace_of(&self.name).to_string(),
            options: self.ns.clone(),
            epoch: self.epoch.to_string(),
            head: self.durable,
            pending: self.pending.len(),
            subscribers,
            last_publish_ms: self.last_publish_ms,
        })
    }
}

impl Handler<ResetHistory> for ChannelActor {
    type Result = Result<String, ChannelError>;

    fn handle(&mut self, _msg: ResetHistory, _ctx: &mut Self::Context) -> Self::Result {
        let _span = self.span.clone().entered();
        if !self.pending.is_empty() || self.replay_floor().is_some() {
            return Err(ChannelError::Unavailable);
        }
        let state = self
            .node
            .store
            .reset(&self.name)
            .map_err(|e| ChannelError::Storage(e.to_string()))?;
        tracing::warn!(channel = %self.name, epoch = %state.epoch, "channel history reset by operator");
        self.epoch = Arc::from(state.epoch.as_str());
        self.head = state.head;
        self.durable = state.head;
        Ok(state.epoch)
    }
}
