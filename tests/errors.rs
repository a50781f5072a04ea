//! Every error code a client can provoke, each followed by proof that the connection still works.

mod common;

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn still_usable(c: &mut Client) {
    let r = c.request(json!({"type": "ping"})).await;
    assert_eq!(r["type"], "reply", "connection still usable: {r}");
}

fn assert_error(r: &serde_json::Value, code: &str) {
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["code"], code, "{r}");
    assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
    assert_eq!(r["v"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_code_is_reachable_and_the_connection_survives() {
    let (mut cfg, _dir) = test_config();
    cfg.namespaces.insert(
        "feed".into(),
        herald::config::NamespaceOverrides {
            allow_publish: Some(false),
            presence: Some(false),
            ..Default::default()
        },
    );
    cfg.limits.max_publish_bytes = 1024;
    cfg.limits.max_subscriptions_per_connection = 3;
    cfg.limits.max_channels = 5;
    let node = start(cfg);
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;

    // bad_request: not an object (no readable id -> id null), bad channel name, missing field.
    c.send_raw(Message::Text("[1,2,3]".into())).await;
    let r = c.next_frame().await;
    assert_error(&r, "bad_request");
    assert!(r["id"].is_null());
    c.send_raw(Message::Text("{not json".into())).await;
    assert_error(&c.next_frame().await, "bad_request");
    let r = c
        .request(json!({"type": "subscribe", "channel": "has space"}))
        .await;
    assert_error(&r, "bad_request");
    let r = c.request(json!({"type": "publish", "channel": "a"})).await;
    assert_error(&r, "bad_request");
    let r = c
        .request(json!({"type": "subscribe", "channel": "x".repeat(200)}))
        .await;
    assert_error(&r, "bad_request");
    // Binary frame on a JSON connection.
    c.send_raw(Message::Binary(vec![0x80].into())).await;
    assert_error(&c.next_frame().await, "bad_request");
    still_usable(&mut c).await;

    // unknown_type, unsupported_version (id echoed).
    let r = c.request(json!({"type": "teleport"})).await;
    assert_error(&r, "unknown_type");
    c.send(json!({"v": 2, "type": "ping", "id": "abc"})).await;
    let r = c.next_frame().await;
    assert_error(&r, "unsupported_version");
    assert_eq!(r["id"], "abc");
    still_usable(&mut c).await;

    // forbidden: publishing and presence disabled in namespace `feed`.
    let r = c
        .request(json!({"type": "publish", "channel": "feed:x", "data": 1}))
        .await;
    assert_error(&r, "forbidden");
    let r = c
        .request(json!({"type": "presence", "channel": "feed:x"}))
        .await;
    assert_error(&r, "forbidden");
    still_usable(&mut c).await;

    // not_subscribed, already_subscribed.
    let r = c
        .request(json!({"type": "unsubscribe", "channel": "a"}))
        .await;
    assert_error(&r, "not_subscribed");
    c.subscribe("a").await;
    let r = c
        .request(json!({"type": "subscribe", "channel": "a"}))
        .await;
    assert_error(&r, "already_subscribed");
    still_usable(&mut c).await;

    // too_large.
    let r = c
        .request(json!({"type": "publish", "channel": "a", "data": "x".repeat(2000)}))
        .await;
    assert_error(&r, "too_large");
    still_usable(&mut c).await;

    // too_many_subscriptions (limit 3; "a" is one).
    c.subscribe("b").await;
    c.subscribe("c").await;
    let r = c
        .request(json!({"type": "subscribe", "channel": "d"}))
        .await;
    assert_error(&r, "too_many_subscriptions");
    still_usable(&mut c).await;

    // unavailable: the node's channel limit (5) is reached; retry advice is given. Channels `a`-`c` are
    // active; publishing starts no channel actor (the applier writes without one), subscribing does.
    let mut other = Client::connect(&node.ws_url(), Enc::Json).await;
    other.publish("n0", json!(0)).await;
    let mut last = json!(null);
    for i in 1..4 {
        last = other
            .request(json!({"type": "subscribe", "channel": format!("n{i}")}))
            .await;
    }
    assert_error(&last, "unavailable");
    assert!(last["retry_after_ms"].as_u64().unwrap() > 0, "{last}");
    still_usable(&mut other).await;
    still_usable(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_with_retry_advice() {
    let (mut cfg, _dir) = test_config();
    cfg.limits.messages_per_second = 5;
    cfg.limits.messages_burst = 5;
    let node = start(cfg);
    let mut c = Client::connect(&node.ws_url(), Enc::Msgpack).await;
    for i in 0..20 {
        c.send(json!({"v": 1, "type": "ping", "id": i})).await;
    }
    let mut limited = None;
    for _ in 0..20 {
        let f = c.next_frame().await;
        if f["type"] == "error" {
            limited = Some(f);
        }
    }
    let f = limited.expect("some frames were rate limited");
    assert_error(&f, "rate_limited");
    assert!(f["retry_after_ms"].as_u64().unwrap() > 0);
    assert!(
        f["id"].is_null(),
        "a frame over the rate limit is refused before it is decoded, so its id is not read: {f}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    still_usable(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_garbage_closes_with_4000() {
    let (mut cfg, _dir) = test_config();
    cfg.limits.max_bad_frames = 3;
    let node = start(cfg);
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    for _ in 0..3 {
        c.send_raw(Message::Text("garbage".into())).await;
    }
    let mut saw_disconnect = false;
    loop {
        match c.next_event().await {
            Event::Frame(f) if f["type"] == "disconnect" => {
                assert_eq!(f["code"], 4000);
                assert_eq!(f["reconnect"], false);
                saw_disconnect = true;
            }
            Event::Frame(f) => assert_error(&f, "bad_request"),
            Event::Closed(code) => {
                assert_eq!(code, Some(4000));
                break;
            }
        }
    }
    assert!(saw_disconnect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_closes_with_1009() {
    let (mut cfg, _dir) = test_config();
    cfg.limits.max_frame_bytes = 4096;
    let node = start(cfg);
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    c.send_raw(Message::Text("x".repeat(10_000).into())).await;
    loop {
        match c.next_event().await {
            Event::Frame(f) => assert_eq!(f["type"], "disconnect", "{f}"),
            Event::Closed(code) => {
                assert_eq!(code, Some(1009));
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_binary_data_reaches_json_subscribers_as_byte_array() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    let mut sub = Client::connect(&node.ws_url(), Enc::Json).await;
    sub.subscribe("bin").await;
    let mut p = Client::connect(&node.ws_url(), Enc::Msgpack).await;
    // Hand-built msgpack frame with a bin8 value in data.
    let mut frame = Vec::new();
    rmpv::encode::write_value(
        &mut frame,
        &rmpv::Value::Map(vec![
            ("v".into(), 1.into()),
            ("type".into(), "publish".into()),
            ("id".into(), 1.into()),
            ("channel".into(), "bin".into()),
            ("data".into(), rmpv::Value::Binary(vec![0, 255, 7])),
        ]),
    )
    .unwrap();
    p.send_raw(Message::Binary(frame.into())).await;
    let m = sub.next_message().await;
    assert_eq!(m["data"], json!([0, 255, 7]));
    // Non-string map keys cannot cross to JSON and are refused.
    let mut frame = Vec::new();
    rmpv::encode::write_value(
        &mut frame,
        &rmpv::Value::Map(vec![
            ("v".into(), 1.into()),
            ("type".into(), "publish".into()),
            ("id".into(), 2.into()),
            ("channel".into(), "bin".into()),
            ("data".into(), rmpv::Value::Map(vec![(1.into(), 2.into())])),
        ]),
    )
    .unwrap();
    p.send_raw(Message::Binary(frame.into())).await;
    loop {
        let f = p.next_frame().await;
        if f["id"] == 2 {
            assert_error(&f, "bad_request");
            break;
        }
    }
}
