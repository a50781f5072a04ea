//! Connection hardening: Origin checks, heartbeats, the handshake deadline, admission limits, WebSocket
//! protocol violations, slow consumers and nesting depth. Most tests speak raw TCP so they can misbehave
//! in ways a WebSocket library would not allow, and read the server's frames byte by byte.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::raw::*;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

fn addr_of(node: &herald::server::RunningNode) -> SocketAddr {
    node.client_addr
}

// ---------------------------------------------------------------------------------------------------------
// Origin
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_is_checked_before_the_upgrade() {
    let (mut cfg, _dir) = test_config();
    cfg.server.allowed_origins = vec!["https://app.example.com".into()];
    let node = start(cfg);
    let addr = addr_of(&node);

    let h = upgrade(addr, &[("Origin", "https://evil.example.com")]).await;
    assert_eq!(h.status, 403, "wrong Origin: {}", h.head);
    // A near miss (other scheme, other port, suffix) is still wrong.
    for o in [
        "http://app.example.com",
        "https://app.example.com:444",
        "https://app.example.com.evil.example",
        "null",
    ] {
        let h = upgrade(addr, &[("Origin", o)]).await;
        assert_eq!(h.status, 403, "Origin {o}: {}", h.head);
    }
    let h = upgrade(addr, &[]).await;
    assert_eq!(h.status, 101, "no Origin (non-browser client): {}", h.head);
    let h = upgrade(addr, &[("Origin", "https://app.example.com")]).await;
    assert_eq!(h.status, 101, "allowed Origin: {}", h.head);
    let mut ws = h.ws;
    assert_eq!(ws.expect_frame().await.json()["type"], "welcome");

    // Default config (empty list): every browser origin is refused, non-browser clients pass.
    let (cfg, _dir2) = test_config();
    let strict = start(cfg);
    let h = upgrade(addr_of(&strict), &[("Origin", "https://app.example.com")]).await;
    assert_eq!(h.status, 403, "empty allow-list: {}", h.head);
    assert_eq!(upgrade(addr_of(&strict), &[]).await.status, 101);

    // "*" written by the operator allows any origin.
    let (mut cfg, _dir3) = test_config();
    cfg.server.allowed_origins = vec!["*".into()];
    let open = start(cfg);
    for o in ["https://evil.example.com", "http://localhost:3000"] {
        let h = upgrade(addr_of(&open), &[("Origin", o)]).await;
        assert_eq!(h.status, 101, "\"*\" allows {o}: {}", h.head);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Heartbeats
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_with_4002_and_a_pong_keeps_it_alive() {
    let (mut cfg, _dir) = test_config();
    cfg.session.heartbeat_ms = 200;
    cfg.session.heartbeat_timeout_ms = 600;
    let node = start(cfg);
    let addr = addr_of(&node);

    // A client that reads but never writes anything: no pong, no frame.
    let silent = tokio::spawn(async move {
        let t0 = Instant::now();
        let mut ws = raw_connect(addr).await;
        let closing = ws.read_to_close().await;
        (t0.elapsed(), closing)
    });

    // A client that answers every ping with a pong (and nothing else) for well past the timeout.
    let mut alive = raw_connect(addr).await;
    let deadline = Instant::now() + Duration::from_millis(1800);
    let mut pongs = 0;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, alive.next()).await {
            Err(_) => break,
            Ok(Next::Eof) => panic!("a client that answers pings was dropped"),
            Ok(Next::Frame(f)) if f.opcode == OP_PING => {
                alive.write_frame(true, OP_PONG, &f.payload, true).await;
                pongs += 1;
            }
            Ok(Next::Frame(f)) => panic!("unexpected frame while answering pings: {f:?}"),
        }
    }
    assert!(pongs >= 4, "pings every 200 ms: {pongs} in 1.8 s");
    alive
        .send_json(json!({"v": 1, "type": "ping", "id": 1}))
        .await;
    let r = alive.expect_frame().await.json();
    assert_eq!(r["type"], "reply", "still open after answering pings: {r}");

    let (elapsed, closing) = silent.await.unwrap();
    assert!(closing.pings >= 1, "the server pinged first: {closing:?}");
    closing.assert_code(4002, true);
    assert!(
        elapsed >= Duration::from_millis(550) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}; the timeout is 600 ms"
    );
    eventually("the silent session is gone", || {
        node.node().sessions.len() == 1
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// Handshake deadline (slowloris)
// ---------------------------------------------------------------------------------------------------------

/// Waits for the server to answer or close; returns the time it took and what it sent (empty on close).
async fn wait_for_server(stream: &mut TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let r = tokio::time::timeout(limit, async {
        loop {
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        r.is_ok() || !got.is_empty(),
        "the server neither answered nor closed within {limit:?}"
    );
    (t0.elapsed(), got)
}

fn assert_408_or_close(got: &[u8]) {
    let s = String::from_utf8_lossy(got);
    assert!(
        got.is_empty() || s.starts_with("HTTP/1.1 408"),
        "expected 408 or a close, got {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handshakes_get_408_or_a_close() {
    let (mut cfg, _dir) = test_config();
    cfg.session.handshake_timeout_ms = 500;
    let node = start(cfg);
    let addr = addr_of(&node);

    // Half a request, then nothing.
    let half = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let t0 = Instant::now();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            .await
            .unwrap();
        let (_, got) = wait_for_server(&mut s, Duration::from_secs(5)).await;
        (t0.elapsed(), got)
    });

    // Trickle: one byte every 100 ms, never finishing the head.
    let trickle = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let t0 = Instant::now();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        let mut got = Vec::new();
        loop {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "a trickled handshake was still open after 5 s (deadline 500 ms)"
            );
            let mut chunk = [0u8; 1024];
            match tokio::time::timeout(Duration::from_millis(100), s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
                Err(_) => {
                    if s.write_all(b"a").await.is_err() {
                        break;
                    }
                }
            }
        }
        (t0.elapsed(), got)
    });

    for (what, task) in [("half request", half), ("trickle", trickle)] {
        let (elapsed, got) = task.await.unwrap();
        assert_408_or_close(&got);
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
            "{what}: cut after {elapsed:?}; the deadline is 500 ms"
        );
    }

    // A complete handshake is unaffected.
    let mut ws = raw_connect(addr).await;
    ws.send_json(json!({"v": 1, "type": "ping", "id": 1})).await;
    assert_eq!(ws.expect_frame().await.json()["type"], "reply");
}

