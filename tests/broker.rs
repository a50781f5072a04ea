//! Core broker behaviour over real sockets: welcome, subscribe/publish in both encodings, ordering under
//! concurrency, cleanup on disconnect, subprotocol negotiation, graceful shutdown.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use futures_util::StreamExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_then_subscribe_publish_receive_in_both_encodings() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    for (pub_enc, sub_enc) in [
        (Enc::Json, Enc::Json),
        (Enc::Msgpack, Enc::Msgpack),
        (Enc::Json, Enc::Msgpack),
        (Enc::Msgpack, Enc::Json),
    ] {
        let channel = format!("room:{pub_enc:?}-{sub_enc:?}");
        let mut sub = Client::connect(&node.ws_url(), sub_enc).await;
        let w = &sub.welcome;
        assert_eq!(w["v"], 1);
        assert!(w["ts"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(w["session"].is_string() && w["node"].is_string());
        assert!(w["heartbeat_ms"].as_u64().unwrap() > 0);
        let expected_enc = if sub_enc == Enc::Json {
            "json"
        } else {
            "msgpack"
        };
        assert_eq!(w["encoding"], expected_enc);
        let s = sub.subscribe(&channel).await;
        assert_eq!(s["channel"], channel.as_str());
        assert_eq!(s["offset"], 0);
        let epoch = s["epoch"].clone();

        let mut publisher = Client::connect(&node.ws_url(), pub_enc).await;
        let data = json!({"text": "hi", "n": [1, 2.5, null, true], "nested": {"k": "v"}});
        let p = publisher.publish(&channel, data.clone()).await;
        assert_eq!(p["offset"], 1);
        assert_eq!(p["epoch"], epoch);
        let m = sub.next_message().await;
        assert_eq!(m["v"], 1);
        assert_eq!(m["channel"], channel.as_str());
        assert_eq!(m["data"], data);
        assert_eq!(m["offset"], 1);
        assert_eq!(m["epoch"], epoch);
        assert_eq!(m["id"], p["id"]);
        assert!(m["ts"].is_u64());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishers_two_subscribers_same_order_no_loss() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    const N: u64 = 1000;
    let url = node.ws_url();
    let mut subs = Vec::new();
    for enc in [Enc::Json, Enc::Msgpack] {
        let mut s = Client::connect(&url, enc).await;
        s.subscribe("load").await;
        subs.push(s);
    }
    let mut pubs = Vec::new();
    for p in 0..2u64 {
        let url = url.clone();
        pubs.push(tokio::spawn(async move {
            let mut c = Client::connect(&url, Enc::Json).await;
            // Pipeline the publishes, then collect replies.
            for i in 0..N {
                c.send(
                    json!({"v":1,"type":"publish","id":i,"channel":"load","data":{"p":p,"i":i}}),
                )
                .await;
            }
            let mut replies = 0;
            while replies < N {
                let f = c.next_frame().await;
                assert_eq!(f["type"], "reply", "{f}");
                replies += 1;
            }
        }));
    }
    let mut orders = Vec::new();
    for s in subs.iter_mut() {
        let mut seen = Vec::new();
        let mut last_offset = 0;
        let mut next_i = [0u64; 2];
        while seen.len() < (2 * N) as usize {
            let m = s.next_message().await;
            let off = m["offset"].as_u64().unwrap();
            assert_eq!(
                off,
                last_offset + 1,
                "offsets strictly increase without gaps"
            );
            last_offset = off;
            let p = m["data"]["p"].as_u64().unwrap() as usize;
            let i = m["data"]["i"].as_u64().unwrap();
            assert_eq!(
                i, next_i[p],
                "each publisher's messages arrive in its order, once"
            );
            next_i[p] += 1;
            seen.push(m["id"].as_str().unwrap().to_string());
        }
        orders.push(seen);
    }
    assert_eq!(orders[0], orders[1], "both subscribers see the same order");
    for p in pubs {
        p.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_cleans_up_sessions_and_subscriptions() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    let stats = &node.node().stats;
    let mut clients = Vec::new();
    for i in 0..40 {
        let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
        c.subscribe(&format!("c:{}", i % 7)).await;
        c.subscribe("all").await;
        clients.push(c);
    }
    assert_eq!(stats.sessions.load(Ordering::Relaxed), 40);
    assert_eq!(stats.subscriptions.load(Ordering::Relaxed), 80);
    // Half close politely, half just drop the TCP connection.
    for (i, mut c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            c.ws.close(None).await.unwrap();
            while c.ws.next().await.is_some() {}
        } else {
            drop(c);
        }
    }
    eventually("0 sessions and 0 subscriptions", || {
        stats.sessions.load(Ordering::Relaxed) == 0
            && stats.subscriptions.load(Ordering::Relaxed) == 0
            && node.node().sessions.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_subprotocol_is_refused_with_400() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    let resp = raw_handshake(node.client_addr, "Sec-WebSocket-Protocol: mqtt, stomp\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(
        resp.contains("herald.v1.json") && resp.contains("herald.v1.msgpack"),
        "{resp}"
    );
    // No subprotocol at all means JSON.
    let resp = raw_handshake(node.client_addr, "").await;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    assert!(
        !resp.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{resp}"
    );
    // permessage-deflate is never negotiated.
    let resp = raw_handshake(
        node.client_addr,
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    assert!(
        !resp.to_ascii_lowercase().contains("permessage-deflate"),
        "{resp}"
    );
}

/// Sends a hand-written upgrade request and returns the response head.
async fn raw_handshake(addr: std::net::SocketAddr, extra: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    // Read the body of an error response too, if any arrives promptly.
    if let Ok(Ok(n)) =
        tokio::time::timeout(std::time::Duration::from_millis(200), s.read(&mut buf)).await
    {
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_sends_disconnect_and_closes_with_1001() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    let mut a = Client::connect(&node.ws_url(), Enc::Json).await;
    let mut b = Client::connect(&node.ws_url(), Enc::Msgpack).await;
    a.subscribe("x").await;
    let stopper = tokio::task::spawn_blocking(move || node.shutdown());
    for c in [&mut a, &mut b] {
        let f = c.next_frame().await;
        assert_eq!(f["type"], "disconnect", "{f}");
        assert_eq!(f["code"], 1001);
        assert_eq!(f["reconnect"], true);
        match c.next_event().await {
            Event::Closed(code) => assert_eq!(code, Some(1001)),
            Event::Frame(f) => panic!("expected close, got {f}"),
        }
    }
    stopper.await.unwrap().expect("clean shutdown");
}

/// Frames bigger than the writer's 8 KiB slices, interleaved with small ones, arrive whole and in order in
/// both encodings (a frame is handed to the socket in pieces; nothing may be cut or reordered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_small_messages_arrive_whole_and_in_order() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    let sizes = [10usize, 30_000, 100, 8_190, 8_200, 16_400, 1, 25_000, 3];
    for enc in [Enc::Json, Enc::Msgpack] {
        let channel = format!("big:{enc:?}");
        let mut sub = Client::connect(&node.ws_url(), enc).await;
        sub.subscribe(&channel).await;
        let mut publisher = Client::connect(&node.ws_url(), Enc::Json).await;
        for (i, n) in sizes.iter().enumerate() {
            let text: String = (0..*n)
                .map(|k| char::from(b'a' + ((k + i) % 26) as u8))
                .collect();
            publisher
                .publish(&channel, json!({"i": i, "text": text}))
                .await;
        }
        for (i, n) in sizes.iter().enumerate() {
            let m = sub.next_message().await;
            assert_eq!(m["data"]["i"], i, "{enc:?}: message {i} out of order");
            let text = m["data"]["text"].as_str().unwrap();
            assert_eq!(text.len(), *n, "{enc:?}: message {i}");
            assert!(text
                .bytes()
                .enumerate()
                .all(|(k, b)| b == b'a' + ((k + i) % 26) as u8));
        }
    }
}
