//! Reconnect delays: exponential backoff with full jitter.
//!
//! Kept apart from the connection driver so the arithmetic (bounds, cap, spread, attempt limit) can
//! be unit-tested without a network. Every client owns its own RNG seeded from the OS, so a fleet of
//! clients dropped by the same server restart spreads its reconnects over the whole window instead
//! of stampeding at the same instants.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// Reconnect policy. Defaults: first window 0.5 s, doubling per failed attempt, capped at 20 s,
/// unlimited attempts.
#[derive(Debug, Clone)]
pub struct BackoffPolicy {
    /// Upper bound of the first delay window (default 500 ms).
    pub base: Duration,
    /// Largest window (default 20 s).
    pub cap: Duration,
    /// Connection attempts in a row that may fail before the client gives up (`None`: never give
    /// up, the default). The first attempt of a (re)connection counts as attempt 1.
    pub max_attempts: Option<u32>,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(20),
            max_attempts: None,
        }
    }
}

impl BackoffPolicy {
    /// The window `[0, min(cap, base * 2^retry)]` for the retry number `retry` (0 for the first).
    pub fn window(&self, retry: u32) -> Duration {
        let factor = 1u64.checked_shl(retry.min(62)).unwrap_or(u64::MAX);
        let base_ms = self.base.as_millis().min(u128::from(u64::MAX)) as u64;
        let cap_ms = self.cap.as_millis().min(u128::from(u64::MAX)) as u64;
        Duration::from_millis(base_ms.saturating_mul(factor).min(cap_ms))
    }
}

/// The state of the backoff of one client: the policy, the retry count and a private RNG.
#[derive(Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
    rng: SmallRng,
}

impl Backoff {
    /// A backoff with a per-client RNG seeded from the operating system.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self::with_rng(policy, SmallRng::from_os_rng())
    }

    /// A backoff with a fixed seed (for tests and reproducible simulations).
    pub fn with_seed(policy: BackoffPolicy, seed: u64) -> Self {
        Self::with_rng(policy, SmallRng::seed_from_u64(seed))
    }

    fn with_rng(policy: BackoffPolicy, rng: SmallRng) -> Self {
        Backoff {
            policy,
            failures: 0,
            rng,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }

    /// Attempts that failed in a row since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the attempt limit is reached (no further attempt may be made).
    pub fn exhausted(&self) -> bool {
        matches!(self.policy.max_attempts, Some(max) if self.failures >= max)
    }

    /// Records a failed connection attempt. Returns `false` when the attempt limit is reached and
    /// the client must give up.
    pub fn record_failure(&mut self) -> bool {
        self.failures = self.failures.saturating_add(1);
        !self.exhausted()
    }

    /// The delay before the next attempt, uniformly drawn from `[0, window(failures)]` (full
    /// jitter): after a dropped connection (no failure yet) from `[0, base]`, after the first
    /// failed attempt from `[0, 2 * base]`, and so on up to `[0, cap]`.
    pub fn delay(&mut self) -> Duration {
        let window = self.policy.window(self.failures);
        let max_us = window.as_micros().min(u128::from(u64::MAX)) as u64;
        Duration::from_micros(self.rng.random_range(0..=max_us))
    }

    /// Resets after a successful connection.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: Option<u32>) -> BackoffPolicy {
        BackoffPolicy {
            max_attempts: max,
            ..BackoffPolicy::default()
        }
    }

    #[test]
    fn windows_double_and_cap() {
        let p = policy(None);
        assert_eq!(p.window(0), Duration::from_millis(500));
        assert_eq!(p.window(1), Duration::from_millis(1000));
        assert_eq!(p.window(5), Duration::from_millis(16000));
        assert_eq!(p.window(6), Duration::from_secs(20));
        assert_eq!(p.window(100), Duration::from_secs(20));
        assert_eq!(p.window(u32::MAX), Duration::from_secs(20));
    }

    #[test]
    fn delays_stay_in_bounds() {
        let mut b = Backoff::with_seed(policy(None), 7);
        for failures in 0..40 {
            assert_eq!(b.failures(), failures);
            let window = b.policy().window(failures);
            for _ in 0..50 {
                let d = b.delay();
                assert!(d <= window, "failures {failures}: {d:?} > {window:?}");
                assert!(d <= Duration::from_secs(20));
            }
            assert!(b.record_failure());
        }
    }

    #[test]
    fn jitter_spreads_over_the_window() {
        // 1000 independent clients (different seeds), first delay each.
        let mut delays: Vec<Duration> = (0..1000u64)
            .map(|seed| Backoff::with_seed(policy(None), seed).delay())
            .collect();
        let mean = delays.iter().map(|d| d.as_secs_f64()).sum::<f64>() / 1000.0;
        assert!((0.2..0.3).contains(&mean), "mean {mean}");
        // Every tenth of the window is used.
        let mut buckets = [0u32; 10];
        for d in &delays {
            let i = ((d.as_secs_f64() / 0.5) * 10.0).min(9.0) as usize;
            buckets[i] += 1;
        }
        assert!(buckets.iter().all(|&n| n > 50), "{buckets:?}");
        delays.sort();
        delays.dedup();
        assert!(delays.len() > 990, "too many identical delays");
    }

    #[test]
    fn os_seeded_clients_differ() {
        let a: Vec<_> = {
            let mut b = Backoff::new(policy(None));
            (0..4).map(|_| b.delay()).collect()
        };
        let b: Vec<_> = {
            let mut b = Backoff::new(policy(None));
            (0..4).map(|_| b.delay()).collect()
        };
        assert_ne!(a, b);
    }

    #[test]
    fn attempt_limit_and_reset() {
        let mut b = Backoff::with_seed(policy(Some(3)), 1);
        assert!(!b.exhausted());
        assert!(b.record_failure()); // attempt 1 failed, attempt 2 allowed
        assert!(b.record_failure()); // attempt 2 failed, attempt 3 allowed
        assert!(!b.record_failure()); // attempt 3 failed: give up
        assert!(b.exhausted());
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.record_failure());
    }

    #[test]
    fn one_attempt_means_no_retry() {
        let mut b = Backoff::with_seed(policy(Some(1)), 1);
        assert!(!b.record_failure());
    }

    #[test]
    fn later_delays_are_larger_on_average() {
        let mut b = Backoff::with_seed(policy(None), 3);
        let avg = |b: &mut Backoff| (0..200).map(|_| b.delay().as_secs_f64()).sum::<f64>() / 200.0;
        let first = avg(&mut b);
        for _ in 0..4 {
            b.record_failure();
        }
        let later = avg(&mut b);
        assert!(later > first * 4.0, "{first} vs {later}");
    }
}
