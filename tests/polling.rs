//! The long-polling transport against a real node over real sockets: the same session as over
//! WebSocket (commands, messages, close codes), batches that survive lost answers and cut polls,
//! numbered sends applied once, one poll at a time, the heartbeat timeout, the session bound to its
//! user, CORS for allowed origins only, bad bodies answered with clear errors, and the transport shown
//! in metrics and the admin API.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::http::http;
use common::poll::{decode_batch, request, PollClient};
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "polling-test-secret-0123456789";
const ADMIN: &str = "polling-admin-token-0123456789";

fn admin_config() -> (herald::config::Config, tempfile::TempDir) {
    let (mut cfg, dir) = test_config();
    cfg.admin.token = ADMIN.into();
    (cfg, dir)
}

fn token(sub: &str) -> String {
    hs256_token(SECRET, sub)
}

async fn roundtrip(enc: Enc) {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    let mut p = PollClient::open(node.client_addr, enc).await;
    assert_eq!(p.welcome["v"], 1);
    assert_eq!(p.session.len(), 32, "128 bits in hex");
    p.subscribe_and_check().await;
    // Another page on WebSocket publishes; the polling page receives it, and its own.
    let mut ws = Client::connect(&node.ws_url(), enc).await;
    ws.subscribe("room:lp").await;
    ws.publish("room:lp", json!({"from": "ws"})).await;
    p.ok(json!({"type": "publish", "channel": "room:lp", "data": {"from": "poll"}}))
        .await;
    let a = p.next_message().await;
    let b = p.next_message().await;
    assert_eq!(a["data"], json!({"from": "ws"}));
    assert_eq!(b["data"], json!({"from": "poll"}));
    assert_eq!(b["offset"].as_u64(), a["offset"].as_u64().map(|o| o + 1));
    assert_eq!(ws.next_message().await["data"], json!({"from": "ws"}));
    assert_eq!(ws.next_message().await["data"], json!({"from": "poll"}));
    shutdown(node).await;
}

trait Subscribe {
    async fn subscribe_and_check(&mut self);
}

impl Subscribe for PollClient {
    async fn subscribe_and_check(&mut self) {
        let r = self
            .ok(json!({"type": "subscribe", "channel": "room:lp"}))
            .await;
        assert!(r["epoch"].is_string(), "{r}");
    }
}

#[tokio::test]
async fn a_polling_session_subscribes_publishes_and_receives_in_json() {
    roundtrip(Enc::Json).await;
}

#[tokio::test]
async fn a_polling_session_subscribes_publishes_and_receives_in_msgpack() {
    roundtrip(Enc::Msgpack).await;
}

/// Publishes `n` numbered messages to `channel` from a WebSocket client.
async fn publish_numbered(url: String, channel: &'static str, n: u64) {
    let mut ws = Client::connect(&url, Enc::Json).await;
    for i in 1..=n {
        ws.publish(channel, json!(i)).await;
    }
}

#[tokio::test]
async fn lost_answers_and_cut_polls_lose_and_double_nothing() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    let mut p = PollClient::open(node.client_addr, Enc::Json).await;
    p.ok(json!({"type": "subscribe", "channel": "lossy"})).await;
    const N: u64 = 300;
    let publisher = tokio::spawn(publish_numbered(node.ws_url(), "lossy", N));
    let mut got = Vec::new();
    let mut round = 0u64;
    let (mut lost, mut cut, mut resent) = (0, 0, 0);
    while got.len() < N as usize {
        round += 1;
        assert!(round < 5_000, "only {} of {N} arrived", got.len());
        match round % 4 {
            // The answer is lost: the server handed out a batch nobody read.
            1 => {
                let r = p.poll_raw(p.ack).await;
                assert_eq!(r.status, 200);
                let b = decode_batch(Enc::Json, &r.body);
                if !b.frames.is_empty() {
                    lost += 1;
                    // Asking again with the same acknowledgement gives the same batch.
                    let again = decode_batch(Enc::Json, &p.poll_raw(p.ack).await.body);
                    assert_eq!(again, b, "an unacknowledged batch is sent again as it was");
                    resent += 1;
                }
            }
            // A held poll cut by a proxy: the request goes, the connection is dropped.
            2 => {
                let s = p.start_poll(p.ack).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(s);
                cut += 1;
            }
            _ => {
                let b = p.poll().await;
                got.extend(
                    b.frames
                        .iter()
                        .filter(|f| f["type"] == "message")
                        .map(|f| f["data"].as_u64().unwrap()),
                );
            }
        }
    }
    publisher.await.unwrap();
    let expected: Vec<u64> = (1..=N).collect();
    assert_eq!(got, expected, "every message once, in order");
    assert!(lost > 0 && cut > 0 && resent > 0, "{lost} {cut} {resent}");
    // Nothing more is pending.
    let b = p.poll_raw(p.ack);
    let quiet = tokio::time::timeout(Duration::from_millis(300), b).await;
    assert!(quiet.is_err(), "a poll with nothing queued is held");
    shutdown(node).await;
}

