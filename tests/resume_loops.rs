//! A subscriber that unsubscribes and resubscribes with `since` again and again while a long catch-up
//! (replay) runs and others keep publishing: every message arrives once, in order, and nothing of an ended
//! subscription arrives after its `unsubscribe` reply.
//!
//! Before replays had tickets, an old replay kept sending after `unsubscribe`, and its end cut the new
//! subscription's replay short: messages arrived doubled and out of order.

mod common;

use common::*;
use serde_json::{json, Value};

/// Checks one `message` frame against the last offset seen and returns its offset.
fn next_in_order(f: &Value, last: u64) -> u64 {
    let off = f["offset"].as_u64().expect("offset");
    assert_eq!(off, last + 1, "out of order or doubled after {last}: {f}");
    off
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_resubscribe_loop_during_catch_up_keeps_order() {
    let (mut cfg, _dir) = test_config();
    cfg.limits.messages_per_second = 100_000;
    cfg.limits.messages_burst = 100_000;
    cfg.namespaces.get_mut("default").unwrap().history_size = Some(100_000);
    let node = start(cfg);
    let url = node.ws_url();
    let channel = "loop:a";
    let mut publisher = Client::connect(&url, Enc::Msgpack).await;
    let pad = "p".repeat(512);
    let mut epoch = String::new();
    for i in 0..3000 {
        let r = publisher
            .publish(channel, json!({"i": i, "pad": pad}))
            .await;
        epoch = r["epoch"].as_str().unwrap().to_string();
    }
    // More messages keep arriving during the loop.
    let live = tokio::spawn(async move {
        for i in 3000..3500 {
            publisher.publish(channel, json!({"i": i})).await;
        }
    });

    let mut c = Client::connect(&url, Enc::Json).await;
    let mut last = 0u64;
    let mut id = 0u64;
    for round in 0..25 {
        id += 1;
        let since = json!({"epoch": epoch, "offset": last});
        c.send(json!({"v":1,"type":"subscribe","id":id,"channel":channel,"since":since}))
            .await;
        // Nothing of the previous subscription may come between its end and this reply.
        let reply = c.next_frame().await;
        assert_eq!(reply["type"], "reply", "round {round}: {reply}");
        assert_eq!(reply["id"], id);
        assert_eq!(reply["result"]["recovered"], true, "{reply}");
        // Read a little of the catch-up, then leave in the middle of it. (A catch-up runs at the speed
        // the socket drains, so whatever was sent before the `unsubscribe` reply arrives below; once
        // caught up, a round reads what is there.)
        let head = reply["result"]["offset"].as_u64().expect("offset");
        for _ in 0..40 {
            if last >= head {
                break;
            }
            let f = c.next_frame().await;
            assert_eq!(f["type"], "message", "{f}");
            last = next_in_order(&f, last);
        }
        id += 1;
        c.send(json!({"v":1,"type":"unsubscribe","id":id,"channel":channel}))
            .await;
        loop {
            let f = c.next_frame().await;
            if f["type"] == "reply" && f["id"] == id {
                break;
            }
            // Messages queued before the unsubscribe took effect are fine, in order.
            assert_eq!(f["type"], "message", "{f}");
            last = next_in_order(&f, last);
        }
    }
    live.await.unwrap();
    // A last subscription catches up to the end.
    id += 1;
    let since = json!({"epoch": epoch, "offset": last});
    let r = c
        .ok(json!({"type":"subscribe","id":id,"channel":channel,"since":since}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    while last < 3500 {
        let f = c.next_message().await;
        last = next_in_order(&f, last);
    }
}
