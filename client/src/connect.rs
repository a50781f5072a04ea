//! Opening one connection and judging how one ended.
//!
//! Exists to isolate the handshake (subprotocol, bearer token, HTTP refusals, the `welcome` frame)
//! and the reconnect rules of the close codes in `docs/protocol.md` from the session loop, so the
//! rules are plain functions that can be read and tested on their own.

use crate::frame::{self, Encoding, ServerFrame};
use futures_util::StreamExt;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{
    HeaderValue, AUTHORIZATION, RETRY_AFTER, SEC_WEBSOCKET_PROTOCOL,
};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The socket type of a connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open, welcomed connection.
pub(crate) struct Conn {
    pub ws: Ws,
    pub encoding: Encoding,
    pub session: String,
    pub user: Option<String>,
    pub heartbeat_ms: u64,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// HTTP 401/403: retry only with a new token.
    Unauthorized { status: u16, reason: String },
    /// Transient: retry with backoff (at least `retry_after`).
    Retry {
        status: Option<u16>,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Permanent: give up.
    Fatal { status: Option<u16>, reason: String },
}

/// Opens a connection and waits for `welcome`, all within `timeout`.
pub(crate) async fn open(
    url: &str,
    token: Option<&str>,
    encoding: Encoding,
    timeout: Duration,
) -> Result<Conn, OpenError> {
    match tokio::time::timeout(timeout, open_inner(url, token, encoding)).await {
        Ok(r) => r,
        Err(_) => Err(OpenError::Retry {
            status: None,
            reason: format!("no welcome within {} ms", timeout.as_millis()),
            retry_after: None,
        }),
    }
}

async fn open_inner(url: &str, token: Option<&str>, encoding: Encoding) -> Result<Conn, OpenError> {
    let fatal = |reason: String| OpenError::Fatal {
        status: None,
        reason,
    };
    let mut req = url
        .into_client_request()
        .map_err(|e| fatal(format!("bad url: {e}")))?;
    req.headers_mut().insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(encoding.subprotocol()),
    );
    if let Some(t) = token {
        let v = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| fatal("token is not a valid header value".into()))?;
        req.headers_mut().insert(AUTHORIZATION, v);
    }
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(classify_handshake)?;
    let encoding = resp
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(Encoding::from_subprotocol)
        .unwrap_or(Encoding::Json);
    loop {
        let msg = match ws.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(retry(format!("before welcome: {e}"))),
            None => return Err(retry("closed before welcome".into())),
        };
        match frame::decode(encoding, &msg) {
            Ok(Some(ServerFrame::Welcome {
                session,
                heartbeat_ms,
                user,
                ..
            })) => {
                return Ok(Conn {
                    ws,
                    encoding,
                    session,
                    user,
                    heartbeat_ms,
                })
            }
            Ok(Some(ServerFrame::Disconnect {
                code,
                reason,
                reconnect,
                retry_after_ms,
            })) => {
                return Err(match close_advice(Some(code), Some(reconnect)) {
                    Advice::Stop => OpenError::Fatal {
                        status: Some(code),
                        reason,
                    },
                    _ => OpenError::Retry {
                        status: Some(code),
                        reason,
                        retry_after: retry_after_ms.map(Duration::from_millis),
                    },
                })
            }
            Ok(_) => continue,
            Err(e) => return Err(retry(format!("before welcome: {e}"))),
        }
    }
}

fn retry(reason: String) -> OpenError {
    OpenError::Retry {
        status: None,
        reason,
        retry_after: None,
    }
}

fn classify_handshake(e: WsError) -> OpenError {
    match e {
        WsError::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let reason = format!("HTTP {status} {}", body.trim()).trim().to_string();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            classify_status(status, reason, retry_after)
        }
        WsError::Url(u) => OpenError::Fatal {
            status: None,
            reason: format!("bad url: {u}"),
        },
        other => retry(other.to_string()),
    }
}

/// What to do after the handshake was answered with an HTTP status instead of an upgrade.
pub(crate) fn classify_status(
    status: u16,
    reason: String,
    retry_after: Option<Duration>,
) -> OpenError {
    match status {
        401 | 403 => OpenError::Unauthorized { status, reason },
        429 | 500..=599 => OpenError::Retry {
            status: Some(status),
            reason,
            retry_after,
        },
        _ => OpenError::Fatal {
            status: Some(status),
            reason,
        },
    }
}

/// What a close code (and the `reconnect` flag of a `disconnect` frame) advises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Advice {
    /// Reconnect with backoff and resume.
    Reconnect,
    /// Ask the token provider for a new token, then reconnect.
    Reauth,
    /// Do not reconnect.
    Stop,
}

/// Close codes after which a client must not reconnect without a change.
pub const NO_RECONNECT_CODES: [u16; 7] = [1002, 1007, 1008, 1009, 4000, 4004, 4005];

/// The reconnect rule of `docs/protocol.md`: "no" codes always stop, 4003 re-authenticates, a
/// `disconnect` frame with `reconnect: false` stops, anything else (including a broken transport
/// without a close code) reconnects.
pub(crate) fn close_advice(code: Option<u16>, reconnect_flag: Option<bool>) -> Advice {
    match code {
        Some(c) if NO_RECONNECT_CODES.contains(&c) => Advice::Stop,
        Some(4003) => Advice::Reauth,
        _ if reconnect_flag == Some(false) => Advice::Stop,
        _ => Advice::Reconnect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes() {
        for c in [1001, 1011, 4001, 4002, 4006] {
            assert_eq!(close_advice(Some(c), None), Advice::Reconnect, "{c}");
            assert_eq!(close_advice(Some(c), Some(true)), Advice::Reconnect, "{c}");
        }
        for c in NO_RECONNECT_CODES {
            assert_eq!(close_advice(Some(c), None), Advice::Stop, "{c}");
            assert_eq!(close_advice(Some(c), Some(true)), Advice::Stop, "{c}");
        }
        assert_eq!(close_advice(Some(4003), Some(true)), Advice::Reauth);
        assert_eq!(close_advice(Some(1001), Some(false)), Advice::Stop);
        assert_eq!(close_advice(None, None), Advice::Reconnect);
    }

    #[test]
    fn http_statuses() {
        let s = |c| classify_status(c, String::new(), None);
        assert!(matches!(s(401), OpenError::Unauthorized { .. }));
        assert!(matches!(s(403), OpenError::Unauthorized { .. }));
        assert!(matches!(s(503), OpenError::Retry { .. }));
        assert!(matches!(s(429), OpenError::Retry { .. }));
        assert!(matches!(s(400), OpenError::Fatal { .. }));
        assert!(matches!(s(404), OpenError::Fatal { .. }));
    }
}