#[tokio::test]
async fn a_send_repeated_after_a_lost_answer_is_applied_once_and_gaps_are_refused() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    let mut p = PollClient::open(node.client_addr, Enc::Json).await;
    p.ok(json!({"type": "subscribe", "channel": "once"})).await;
    let publish = p.encode_batch(&[
        json!({"v": 1, "type": "publish", "channel": "once", "data": "x", "id": 100}),
    ]);
    p.sent += 1;
    for _ in 0..3 {
        let r = p.send_body(p.sent, &publish).await;
        assert_eq!(r.status, 204);
    }
    let r = p.send_body(p.sent + 2, &publish).await;
    assert_eq!(r.status, 409, "a gap in the batch numbers");
    assert_eq!(r.json()["error"], "out_of_order");
    let m = p.next_message().await;
    assert_eq!(m["data"], "x");
    let mut ws = Client::connect(&node.ws_url(), Enc::Json).await;
    let h = ws
        .ok(json!({"type": "history", "channel": "once", "limit": 10}))
        .await;
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(1), "{h}");
    shutdown(node).await;
}

#[tokio::test]
async fn a_second_poll_ends_the_held_one_with_an_empty_batch() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    let p = PollClient::open(node.client_addr, Enc::Json).await;
    let first = p.start_poll(p.ack).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = tokio::spawn({
        let s = p.start_poll(p.ack).await;
        common::poll::read_response(s)
    });
    let ended = tokio::time::timeout(Duration::from_secs(2), common::poll::read_response(first))
        .await
        .expect("the held poll ends when a second arrives");
    assert_eq!(ended.status, 200);
    let b = decode_batch(Enc::Json, &ended.body);
    assert!(b.frames.is_empty(), "{b:?}");
    // The second is the one held now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second.is_finished(), "the newer poll is held");
    second.abort();
    shutdown(node).await;
}

