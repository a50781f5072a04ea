//! Admission control at the handshake: connections per node, per IP and per user, and new connections per
//! second per IP. A refused handshake gets an HTTP status with `Retry-After` instead of an upgrade.
//!
//! An admitted connection holds a [`Ticket`]; dropping it (when the session ends) gives the slot back, so
//! the counts cannot leak whatever way the session dies.
//!
//! Clients are counted by address, IPv6 ones by network (`limits.ipv6_prefix_len`, /64 by default): one
//! host usually holds a whole /64, so counting single IPv6 addresses would give it 2^64 identities. The
//! connect rate is checked on its own ([`Admission::check_rate`]) before the token's signature is, so a
//! flood of forged tokens costs no signature work; its per-address state is cleaned every
//! [`HOUSEKEEPING_EVERY`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::cluster::ClusterState;
use crate::config::LimitsConfig;

/// Why a connection was refused, with the advice sent back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("node connection limit reached")]
    NodeFull,
    #[error("too many connections from this address")]
    PerIp,
    #[error("too many connections for this user")]
    PerUser,
    #[error("too many new connections from this address")]
    Rate { retry_after: Duration },
}

impl Refusal {
    /// Seconds to put in `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Refusal::NodeFull => 5,
            Refusal::PerIp | Refusal::PerUser => 10,
            Refusal::Rate { retry_after } => retry_after.as_secs().max(1),
        }
    }

    /// The reason label this refusal is counted under.
    pub fn refused_by(&self) -> RefusedBy {
        match self {
            Refusal::NodeFull => RefusedBy::NodeFull,
            Refusal::PerIp => RefusedBy::PerIp,
            Refusal::PerUser => RefusedBy::PerUser,
            Refusal::Rate { .. } => RefusedBy::Rate,
        }
    }
}

/// Every reason a handshake can be refused for: the `reason` label of `herald_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedBy {
    /// `Origin` not in `server.allowed_origins` (403).
    Origin,
    /// Only unknown subprotocols offered (400).
    Subprotocol,
    /// The node is shutting down (503).
    Draining,
    /// Missing or invalid token (401).
    Auth,
    /// `limits.max_connections` (503).
    NodeFull,
    /// `limits.max_connections_per_ip` (429).
    PerIp,
    /// `limits.max_connections_per_user` (429).
    PerUser,
    /// `limits.connects_per_second_per_ip` (429).
    Rate,
}

impl RefusedBy {
    /// Every reason, in label order.
    pub const ALL: [RefusedBy; 8] = [
        RefusedBy::Origin,
        RefusedBy::Subprotocol,
        RefusedBy::Draining,
        RefusedBy::Auth,
        RefusedBy::NodeFull,
        RefusedBy::PerIp,
        RefusedBy::PerUser,
        RefusedBy::Rate,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RefusedBy::Origin => "origin",
            RefusedBy::Subprotocol => "subprotocol",
            RefusedBy::Draining => "draining",
            RefusedBy::Auth => "auth",
            RefusedBy::NodeFull => "node_full",
            RefusedBy::PerIp => "per_ip",
            RefusedBy::PerUser => "per_user",
            RefusedBy::Rate => "rate",
        }
    }

    /// Position in [`RefusedBy::ALL`] (and in the node's refusal counters).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Shortest time between two log lines about refusals of one reason.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// Rate limit of the refusal log: at most one line per reason per [`REFUSAL_LOG_EVERY`], so a flood of
/// refused handshakes cannot flood the log; the next line says how many were not logged in between.
pub struct RefusalLog {
    started: Instant,
    /// Per reason: milliseconds after `started` before which nothing is logged.
    next_ms: [AtomicU64; RefusedBy::ALL.len()],
    /// Per reason: refusals not logged since the last line.
    suppressed: [AtomicU64; RefusedBy::ALL.len()],
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog {
            started: Instant::now(),
            next_ms: Default::default(),
            suppressed: Default::default(),
        }
    }
}

impl RefusalLog {
    /// Whether a refusal for `reason` is logged now; `Some(n)` says `n` earlier ones were not.
    pub fn should_log(&self, reason: RefusedBy) -> Option<u64> {
        self.should_log_at(reason, self.started.elapsed())
    }

