//! `GET /metrics`: the node's counters, gauges and histograms in the Prometheus text format (0.0.4).
//!
//! Exists so the seed's metrics can be put on a dashboard. Names follow Prometheus conventions: a `herald_`
//! prefix, base units in the name (`_seconds`, `_bytes`), `_total` on counters. The output passes
//! `promtool check metrics` (tests/admin.rs runs it when promtool is installed). Rendering reads atomics and
//! histogram snapshots only: no actor is asked, so a scrape costs the same with 10 or 100,000 channels.

use std::fmt::Write;

use actix_web::HttpResponse;

use super::auth::{self, Failure};
use super::NodeData;
use crate::admission::RefusedBy;
use crate::auth::AuthError;
use crate::metrics::HistogramSnapshot;
use crate::node::{Node, Stats};
use crate::session::Transport;

/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Builds the exposition text.
struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.head(name, "counter", help);
        let _ = writeln!(self.0, "{name} {v}");
    }

    fn gauge(&mut self, name: &str, help: &str, v: impl std::fmt::Display) {
        self.head(name, "gauge", help);
        let _ = writeln!(self.0, "{name} {v}");
    }

    fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.head(name, "histogram", help);
        for (bound, count) in &h.buckets {
            let le = if bound.is_infinite() {
                "+Inf".to_string()
            } else {
                bound.to_string()
            };
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{le}\"}} {count}");
        }
        let _ = writeln!(self.0, "{name}_sum {}", h.sum_seconds);
        let _ = writeln!(self.0, "{name}_count {}", h.count);
    }
}

/// Resident set size of this process in bytes, from `/proc/self/statm` (None where there is no procfs).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0)?)
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

