//! Query-parameter parsing shared by the handlers.
//!
//! Exists so every endpoint treats parameters the same way: numbers arrive as strings and are parsed here,
//! so an empty value (`?limit=`) means "not given" and a bad one is a 400 that names the parameter, never a
//! 500 or a silent default.

use super::ApiError;

/// Default page size of the listing endpoints.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size of the listing endpoints (larger values are clamped).
pub const MAX_LIMIT: usize = 1000;

/// The value of an optional parameter; empty counts as absent.
pub fn opt(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// An optional unsigned integer parameter.
pub fn opt_u64(name: &str, v: &Option<String>) -> Result<Option<u64>, ApiError> {
    match opt(v) {
        None => Ok(None),
        Some(s) => s.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "`{name}` must be a non-negative integer, got {s:?}"
            ))
        }),
    }
}

/// A page size: `default` when absent, at least 1, clamped to `max`.
pub fn limit(v: &Option<String>, default: usize, max: usize) -> Result<usize, ApiError> {
    match opt_u64("limit", v)? {
        None => Ok(default.min(max)),
        Some(0) => Err(ApiError::bad_request("`limit` must be at least 1")),
        Some(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX).min(max)),
    }
}

/// A channel name from a path or body, checked like a client's.
pub fn channel(name: &str, max_len: usize) -> Result<(), ApiError> {
    crate::protocol::validate_channel(name, max_len).map_err(ApiError::bad_request)
}

/// Milliseconds since the Unix epoch of a `SystemTime`.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(limit(&None, 100, 1000).unwrap(), 100);
        assert_eq!(limit(&Some(String::new()), 100, 1000).unwrap(), 100);
        assert_eq!(limit(&Some("5000".into()), 100, 1000).unwrap(), 1000);
        assert_eq!(limit(&Some("0".into()), 100, 1000).unwrap_err().status, 400);
        assert_eq!(
            limit(&Some("-1".into()), 100, 1000).unwrap_err().status,
            400
        );
        assert_eq!(limit(&Some("x".into()), 100, 1000).unwrap_err().status, 400);
    }
}
