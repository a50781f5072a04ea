//! Bearer-token protection of `/api/*`.
//!
//! Exists because the admin API can publish and disconnect users: every request must carry
//! `Authorization: Bearer <admin.token>`. The comparison is constant-time (its duration depends only on the
//! configured token's length), an empty configured token refuses everything (fail closed), and the token is
//! never logged: failures log only the reason.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::AUTHORIZATION;
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError};

use super::{ApiError, NodeData};
use crate::config::Config;

/// Why an admin request was refused, for the `herald_admin_auth_failures_total{reason}` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that does not match.
    Invalid,
    /// The node has no admin token configured.
    NotConfigured,
}

impl Failure {
    pub const ALL: [Failure; 3] = [Failure::Missing, Failure::Invalid, Failure::NotConfigured];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Invalid => "invalid",
            Failure::NotConfigured => "not_configured",
        }
    }
}

/// Refusals per reason since the process started (process-wide: one node per process in production).
static FAILURES: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
/// Whether the "no admin token" warning was logged by a request already.
static WARNED_UNCONFIGURED: AtomicBool = AtomicBool::new(false);

/// Admin requests refused for `reason` so far.
pub(crate) fn failures(reason: Failure) -> u64 {
    FAILURES[reason as usize].load(Ordering::Relaxed)
}

/// Logs, at start-up, whether the admin API is usable. Call once when the node starts.
pub fn log_token_status(config: &Config) {
    if config.admin.token.is_empty() {
        WARNED_UNCONFIGURED.store(true, Ordering::Relaxed);
        tracing::warn!(
            "admin.token is not set: every /api/* request on the admin listener will be refused \
             (set HERALD_ADMIN__TOKEN or [admin] token); /healthz, /readyz and /metrics stay open"
        );
    } else {
        tracing::info!("admin API enabled with bearer token");
    }
}

/// Compares without an early exit: the time taken depends only on `expected.len()`.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= given.get(i).copied().unwrap_or(0) ^ e;
    }
    std::hint::black_box(diff) == 0
}

/// Checks an `Authorization` header value against the configured token.
pub(crate) fn check(header: Option<&[u8]>, token: &str) -> Result<(), Failure> {
    if token.is_empty() {
        return Err(Failure::NotConfigured);
    }
    let Some(h) = header else {
        return Err(Failure::Missing);
    };
    let given = match h.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => h[7..].trim_ascii(),
        _ => return Err(Failure::Missing),
    };
    if constant_time_eq(given, token.as_bytes()) {
        Ok(())
    } else {
        Err(Failure::Invalid)
    }
}

/// Middleware of the `/api` scope.
pub(crate) async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let token = match req.app_data::<NodeData>() {
        Some(node) => node.config.admin.token.clone(),
        None => String::new(),
    };
    let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    match check(header, &token) {
        Ok(()) => Ok(next.call(req).await?.map_into_left_body()),
        Err(reason) => {
            FAILURES[reason as usize].fetch_add(1, Ordering::Relaxed);
            let err = match reason {
                Failure::NotConfigured => {
                    if !WARNED_UNCONFIGURED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "admin request refused: admin.token is not set, /api/* is disabled"
                        );
                    }
                    ApiError::forbidden(
                        "the admin API is disabled: no admin.token is configured on this node",
                    )
                }
                Failure::Missing => {
                    ApiError::unauthorized("missing `Authorization: Bearer <admin token>` header")
                }
                Failure::Invalid => ApiError::unauthorized("wrong admin token"),
            };
            tracing::debug!(
                reason = reason.label(),
                path = req.path(),
                "admin request refused"
            );
            Ok(req
                .into_response(err.error_response())
                .map_into_right_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_check() {
        assert_eq!(check(Some(b"Bearer abc"), "abc"), Ok(()));
        assert_eq!(check(Some(b"bearer  abc "), "abc"), Ok(()));
        assert_eq!(check(Some(b"Bearer abd"), "abc"), Err(Failure::Invalid));
        assert_eq!(check(Some(b"Bearer ab"), "abc"), Err(Failure::Invalid));
        assert_eq!(check(Some(b"Bearer abcd"), "abc"), Err(Failure::Invalid));
        assert_eq!(check(Some(b"Basic abc"), "abc"), Err(Failure::Missing));
        assert_eq!(check(None, "abc"), Err(Failure::Missing));
        assert_eq!(check(Some(b"Bearer "), ""), Err(Failure::NotConfigured));
    }
}
