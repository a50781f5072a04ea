//! `herald_slow_consumer_disconnects_total` counts sessions, not channels: a subscriber of several busy
//! channels that stops reading is cut once and counted once, although every channel finds it behind for
//! longer than `session.max_lag_ms`.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_by_several_channels_counts_once() {
    let (mut cfg, _dir) = test_config();
    // A subscriber behind for more than 300 ms is cut, by each of its channels.
    cfg.session.max_lag_ms = 300;
    cfg.limits.messages_per_second = 1_000_000;
    cfg.limits.messages_burst = 1_000_000;
    let node = start(cfg);
    let stats = &node.node().stats;

    // A subscriber of three channels with a tiny receive buffer that never reads.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(node.client_addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(node.ws_url(), stream)
        .await
        .unwrap();
    for (i, ch) in ["busy:a", "busy:b", "busy:c"].iter().enumerate() {
        let cmd = json!({"v":1,"type":"subscribe","id":i,"channel":ch});
        slow.send(Message::Text(cmd.to_string().into()))
            .await
            .unwrap();
    }
    eventually("three subscriptions", || {
        stats.subscriptions.load(Ordering::Relaxed) == 3
    })
    .await;

    // Three publishers flood the three channels at once (pipelined), so the channels, on different
    // threads, find the outbox full at about the same time.
    let mut floods = Vec::new();
    for ch in ["busy:a", "busy:b", "busy:c"] {
        let url = node.ws_url();
        floods.push(tokio::spawn(async move {
            let mut p = Client::connect(&url, Enc::Msgpack).await;
            let pad = "x".repeat(4000);
            for i in 0..600 {
                p.send(
                    json!({"v":1,"type":"publish","id":i,"channel":ch,"data":{"i":i,"pad":pad}}),
                )
                .await;
            }
            for _ in 0..600 {
                let f = p.next_frame().await;
                assert_eq!(f["type"], "reply", "{f}");
            }
        }));
    }
    for f in floods {
        f.await.unwrap();
    }
    eventually("the stalled subscriber was cut", || {
        stats.subscriptions.load(Ordering::Relaxed) == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stats.slow_consumers.load(Ordering::Relaxed),
        1,
        "one session was cut: one count"
    );
    drop(slow);
}