    fn should_log_at(&self, reason: RefusedBy, now: Duration) -> Option<u64> {
        let i = reason.index();
        let now = now.as_millis() as u64;
        let next = self.next_ms[i].load(Ordering::Relaxed);
        let every = REFUSAL_LOG_EVERY.as_millis() as u64;
        if now >= next
            && self.next_ms[i]
                .compare_exchange(next, now + every, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed[i].swap(0, Ordering::Relaxed))
        } else {
            self.suppressed[i].fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// How often the connect-rate limiter forgets addresses whose bucket is full again.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_user: HashMap<Arc<str>, usize>,
}

/// The admission state of a node.
pub struct Admission {
    counts: Mutex<Counts>,
    rate: DefaultKeyedRateLimiter<IpAddr>,
    max_total: usize,
    max_per_ip: usize,
    max_per_user: usize,
    /// Connection counts of the other nodes (per user), and where this node's go.
    cluster: Arc<ClusterState>,
    ipv6_prefix_len: u8,
    started: Instant,
    /// Milliseconds after `started` of the last housekeeping.
    last_housekeeping_ms: AtomicU64,
}

impl Admission {
    /// `cluster` holds the other nodes' per-user counts (empty on a single node): the per-user limit
    /// counts a user's connections on every node, as last heard on the bus.
    pub fn new(limits: &LimitsConfig, cluster: Arc<ClusterState>) -> Arc<Admission> {
        let per_sec = NonZeroU32::new(limits.connects_per_second_per_ip).unwrap_or(NonZeroU32::MIN);
        Arc::new(Admission {
            counts: Mutex::new(Counts::default()),
            rate: RateLimiter::keyed(Quota::per_second(per_sec)),
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            max_per_user: limits.max_connections_per_user,
            cluster,
            ipv6_prefix_len: limits.ipv6_prefix_len.clamp(1, 128),
            started: Instant::now(),
            last_housekeeping_ms: AtomicU64::new(0),
        })
    }

    /// The identity an address is counted under: IPv4 as is, IPv6 (and IPv4-mapped IPv6 as IPv4) masked
    /// to the configured prefix.
    pub fn key_of(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let bits = u128::from(v6);
                    let mask = u128::MAX << (128 - u32::from(self.ipv6_prefix_len));
                    IpAddr::V6(Ipv6Addr::from(bits & mask))
                }
            },
        }
    }

    /// The per-address connect rate. Called before the token is verified.
    pub fn check_rate(&self, ip: Option<IpAddr>) -> Result<(), Refusal> {
        self.maybe_housekeeping();
        let Some(ip) = ip else {
            return Ok(());
        };
        self.rate.check_key(&self.key_of(ip)).map_err(|not_until| {
            let retry_after = not_until.wait_time_from(DefaultClock::default().now());
            Refusal::Rate { retry_after }
        })
    }

    fn maybe_housekeeping(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_housekeeping_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= HOUSEKEEPING_EVERY.as_millis() as u64
            && self
                .last_housekeeping_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.housekeeping();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection (counts only; [`Admission::check_rate`] comes first) or says why not.
    pub fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        user: Option<Arc<str>>,
    ) -> Result<Ticket, Refusal> {
        let ip = ip.map(|ip| self.key_of(ip));
        let mut c = self.lock();
        if c.total >= self.max_total {
            return Err(Refusal::NodeFull);
        }
        if let Some(ip) = ip {
            if c.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
                return Err(Refusal::PerIp);
            }
        }
        if let Some(u) = &user {
            let here = c.per_user.get(u).copied().unwrap_or(0) as u64;
            if here + self.cluster.remote_connections(u) >= self.max_per_user as u64 {
                return Err(Refusal::PerUser);
            }
        }
        c.total += 1;
        if let Some(ip) = ip {
            *c.per_ip.entry(ip).or_default() += 1;
        }
        if let Some(u) = &user {
            let n = c.per_user.entry(u.clone()).or_default();
            *n += 1;
            self.cluster.local_connections(u, *n as u64);
        }
        Ok(Ticket {
            admission: self.clone(),
            ip,
            user,
        })
    }

    /// Open admitted connections.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Drops rate-limiter state of addresses whose bucket is full again (they are indistinguishable from
    /// new ones). Runs by itself every [`HOUSEKEEPING_EVERY`] from [`Admission::check_rate`].
    pub fn housekeeping(&self) {
        self.rate.retain_recent();
        self.rate.shrink_to_fit();
    }

    /// Addresses the connect-rate limiter currently remembers.
    pub fn rate_entries(&self) -> usize {
        self.rate.len()
    }
}

