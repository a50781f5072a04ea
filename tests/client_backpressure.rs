//! herald-client's buffers are bounded: an application that stops reading its subscription makes the
//! client stop reading the socket (the server then sees a subscriber falling behind) instead of buffering
//! without limit, and once the application reads again it gets every message exactly once, in order.
//! Changed on purpose with subscriber cursors: the server no longer cuts the paused client (4001) and
//! makes it resume; it keeps its place and lets it catch up (it would cut it only after
//! `session.max_lag_ms`, tested in tests/hardening.rs).

mod client_support;
mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use client_support::{assert_exactly_once, fast, next_message};
use herald_client::{Client, ClientOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_application_is_backpressure_not_memory() {
    let (mut cfg, _dir) = common::test_config();
    cfg.session.outbox_bytes = 64 * 1024;
    cfg.limits.messages_per_second = 1_000_000;
    cfg.limits.messages_burst = 1_000_000;
    let node = common::start(cfg);
    let url = node.ws_url();
    let options = ClientOptions {
        event_buffer: 16,
        ..fast(50, 500, None)
    };
    let (sub_client, _states) = Client::connect(&url, herald_client::no_token(), options)
        .await
        .expect("connect subscriber");
    let mut sub = sub_client.subscribe("bp:a").await.expect("subscribe");
    let (pub_client, _ps) = Client::connect(&url, herald_client::no_token(), fast(50, 500, None))
        .await
        .expect("connect publisher");

    // The application pauses while 2,000 messages of 2 KB (4 MB) are published.
    const N: u64 = 2000;
    let pad = "p".repeat(2000);
    for i in 1..=N {
        pub_client
            .publish("bp:a", &json!({"i": i, "pad": pad}))
            .await
            .expect("publish");
    }
    let stats = &node.node().stats;
    common::eventually("the server sees the paused client falling behind", || {
        stats.catching_up.load(Ordering::Relaxed) >= 1
    })
    .await;

    // Reading again, the application gets every message once, in order.
    let mut got = Vec::new();
    while (got.len() as u64) < N {
        got.push(next_message(&mut sub, Duration::from_secs(20)).await);
    }
    assert_exactly_once(&got, N);
    assert_eq!(
        stats.slow_consumers.load(Ordering::Relaxed),
        0,
        "caught up without being cut"
    );
}
