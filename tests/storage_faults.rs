//! A node whose storage fails at runtime: a failed flush, or a dead flusher thread.
//!
//! After either, nobody can say which writes since the last good flush are on disk. The node must not
//! acknowledge or deliver the publishes that waited for that flush, must refuse later publishes with
//! `unavailable` (so a retry cannot store a message twice), and must report not ready. The fault is
//! injected into the real store's flusher (`Store::inject_flush_fault`); everything else is real.

mod common;

use std::time::Duration;

use common::http::http;
use common::{start, test_config, Client, Enc, Event};
use herald::history::FlushFault;
use serde_json::json;

/// Status code of `GET /readyz` on the admin listener.
async fn readyz(addr: std::net::SocketAddr) -> u16 {
    http(addr, "GET", "/readyz", None, None).await.status
}

async fn refuses_writes_after(fault: FlushFault) {
    let (mut cfg, _dir) = test_config();
    cfg.storage.group_commit_ms = 50;
    let node = start(cfg);
    let url = node.ws_url();
    let mut sub = Client::connect(&url, Enc::Json).await;
    sub.subscribe("fault:a").await;
    let mut publisher = Client::connect(&url, Enc::Msgpack).await;
    publisher.publish("fault:a", json!("before")).await;
    assert_eq!(sub.next_message().await["data"], "before");
    assert_eq!(readyz(node.admin_addr).await, 200);

    node.node().store.inject_flush_fault(fault);
    let failed = publisher
        .request(json!({"type": "publish", "channel": "fault:a", "data": "lost?"}))
        .await;
    assert_eq!(failed["type"], "error", "{failed}");
    assert_eq!(failed["code"], "unavailable", "{failed}");
    let later = publisher
        .request(json!({"type": "publish", "channel": "fault:a", "data": "after", "key": "k"}))
        .await;
    assert_eq!(
        later["code"], "unavailable",
        "no write is accepted any more: {later}"
    );
    assert_eq!(
        readyz(node.admin_addr).await,
        503,
        "not ready once storage failed"
    );

    // Nothing that was not acknowledged is delivered; the subscriber stays connected.
    match tokio::time::timeout(Duration::from_millis(500), sub.next_event()).await {
        Err(_) => {}
        Ok(Event::Frame(f)) => assert_ne!(f["type"], "message", "unacknowledged delivery: {f}"),
        Ok(Event::Closed(c)) => panic!("subscriber closed ({c:?})"),
    }
    let h = sub
        .ok(json!({"type": "history", "channel": "fault:a"}))
        .await;
    assert_eq!(
        h["messages"][0]["data"], "before",
        "reads keep working: {h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_stops_writes_and_readiness() {
    refuses_writes_after(FlushFault::Error).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_flusher_stops_writes_and_readiness() {
    refuses_writes_after(FlushFault::Panic).await;
}
