//! The node's counters, gauges and histograms, in one struct every layer records into (channels,
//! sessions, the admin API). Kept apart from `node.rs` so the channel layer can count without knowing the
//! node; the admin module renders it in the Prometheus text format.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::admission::RefusedBy;
use crate::metrics::{Histogram, LAG_BUCKETS, LATENCY_BUCKETS, LIFETIME_BUCKETS};

/// Counters, gauges and histograms of a node. Gauges are signed so a racing decrement never wraps.
/// The admin module renders them (and the store's flush histogram) as Prometheus metrics.
#[derive(Debug)]
pub struct Stats {
    pub sessions: AtomicI64,
    /// Of `sessions`, those on the long-polling transport.
    pub polling_sessions: AtomicI64,
    pub subscriptions: AtomicI64,
    pub channels: AtomicI64,
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub publishes: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub rate_limited: AtomicU64,
    pub bad_frames: AtomicU64,
    /// Messages removed by retention.
    pub history_trimmed: AtomicU64,
    /// Lifetime of closed connections.
    pub connection_lifetime: Histogram,
    /// From a publish (its entry's timestamp) to its message entering its channel's feed, where
    /// subscribers' writers pick it up (includes the log commit and the apply). Observed only for
    /// channels with an actor.
    pub publish_to_deliver: Histogram,
    /// Refused handshakes and refreshes, by [`crate::auth::AuthError::REASONS`] index.
    pub auth_failures: [AtomicU64; crate::auth::AuthError::REASONS.len()],
    /// Refused handshakes, by [`RefusedBy::index`](crate::admission::RefusedBy::index) (every reason: Origin, subprotocol, draining, token,
    /// connection limits, connect rate).
    pub connections_refused: [AtomicU64; RefusedBy::ALL.len()],
    /// `join`/`leave` frames not sent because their channel was over `channel.join_leave_per_second`.
    pub join_leave_suppressed: AtomicU64,
    /// Connections closed with 4007 for flooding after `rate_limited`.
    pub rate_limit_closes: AtomicU64,
    /// Subscribers behind their channel's head at their channel's last lag check.
    pub catching_up: AtomicI64,
    /// How long a subscriber has been behind: age of the oldest message it has not been sent yet, counted
    /// from its subscribe at most (0 when caught up), sampled per
    /// subscriber at every lag check of its channel.
    pub subscriber_lag: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            sessions: AtomicI64::new(0),
            polling_sessions: AtomicI64::new(0),
            subscriptions: AtomicI64::new(0),
            channels: AtomicI64::new(0),
            connections_opened: AtomicU64::new(0),
            connections_closed: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            publishes: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            history_trimmed: AtomicU64::new(0),
            connection_lifetime: Histogram::new(LIFETIME_BUCKETS),
            publish_to_deliver: Histogram::new(LATENCY_BUCKETS),
            auth_failures: Default::default(),
            connections_refused: Default::default(),
            join_leave_suppressed: AtomicU64::new(0),
            rate_limit_closes: AtomicU64::new(0),
            catching_up: AtomicI64::new(0),
            subscriber_lag: Histogram::new(LAG_BUCKETS),
        }
    }
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn gauge(g: &AtomicI64, delta: i64) {
        g.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn get(g: &AtomicI64) -> i64 {
        g.load(Ordering::Relaxed)
    }
}