// ---------------------------------------------------------------------------------------------------------
// Admission limits
// ---------------------------------------------------------------------------------------------------------

fn retry_after(h: &Handshake) -> u64 {
    h.header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {}", h.head))
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is not seconds: {}", h.head))
}

/// Retries a handshake until it is upgraded (a slot came back).
async fn eventually_upgraded(addr: SocketAddr) -> RawWs {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let h = upgrade(addr, &[]).await;
        if h.status == 101 {
            return h.ws;
        }
        assert!(
            Instant::now() < deadline,
            "slot never came back: {}",
            h.head
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_refuses_the_next_connection_with_429_until_a_slot_frees() {
    let (mut cfg, _dir) = test_config();
    cfg.limits.max_connections_per_ip = 3;
    let node = start(cfg);
    let addr = addr_of(&node);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(raw_connect(addr).await);
    }
    let h = upgrade(addr, &[]).await;
    assert_eq!(h.status, 429, "4th connection from one IP: {}", h.head);
    assert!(retry_after(&h) >= 1);
    // Refusals do not leak slots and do not count as connections.
    assert_eq!(node.node().admission.open(), 3);
    assert_eq!(upgrade(addr, &[]).await.status, 429);
    open.pop();
    let _again = eventually_upgraded(addr).await;
    assert_eq!(upgrade(addr, &[]).await.status, 429, "full again");
    // Every slot comes back when everyone leaves.
    drop(open);
    drop(_again);
    eventually("all slots free", || node.node().admission.open() == 0).await;
    let mut back = Vec::new();
    for _ in 0..3 {
        back.push(raw_connect(addr).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_limit_gives_503_with_retry_after() {
    let (mut cfg, _dir) = test_config();
    cfg.limits.max_connections = 2;
    let node = start(cfg);
    let addr = addr_of(&node);
    let a = raw_connect(addr).await;
    let _b = raw_connect(addr).await;
    let h = upgrade(addr, &[]).await;
    assert_eq!(h.status, 503, "node full: {}", h.head);
    assert!(retry_after(&h) >= 1);
    drop(a);
    let _c = eventually_upgraded(addr).await;
    assert_eq!(node.node().admission.open(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_second_per_ip_are_limited() {
    let (mut cfg, _dir) = test_config();
    cfg.limits.connects_per_second_per_ip = 2;
    let node = start(cfg);
    let addr = addr_of(&node);
    // A burst of 2 is allowed, then about one every 500 ms: ten quick attempts must meet a refusal.
    let mut open = Vec::new();
    let mut refused = None;
    for i in 0..10 {
        let h = upgrade(addr, &[]).await;
        match h.status {
            101 => open.push(h.ws),
            429 => {
                refused = Some(h);
                break;
            }
            s => panic!("attempt {i}: unexpected status {s}: {}", h.head),
        }
    }
    assert!(open.len() >= 2, "the burst is admitted");
    let h = refused.expect("ten connects in a burst, none refused (limit 2/s)");
    assert!(retry_after(&h) >= 1);
    assert!(
        node.node().admission.open() == open.len(),
        "refused connects hold no slot"
    );
    // The rate refills: a moment later a new connection is accepted, while the others stay.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut ws = raw_connect(addr).await;
    ws.send_json(json!({"v": 1, "type": "ping", "id": 1})).await;
    assert_eq!(ws.expect_frame().await.json()["type"], "reply");
    assert_eq!(node.node().admission.open(), open.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limit_gives_429_with_retry_after() {
    let (mut cfg, _dir) = test_config();
    cfg.auth.hmac_secret = "hardening-secret".into();
    cfg.limits.max_connections_per_user = 2;
    let auth = herald::auth::Authenticator::from_config(&cfg.auth).unwrap();
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = |sub: &str| {
        format!(
            "Bearer {}",
            auth.mint(&herald::auth::Claims {
                sub: sub.into(),
                exp,
                subscribe: None,
                publish: None,
            })
            .unwrap()
        )
    };
    let (alice, bob) = (token("alice"), token("bob"));
    let node = start(cfg);
    let addr = addr_of(&node);
    let a1 = upgrade(addr, &[("Authorization", &alice)]).await;
    let _a2 = upgrade(addr, &[("Authorization", &alice)]).await;
    assert_eq!((a1.status, _a2.status), (101, 101));
    let h = upgrade(addr, &[("Authorization", &alice)]).await;
    assert_eq!(h.status, 429, "3rd connection of alice: {}", h.head);
    assert!(retry_after(&h) >= 1);
    assert_eq!(upgrade(addr, &[("Authorization", &bob)]).await.status, 101);
    drop(a1);
    let deadline = Instant::now() + TIMEOUT;
    while upgrade(addr, &[("Authorization", &alice)]).await.status != 101 {
        assert!(Instant::now() < deadline, "alice's slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// WebSocket protocol violations
// ---------------------------------------------------------------------------------------------------------

/// Opens a raw connection, writes `bytes` and checks the server closes with `code` (after `disconnect`).
async fn violate(addr: SocketAddr, what: &str, bytes: Vec<u8>, code: u16) {
    let mut ws = raw_connect(addr).await;
    ws.stream.write_all(&bytes).await.unwrap();
    let closing = ws.read_to_close().await;
    eprintln!("{what}: {closing:?}");
    assert_eq!(closing.code, Some(code), "{what}: {closing:?}");
    closing.assert_code(code, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_with_the_rfc_codes() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    let addr = addr_of(&node);

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "invalid UTF-8 in a text frame",
            encode_frame(true, OP_TEXT, &[0x7b, 0xff, 0xfe, 0x7d], true),
            1007,
        ),
        (
            "invalid UTF-8 across the fragments of a text message",
            [
                encode_frame(false, OP_TEXT, b"{\"v\":\xce", true),
                encode_frame(true, OP_CONT, b"\x28}", true),
            ]
            .concat(),
            1007,
        ),
        (
            "a ping with 126 bytes of payload",
            encode_frame(true, OP_PING, &[b'p'; 126], true),
            1002,
        ),
        (
            "a fragmented ping (no FIN)",
            encode_frame(false, OP_PING, b"frag", true),
            1002,
        ),
        (
            "an unmasked client frame",
            encode_frame(true, OP_TEXT, br#"{"v":1,"type":"ping","id":1}"#, false),
            1002,
        ),
        (
            "a reserved opcode",
            encode_frame(true, 0x3, b"x", true),
            1002,
        ),
        (
            "RSV1 without an extension",
            {
                let mut f = encode_frame(true, OP_TEXT, br#"{"v":1,"type":"ping","id":1}"#, true);
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        (
            "a continuation with nothing to continue",
            encode_frame(true, OP_CONT, b"x", true),
            1002,
        ),
    ];
    for (what, bytes, code) in cases {
        violate(addr, what, bytes, code).await;
    }

    // The node is unharmed.
    eventually("violating sessions are gone", || {
        node.node().sessions.is_empty()
    })
    .await;
    let mut ok = raw_connect(addr).await;
    ok.send_json(json!({"v": 1, "type": "ping", "id": 1})).await;
    assert_eq!(ok.expect_frame().await.json()["type"], "reply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_is_never_negotiated() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    let h = upgrade(
        addr_of(&node),
        &[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        )],
    )
    .await;
    assert_eq!(h.status, 101);
    assert!(
        h.header("sec-websocket-extensions").is_none(),
        "no extension accepted: {}",
        h.head
    );
}

// ---------------------------------------------------------------------------------------------------------
// Slow consumers
// ---------------------------------------------------------------------------------------------------------

/// A node config where a subscriber that stops reading is cut soon (behind for more than 300 ms; changed on
/// purpose when subscribers became cursors: a full outbox no longer cuts anyone), outboxes are small (16
/// frames) and publishers are not rate limited.
fn slow_consumer_config() -> (herald::config::Config, tempfile::TempDir) {
    let (mut cfg, dir) = test_config();
    cfg.session.max_lag_ms = 300;
    cfg.session.outbox_capacity = 16;
    cfg.limits.messages_per_second = 1_000_000;
    cfg.limits.messages_burst = 1_000_000;
    (cfg, dir)
}

/// A raw client with a 4 KiB receive buffer, subscribed to `channel`, that the caller then stops reading.
/// Returns it with the channel head from the subscribe reply and its local port.
async fn stalled_subscriber(addr: SocketAddr, channel: &str) -> (RawWs, u64, u16) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let local_port = stream.local_addr().unwrap().port();
    let h = upgrade_on(stream, addr, &[]).await;
    assert_eq!(h.status, 101);
    let mut ws = h.ws;
    assert_eq!(ws.expect_frame().await.json()["type"], "welcome");
    ws.send_json(json!({"v": 1, "type": "subscribe", "id": 1, "channel": channel}))
        .await;
    let r = ws.expect_frame().await.json();
    assert_eq!(r["type"], "reply", "{r}");
    let head = r["result"]["offset"].as_u64().unwrap();
    (ws, head, local_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_is_cut_while_others_receive_everything() {
    const N: usize = 3000;
    const WINDOW: usize = 12;
    let (cfg, _dir) = slow_consumer_config();
    let node = start(cfg);
    let addr = addr_of(&node);

    // The slow subscriber: a tiny receive buffer, subscribes, then stops reading.
    let (mut slow, head, _) = stalled_subscriber(addr, "firehose").await;

    // The good subscriber reads everything, checking order.
    let mut good = Client::connect(&node.ws_url(), Enc::Json).await;
    good.subscribe("firehose").await;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = std::sync::Arc::new(tokio::sync::Notify::new());
    let reader = tokio::spawn({
        let received = received.clone();
        let progress = progress.clone();
        async move {
            let mut last = head;
            for i in 0..N {
                let m = good.next_message().await;
                let off = m["offset"].as_u64().unwrap();
                assert_eq!(off, last + 1, "good subscriber: gap or reorder at {i}: {m}");
                assert_eq!(m["data"]["i"], i, "{m}");
                last = off;
                received.store(i + 1, std::sync::atomic::Ordering::Release);
                progress.notify_one();
            }
            good
        }
    });

    // The publisher keeps at most WINDOW messages in flight, both to its own replies and to the good
    // subscriber (end-to-end), so neither of their 16-frame outboxes can fill however the threads are
    // scheduled. The slow subscriber is not waited for: its backlog grows without bound.
    let mut publisher = Client::connect(&node.ws_url(), Enc::Msgpack).await;
    // 3000 x 4 KB = 12 MB: far more than the socket buffers on both sides can hold.
    let pad = "x".repeat(4000);
    let (mut sent, mut acked) = (0usize, 0usize);
    let t0 = Instant::now();
    while acked < N {
        let delivered = received.load(std::sync::atomic::Ordering::Acquire);
        if sent < N && sent - acked < WINDOW && sent - delivered < WINDOW {
            publisher
                .send(
                    json!({"v": 1, "type": "publish", "id": sent, "channel": "firehose",
                              "data": {"i": sent, "pad": pad}}),
                )
                .await;
            sent += 1;
        } else if acked < sent {
            let f = publisher.next_frame().await;
            assert_eq!(f["type"], "reply", "publish failed: {f}");
            acked += 1;
        } else {
            assert!(
                !reader.is_finished(),
                "the good subscriber's reader stopped early"
            );
            let _ = tokio::time::timeout(Duration::from_millis(50), progress.notified()).await;
        }
    }
    let publish_time = t0.elapsed();
    let good = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("good subscriber did not receive everything")
        .unwrap();

    assert!(
        node.node()
            .stats
            .slow_consumers
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the slow subscriber was counted"
    );
    // The slow session is gone from the node (its outbox and subscription are freed) although its
    // client never read a byte more.
    eventually("slow session removed", || node.node().sessions.len() == 2).await;
    eventually("slow session's slot freed", || {
        node.node().admission.open() == 2
    })
    .await;

    // Now the slow client reads what was buffered: a prefix of the messages in order, then the cut.
    let mut offsets = Vec::new();
    let mut texts = Vec::new();
    let closing = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match slow.next().await {
                Next::Frame(f) if f.opcode == OP_TEXT => {
                    let v = f.json();
                    if v["type"] == "message" {
                        offsets.push(v["offset"].as_u64().unwrap());
                    } else {
                        texts.push(v);
                    }
                }
                Next::Frame(f) if f.opcode == OP_PING => {}
                Next::Frame(f) if f.opcode == OP_CLOSE => return Some(f.close_code()),
                Next::Frame(f) => panic!("unexpected frame {f:?}"),
                Next::Eof => return None,
            }
        }
    })
    .await
    .expect("the slow consumer's connection was never closed");
    assert!(
        offsets.len() < N,
        "the slow consumer was cut before the end"
    );
    for (i, o) in offsets.iter().enumerate() {
        assert_eq!(
            *o,
            head + 1 + i as u64,
            "slow consumer's prefix is in order"
        );
    }
    if let Some(code) = closing {
        assert_eq!(code, Some(4001), "close code of a slow consumer");
        let d = texts.last().expect("disconnect before the close");
        assert_eq!(d["type"], "disconnect", "{texts:?}");
        assert_eq!(
            (d["code"].as_u64(), d["reconnect"].as_bool()),
            (Some(4001), Some(true))
        );
    }
    eprintln!(
        "slow consumer: {} messages buffered before the cut, close {:?}; {N} publishes in {publish_time:?}",
        offsets.len(),
        closing
    );

    // The good subscriber is still subscribed and live.
    let mut good = good;
    publisher.publish("firehose", json!({"i": N})).await;
    assert_eq!(good.next_message().await["data"]["i"], N);
}

// ---------------------------------------------------------------------------------------------------------
// Nesting depth
// ---------------------------------------------------------------------------------------------------------

fn nested_arrays(depth: usize) -> Value {
    (0..depth).fold(json!(1), |v, _| json!([v]))
}

fn nested_maps(depth: usize) -> Value {
    (0..depth).fold(json!(1), |v, _| json!({"k": v}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_deeper_than_max_depth_is_bad_request_in_both_encodings() {
    let (mut cfg, _dir) = test_config();
    cfg.limits.max_depth = 8;
    let node = start(cfg);
    for enc in [Enc::Json, Enc::Msgpack] {
        let mut c = Client::connect(&node.ws_url(), enc).await;
        for nest in [nested_arrays as fn(usize) -> Value, nested_maps] {
            // The frame object counts as 1: data nested 7 deep is exactly the limit.
            c.send(json!({"v": 1, "type": "publish", "id": "at-limit", "channel": "deep", "data": nest(7)}))
                .await;
            let r = c.next_frame().await;
            assert_eq!(
                r["type"], "reply",
                "{enc:?}: depth 8 is allowed (max_depth 8): {r}"
            );
            // One level more is refused. (The error's `id` is not checked: the depth check runs before
            // the id is read, so it is `null`.)
            c.send(json!({"v": 1, "type": "publish", "id": "too-deep", "channel": "deep", "data": nest(8)}))
                .await;
            let r = c.next_frame().await;
            assert_eq!(r["type"], "error", "{enc:?}: {r}");
            assert_eq!(r["code"], "bad_request", "{enc:?}: {r}");
            // Depth hidden in an ignored extra field counts as well.
            c.send(json!({"v": 1, "type": "ping", "id": "extra", "extra": nest(20)}))
                .await;
            let r = c.next_frame().await;
            assert_eq!(r["code"], "bad_request", "{enc:?}: {r}");
            let r = c.request(json!({"type": "ping"})).await;
            assert_eq!(r["type"], "reply", "{enc:?}: {r}");
        }
        // Absurd depth sent raw (no stack overflow on the server).
        let raw = match enc {
            Enc::Json => Message::Text(
                format!(
                    r#"{{"v":1,"type":"publish","id":99,"channel":"deep","data":{}1{}}}"#,
                    "[".repeat(30_000),
                    "]".repeat(30_000)
                )
                .into(),
            ),
            Enc::Msgpack => {
                let mut b = vec![0x91u8; 60_000];
                b.push(0xc0);
                Message::Binary(b.into())
            }
        };
        c.send_raw(raw).await;
        let f = c.next_frame().await;
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{f}"
        );
        let r = c.request(json!({"type": "ping"})).await;
        assert_eq!(
            r["type"], "reply",
            "{enc:?}: connection stays after deep frames: {r}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// A client that stops reading does not keep its socket
// ---------------------------------------------------------------------------------------------------------

/// Server-side ESTABLISHED sockets on `server_port` whose peer is `peer_port` (from /proc/net/tcp).
fn established(server_port: u16, peer_port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = |field: &str| {
        field
            .split(':')
            .nth(1)
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && port(f[1]) == Some(server_port)
                && port(f[2]) == Some(peer_port)
                && f[3] == "01"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_socket_not_just_its_session() {
    let (mut cfg, _dir) = slow_consumer_config();
    cfg.session.heartbeat_ms = 300;
    cfg.session.heartbeat_timeout_ms = 1500;
    let node = start(cfg);
    let addr = addr_of(&node);
    let (slow, _, local_port) = stalled_subscriber(addr, "hose").await;
    assert_eq!(established(addr.port(), local_port), 1);
    // 8 MB towards a client that reads nothing more.
    let mut publisher = Client::connect(&node.ws_url(), Enc::Msgpack).await;
    let pad = "x".repeat(4000);
    let (mut sent, mut acked) = (0, 0);
    while acked < 2000 {
        while sent < 2000 && sent - acked < 8 {
            publisher
                .send(json!({"v": 1, "type": "publish", "id": sent, "channel": "hose", "data": {"pad": pad}}))
                .await;
            sent += 1;
        }
        assert_eq!(publisher.next_frame().await["type"], "reply");
        acked += 1;
    }
    eventually("the slow session is gone", || {
        node.node().sessions.len() == 1
    })
    .await;
    // The kernel gives up on the zero-window peer after the heartbeat timeout (TCP_USER_TIMEOUT).
    let deadline = Instant::now() + Duration::from_secs(15);
    while established(addr.port(), local_port) > 0 {
        assert!(
            Instant::now() < deadline,
            "the server still holds the socket of a client that stopped reading"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(slow);
}