/// The exposition text of `node`.
pub fn render(node: &Node) -> String {
    let s = &node.stats;
    let mut o = Out(String::with_capacity(8 * 1024));
    let version = env!("CARGO_PKG_VERSION");
    o.head(
        "herald_build_info",
        "gauge",
        "Always 1; the labels name the running build.",
    );
    let _ = writeln!(o.0, "herald_build_info{{version=\"{version}\"}} 1");
    let started = node
        .started_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    o.gauge(
        "herald_start_time_seconds",
        "When the node started, in seconds since the Unix epoch.",
        started,
    );

    // Cluster membership (a single node counts itself).
    let me = node.heartbeat(0);
    let members = node.membership.members(&me);
    o.gauge(
        "herald_cluster_nodes",
        "Nodes alive as this node sees them (itself included; a node unheard for 3 heartbeats is dead).",
        members.iter().filter(|m| m.alive).count(),
    );
    o.head(
        "herald_cluster_shard_lag",
        "gauge",
        "Log indexes this node is behind the most advanced alive node, per shard (an AMQP message is 256 indexes).",
    );
    for (shard, lag) in node.membership.lag(&me).iter().enumerate() {
        let _ = writeln!(o.0, "herald_cluster_shard_lag{{shard=\"{shard}\"}} {lag}");
    }

    // Connections.
    let sessions = Stats::get(&s.sessions).max(0);
    let polling = Stats::get(&s.polling_sessions).clamp(0, sessions);
    o.head(
        "herald_connections",
        "gauge",
        "Open client connections, by transport.",
    );
    for (transport, n) in [
        (Transport::WebSocket, sessions - polling),
        (Transport::LongPolling, polling),
    ] {
        let _ = writeln!(
            o.0,
            "herald_connections{{transport=\"{}\"}} {n}",
            transport.label()
        );
    }
    o.counter(
        "herald_connections_opened_total",
        "Client connections accepted.",
        count(&s.connections_opened),
    );
    o.counter(
        "herald_connections_closed_total",
        "Client connections closed.",
        count(&s.connections_closed),
    );
    o.histogram(
        "herald_connection_lifetime_seconds",
        "Lifetime of closed client connections.",
        &s.connection_lifetime.snapshot(),
    );

    // Memory.
    let rss = resident_memory_bytes();
    if let Some(rss) = rss {
        o.gauge(
            "herald_process_resident_memory_bytes",
            "Resident memory of the node process.",
            rss,
        );
        let per = if sessions > 0 {
            rss / sessions as u64
        } else {
            0
        };
        o.gauge(
            "herald_memory_per_connection_bytes",
            "Resident memory divided by open connections (0 without connections).",
            per,
        );
    }

    // Traffic.
    o.counter(
        "herald_messages_received_total",
        "Frames received from clients.",
        count(&s.messages_in),
    );
    o.counter(
        "herald_messages_sent_total",
        "Channel messages handed to subscribers' sockets.",
        count(&s.messages_out),
    );
    o.gauge(
        "herald_subscriptions",
        "Channel subscriptions over all connections.",
        Stats::get(&s.subscriptions).max(0),
    );
    o.gauge(
        "herald_channels_active",
        "Channels with a running channel actor.",
        Stats::get(&s.channels).max(0),
    );
    o.gauge(
        "herald_subscribers_catching_up",
        "Subscribers behind their channel's head at the last lag check (they catch up from the window or history).",
        Stats::get(&s.catching_up).max(0),
    );
    o.histogram(
        "herald_subscriber_lag_seconds",
        "How long a subscriber has been behind: age of its oldest unsent message, counted from its subscribe at most (0 when caught up), sampled per subscriber every lag check.",
        &s.subscriber_lag.snapshot(),
    );
    o.histogram(
        "herald_publish_to_deliver_seconds",
        "From a publish to its message entering its channel's feed, where subscribers' writers pick it up (includes the log commit and the apply).",
        &s.publish_to_deliver.snapshot(),
    );

    // Refusals and evictions.
    o.counter(
        "herald_slow_consumer_disconnects_total",
        "Connections closed as slow consumers (close 4001): behind longer than session.max_lag_ms, out of retention, or control frames over session.outbox_bytes.",
        count(&s.slow_consumers),
    );
    o.counter(
        "herald_rate_limit_refusals_total",
        "Client frames refused by the per-connection rate limit.",
        count(&s.rate_limited),
    );
    o.counter(
        "herald_rate_limit_closes_total",
        "Connections closed with 4007 because they kept sending after `rate_limited`.",
        count(&s.rate_limit_closes),
    );
    o.counter(
        "herald_join_leave_suppressed_total",
        "join/leave frames not sent because their channel was over channel.join_leave_per_second.",
        count(&s.join_leave_suppressed),
    );
    o.counter(
        "herald_bad_frames_total",
        "Client frames that failed validation.",
        count(&s.bad_frames),
    );
    o.head(
        "herald_auth_failures_total",
        "counter",
        "Client handshakes and token refreshes refused by authentication, by reason.",
    );
    for (reason, c) in AuthError::REASONS.iter().zip(&s.auth_failures) {
        let _ = writeln!(
            o.0,
            "herald_auth_failures_total{{reason=\"{reason}\"}} {}",
            count(c)
        );
    }
    o.head(
        "herald_connections_refused_total",
        "counter",
        "Client handshakes refused, by reason (origin, subprotocol, draining, auth, node_full, per_ip, \
         per_user, rate).",
    );
    for (by, c) in RefusedBy::ALL.iter().zip(&s.connections_refused) {
        let _ = writeln!(
            o.0,
            "herald_connections_refused_total{{reason=\"{}\"}} {}",
            by.label(),
            count(c)
        );
    }
    o.head(
        "herald_admin_auth_failures_total",
        "counter",
        "Admin API requests refused, by reason (missing, invalid, not_configured).",
    );
    for f in Failure::ALL {
        let _ = writeln!(
            o.0,
            "herald_admin_auth_failures_total{{reason=\"{}\"}} {}",
            f.label(),
            auth::failures(f)
        );
    }

    // History.
    o.counter(
        "herald_history_appends_total",
        "Messages appended to channel history (accepted publishes).",
        count(&s.publishes),
    );
    o.counter(
        "herald_history_trimmed_messages_total",
        "Messages removed from history by retention.",
        count(&s.history_trimmed),
    );
    o.counter(
        "herald_history_flushes_total",
        "Storage flushes (group commits and shutdown).",
        node.store.flush_count(),
    );
    o.histogram(
        "herald_history_flush_seconds",
        "Duration of group-commit storage flushes.",
        &node.store.flush_seconds(),
    );
    if let Ok(bytes) = node.store.size_on_disk() {
        o.gauge(
            "herald_history_disk_bytes",
            "Size of the history store on disk (sled's estimate).",
            bytes,
        );
    }
    o.0
}

/// The `/metrics` handler (no token: keep the admin listener private).
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4 (no token)",
        body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")))]
pub(crate) async fn handler(node: NodeData) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(render(&node))
}