#[tokio::test]
async fn a_session_that_stops_polling_is_closed_with_4002_and_leaves_nothing_behind() {
    let (mut cfg, _dir) = admin_config();
    cfg.session.heartbeat_ms = 300;
    cfg.session.heartbeat_timeout_ms = 1000;
    let node = start(cfg);
    let mut p = PollClient::open(node.client_addr, Enc::Json).await;
    p.ok(json!({"type": "subscribe", "channel": "gone"})).await;
    assert_eq!(node.node().sessions.len(), 1);
    tokio::time::sleep(Duration::from_millis(1400)).await;
    // The last batch holds the disconnect frame; then the session is over.
    let b = p.poll().await;
    let d = b.frames.last().expect("a last batch");
    assert_eq!(d["type"], "disconnect", "{d}");
    assert_eq!(d["code"], 4002);
    let r = p.poll_raw(p.ack).await;
    assert_eq!(r.status, 410, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(node.node().sessions.len(), 0);
    // The transport state is dropped a poll wait (here 500 ms: half the heartbeat timeout) later.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let r = loop {
        let r = p.poll_raw(p.ack).await;
        if r.status != 410 || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "unknown_session");
    let ch = http(
        node.admin_addr,
        "GET",
        "/api/channels/gone",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(ch.json()["subscribers"], 0, "{}", ch.body);
    shutdown(node).await;
}

#[tokio::test]
async fn a_session_answers_only_its_own_user_and_ids_are_random() {
    let (mut cfg, _dir) = test_config();
    cfg.auth.anonymous = false;
    cfg.auth.hmac_secret = SECRET.into();
    let node = start(cfg);
    let addr = node.client_addr;
    let refused = PollClient::try_open(addr, Enc::Json, None, None)
        .await
        .err()
        .expect("401");
    assert_eq!(refused.status, 401);
    let alice = token("alice");
    let mut p = PollClient::try_open(addr, Enc::Json, Some(&alice), None)
        .await
        .expect("open");
    assert_eq!(p.welcome["user"], "alice");
    let other = PollClient::try_open(addr, Enc::Json, Some(&alice), None)
        .await
        .expect("open");
    assert_ne!(p.session, other.session);
    // Someone else holding the id gets nothing.
    p.token = Some(token("mallory"));
    assert_eq!(p.poll_raw(p.ack).await.status, 403);
    p.token = None;
    assert_eq!(p.poll_raw(p.ack).await.status, 401);
    p.token = Some(alice);
    p.ok(json!({"type": "ping"})).await;
    shutdown(node).await;
}

#[tokio::test]
async fn cors_answers_only_allowed_origins_on_both_transports() {
    let (mut cfg, _dir) = test_config();
    cfg.server.allowed_origins = vec!["http://app.example".into()];
    let node = start(cfg);
    let addr = node.client_addr;
    let good = Some("http://app.example");
    let bad = Some("http://evil.example");
    let mut p = PollClient::try_open(addr, Enc::Json, None, good)
        .await
        .expect("an allowed origin opens");
    p.send(&[json!({"v": 1, "type": "ping", "id": 1})]).await;
    let r = p.poll_raw(p.ack).await;
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "http://app.example"
    );
    assert_eq!(r.headers["vary"], "Origin");
    let b = decode_batch(Enc::Json, &r.body);
    assert_eq!(b.frames[0]["type"], "reply", "{b:?}");
    let refused = PollClient::try_open(addr, Enc::Json, None, bad)
        .await
        .err()
        .expect("403");
    assert_eq!(refused.status, 403);
    assert!(!refused.headers.contains_key("access-control-allow-origin"));
    let pre = |origin: &'static str| async move {
        let headers = [
            ("Origin", origin.to_string()),
            ("Access-Control-Request-Method", "POST".to_string()),
            (
                "Access-Control-Request-Headers",
                "authorization".to_string(),
            ),
        ];
        request(addr, "OPTIONS", "/poll/open", &headers, None).await
    };
    let ok = pre("http://app.example").await;
    assert_eq!(ok.status, 204);
    assert!(ok.headers["access-control-allow-headers"].contains("herald-session"));
    assert_eq!(pre("http://evil.example").await.status, 403);
    // The WebSocket handshake applies the same list.
    let ws = Client::try_connect(
        &node.ws_url(),
        Enc::Json,
        &[("origin", "http://evil.example")],
    )
    .await;
    assert!(ws.is_err());
    // A session's id used from a refused origin answers nothing either.
    p.origin = Some("http://evil.example".into());
    assert_eq!(p.poll_raw(p.ack).await.status, 403);
    shutdown(node).await;
}

#[tokio::test]
async fn bad_bodies_get_clear_errors_and_an_oversized_frame_closes_with_1009() {
    let (mut cfg, _dir) = test_config();
    cfg.limits.max_frame_bytes = 4096;
    let node = start(cfg);
    let mut p = PollClient::open(node.client_addr, Enc::Json).await;
    let r = p.send_body(1, b"{\"type\":\"ping\"}").await;
    assert_eq!(r.status, 400, "not an array");
    assert_eq!(r.json()["error"], "bad_request");
    let r = p.send_body(1, b"[{\"type\":").await;
    assert_eq!(r.status, 400, "not JSON");
    for path in ["/poll/send", "/poll/send?seq=0", "/poll/send?seq=x"] {
        let r = request(
            p.addr,
            "POST",
            path,
            &p.headers(),
            Some(("application/json", b"[]")),
        )
        .await;
        assert_eq!(r.status, 400, "{path}");
    }
    let r = request(p.addr, "GET", "/poll/recv?ack=-1", &p.headers(), None).await;
    assert_eq!(r.status, 400, "a malformed ack");
    assert_eq!(r.json()["error"], "bad_request");
    // A bad frame inside a good batch is answered as on a WebSocket.
    p.send(&[json!({"v": 1, "type": "nope", "id": 5})]).await;
    let e = p.next_frame().await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["id"], 5);
    let big =
        json!([{"v": 1, "type": "publish", "channel": "c", "data": "x".repeat(5000), "id": 6}]);
    let r = p.send_body(p.sent + 1, big.to_string().as_bytes()).await;
    assert_eq!(r.status, 413);
    let d = p.next_frame().await;
    assert_eq!(d["type"], "disconnect", "{d}");
    assert_eq!(d["code"], 1009);
    shutdown(node).await;
}

