//! Security and resource-bound behaviours: permissions on read-only commands, narrowing a token with
//! `refresh`, JWT `nbf`/`iss`/`aud`, the per-IP connect rate before signature checks, idempotency keys
//! scoped per publisher, the non-anonymous default, byte-capped history pages, a byte-bounded outbox, the
//! per-session in-flight cap, read-only commands that create no channel, rate-limited join/leave, and
//! closing connections that keep flooding after `rate_limited`. Each test failed against the code before
//! these behaviours existed (issue 11).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::http::{http, Resp};
use common::*;
use futures_util::{SinkExt, StreamExt};
use herald::config::Config;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "security-test-secret-0123456789";
const ADMIN_TOKEN: &str = "security-admin-token-0123456789";

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Signs any claims object with HS256.
fn sign(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// An hour-long token for `sub` with optional channel patterns.
fn token(sub: &str, subscribe: Option<&[&str]>, publish: Option<&[&str]>) -> String {
    let mut claims = json!({"sub": sub, "exp": now() + 3600});
    if let Some(s) = subscribe {
        claims["subscribe"] = json!(s);
    }
    if let Some(p) = publish {
        claims["publish"] = json!(p);
    }
    sign(SECRET, &claims)
}

/// A test node that requires HS256 tokens signed with `SECRET` and has an admin token.
fn secured_config() -> (Config, tempfile::TempDir) {
    let (mut c, dir) = test_config();
    c.auth.anonymous = false;
    c.auth.hmac_secret = SECRET.into();
    c.admin.token = ADMIN_TOKEN.into();
    (c, dir)
}

/// A test node that lets anonymous clients in.
fn open_config() -> (Config, tempfile::TempDir) {
    let (mut c, dir) = test_config();
    c.auth.anonymous = true;
    c.admin.token = ADMIN_TOKEN.into();
    (c, dir)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn connect_as(url: &str, enc: Enc, token: &str) -> Client {
    Client::try_connect(url, enc, &[("authorization", &bearer(token))])
        .await
        .expect("a valid token connects")
}

/// The HTTP status of a handshake attempt (101 on success).
async fn status(url: &str, headers: &[(&str, &str)]) -> u16 {
    match Client::try_connect(url, Enc::Json, headers).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

async fn status_with_token(url: &str, token: &str) -> u16 {
    status(url, &[("authorization", &bearer(token))]).await
}

async fn admin_publish(admin: SocketAddr, body: Value) -> Resp {
    http(
        admin,
        "POST",
        "/api/publish",
        Some(ADMIN_TOKEN),
        Some(&body.to_string()),
    )
    .await
}

/// `/metrics` (no token) as `name{labels}` -> value.
async fn metrics(admin: SocketAddr) -> HashMap<String, f64> {
    let r = http(admin, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The first of `names` that the exposition has (a metric may be renamed; the first name is preferred).
fn metric(m: &HashMap<String, f64>, names: &[&str]) -> f64 {
    names
        .iter()
        .find_map(|n| m.get(*n).copied())
        .unwrap_or_else(|| panic!("none of {names:?} in /metrics"))
}

/// Frames received until nothing arrives for `quiet`; panics if the connection closes.
async fn drain(c: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(ev) = tokio::time::timeout(quiet, c.next_event()).await {
        match ev {
            Event::Frame(f) => out.push(f),
            Event::Closed(code) => panic!("connection closed ({code:?}) after {out:?}"),
        }
    }
    out
}

async fn assert_ping(c: &mut Client, what: &str) {
    let r = c.request(json!({"type": "ping"})).await;
    assert_eq!(r["type"], "reply", "{what}: {r}");
}

fn offsets(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages list: {page}"))
        .iter()
        .map(|m| m["offset"].as_u64().expect("offset"))
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// 1. history and presence need the right to subscribe
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_presence_need_the_right_to_subscribe() {
    let (cfg, _dir) = secured_config();
    let node = start(cfg);
    let url = node.ws_url();
    let t = token("bob", Some(&["chat:*"]), None);
    for enc in [Enc::Json, Enc::Msgpack] {
        let mut c = connect_as(&url, enc, &t).await;
        for cmd in [
            json!({"type": "history", "channel": "secret:x", "since": 0}),
            json!({"type": "presence", "channel": "secret:x"}),
        ] {
            let r = c.request(cmd.clone()).await;
            assert_eq!(r["type"], "error", "{enc:?} {cmd}: {r}");
            assert_eq!(r["code"], "forbidden", "{enc:?} {cmd}: {r}");
        }
        let h = c
            .ok(json!({"type": "history", "channel": "chat:x", "since": 0}))
            .await;
        assert_eq!(h["channel"], "chat:x", "{enc:?}: {h}");
        assert!(h["messages"].is_array(), "{enc:?}: {h}");
        let p = c.ok(json!({"type": "presence", "channel": "chat:x"})).await;
        assert!(p["members"].is_array(), "{enc:?}: {p}");
        // The refusals did not count against the connection.
        c.subscribe("chat:x").await;
        assert_ping(&mut c, "after forbidden reads").await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// 2. refresh to narrower patterns ends subscriptions the new token no longer allows
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_to_narrower_patterns_ends_disallowed_subscriptions() {
    let (cfg, _dir) = secured_config();
    let node = start(cfg);
    let url = node.ws_url();
    let wide = token("carol", Some(&["chat:*", "news:*"]), None);
    let narrow = token("carol", Some(&["chat:*"]), None);
    let mut c = connect_as(&url, Enc::Json, &wide).await;
    c.subscribe("chat:a").await;
    c.subscribe("news:b").await;
    assert!(c.backlog.is_empty(), "{:?}", c.backlog);

    let r = c.request(json!({"type": "refresh", "token": narrow})).await;
    assert_eq!(r["type"], "reply", "refresh: {r}");
    // `request` keeps what arrived before the reply in the backlog.
    let before: Vec<Value> = c.backlog.drain(..).collect();
    let ended: Vec<&Value> = before
        .iter()
        .filter(|f| f["type"] == "unsubscribed")
        .collect();
    assert_eq!(
        ended.len(),
        1,
        "exactly one `unsubscribed` before the refresh reply: {before:?}"
    );
    assert_eq!(ended[0]["channel"], "news:b", "{}", ended[0]);
    assert!(
        ended[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "a non-empty reason: {}",
        ended[0]
    );

    // Another client publishes to both channels; news:b first, so it would arrive first if delivered.
    let mut publisher = connect_as(&url, Enc::Json, &token("pub", None, None)).await;
    publisher.publish("news:b", json!("lost")).await;
    publisher.publish("chat:a", json!("kept")).await;
    let m = c.next_message().await;
    assert_eq!(
        (m["channel"].as_str(), m["data"].as_str()),
        (Some("chat:a"), Some("kept")),
        "news:b is no longer delivered: {m}"
    );

    let r = c
        .request(json!({"type": "unsubscribe", "channel": "news:b"}))
        .await;
    assert_eq!(r["code"], "not_subscribed", "{r}");
    let r = c
        .request(json!({"type": "subscribe", "channel": "news:b"}))
        .await;
    assert_eq!(r["code"], "forbidden", "the new token rules: {r}");
    assert!(
        c.backlog.iter().all(|f| f["channel"] != "news:b"),
        "{:?}",
        c.backlog
    );
    // chat:a is still live.
    publisher.publish("chat:a", json!("still")).await;
    assert_eq!(c.next_message().await["data"], "still");
}

// ---------------------------------------------------------------------------------------------------------
// 3. nbf
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_nbf_in_the_future_is_refused() {
    let (mut cfg, _dir) = secured_config();
    cfg.auth.leeway_secs = 5;
    let node = start(cfg);
    let url = node.ws_url();
    let early = sign(
        SECRET,
        &json!({"sub": "nina", "exp": now() + 3600, "nbf": now() + 120}),
    );
    assert_eq!(
        status_with_token(&url, &early).await,
        401,
        "nbf two minutes ahead"
    );
    let ready = sign(
        SECRET,
        &json!({"sub": "nina", "exp": now() + 3600, "nbf": now() - 1}),
    );
    let c = connect_as(&url, Enc::Json, &ready).await;
    assert_eq!(c.welcome["user"], "nina");
}

// ---------------------------------------------------------------------------------------------------------
// 4. issuer and audience
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_checked_when_configured() {
    let (mut cfg, _dir) = secured_config();
    cfg.auth.issuer = "herald-test".into();
    cfg.auth.audience = "herald".into();
    let node = start(cfg);
    let url = node.ws_url();
    let exp = now() + 3600;
    let cases = [
        (
            "no iss",
            json!({"sub": "ivan", "exp": exp, "aud": "herald"}),
        ),
        (
            "wrong iss",
            json!({"sub": "ivan", "exp": exp, "iss": "someone-else", "aud": "herald"}),
        ),
        (
            "no aud",
            json!({"sub": "ivan", "exp": exp, "iss": "herald-test"}),
        ),
        (
            "wrong aud",
            json!({"sub": "ivan", "exp": exp, "iss": "herald-test", "aud": "other"}),
        ),
    ];
    for (what, claims) in cases {
        assert_eq!(
            status_with_token(&url, &sign(SECRET, &claims)).await,
            401,
            "{what}"
        );
    }
    let good = sign(
        SECRET,
        &json!({"sub": "ivan", "exp": exp, "iss": "herald-test", "aud": "herald"}),
    );
    let mut c = connect_as(&url, Enc::Json, &good).await;
    assert_eq!(c.welcome["user"], "ivan");
    assert_ping(&mut c, "iss and aud right").await;

    // Not configured (the default): neither is required.
    let (cfg, _dir2) = secured_config();
    let plain = start(cfg);
    let bare = sign(SECRET, &json!({"sub": "ivan", "exp": exp}));
    let c = connect_as(&plain.ws_url(), Enc::Json, &bare).await;
    assert_eq!(c.welcome["user"], "ivan");
}

// ---------------------------------------------------------------------------------------------------------
// 5. the per-IP connect rate is checked before the signature
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rate_is_checked_before_the_signature() {
    let (mut cfg, _dir) = secured_config();
    cfg.limits.connects_per_second_per_ip = 2;
    let node = start(cfg);
    let url = node.ws_url();
    let forged = sign(
        "not-the-server-secret",
        &json!({"sub": "mallory", "exp": now() + 3600}),
    );
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(status_with_token(&url, &forged).await);
    }
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(
        statuses[0], 401,
        "the first attempt is within the rate: {statuses:?}"
    );
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        limited >= 6,
        "forged handshakes beyond the connect rate get 429, not a signature check: {statuses:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// 6. idempotency keys are scoped per publisher; reuse with other data is a conflict
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_per_publisher_and_reuse_with_other_data_conflicts() {
    let (cfg, _dir) = secured_config();
    let node = start(cfg);
    let url = node.ws_url();
    let all: &[&str] = &["*"];
    let mut alice = connect_as(&url, Enc::Json, &token("alice", Some(all), Some(all))).await;
    let mut bob = connect_as(&url, Enc::Msgpack, &token("bob", Some(all), Some(all))).await;
    let mut watcher = connect_as(&url, Enc::Json, &token("watcher", Some(all), None)).await;
    watcher.subscribe("chat:k").await;

    let pubk =
        |data: &str| json!({"type": "publish", "channel": "chat:k", "data": data, "key": "k1"});
    let a = alice.ok(pubk("A")).await;
    let o1 = a["offset"].as_u64().expect("offset");
    let b = bob.request(pubk("B")).await;
    assert_eq!(b["type"], "reply", "bob's key is his own: {b}");
    let o2 = b["result"]["offset"].as_u64().expect("offset");
    assert_ne!(o2, o1, "bob got a new message, not alice's: {b}");
    assert_ne!(b["result"]["id"], a["id"]);

    // Same publisher, same key, same data: the original answer.
    let again = alice.ok(pubk("A")).await;
    assert_eq!((&again["id"], &again["offset"]), (&a["id"], &a["offset"]));
    // Same publisher, same key, other data: conflict.
    let r = alice.request(pubk("C")).await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["code"], "conflict", "{r}");
    assert_ping(&mut alice, "after a conflict").await;

    // The admin API is a publisher of its own.
    let admin = node.admin_addr;
    let z = admin_publish(
        admin,
        json!({"channel": "chat:k", "data": "Z", "key": "k1"}),
    )
    .await
    .ok();
    let oz = z["offset"].as_u64().expect("offset");
    assert!(oz != o1 && oz != o2, "admin gets a new offset: {z}");
    let z2 = admin_publish(
        admin,
        json!({"channel": "chat:k", "data": "Z", "key": "k1"}),
    )
    .await
    .ok();
    assert_eq!(z2, z, "the admin's own retry is idempotent");
    let y = admin_publish(
        admin,
        json!({"channel": "chat:k", "data": "Y", "key": "k1"}),
    )
    .await;
    assert_eq!(y.status, 409, "{}", y.body);
    assert!(y.body.contains("conflict"), "{}", y.body);
    let v = y.json();
    assert_eq!(v["error"]["code"], "conflict", "{v}");

    // The subscriber got A, B and Z once each, and nothing from the refused publishes.
    for (data, off) in [("A", o1), ("B", o2), ("Z", oz)] {
        let m = watcher.next_message().await;
        assert_eq!(
            (m["data"].as_str(), m["offset"].as_u64()),
            (Some(data), Some(off)),
            "{m}"
        );
    }
    alice.publish("chat:k", json!("end")).await;
    assert_eq!(watcher.next_message().await["data"], "end");
}

// ---------------------------------------------------------------------------------------------------------
// 7. the built-in default is not anonymous
// ---------------------------------------------------------------------------------------------------------

/// Kills the child on drop, so a failing assertion does not leave a server running.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bare_serve_command(dir: &std::path::Path) -> std::process::Command {
    let mut cmd = serve_command(&dir.join("data"));
    cmd.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_default_is_not_anonymous() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;

    assert!(
        !Config::default().auth.anonymous,
        "the built-in default must not allow anonymous connections"
    );

    // No config file, no auth settings: refuses to start, naming the key.
    let dir = tempfile::tempdir().unwrap();
    let mut child = Reaper(
        bare_serve_command(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start herald"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "herald started without any auth configuration"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(exit.code(), Some(2), "exit status; stderr: {stderr}");
    assert!(stderr.contains("auth.anonymous"), "{stderr}");
    drop(child);

    // With a secret it starts, and a handshake without a token is refused.
    let dir = tempfile::tempdir().unwrap();
    let mut child = Reaper(
        bare_serve_command(dir.path())
            .env("HERALD_AUTH__HMAC_SECRET", "s3cret")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start herald"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line
        }),
    )
    .await
    .expect("herald never printed its listening line")
    .unwrap();
    let (ws, _) = parse_listening(line.trim());
    assert_eq!(status(&format!("ws://{ws}/ws"), &[]).await, 401);
    drop(child);
}

// ---------------------------------------------------------------------------------------------------------
// 8. history pages are capped by bytes
// ---------------------------------------------------------------------------------------------------------

/// ~30 KB of string data whose first characters number it.
fn big(i: usize) -> String {
    let mut s = format!("{i:05}-");
    s.push_str(&"x".repeat(30_000 - s.len()));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_are_capped_by_bytes() {
    let (mut cfg, _dir) = open_config();
    cfg.history.max_page_bytes = 100_000;
    cfg.limits.max_publish_bytes = 32_768;
    cfg.limits.max_frame_bytes = 65_536;
    cfg.namespaces.get_mut("default").unwrap().history_size = Some(2000);
    let node = start(cfg);
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    const N: usize = 50;
    for i in 0..N {
        c.publish("bulk:1", json!(big(i))).await;
    }
    let mut seen: Vec<u64> = Vec::new();
    let mut since = 0u64;
    let mut pages = 0;
    loop {
        let page = c
            .ok(json!({"type": "history", "channel": "bulk:1", "since": since, "limit": 1000}))
            .await;
        pages += 1;
        let offs = offsets(&page);
        assert!(
            !offs.is_empty() && offs.len() <= 4,
            "page {pages} holds {} messages (100 KB cap, 30 KB each): {offs:?}",
            offs.len()
        );
        for (m, off) in page["messages"].as_array().unwrap().iter().zip(&offs) {
            let data = m["data"].as_str().expect("string data");
            assert!(
                data.starts_with(&format!("{:05}-", off - 1)),
                "offset {off} carries its own data"
            );
        }
        assert_eq!(offs[0], since + 1, "no gap after since={since}: {offs:?}");
        seen.extend(&offs);
        match page["next"].as_u64() {
            Some(next) => {
                assert_eq!(next, *offs.last().unwrap(), "next is the last offset");
                since = next;
            }
            None => {
                assert!(page["next"].is_null(), "{}", page["next"]);
                break;
            }
        }
        assert!(pages <= N, "paging does not end");
    }
    assert!(pages > 1, "the first page could not hold all {N}");
    assert_eq!(seen, (1..=N as u64).collect::<Vec<_>>());
    assert_ping(&mut c, "after paging").await;
}

// ---------------------------------------------------------------------------------------------------------
// 9. the outbox is bounded in bytes
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_is_bounded_in_bytes() {
    let (mut cfg, _dir) = open_config();
    cfg.session.outbox_bytes = 262_144;
    cfg.history.max_page_bytes = 100_000;
    let node = start(cfg);
    let mut filler = Client::connect(&node.ws_url(), Enc::Msgpack).await;
    const N: usize = 200;
    for i in 0..N {
        filler.publish("fat:1", json!(big(i))).await;
    }

    // A client with a small receive buffer that pipelines history requests and reads nothing for 3 s.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(node.client_addr).await.unwrap();
    let mut req = node.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("herald.v1.json"),
    );
    let (mut ws, _) = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("handshake timeout")
    .expect("handshake");
    for i in 0..N {
        let cmd = json!({"v": 1, "type": "history", "id": i, "channel": "fat:1", "since": 0, "limit": 1000});
        ws.feed(Message::Text(cmd.to_string().into()))
            .await
            .expect("send");
    }
    ws.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut replies = 0;
    let mut texts: Vec<Value> = Vec::new();
    let close = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "reply" {
                        replies += 1;
                    } else {
                        texts.push(v);
                    }
                }
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed without a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("never closed; {replies} of {N} history replies were queued for the stalled client")
    });
    assert_eq!(close, Some(4001), "slow consumer; {replies} replies read");
    assert!(replies < N, "cut before all {N} replies");
    let d = texts
        .iter()
        .rev()
        .find(|t| t["type"] == "disconnect")
        .unwrap_or_else(|| panic!("no disconnect before the close: {texts:?}"));
    assert_eq!(d["code"], 4001, "{d}");
    eprintln!("stalled client read {replies} history replies before the cut");

    // The node is fine.
    let mut other = Client::connect(&node.ws_url(), Enc::Json).await;
    assert_ping(&mut other, "another client after the cut").await;
}

// ---------------------------------------------------------------------------------------------------------
// 10. per-session in-flight cap
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_stops_reading_beyond_max_inflight() {
    let (mut cfg, _dir) = open_config();
    cfg.session.max_inflight = 4;
    cfg.storage.group_commit_ms = 1500;
    let node = start(cfg);
    let admin = node.admin_addr;
    const PUBLISHES: &[&str] = &["herald_publishes_total", "herald_history_appends_total"];
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    for i in 1..=40 {
        c.send(json!({"v": 1, "type": "publish", "id": i, "channel": "slow:1", "data": i}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let accepted = metric(&metrics(admin).await, PUBLISHES);
    assert!(
        accepted <= 4.0,
        "{accepted} publishes accepted while the first flush is pending; max_inflight is 4"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut ids = Vec::new();
    while ids.len() < 40 {
        let ev = tokio::time::timeout_at(deadline, c.next_event())
            .await
            .unwrap_or_else(|_| panic!("only {} of 40 publishes answered in 30 s", ids.len()));
        match ev {
            Event::Frame(f) => {
                assert_eq!(f["type"], "reply", "{f}");
                ids.push(f["id"].as_u64().unwrap());
            }
            Event::Closed(code) => panic!("closed ({code:?}) after {} replies", ids.len()),
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=40).collect::<Vec<u64>>());
    assert_eq!(metric(&metrics(admin).await, PUBLISHES), 40.0);
    assert_ping(&mut c, "after the pipeline").await;
}

// ---------------------------------------------------------------------------------------------------------
// 11. read-only commands do not create channels
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_do_not_create_channels() {
    let (cfg, _dir) = open_config();
    let node = start(cfg);
    let admin = node.admin_addr;
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    let h = c
        .ok(json!({"type": "history", "channel": "ghost:1", "since": 0}))
        .await;
    assert_eq!(h["messages"], json!([]), "{h}");
    assert_eq!(h["head"], 0, "{h}");
    let p = c
        .ok(json!({"type": "presence", "channel": "ghost:1"}))
        .await;
    assert_eq!(p["members"], json!([]), "{p}");

    let list = http(
        admin,
        "GET",
        "/api/channels?limit=1000",
        Some(ADMIN_TOKEN),
        None,
    )
    .await
    .ok();
    let names: Vec<&str> = list["channels"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(!names.contains(&"ghost:1"), "{list}");
    let one = http(
        admin,
        "GET",
        "/api/channels/ghost:1",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(one.status, 404, "{}", one.body);
    let m = metrics(admin).await;
    assert_eq!(
        metric(&m, &["herald_channels", "herald_channels_active"]),
        0.0
    );

    // With the channel limit used up, reads on other channels still work.
    let (mut cfg, _dir2) = open_config();
    cfg.limits.max_channels = 1;
    let node = start(cfg);
    let mut c = Client::connect(&node.ws_url(), Enc::Msgpack).await;
    c.subscribe("used:1").await;
    let r = c
        .request(json!({"type": "subscribe", "channel": "other:4"}))
        .await;
    assert_eq!(r["code"], "unavailable", "the limit is in force: {r}");
    let r = c
        .request(json!({"type": "history", "channel": "other:2", "since": 0}))
        .await;
    assert_eq!(r["type"], "reply", "history at the channel limit: {r}");
    assert_eq!(r["result"]["messages"], json!([]), "{r}");
    let r = c
        .request(json!({"type": "presence", "channel": "other:3"}))
        .await;
    assert_eq!(r["type"], "reply", "presence at the channel limit: {r}");
    assert_eq!(r["result"]["members"], json!([]), "{r}");
}

// ---------------------------------------------------------------------------------------------------------
// 12. join/leave is rate limited per channel
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_leave_is_rate_limited_per_channel() {
    let (mut cfg, _dir) = open_config();
    cfg.namespaces.get_mut("default").unwrap().join_leave = Some(true);
    cfg.channel.join_leave_per_second = 5;
    let node = start(cfg);
    let url = node.ws_url();
    let mut observer = Client::connect(&url, Enc::Json).await;
    observer.subscribe("room:1").await;
    let mut churn = Client::connect(&url, Enc::Json).await;
    let t0 = Instant::now();
    for _ in 0..200 {
        churn.subscribe("room:1").await;
        churn
            .ok(json!({"type": "unsubscribe", "channel": "room:1"}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frames = drain(&mut observer, Duration::from_secs(1)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let presence_frames = frames
        .iter()
        .filter(|f| f["type"] == "join" || f["type"] == "leave")
        .count();
    let bound = 5.0 + 5.0 * elapsed + 5.0;
    eprintln!("{presence_frames} join/leave frames in {elapsed:.2} s");
    assert!(
        (presence_frames as f64) <= bound,
        "{presence_frames} join/leave frames in {elapsed:.2} s; at most {bound:.0} allowed"
    );
    assert!(
        presence_frames < 60,
        "{presence_frames} join/leave frames for 400 changes"
    );
    assert_ping(&mut observer, "the observer stays connected").await;
    assert_ping(&mut churn, "the churning client stays connected").await;
}

// ---------------------------------------------------------------------------------------------------------
// 13. flooding after rate_limited closes the connection
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_after_rate_limited_closes_with_4007() {
    let (mut cfg, _dir) = open_config();
    cfg.limits.messages_per_second = 1;
    cfg.limits.messages_burst = 1;
    cfg.limits.max_rate_limited = 20;
    let node = start(cfg);
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    // 200 pings as fast as possible; the server may close before they are all written.
    for i in 0..200 {
        let m = c.encode(&json!({"v": 1, "type": "ping", "id": i}));
        if c.ws.feed(m).await.is_err() {
            break;
        }
    }
    let _ = c.ws.flush().await;

    let mut frames = Vec::new();
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(8), c.next_event()).await {
            Ok(Event::Frame(f)) => frames.push(f),
            Ok(Event::Closed(code)) => break code,
            Err(_) => panic!(
                "the connection was never closed; {} frames read, last {:?}",
                frames.len(),
                frames.last()
            ),
        }
    };
    let errors: Vec<&Value> = frames.iter().filter(|f| f["type"] == "error").collect();
    assert!(!errors.is_empty(), "rate_limited errors first: {frames:?}");
    for e in &errors {
        assert_eq!(e["code"], "rate_limited", "{e}");
        assert!(e["id"].is_null(), "over-budget frames are not decoded: {e}");
    }
    let replies = frames.iter().filter(|f| f["type"] == "reply").count();
    assert!(replies <= 5, "{replies} pings answered at 1/s");
    assert_eq!(code, Some(4007), "close code after {} errors", errors.len());
    let last = frames.last().expect("a disconnect before the close");
    assert_eq!(
        (last["type"].as_str(), last["code"].as_u64()),
        (Some("disconnect"), Some(4007)),
        "{last}"
    );
    // The node still serves others.
    let mut other = Client::connect(&node.ws_url(), Enc::Json).await;
    assert_ping(&mut other, "another client").await;
}
