//! The node's core cases on a log that misbehaves on purpose: it delays commits, hands committed entries
//! to the applier twice and in bursts, and refuses every seventh proposal. Ordering, exactly-once delivery,
//! idempotency and resume must hold all the same, because the applier skips positions it applied and
//! decides idempotency from the entries themselves.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use herald::cluster::{Committed, Entry, LocalLog, Log, LogError, Position, Proposal};
use herald::server::spawn_with_log;
use serde_json::{json, Value};

/// A [`LocalLog`] that delays, re-delivers and fails.
struct FlakyLog {
    inner: LocalLog,
    proposals: AtomicU64,
}

impl Log for FlakyLog {
    fn shards(&self) -> u32 {
        self.inner.shards()
    }

    fn propose(&self, entry: Entry) -> Proposal {
        let n = self.proposals.fetch_add(1, Ordering::Relaxed);
        if n % 7 == 6 {
            return Box::pin(async { Err(LogError::Unavailable("flaky log refused".into())) });
        }
        let committed = self.inner.propose(entry);
        Box::pin(async move {
            // Commits come late, and in bursts: the applier sees several at once.
            tokio::time::sleep(Duration::from_millis(n % 4)).await;
            committed.await
        })
    }

    fn follow(&self, after: &[u64]) -> Committed {
        self.inner
            .follow(after)
            .flat_map(|item| futures_util::stream::iter([item.clone(), item]))
            .then(|item| async move {
                if let Ok(c) = &item {
                    if c.position.index % 16 == 0 {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                }
                item
            })
            .boxed()
    }

    fn applied(&self, position: Position) {
        self.inner.applied(position)
    }
}

fn start_flaky() -> (herald::server::RunningNode, tempfile::TempDir) {
    let (mut cfg, dir) = test_config();
    cfg.limits.messages_per_second = 100_000;
    cfg.limits.messages_burst = 100_000;
    let node = spawn_with_log(
        cfg,
        Box::new(|store| {
            Ok(Arc::new(FlakyLog {
                inner: LocalLog::open(store.clone())?,
                proposals: AtomicU64::new(0),
            }) as Arc<dyn Log>)
        }),
    )
    .expect("node starts");
    (node, dir)
}

/// Publishes until the log takes it (a refused proposal is `unavailable`, and was not written).
async fn publish_retrying(c: &mut Client, cmd: Value) -> Value {
    loop {
        let r = c.request(cmd.clone()).await;
        if r["type"] == "reply" {
            return r["result"].clone();
        }
        assert_eq!(r["code"], "unavailable", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_and_exactly_once_hold_on_a_flaky_log() {
    let (node, _dir) = start_flaky();
    let url = node.ws_url();
    let mut subs = Vec::new();
    for enc in [Enc::Json, Enc::Msgpack] {
        let mut s = Client::connect(&url, enc).await;
        s.subscribe("flaky").await;
        subs.push(s);
    }
    const N: u64 = 300;
    let mut publishers = Vec::new();
    for p in 0..2u64 {
        let url = url.clone();
        publishers.push(tokio::spawn(async move {
            let mut c = Client::connect(&url, Enc::Json).await;
            for i in 0..N {
                c.send(
                    json!({"v":1,"type":"publish","id":i,"channel":"flaky","data":{"p":p,"i":i}}),
                )
                .await;
            }
            let mut accepted = Vec::new();
            for _ in 0..N {
                let f = c.next_frame().await;
                match f["type"].as_str() {
                    Some("reply") => accepted.push(f["id"].as_u64().unwrap()),
                    _ => assert_eq!(f["code"], "unavailable", "{f}"),
                }
            }
            // Replies may come in any order (commits are delayed at random); the publisher's order is
            // the order it sent in.
            accepted.sort_unstable();
            accepted
        }));
    }
    let mut accepted = Vec::new();
    for p in publishers {
        accepted.push(p.await.unwrap());
    }
    let total: usize = accepted.iter().map(Vec::len).sum();
    assert!(
        total < 2 * N as usize,
        "the flaky log refused some proposals"
    );
    let mut orders = Vec::new();
    for s in subs.iter_mut() {
        let mut last_offset = 0;
        let mut got: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        let mut ids = Vec::new();
        for _ in 0..total {
            let m = s.next_message().await;
            let off = m["offset"].as_u64().unwrap();
            assert!(
                off > last_offset,
                "offsets strictly increase: {off} after {last_offset}"
            );
            last_offset = off;
            let p = m["data"]["p"].as_u64().unwrap() as usize;
            got[p].push(m["data"]["i"].as_u64().unwrap());
            ids.push(m["id"].as_str().unwrap().to_string());
        }
        for p in 0..2 {
            assert_eq!(
                got[p], accepted[p],
                "publisher {p}: exactly its accepted messages, in its order"
            );
        }
        orders.push(ids);
    }
    assert_eq!(orders[0], orders[1], "every subscriber sees one order");
    // Nothing more arrives: the doubled deliveries of the log were applied once.
    match tokio::time::timeout(Duration::from_millis(300), subs[0].next_event()).await {
        Err(_) => {}
        Ok(e) => panic!("unexpected frame after the last message: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_and_resume_hold_on_a_flaky_log() {
    let (node, _dir) = start_flaky();
    let url = node.ws_url();
    let mut c = Client::connect(&url, Enc::Msgpack).await;
    let keyed = json!({"type":"publish","channel":"flaky:k","data":"once","key":"k1"});
    let first = publish_retrying(&mut c, keyed.clone()).await;
    for _ in 0..10 {
        let again = publish_retrying(&mut c, keyed.clone()).await;
        assert_eq!(again, first, "a retried key answers the first position");
    }
    let mut last = first.clone();
    for i in 0..40 {
        last = publish_retrying(
            &mut c,
            json!({"type":"publish","channel":"flaky:k","data":i}),
        )
        .await;
    }
    let h = c
        .ok(json!({"type":"history","channel":"flaky:k","limit":1000}))
        .await;
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 41, "the keyed message is stored once: {h}");
    assert_eq!(msgs[0]["data"], "once");

    // A subscriber resuming from the keyed message gets exactly the 40 after it.
    let mut s = Client::connect(&url, Enc::Json).await;
    let since = json!({"epoch": first["epoch"], "offset": first["offset"]});
    let r = s
        .ok(json!({"type":"subscribe","channel":"flaky:k","since":since}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["offset"], last["offset"], "{r}");
    for i in 0..40 {
        let m = s.next_message().await;
        assert_eq!(m["data"], i, "{m}");
    }
}
