//! The client against a server with JWT auth: a token that expires (close 4003) makes the client
//! ask its token provider again and carry on where it stopped; an operator disconnect with a "no
//! reconnect" code (4005) makes it give up for good.

mod client_support;
mod common;

use client_support::{fast, next_message, wait_state};
use futures_util::StreamExt;
use herald::auth::{Authenticator, Claims};
use herald::config::{AuthConfig, Config};
use herald_client::{Client, ConnectionState, Error};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "client-auth-test-secret";
const ADMIN_TOKEN: &str = "client-auth-admin-token-0123456789";

fn auth_config() -> AuthConfig {
    AuthConfig {
        anonymous: false,
        hmac_secret: SECRET.into(),
        rsa_public_key: String::new(),
        leeway_secs: 0,
        ..Default::default()
    }
}

fn secured(cfg: &mut Config) {
    cfg.auth = auth_config();
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `sub` valid for `ttl` seconds from now.
fn mint(a: &Authenticator, sub: &str, ttl: u64) -> String {
    a.mint(&Claims {
        sub: sub.into(),
        exp: now() + ttl,
        subscribe: None,
        publish: None,
    })
    .expect("mint")
}

fn authenticator() -> Arc<Authenticator> {
    Authenticator::from_config(&auth_config()).expect("authenticator")
}

/// One admin request over a fresh connection (`Connection: close`): status and raw body.
async fn admin_post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("admin connect timeout")
        .expect("admin connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("admin write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("admin response timeout")
        .expect("admin read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("end of headers");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (status, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_reauthenticates_resubscribes_and_resumes() {
    let (mut cfg, _dir) = common::test_config();
    secured(&mut cfg);
    let node = common::start(cfg);
    let url = node.ws_url();
    let auth = authenticator();

    // First call: a token that expires in (at most) 2 s; every later call: a 60 s token.
    let calls = Arc::new(AtomicUsize::new(0));
    let provider = {
        let calls = calls.clone();
        let auth = auth.clone();
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let token = mint(&auth, "erin", if n == 1 { 2 } else { 60 });
            async move { Some(token) }
        }
    };
    let (client, mut states) = Client::connect(&url, provider, fast(50, 500, None))
        .await
        .expect("connect with the short token");
    let first = match wait_state(&mut states, Duration::from_secs(5), |s| {
        matches!(s, ConnectionState::Connected { .. })
    })
    .await
    {
        ConnectionState::Connected { session, user, .. } => {
            assert_eq!(user.as_deref(), Some("erin"));
            session
        }
        _ => unreachable!(),
    };
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one token for one attempt");

    let (publisher, _ps) = Client::connect(
        &url,
        herald_client::static_token(mint(&auth, "pub", 120)),
        fast(50, 500, Some(3)),
    )
    .await
    .expect("connect publisher");
    let mut sub = client.subscribe("test:reauth").await.expect("subscribe");
    publisher
        .publish("test:reauth", &json!({"i": 1}))
        .await
        .expect("publish before expiry");
    let m1 = next_message(&mut sub, Duration::from_secs(5)).await;
    assert_eq!(m1.data_json().unwrap(), json!({"i": 1}));

    // The server closes the connection with 4003 when the first token expires.
    let mut saw_4003 = false;
    let mut between = Vec::new();
    let second = loop {
        match wait_state(&mut states, Duration::from_secs(10), |_| true).await {
            ConnectionState::Disconnected { code, reason, .. } => {
                assert_eq!(code, Some(4003), "closed for the expired token: {reason}");
                assert_eq!(
                    calls.load(Ordering::SeqCst),
                    1,
                    "the provider is not asked before the connection ends"
                );
                saw_4003 = true;
            }
            ConnectionState::Connected { session, user, .. } => {
                assert!(saw_4003, "reconnected without a 4003 first: {between:?}");
                assert_eq!(user.as_deref(), Some("erin"));
                break session;
            }
            s @ (ConnectionState::GaveUp { .. } | ConnectionState::Closed) => {
                panic!("client stopped instead of re-authenticating: {s:?} after {between:?}")
            }
            s => between.push(s),
        }
    };
    assert_ne!(second, first, "a new session");
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "the token provider was asked again after 4003"
    );
    assert!(
        between
            .iter()
            .any(|s| matches!(s, ConnectionState::Connecting { .. })),
        "a new attempt was announced: {between:?}"
    );

    // The new session holds the subscription again (resubscribed by the client itself).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let p = publisher.presence("test:reauth").await.expect("presence");
        let members: Vec<&str> = p.members.iter().map(|m| m.session.as_str()).collect();
        if members.contains(&second.as_str()) {
            assert!(
                !members.contains(&first.as_str()),
                "old session gone: {members:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new session {second} never resubscribed: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A message published after the reconnect arrives exactly once (and m1 is not replayed).
    let ack = publisher
        .publish("test:reauth", &json!({"i": 2}))
        .await
        .expect("publish after reconnect");
    let m2 = next_message(&mut sub, Duration::from_secs(5)).await;
    assert_eq!(m2.data_json().unwrap(), json!({"i": 2}));
    assert_eq!((m2.id.as_str(), m2.offset), (ack.id.as_str(), ack.offset));
    assert_eq!(
        (m2.epoch.as_str(), m2.offset),
        (m1.epoch.as_str(), m1.offset + 1)
    );
    let extra = tokio::time::timeout(Duration::from_millis(700), sub.next()).await;
    assert!(extra.is_err(), "unexpected extra event: {extra:?}");
    assert!(client.is_connected());
    client.close().await;
    publisher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_disconnect_stops_reconnecting() {
    let (mut cfg, _dir) = common::test_config();
    secured(&mut cfg);
    cfg.admin.token = ADMIN_TOKEN.into();
    let node = common::start(cfg);
    let auth = authenticator();

    let calls = Arc::new(AtomicUsize::new(0));
    let provider = {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let token = mint(&auth, "frank", 60);
            async move { Some(token) }
        }
    };
    // A fast backoff: were the client to reconnect, it would do so well within the watch window.
    let (client, mut states) = Client::connect(node.ws_url(), provider, fast(50, 200, None))
        .await
        .expect("connect");
    let session = match wait_state(&mut states, Duration::from_secs(5), |s| {
        matches!(s, ConnectionState::Connected { .. })
    })
    .await
    {
        ConnectionState::Connected { session, .. } => session,
        _ => unreachable!(),
    };
    let mut sub = client.subscribe("test:banned").await.expect("subscribe");
    assert_eq!(node.node().sessions.len(), 1);
    let opened = node.node().stats.connections_opened.load(Ordering::SeqCst);
    let calls_before = calls.load(Ordering::SeqCst);

    let (status, body) = admin_post(
        node.admin_addr,
        "/api/disconnect",
        &json!({"session": session, "code": 4005, "reason": "banned"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "admin disconnect: {body}");
    assert!(body.contains(&session), "session in the reply: {body}");

    // Exactly: Disconnected(4005), then GaveUp, then nothing.
    let s = tokio::time::timeout(Duration::from_secs(5), states.next())
        .await
        .expect("a state after the disconnect")
        .expect("state stream open");
    match &s {
        ConnectionState::Disconnected { code, reason, .. } => {
            assert_eq!(*code, Some(4005), "{s:?}");
            assert!(reason.contains("banned"), "{s:?}");
        }
        other => panic!("expected Disconnected(4005), got {other:?}"),
    }
    let s = tokio::time::timeout(Duration::from_secs(5), states.next())
        .await
        .expect("a state after Disconnected")
        .expect("state stream open");
    assert!(
        matches!(s, ConnectionState::GaveUp { .. }),
        "expected GaveUp, got {s:?}"
    );
    // No further attempt: no state at all (the stream ends when the driver stops) for 3 s, no new
    // session or connection on the node, no token asked for.
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut seen_zero = false;
    loop {
        let n = node.node().sessions.len();
        if n == 0 {
            seen_zero = true;
        } else {
            assert!(!seen_zero, "a session came back after the 4005: {n}");
        }
        if let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(50), states.next()).await {
            panic!("a state after GaveUp: {s:?}");
        }
        if tokio::time::Instant::now() >= watch_until {
            break;
        }
    }
    assert!(seen_zero, "the evicted session was never removed");
    assert_eq!(node.node().sessions.len(), 0, "session count stays 0");
    assert_eq!(
        node.node().stats.connections_opened.load(Ordering::SeqCst),
        opened,
        "no new connection after 4005"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        calls_before,
        "no token asked for after 4005"
    );
    // The application sees the end too.
    assert!(matches!(
        client.wait_connected().await,
        Err(Error::GaveUp(_))
    ));
    assert!(!client.is_connected());
    match tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
        Ok(Some(herald_client::SubscriptionEvent::Ended(Error::GaveUp(_)))) => {}
        other => panic!("subscription should end with GaveUp: {other:?}"),
    }
    assert!(matches!(
        client.publish("test:banned", &json!(1)).await,
        Err(Error::GaveUp(_))
    ));
}
