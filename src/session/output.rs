//! What a session sends, in the order it leaves, whatever the transport: queued control frames first
//! (the outbox), then the subscriptions' messages from their cursors, taking turns. The WebSocket
//! writer ([`super::writer`]) hands these frames to the socket; the long-polling transport
//! ([`super::polling`]) gathers them into batches. Sharing this one reader is what makes the two
//! transports deliver the same frames in the same order.

use std::task::{Context, Poll};

use crate::channel::{Cursor, Item, OutboxReceiver};
use crate::protocol::Outgoing;

/// The reading end of a session's outbox and of its subscriptions' cursors.
pub struct Output {
    outbox: OutboxReceiver,
    /// The connection's subscriptions.
    cursors: Vec<Cursor>,
    /// The cursor asked first for the next message (they take turns).
    turn: usize,
}

impl Output {
    pub fn new(outbox: OutboxReceiver) -> Self {
        Output {
            outbox,
            cursors: Vec::new(),
            turn: 0,
        }
    }

    /// The next frame: a queued control frame first, else the next message of a subscription.
    /// `Ready(None)` when the outbox is closed (the session is gone).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outgoing>> {
        match self.outbox.poll_recv(cx) {
            Poll::Ready(Some(Item::Frame(out))) => return Poll::Ready(Some(out)),
            Poll::Ready(Some(Item::Subscribed(reply, cursor))) => {
                // Exactly as many slots as subscriptions: a cursor is 160 bytes, and a `Vec` would
                // otherwise keep room for 4 after the first.
                self.cursors.reserve_exact(1);
                self.cursors.push(*cursor);
                return Poll::Ready(Some(reply));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let n = self.cursors.len();
        let mut ended = false;
        let mut next = None;
        for k in 0..n {
            let i = (self.turn + k) % n;
            match self.cursors[i].poll_frame(cx) {
                Poll::Ready(Some(out)) => {
                    self.turn = i + 1;
                    next = Some(out);
                    break;
                }
                Poll::Ready(None) => ended = true,
                Poll::Pending => {}
            }
        }
        if ended {
            self.cursors.retain(|c| !c.is_ended());
        }
        match next {
            Some(out) => Poll::Ready(Some(out)),
            None => Poll::Pending,
        }
    }

    /// Stops reading the subscriptions (the session is closing).
    pub fn clear_cursors(&mut self) {
        self.cursors.clear();
    }
}
