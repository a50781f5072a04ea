//! Per-channel resume position and duplicate suppression.
//!
//! Exists so that the "exactly once at the application" promise of the client rests on one small,
//! unit-tested piece: it remembers the last delivered `{epoch, offset}` of a channel (the `since` of
//! the next resubscribe) and refuses a message whose id was already delivered or whose offset is not
//! past the last one within the same epoch.

use crate::frame::{MessageFields, Position, SubscribeReply};
use std::collections::{HashSet, VecDeque};

/// How many recent message ids a channel remembers by default.
pub const DEFAULT_ID_MEMORY: usize = 4096;

/// What the tracker says about a subscribe reply.
/// Field names and meanings are those of `docs/protocol.md`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// First subscription: live delivery starts after the head.
    Fresh,
    /// Resumed without a gap; replayed messages follow.
    Recovered,
    /// The history could not be recovered: the app must refetch; live delivery starts after `head`.
    NotRecovered { epoch: String, head: u64 },
}

/// Resume position and recent ids of one channel.
#[derive(Debug, Clone)]
pub struct ChannelTracker {
    last: Option<Position>,
    ids: HashSet<String>,
    order: VecDeque<String>,
    memory: usize,
}

impl Default for ChannelTracker {
    fn default() -> Self {
        Self::new(DEFAULT_ID_MEMORY)
    }
}

impl ChannelTracker {
    /// A tracker remembering up to `memory` ids (at least 1).
    pub fn new(memory: usize) -> Self {
        ChannelTracker {
            last: None,
            ids: HashSet::new(),
            order: VecDeque::new(),
            memory: memory.max(1),
        }
    }

    /// The position to resume from (`since`), if any was established.
    pub fn position(&self) -> Option<&Position> {
        self.last.as_ref()
    }

    /// Applies a subscribe reply. `resumed` says whether the subscribe carried `since`.
    pub fn on_subscribed(&mut self, reply: &SubscribeReply, resumed: bool) -> ReplyOutcome {
        let head = Position {
            epoch: reply.epoch.clone(),
            offset: reply.offset,
        };
        if !resumed || self.last.is_none() {
            self.last = Some(head);
            return ReplyOutcome::Fresh;
        }
        if reply.recovered == Some(true) {
            ReplyOutcome::Recovered
        } else {
            self.last = Some(head);
            ReplyOutcome::NotRecovered {
                epoch: reply.epoch.clone(),
                head: reply.offset,
            }
        }
    }

    /// Whether `msg` must be delivered; when it is, records it as the last position.
    pub fn accept(&mut self, msg: &MessageFields) -> bool {
        if self.ids.contains(&msg.id) {
            return false;
        }
        if let Some(last) = &self.last {
            if last.epoch == msg.epoch && msg.offset <= last.offset {
                return false;
            }
        }
        self.last = Some(Position {
            epoch: msg.epoch.clone(),
            offset: msg.offset,
        });
        self.ids.insert(msg.id.clone());
        self.order.push_back(msg.id.clone());
        while self.order.len() > self.memory {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn msg(id: &str, epoch: &str, offset: u64) -> MessageFields {
        MessageFields {
            channel: "c".into(),
            id: id.into(),
            epoch: epoch.into(),
            offset,
            data: Value::Nil,
            from: None,
        }
    }

    fn reply(epoch: &str, offset: u64, recovered: Option<bool>) -> SubscribeReply {
        SubscribeReply {
            channel: "c".into(),
            epoch: epoch.into(),
            offset,
            recovered,
            replayed: None,
        }
    }

    #[test]
    fn drops_repeated_ids_and_old_offsets() {
        let mut t = ChannelTracker::default();
        assert_eq!(
            t.on_subscribed(&reply("E", 10, None), false),
            ReplyOutcome::Fresh
        );
        assert!(!t.accept(&msg("a", "E", 10)), "at head: already seen");
        assert!(t.accept(&msg("b", "E", 11)));
        assert!(!t.accept(&msg("b", "E", 11)), "same id");
        assert!(!t.accept(&msg("x", "E", 11)), "same offset, other id");
        assert!(!t.accept(&msg("y", "E", 5)), "older offset");
        assert!(t.accept(&msg("c", "E", 12)));
        assert_eq!(t.position().map(|p| p.offset), Some(12));
    }

    #[test]
    fn resume_recovered_keeps_position_and_dedups_replay() {
        let mut t = ChannelTracker::default();
        t.on_subscribed(&reply("E", 0, None), false);
        for i in 1..=5 {
            assert!(t.accept(&msg(&format!("m{i}"), "E", i)));
        }
        // Reconnect: replay from 6 on, but a server could resend 5.
        assert_eq!(
            t.on_subscribed(&reply("E", 8, Some(true)), true),
            ReplyOutcome::Recovered
        );
        assert!(!t.accept(&msg("m5", "E", 5)));
        assert!(t.accept(&msg("m6", "E", 6)));
        assert!(t.accept(&msg("m7", "E", 7)));
    }

    #[test]
    fn not_recovered_jumps_to_head_of_new_epoch() {
        let mut t = ChannelTracker::default();
        t.on_subscribed(&reply("E", 0, None), false);
        assert!(t.accept(&msg("m1", "E", 1)));
        let out = t.on_subscribed(&reply("F", 3, Some(false)), true);
        assert_eq!(
            out,
            ReplyOutcome::NotRecovered {
                epoch: "F".into(),
                head: 3
            }
        );
        assert!(!t.accept(&msg("f3", "F", 3)));
        assert!(t.accept(&msg("f4", "F", 4)));
        // A message of another epoch with a low offset is not compared by offset...
        assert!(t.accept(&msg("g1", "G", 1)));
        // ...but its id still is.
        assert!(!t.accept(&msg("f4", "F", 5)));
    }

    #[test]
    fn id_memory_is_bounded() {
        let mut t = ChannelTracker::new(2);
        assert!(t.accept(&msg("a", "E", 1)));
        assert!(t.accept(&msg("b", "E", 2)));
        assert!(t.accept(&msg("c", "E", 3)));
        assert!(t.ids.len() <= 2);
        // "a" is forgotten by id, but the offset rule still refuses it.
        assert!(!t.accept(&msg("a", "E", 1)));
    }
}
