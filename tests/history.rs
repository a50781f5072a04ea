//! History over real sockets and a real sled store on disk: resume with `since` (replay, seam under
//! concurrent publishing), retention by size and age (active channels and the sweeper), `recovered: false`,
//! idempotent publishing across restarts, a corrupt data dir, and `history` paging.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use herald::config::{Config, NamespaceOverrides};
use serde_json::{json, Value};

/// `test_config()` with a rate limit that pipelined test publishers never hit.
fn config() -> (Config, tempfile::TempDir) {
    let (mut c, dir) = test_config();
    c.limits.messages_per_second = 1_000_000;
    c.limits.messages_burst = 1_000_000;
    (c, dir)
}

fn namespace(c: &mut Config, name: &str, size: Option<u64>, ttl_secs: Option<u64>) {
    c.namespaces.insert(
        name.to_string(),
        NamespaceOverrides {
            history_size: size,
            history_ttl_secs: ttl_secs,
            ..Default::default()
        },
    );
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

/// Publishes `count` messages `{"i": first_i + k}` on `channel`, keeping up to `window` publishes in
/// flight, and returns the replies in request order as `(offset, id, epoch)`. `progress` counts replies.
async fn publish_pipelined(
    c: &mut Client,
    channel: &str,
    first_i: u64,
    count: u64,
    window: u64,
    progress: Option<&AtomicU64>,
) -> Vec<(u64, String, String)> {
    let mut replies: HashMap<u64, Value> = HashMap::new();
    let mut sent = 0u64;
    while (replies.len() as u64) < count {
        while sent < count && sent - replies.len() as u64 <= window {
            let req = json!({"v": 1, "type": "publish", "id": format!("p{sent}"), "channel": channel,
                             "data": {"i": first_i + sent}});
            let m = c.encode(&req);
            c.ws.send(m).await.expect("send publish");
            sent += 1;
        }
        let f = c.next_frame().await;
        assert_eq!(f["type"], "reply", "publish failed: {f}");
        let n: u64 = f["id"].as_str().unwrap()[1..].parse().unwrap();
        assert!(
            replies.insert(n, f["result"].clone()).is_none(),
            "two replies to one publish"
        );
        if let Some(p) = progress {
            p.fetch_add(1, Ordering::SeqCst);
        }
    }
    let out: Vec<_> = (0..count)
        .map(|n| {
            let r = &replies[&n];
            (
                u(&r["offset"]),
                r["id"].as_str().unwrap().to_string(),
                r["epoch"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for w in out.windows(2) {
        assert_eq!(
            w[1].0,
            w[0].0 + 1,
            "one publisher's messages get consecutive offsets"
        );
    }
    out
}

/// Sends a `subscribe` with `since` and returns the very next frame, which must be its reply (the
/// contract: the reply always comes before the first replayed message).
async fn resubscribe(c: &mut Client, channel: &str, epoch: &str, offset: u64) -> Value {
    assert!(c.backlog.is_empty());
    c.send(
        json!({"v": 1, "type": "subscribe", "id": "resub", "channel": channel,
                  "since": {"epoch": epoch, "offset": offset}}),
    )
    .await;
    let f = c.next_frame().await;
    assert_eq!(
        f["type"], "reply",
        "first frame after a resubscribe must be its reply: {f}"
    );
    assert_eq!(f["id"], "resub");
    f["result"].clone()
}

/// A round trip through the connection; returns every `message` frame that arrived before the answer.
/// Anything the channel had queued for this session before the ping is in the returned list.
async fn drain_messages(c: &mut Client) -> Vec<Value> {
    c.ok(json!({"type": "ping"})).await;
    let msgs: Vec<Value> = c
        .backlog
        .drain(..)
        .filter(|f| f["type"] == "message")
        .collect();
    msgs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_replays_exactly_the_missed_messages_then_live() {
    let (cfg, _dir) = config();
    let node = start(cfg);
    let url = node.ws_url();
    for enc in [Enc::Json, Enc::Msgpack] {
        let channel = format!("resume:{enc:?}");
        let mut publisher = Client::connect(&url, Enc::Json).await;

        // A subscriber sees a few messages and records its position, then goes away.
        let mut sub = Client::connect(&url, enc).await;
        let s = sub.subscribe(&channel).await;
        let epoch = s["epoch"].as_str().unwrap().to_string();
        assert_eq!(s["offset"], 0);
        assert!(
            s.get("recovered").is_none(),
            "a plain subscribe has no `recovered`: {s}"
        );
        publish_pipelined(&mut publisher, &channel, 0, 5, 4, None).await;
        let mut pos = 0;
        for k in 1..=5 {
            let m = sub.next_message().await;
            assert_eq!(u(&m["offset"]), k);
            pos = k;
        }
        drop(sub);

        // 500 messages are published while it is away.
        let missed = publish_pipelined(&mut publisher, &channel, 5, 500, 64, None).await;
        assert_eq!(missed[0].0, 6);
        assert!(missed.iter().all(|(_, _, e)| *e == epoch));

        let mut sub = Client::connect(&url, enc).await;
        let r = resubscribe(&mut sub, &channel, &epoch, pos).await;
        assert_eq!(r["recovered"], true, "{r}");
        assert_eq!(r["replayed"], 500, "{r}");
        assert_eq!(r["offset"], 505, "{r}");
        assert_eq!(r["epoch"], epoch.as_str());
        assert_eq!(r["channel"], channel.as_str());
        for (k, (offset, id, _)) in missed.iter().enumerate() {
            let m = sub.next_message().await;
            assert_eq!(
                u(&m["offset"]),
                *offset,
                "replay in offset order without gaps"
            );
            assert_eq!(m["id"], id.as_str(), "replayed message keeps its id");
            assert_eq!(m["epoch"], epoch.as_str());
            assert_eq!(m["channel"], channel.as_str());
            assert_eq!(m["data"], json!({"i": 5 + k as u64}));
        }
        // Nothing more was replayed.
        let extra = drain_messages(&mut sub).await;
        assert!(
            extra.is_empty(),
            "more than the 500 missed messages: {extra:?}"
        );

        // Live from 506 on, each once.
        let live = publish_pipelined(&mut publisher, &channel, 505, 5, 4, None).await;
        for (offset, id, _) in &live {
            let m = sub.next_message().await;
            assert_eq!(u(&m["offset"]), *offset);
            assert_eq!(m["id"], id.as_str());
        }
        assert_eq!(live.last().unwrap().0, 510);
        let extra = drain_messages(&mut sub).await;
        assert!(
            extra.is_empty(),
            "duplicates after live messages: {extra:?}"
        );

        // Resuming from the head replays nothing and still recovers.
        let mut sub2 = Client::connect(&url, enc).await;
        let r = resubscribe(&mut sub2, &channel, &epoch, 510).await;
        assert_eq!(
            (r["recovered"].clone(), r["replayed"].clone()),
            (json!(true), json!(0)),
            "{r}"
        );
        publish_pipelined(&mut publisher, &channel, 510, 1, 1, None).await;
        assert_eq!(u(&sub2.next_message().await["offset"]), 511);
        assert!(drain_messages(&mut sub2).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_while_others_publish_is_gap_and_duplicate_free() {
    let (mut cfg, _dir) = config();
    namespace(&mut cfg, "seam", Some(100_000), None);
    let node = start(cfg);
    let url = node.ws_url();
    let channel = "seam:x";
    const BEFORE: u64 = 50;
    const DURING: u64 = 4000;

    let mut publisher = Client::connect(&url, Enc::Json).await;
    let first = publish_pipelined(&mut publisher, channel, 0, BEFORE, 16, None).await;
    let epoch = first[0].2.clone();

    let progress = Arc::new(AtomicU64::new(0));
    let task = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let acks =
                publish_pipelined(&mut publisher, channel, BEFORE, DURING, 32, Some(&progress))
                    .await;
            acks
        })
    };

    // Resumers join at different moments of the publishing, from different positions, in both encodings.
    let plan: [(u64, u64, Enc); 4] = [
        (200, 0, Enc::Json),
        (800, BEFORE, Enc::Msgpack),
        (1500, 10, Enc::Json),
        (2500, 700, Enc::Msgpack),
    ];
    let mut resumers = Vec::new();
    for (at, since, enc) in plan {
        while progress.load(Ordering::SeqCst) < at {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut c = Client::connect(&url, enc).await;
        let r = resubscribe(&mut c, channel, &epoch, since).await;
        assert_eq!(r["recovered"], true, "{r}");
        let head_at_reply = u(&r["offset"]);
        assert_eq!(u(&r["replayed"]), head_at_reply - since, "{r}");
        resumers.push((c, since, head_at_reply));
    }
    let acks = task.await.unwrap();
    let last = BEFORE + DURING;
    assert_eq!(acks.last().unwrap().0, last);
    let mut ids: Vec<&str> = first.iter().map(|a| a.1.as_str()).collect();
    ids.extend(acks.iter().map(|a| a.1.as_str()));

    let mut concurrent = 0;
    for (c, since, head_at_reply) in resumers.iter_mut() {
        if *head_at_reply < last {
            concurrent += 1;
        }
        let mut expect = *since + 1;
        while expect <= last {
            let m = c.next_message().await;
            let off = u(&m["offset"]);
            assert_eq!(
                off, expect,
                "resumed from {since} (head {head_at_reply} at the reply): offsets must go up by exactly 1"
            );
            assert_eq!(
                m["id"],
                ids[(off - 1) as usize],
                "message {off} has its published id"
            );
            assert_eq!(m["data"], json!({"i": off - 1}));
            expect += 1;
        }
        let extra = drain_messages(c).await;
        assert!(
            extra.is_empty(),
            "duplicates after the last message: {extra:?}"
        );
    }
    assert!(
        concurrent >= 2,
        "the test must resubscribe while publishing is still going on (only {concurrent} did)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_by_size_and_recovered_false() {
    let (mut cfg, _dir) = config();
    namespace(&mut cfg, "small", Some(10), None);
    let node = start(cfg);
    let url = node.ws_url();
    let channel = "small:a";
    let mut publisher = Client::connect(&url, Enc::Json).await;
    let acks = publish_pipelined(&mut publisher, channel, 0, 25, 8, None).await;
    let epoch = acks[0].2.clone();

    let h = publisher
        .ok(json!({"type": "history", "channel": channel, "limit": 1000}))
        .await;
    assert_eq!(h["head"], 25, "{h}");
    assert_eq!(h["oldest"], 16, "only the newest 10 are kept: {h}");
    let offsets: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| u(&m["offset"]))
        .collect();
    assert_eq!(offsets, (16..=25).collect::<Vec<_>>());
    assert_eq!(h["next"], Value::Null);

    // Position 15: every message after it is retained -> recovered.
    let mut c = Client::connect(&url, Enc::Json).await;
    let r = resubscribe(&mut c, channel, &epoch, 15).await;
    assert_eq!(
        (r["recovered"].clone(), r["replayed"].clone()),
        (json!(true), json!(10)),
        "{r}"
    );
    for k in 16..=25 {
        assert_eq!(u(&c.next_message().await["offset"]), k);
    }
    assert!(drain_messages(&mut c).await.is_empty());

    // Position 14: message 15 is gone -> not recovered, nothing replayed (never partial), live works.
    let mut c = Client::connect(&url, Enc::Msgpack).await;
    let r = resubscribe(&mut c, channel, &epoch, 14).await;
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["replayed"], 0, "{r}");
    assert_eq!(r["epoch"], epoch.as_str());
    assert_eq!(r["offset"], 25, "{r}");
    assert!(
        drain_messages(&mut c).await.is_empty(),
        "nothing may be replayed when not recovered"
    );
    let live = publish_pipelined(&mut publisher, channel, 25, 2, 2, None).await;
    for (offset, id, _) in &live {
        let m = c.next_message().await;
        assert_eq!(
            (u(&m["offset"]), m["id"].as_str().unwrap()),
            (*offset, id.as_str())
        );
    }
    assert_eq!(live[0].0, 26);
    assert!(drain_messages(&mut c).await.is_empty());

    // Unknown epoch (same offset numbers): not recovered, current epoch and head, then live.
    let mut c = Client::connect(&url, Enc::Json).await;
    let r = resubscribe(&mut c, channel, "01ARZ3NDEKTSV4RRFFQ69G5FAV", 20).await;
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["replayed"], 0, "{r}");
    assert_eq!(r["epoch"], epoch.as_str());
    assert_eq!(r["offset"], 27, "{r}");
    assert!(drain_messages(&mut c).await.is_empty());
    publish_pipelined(&mut publisher, channel, 27, 1, 1, None).await;
    assert_eq!(u(&c.next_message().await["offset"]), 28);

    // A position beyond the head of the current epoch is not recoverable either.
    let mut c = Client::connect(&url, Enc::Json).await;
    let r = resubscribe(&mut c, channel, &epoch, 1000).await;
    assert_eq!(
        (
            r["recovered"].clone(),
            r["replayed"].clone(),
            r["offset"].clone()
        ),
        (json!(false), json!(0), json!(28)),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_size_zero_keeps_nothing_but_resume_from_head_works() {
    let (mut cfg, _dir) = config();
    namespace(&mut cfg, "none", Some(0), None);
    let node = start(cfg);
    let url = node.ws_url();
    let channel = "none:a";
    let mut publisher = Client::connect(&url, Enc::Json).await;
    let acks = publish_pipelined(&mut publisher, channel, 0, 3, 3, None).await;
    let epoch = acks[0].2.clone();
    let h = publisher
        .ok(json!({"type": "history", "channel": channel}))
        .await;
    assert_eq!(
        (h["head"].clone(), h["oldest"].clone()),
        (json!(3), Value::Null),
        "{h}"
    );
    assert_eq!(h["messages"], json!([]));
    let mut c = Client::connect(&url, Enc::Json).await;
    let r = resubscribe(&mut c, channel, &epoch, 2).await;
    assert_eq!(r["recovered"], false, "{r}");
    let mut c = Client::connect(&url, Enc::Json).await;
    let r = resubscribe(&mut c, channel, &epoch, 3).await;
    assert_eq!(
        (r["recovered"].clone(), r["replayed"].clone()),
        (json!(true), json!(0)),
        "{r}"
    );
}

/// Polls the `history` command until `pred` holds on its result.
async fn history_until(
    c: &mut Client,
    channel: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let h = c.ok(json!({"type": "history", "channel": channel})).await;
        if pred(&h) {
            return h;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}; last history: {h}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_by_age_on_an_active_channel() {
    let (mut cfg, _dir) = config();
    namespace(&mut cfg, "ttl", None, Some(1));
    cfg.channel.idle_ms = 200; // tick every 100 ms
    cfg.history.sweep_interval_ms = 100;
    let node = start(cfg);
    let url = node.ws_url();
    let channel = "ttl:active";
    // A subscriber keeps the channel actor alive: trimming is the actor's job.
    let mut sub = Client::connect(&url, Enc::Json).await;
    sub.subscribe(channel).await;
    let mut publisher = Client::connect(&url, Enc::Json).await;
    let t0 = tokio::time::Instant::now();
    let acks = publish_pipelined(&mut publisher, channel, 0, 5, 5, None).await;
    let epoch = acks[0].2.clone();
    let h = publisher
        .ok(json!({"type": "history", "channel": channel}))
        .await;
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "too slow to check the before state"
    );
    assert_eq!(
        h["messages"].as_array().unwrap().len(),
        5,
        "young messages are kept: {h}"
    );
    assert_eq!(h["oldest"], 1);

    let h = history_until(
        &mut publisher,
        channel,
        "messages older than 1 s trimmed",
        |h| h["messages"].as_array().unwrap().is_empty(),
    )
    .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "trimmed before the TTL: {h}"
    );
    assert_eq!(h["head"], 5, "the head stays: {h}");
    assert_eq!(h["oldest"], Value::Null, "{h}");
    assert!(node.node().channels.is_active(channel));

    let mut c = Client::connect(&url, Enc::Json).await;
    let r = resubscribe(&mut c, channel, &epoch, 0).await;
    assert_eq!(
        (r["recovered"].clone(), r["replayed"].clone()),
        (json!(false), json!(0)),
        "{r}"
    );
    assert_eq!(r["offset"], 5);
    // The newest 5 were delivered live to `sub`; a new one reaches both.
    for k in 1..=5 {
        assert_eq!(u(&sub.next_message().await["offset"]), k);
    }
    publish_pipelined(&mut publisher, channel, 5, 1, 1, None).await;
    assert_eq!(u(&c.next_message().await["offset"]), 6);
    assert_eq!(u(&sub.next_message().await["offset"]), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_by_age_on_an_inactive_channel_via_the_sweeper() {
    let (mut cfg, _dir) = config();
    namespace(&mut cfg, "ttl", None, Some(1));
    cfg.channel.idle_ms = 100; // actor stops ~100-150 ms after the last activity
    cfg.history.sweep_interval_ms = 100;
    let node = start(cfg);
    let url = node.ws_url();
    let channel = "ttl:idle";
    let t0 = std::time::Instant::now();
    {
        let mut publisher = Client::connect(&url, Enc::Json).await;
        publish_pipelined(&mut publisher, channel, 0, 5, 5, None).await;
    }
    let n = node.node().clone();
    eventually("the idle channel actor stops", || {
        !n.channels.is_active(channel)
    })
    .await;
    let st = n
        .store
        .peek_state(channel)
        .unwrap()
        .expect("channel known to the store");
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "actor took too long to stop for this test"
    );
    assert_eq!(
        (st.head, st.oldest),
        (5, Some(1)),
        "nothing trimmed before the TTL"
    );
    // Only the sweeper can trim now (no actor; checking the store directly starts none). With every
    // message gone and no idempotency key left, it forgets the channel's metadata as well.
    eventually("the sweeper trims and forgets the inactive channel", || {
        n.store
            .peek_state(channel)
            .unwrap()
            .is_none_or(|st| st.oldest.is_none())
    })
    .await;
    assert!(t0.elapsed() >= Duration::from_millis(1000));
    assert!(!n.channels.is_active(channel), "trimmed without an actor");
    eventually("the empty channel's metadata is collected", || {
        n.store.peek_state(channel).unwrap().is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotent_publish_survives_a_restart() {
    let (cfg, dir) = config();
    let node = start(cfg.clone());
    let url = node.ws_url();
    let channel = "idem:a";
    let mut sub = Client::connect(&url, Enc::Json).await;
    sub.subscribe(channel).await;
    let mut c = Client::connect(&url, Enc::Msgpack).await;
    let pubk = |key: &str, data: Value| json!({"type": "publish", "channel": channel, "data": data, "key": key});
    let first = c.ok(pubk("k1", json!({"n": 1}))).await;
    assert_eq!(first["offset"], 1);
    let again = c.ok(pubk("k1", json!({"n": 1}))).await;
    assert_eq!(
        again, first,
        "same key and data, same {{id, epoch, offset}}"
    );
    let other = c
        .request(pubk("k1", json!({"n": "different data, same key"})))
        .await;
    assert_eq!(other["code"], "conflict", "same key, other data: {other}");

    // Two pipelined publishes with the same key, the second sent before the first is durable.
    for i in 0..2 {
        c.send(
            json!({"v": 1, "type": "publish", "id": format!("dup{i}"), "channel": channel,
                      "data": {"n": 2}, "key": "k2"}),
        )
        .await;
    }
    let (a, b) = (c.next_frame().await, c.next_frame().await);
    assert_eq!(
        (a["type"].clone(), b["type"].clone()),
        (json!("reply"), json!("reply")),
        "{a} {b}"
    );
    assert_eq!(
        a["result"], b["result"],
        "pipelined duplicates share one message"
    );
    assert_eq!(a["result"]["offset"], 2);
    // Keys are per channel.
    let other = c
        .ok(json!({"type": "publish", "channel": "idem:b", "data": 1, "key": "k1"}))
        .await;
    assert_eq!(other["offset"], 1);
    assert_ne!(other["id"], first["id"]);
    let plain = c.publish(channel, json!({"n": 3})).await;
    assert_eq!(plain["offset"], 3, "the duplicates created no message");

    let delivered: Vec<u64> = [
        sub.next_message().await,
        sub.next_message().await,
        sub.next_message().await,
    ]
    .iter()
    .map(|m| u(&m["offset"]))
    .collect();
    assert_eq!(delivered, [1, 2, 3]);
    assert!(
        drain_messages(&mut sub).await.is_empty(),
        "one message per key delivered"
    );
    drop((sub, c));

    shutdown(node).await;
    let node = start(cfg);
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    let after = c.ok(pubk("k1", json!({"n": 1}))).await;
    assert_eq!(after, first, "the key is remembered across a restart");
    let k2 = c.ok(pubk("k2", json!({"n": 2}))).await;
    assert_eq!(k2, a["result"]);
    let h = c.ok(json!({"type": "history", "channel": channel})).await;
    assert_eq!(h["head"], 3, "no new message after the restart: {h}");
    assert_eq!(
        h["messages"][0]["data"],
        json!({"n": 1}),
        "the original data is kept"
    );
    let fresh = c.ok(pubk("k3", json!({"n": 4}))).await;
    assert_eq!(fresh["offset"], 4);
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_expires_after_the_window() {
    let (mut cfg, _dir) = config();
    cfg.history.idempotency_window_ms = 300;
    let node = start(cfg);
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    let cmd = json!({"type": "publish", "channel": "idem:w", "data": 1, "key": "k"});
    let a = c.ok(cmd.clone()).await;
    assert_eq!(c.ok(cmd.clone()).await, a);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = c.ok(cmd).await;
    assert_eq!(
        b["offset"], 2,
        "an expired key publishes a new message: {b}"
    );
}

/// Overwrites every file under `dir` (recursively) with pseudo-random bytes of at least 4 KiB.
fn garble_tree(dir: &Path) -> usize {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            n += garble_tree(&p);
            continue;
        }
        let len = std::fs::metadata(&p).unwrap().len().max(4096) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        std::fs::write(&p, bytes).unwrap();
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_data_dir_is_moved_aside_and_channels_get_a_new_epoch() {
    let (cfg, dir) = config();
    let node = start(cfg.clone());
    let channel = "crash:c";
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    let acks = publish_pipelined(&mut c, channel, 0, 20, 8, None).await;
    let old_epoch = acks[0].2.clone();
    drop(c);
    shutdown(node).await;

    let history_dir = dir.path().join("history");
    assert!(history_dir.is_dir());
    let garbled = garble_tree(&history_dir);
    assert!(garbled >= 2, "sled files found: {garbled}");

    let node = herald::server::spawn(cfg).expect("a node with a corrupt store still starts");
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("history.corrupt-"))
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "one moved-aside dir expected, found {aside:?}"
    );
    assert!(dir.path().join(&aside[0]).is_dir());

    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    let r = resubscribe(&mut c, channel, &old_epoch, 20).await;
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["replayed"], 0);
    assert_ne!(
        r["epoch"],
        old_epoch.as_str(),
        "history was lost: the epoch must change"
    );
    assert_eq!(r["offset"], 0);
    let mut p = Client::connect(&node.ws_url(), Enc::Json).await;
    let again = p.publish(channel, json!("after")).await;
    assert_eq!(
        (again["offset"].clone(), again["epoch"].clone()),
        (json!(1), r["epoch"].clone())
    );
    assert_eq!(u(&c.next_message().await["offset"]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_paging_limit_next_and_max_page() {
    let (mut cfg, _dir) = config();
    cfg.history.max_page = 50;
    let node = start(cfg);
    let url = node.ws_url();
    let channel = "page:a";
    let mut c = Client::connect(&url, Enc::Json).await;

    // A channel with no history: no epoch yet, and asking creates none.
    let h = c.ok(json!({"type": "history", "channel": channel})).await;
    assert_eq!(h["head"], 0, "{h}");
    assert_eq!(h["epoch"], "", "{h}");
    assert_eq!(h["oldest"], Value::Null);
    assert_eq!(h["messages"], json!([]));
    assert_eq!(h["next"], Value::Null);

    let acks = publish_pipelined(&mut c, channel, 0, 120, 32, None).await;
    let epoch = acks[0].2.clone();
    let check_page = |h: &Value, from: u64, to: u64, next: Value| {
        assert_eq!(h["channel"], channel);
        assert_eq!(h["epoch"], epoch.as_str());
        assert_eq!(h["head"], 120, "{h}");
        assert_eq!(h["oldest"], 1, "{h}");
        let msgs = h["messages"].as_array().unwrap();
        let offsets: Vec<u64> = msgs.iter().map(|m| u(&m["offset"])).collect();
        assert_eq!(
            offsets,
            (from..=to).collect::<Vec<_>>(),
            "page {from}..={to}"
        );
        for m in msgs {
            let off = u(&m["offset"]);
            assert_eq!(m["id"], acks[(off - 1) as usize].1.as_str());
            assert_eq!(m["data"], json!({"i": off - 1}));
            assert_eq!(m["channel"], channel);
            assert_eq!(m["epoch"], epoch.as_str());
            assert!(
                m.get("type").is_none() && m.get("v").is_none(),
                "no envelope fields: {m}"
            );
        }
        assert_eq!(h["next"], next, "next of page {from}..={to}");
    };

    // Default limit is 100, capped by max_page = 50.
    let h = c.ok(json!({"type": "history", "channel": channel})).await;
    check_page(&h, 1, 50, json!(50));
    // Explicit small limit.
    let h = c
        .ok(json!({"type": "history", "channel": channel, "limit": 20}))
        .await;
    check_page(&h, 1, 20, json!(20));
    let h = c
        .ok(json!({"type": "history", "channel": channel, "since": 20, "limit": 7}))
        .await;
    check_page(&h, 21, 27, json!(27));
    // Over max_page: capped; follow `next` to the end.
    let mut since = Value::from(0);
    let mut pages = Vec::new();
    while !since.is_null() {
        let h = c
            .ok(json!({"type": "history", "channel": channel, "since": since, "limit": 1000}))
            .await;
        pages.push(h["messages"].as_array().unwrap().len());
        since = h["next"].clone();
        assert!(pages.len() <= 3, "paging does not end");
    }
    assert_eq!(pages, [50, 50, 20]);
    let h = c
        .ok(json!({"type": "history", "channel": channel, "since": 100, "limit": 1000}))
        .await;
    check_page(&h, 101, 120, Value::Null);
    // A page ending exactly at the head has next = null.
    let h = c
        .ok(json!({"type": "history", "channel": channel, "since": 110, "limit": 10}))
        .await;
    check_page(&h, 111, 120, Value::Null);
    // At or past the head: empty.
    for since in [120, 5000] {
        let h = c
            .ok(json!({"type": "history", "channel": channel, "since": since}))
            .await;
        assert_eq!(h["messages"], json!([]), "{h}");
        assert_eq!(h["next"], Value::Null);
        assert_eq!(h["head"], 120);
    }
    // Same page over MessagePack.
    let mut m = Client::connect(&url, Enc::Msgpack).await;
    let h = m
        .ok(json!({"type": "history", "channel": channel, "since": 60, "limit": 5}))
        .await;
    check_page(&h, 61, 65, json!(65));
    // Bad arguments.
    let e = c
        .request(json!({"type": "history", "channel": channel, "since": "x"}))
        .await;
    assert_eq!(
        (e["type"].clone(), e["code"].clone()),
        (json!("error"), json!("bad_request")),
        "{e}"
    );
}
