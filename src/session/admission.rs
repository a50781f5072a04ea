//! Admission control at the handshake: connections per node, per IP and per user, and new connections per
//! second per IP. A refused handshake gets an HTTP status with `Retry-After` instead of an upgrade.
//!
//! An admitted connection holds a [`Ticket`]; dropping it (when the session ends) gives the slot back, so
//! the counts cannot leak whatever way the session dies.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

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
}

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
}

impl Admission {
    pub fn new(limits: &LimitsConfig) -> Arc<Admission> {
        let per_sec = NonZeroU32::new(limits.connects_per_second_per_ip).unwrap_or(NonZeroU32::MIN);
        Arc::new(Admission {
            counts: Mutex::new(Counts::default()),
            rate: RateLimiter::keyed(Quota::per_second(per_sec)),
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            max_per_user: limits.max_connections_per_user,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection or says why not.
    pub fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        user: Option<Arc<str>>,
    ) -> Result<Ticket, Refusal> {
        if let Some(ip) = ip {
            if let Err(not_until) = self.rate.check_key(&ip) {
                let retry_after = not_until.wait_time_from(DefaultClock::default().now());
                return Err(Refusal::Rate { retry_after });
            }
        }
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
            if c.per_user.get(u).copied().unwrap_or(0) >= self.max_per_user {
                return Err(Refusal::PerUser);
            }
        }
        c.total += 1;
        if let Some(ip) = ip {
            *c.per_ip.entry(ip).or_default() += 1;
        }
        if let Some(u) = &user {
            *c.per_user.entry(u.clone()).or_default() += 1;
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

    /// Drops rate-limiter state of idle addresses; call now and then.
    pub fn housekeeping(&self) {
        self.rate.retain_recent();
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
        let a = Admission::new(&limits);
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
}