/// A slot held by one connection.
pub struct Ticket {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
    user: Option<Arc<str>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.admission.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = c.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_ip.remove(&ip);
                }
            }
        }
        if let Some(u) = &self.user {
            if let Some(n) = c.per_user.get_mut(u) {
                *n -= 1;
                self.admission.cluster.local_connections(u, *n as u64);
                if *n == 0 {
                    c.per_user.remove(u);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_come_back_when_tickets_drop() {
        let limits = LimitsConfig {
            max_connections_per_ip: 2,
            max_connections_per_user: 1,
            ..LimitsConfig::default()
        };
        let a = Admission::new(&limits, ClusterState::new(false));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t1 = a.admit(Some(ip), None).unwrap();
        let _t2 = a.admit(Some(ip), Some("u".into())).unwrap();
        assert_eq!(a.admit(Some(ip), None).err(), Some(Refusal::PerIp));
        assert_eq!(
            a.admit(Some("10.0.0.2".parse().unwrap()), Some("u".into()))
                .err(),
            Some(Refusal::PerUser)
        );
        drop(t1);
        assert!(a.admit(Some(ip), None).is_ok());
        assert_eq!(a.open(), 1, "the probe ticket was dropped again");
    }

    #[test]
    fn ipv6_is_counted_per_network() {
        let limits = LimitsConfig {
            max_connections_per_ip: 2,
            connects_per_second_per_ip: 3,
            ..LimitsConfig::default()
        };
        let a = Admission::new(&limits, ClusterState::new(false));
        let host = |n: u16| -> IpAddr { format!("2001:db8:1:2::{n:x}").parse().unwrap() };
        let _t1 = a.admit(Some(host(1)), None).unwrap();
        let _t2 = a.admit(Some(host(2)), None).unwrap();
        assert_eq!(
            a.admit(Some(host(3)), None).err(),
            Some(Refusal::PerIp),
            "a third address of the same /64 shares its limit"
        );
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(
            a.admit(Some(other), None).is_ok(),
            "another /64 is another client"
        );
        for n in 0..3 {
            a.check_rate(Some(host(10 + n))).unwrap();
        }
        assert!(
            matches!(a.check_rate(Some(host(99))), Err(Refusal::Rate { .. })),
            "the connect rate is shared by the /64 too"
        );
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(a.key_of(mapped), "10.0.0.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn refusal_log_writes_one_line_per_reason_per_interval_and_counts_the_rest() {
        let log = RefusalLog::default();
        let at = Duration::from_millis;
        assert_eq!(log.should_log_at(RefusedBy::Origin, at(0)), Some(0));
        for _ in 0..4 {
            assert_eq!(log.should_log_at(RefusedBy::Origin, at(10)), None);
        }
        assert_eq!(
            log.should_log_at(RefusedBy::Auth, at(10)),
            Some(0),
            "each reason has its own budget"
        );
        assert_eq!(log.should_log_at(RefusedBy::Origin, at(999)), None);
        assert_eq!(
            log.should_log_at(RefusedBy::Origin, at(1000)),
            Some(5),
            "the next line counts those not logged"
        );
        assert_eq!(log.should_log_at(RefusedBy::Origin, at(1500)), None);
        assert_eq!(log.should_log_at(RefusedBy::Origin, at(2000)), Some(1));
        assert_eq!(
            RefusedBy::ALL.map(RefusedBy::index),
            [0, 1, 2, 3, 4, 5, 6, 7]
        );
    }

    #[test]
    fn housekeeping_forgets_addresses_whose_bucket_refilled() {
        let limits = LimitsConfig {
            connects_per_second_per_ip: 1000,
            ..LimitsConfig::default()
        };
        let a = Admission::new(&limits, ClusterState::new(false));
        for n in 0..500u32 {
            a.check_rate(Some(IpAddr::from(n.to_be_bytes()))).unwrap();
        }
        assert_eq!(a.rate_entries(), 500);
        // 1000/s: one token per ms, so every bucket is full again after a few ms.
        std::thread::sleep(Duration::from_millis(20));
        a.housekeeping();
        assert_eq!(a.rate_entries(), 0, "refilled buckets are forgotten");
    }
}