#[tokio::test]
async fn metrics_and_the_admin_api_show_the_transport() {
    let (cfg, _dir) = admin_config();
    let node = start(cfg);
    let _p = PollClient::open(node.client_addr, Enc::Json).await;
    let _ws = Client::connect(&node.ws_url(), Enc::Json).await;
    let list = http(
        node.admin_addr,
        "GET",
        "/api/connections",
        Some(ADMIN),
        None,
    )
    .await
    .ok();
    let transports: HashSet<String> = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["transport"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        transports,
        HashSet::from(["websocket".to_string(), "long_polling".to_string()])
    );
    let metrics = http(node.admin_addr, "GET", "/metrics", Some(ADMIN), None)
        .await
        .body;
    assert!(
        metrics.contains("herald_connections{transport=\"long_polling\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("herald_connections{transport=\"websocket\"} 1"));
    shutdown(node).await;
}

#[tokio::test]
async fn admin_disconnect_and_client_close_end_a_polling_session_like_a_websocket() {
    let (cfg, _dir) = admin_config();
    let node = start(cfg);
    let mut p = PollClient::open(node.client_addr, Enc::Json).await;
    let id = p.welcome["session"].as_str().unwrap().to_string();
    let body = json!({"session": id, "code": 4004, "reason": "bye"}).to_string();
    let r = http(
        node.admin_addr,
        "POST",
        "/api/disconnect",
        Some(ADMIN),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = p.next_frame().await;
    assert_eq!(d["type"], "disconnect");
    assert_eq!(d["code"], 4004);
    assert_eq!(d["reconnect"], Value::Bool(false));
    let q = PollClient::open(node.client_addr, Enc::Json).await;
    let r = request(node.client_addr, "POST", "/poll/close", &q.headers(), None).await;
    assert_eq!(r.status, 204);
    let n = node.node();
    eventually("both sessions ended", || n.sessions.is_empty()).await;
    shutdown(node).await;
}

#[tokio::test]
async fn the_node_serves_the_js_client_always_and_the_chat_page_only_in_development() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    let addr = node.client_addr;
    let js = request(addr, "GET", "/client/herald.js", &[], None).await;
    assert_eq!(js.status, 200);
    assert!(js.headers["content-type"].starts_with("text/javascript"));
    assert_eq!(js.headers["cache-control"], "public, max-age=3600");
    assert_eq!(js.headers["access-control-allow-origin"], "*");
    let version = env!("CARGO_PKG_VERSION");
    assert!(String::from_utf8_lossy(&js.body).contains("export class HeraldClient"));
    let pinned = request(
        addr,
        "GET",
        &format!("/client/herald-{version}.js"),
        &[],
        None,
    )
    .await;
    assert_eq!(pinned.status, 200);
    assert_eq!(pinned.body, js.body);
    assert!(pinned.headers["cache-control"].contains("immutable"));
    let again = request(
        addr,
        "GET",
        "/client/herald.js",
        &[("If-None-Match", js.headers["etag"].clone())],
        None,
    )
    .await;
    assert_eq!(again.status, 304);
    assert_eq!(
        request(addr, "GET", "/", &[], None).await.status,
        404,
        "examples are off by default"
    );
    shutdown(node).await;

    let (mut cfg, _dir) = test_config();
    cfg.server.examples = true;
    let node = start(cfg);
    let page = request(node.client_addr, "GET", "/", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("/chat.js"));
    let chat = request(node.client_addr, "GET", "/chat.js", &[], None).await;
    assert!(String::from_utf8_lossy(&chat.body).contains("from '/client/herald.js'"));
    shutdown(node).await;
}
