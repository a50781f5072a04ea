//! A node that has not yet applied the log up to a client's `since` waits (bounded) before it answers,
//! instead of saying `recovered: false`.
//!
//! The situation of a node right after a crash: its log holds committed entries its store has not applied
//! yet, and a client resumes from a position it saw before the crash. Built here without a crash: a node
//! publishes 10 messages and stops; 5 more entries are committed to the log directly (as a proposal the
//! node acknowledged before it died would be); the node restarts on a log whose applier only starts
//! reading 1.5 s later.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use herald::cluster::{Committed, Entry, EntryKind, LocalLog, Log, Position, Proposal};
use herald::history::{Store, StoreConfig};
use herald::server::spawn_with_log;
use serde_json::json;

/// A [`LocalLog`] whose followers get nothing for a while.
struct LateLog {
    inner: LocalLog,
    delay: Duration,
}

impl Log for LateLog {
    fn shards(&self) -> u32 {
        self.inner.shards()
    }

    fn propose(&self, entry: Entry) -> Proposal {
        self.inner.propose(entry)
    }

    fn follow(&self, after: &[u64]) -> Committed {
        let mut inner = Some(self.inner.follow(after));
        futures_util::stream::once(tokio::time::sleep(self.delay))
            .flat_map(move |_| {
                inner
                    .take()
                    .unwrap_or_else(|| futures_util::stream::empty().boxed())
            })
            .boxed()
    }

    fn applied(&self, position: Position) {
        self.inner.applied(position)
    }
}

/// Commits `n` publish entries for `channel` straight to the log of the data dir (the node is stopped).
async fn commit_unapplied(data_dir: &std::path::Path, channel: &str, first_i: u64, n: u64) {
    let (store, _) = Store::open(&StoreConfig::new(data_dir.join("history"))).expect("store");
    let log = LocalLog::open(store.clone()).expect("log");
    for i in first_i..first_i + n {
        let mut data = Vec::new();
        let value = rmpv::Value::Map(vec![(rmpv::Value::from("i"), rmpv::Value::from(i))]);
        rmpv::encode::write_value(&mut data, &value).unwrap();
        let entry = Entry {
            id: ulid::Ulid::new().to_string(),
            ts: herald::protocol::now_ms(),
            channel: channel.to_string(),
            publisher: "anonymous".into(),
            from: None,
            key: None,
            kind: EntryKind::Publish { data },
        };
        log.propose(entry).await.expect("committed");
    }
    drop(log);
    store.close().expect("closed");
}

/// A node restarted on a log with 5 committed entries it has not applied (its applier starts 1.5 s
/// late), and the epoch of the channel `wait:a`.
async fn restarted_node(
    resume_wait_ms: u64,
) -> (
    herald::server::RunningNode,
    serde_json::Value,
    tempfile::TempDir,
) {
    let (mut cfg, dir) = test_config();
    cfg.session.resume_wait_ms = resume_wait_ms;
    let channel = "wait:a";
    let node = start(cfg.clone());
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    let mut last = json!(null);
    for i in 1..=10 {
        last = c.publish(channel, json!({"i": i})).await;
    }
    assert_eq!(last["offset"], 10, "{last}");
    drop(c);
    shutdown(node).await;

    commit_unapplied(dir.path(), channel, 11, 5).await;

    let node = spawn_with_log(
        cfg,
        Box::new(|store| {
            Ok(Arc::new(LateLog {
                inner: LocalLog::open(store.clone())?,
                delay: Duration::from_millis(1500),
            }) as Arc<dyn Log>)
        }),
    )
    .expect("node restarts");
    (node, last["epoch"].clone(), dir)
}

async fn resume_after_restart(resume_wait_ms: u64) -> (serde_json::Value, Vec<u64>, Duration) {
    let (node, epoch, _dir) = restarted_node(resume_wait_ms).await;
    let channel = "wait:a";
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    let t0 = Instant::now();
    // Offset 13: committed before the restart, not applied by this node yet.
    let since = json!({"epoch": epoch, "offset": 13});
    let reply = c
        .ok(json!({"type": "subscribe", "channel": channel, "since": since}))
        .await;
    let waited = t0.elapsed();
    let mut offsets = Vec::new();
    if reply["recovered"] == true {
        while offsets.len() < 2 {
            offsets.push(c.next_message().await["offset"].as_u64().unwrap());
        }
    }
    shutdown(node).await;
    (reply, offsets, waited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_since_waits_then_recovers() {
    let (reply, offsets, waited) = resume_after_restart(5_000).await;
    eprintln!("reply after {waited:?}: {reply}");
    assert_eq!(reply["recovered"], true, "{reply}");
    // The wait ends once the applier has reached offset 13; it may or may not have applied 14 and 15 by
    // the time the answer is made. Whatever it has not applied yet follows live: 14 and 15 arrive either
    // way, once each, in order.
    let head = reply["offset"].as_u64().expect("offset");
    assert!((13..=15).contains(&head), "{reply}");
    assert_eq!(reply["replayed"], head - 13, "{reply}");
    assert_eq!(offsets, [14, 15]);
    assert!(
        waited >= Duration::from_millis(1000),
        "the answer waited for the applier: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_is_bounded() {
    // A node that would need longer than session.resume_wait_ms answers `recovered: false` in time.
    let (reply, _, waited) = resume_after_restart(300).await;
    eprintln!("reply after {waited:?}: {reply}");
    assert_eq!(reply["recovered"], false, "{reply}");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(1400),
        "answered after the bound, before the applier caught up: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_during_the_wait_still_answers_the_subscribe() {
    let (node, epoch, _dir) = restarted_node(5_000).await;
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    let since = json!({"epoch": epoch, "offset": 13});
    c.send(json!({"v": 1, "type": "subscribe", "id": "s", "channel": "wait:a", "since": since}))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(json!({"v": 1, "type": "unsubscribe", "id": "u", "channel": "wait:a"}))
        .await;
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let f = c.next_frame().await;
        answers.push(f);
    }
    let sub = answers
        .iter()
        .find(|f| f["id"] == "s")
        .expect("the subscribe is answered");
    assert_eq!(sub["type"], "error", "{sub}");
    assert_eq!(sub["code"], "not_subscribed", "{sub}");
    let unsub = answers
        .iter()
        .find(|f| f["id"] == "u")
        .expect("the unsubscribe is answered");
    assert_eq!(unsub["type"], "reply", "{unsub}");
    // Nothing of the channel follows.
    let extra = tokio::time::timeout(Duration::from_millis(2_000), c.next_frame()).await;
    assert!(extra.is_err(), "{extra:?}");
    shutdown(node).await;
}
