//! `kill -9` of a cluster node mid-traffic (real `herald` processes, the shared RabbitMQ, a cluster name of
//! the test's own): its clients move to another node and resume with nothing lost, doubled or reordered,
//! and the killed node, restarted on its data dir, catches up from its stored positions.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{delete_streams, publish_when_ready, AMQP, SHARDS};
use common::*;
use serde_json::{json, Value};

/// Starts a cluster node (the real binary) on port 0.
async fn node(data_dir: &Path, cwd: &Path, cluster: &str) -> (tokio::process::Child, String) {
    let mut cmd = serve_command(data_dir);
    cmd.current_dir(cwd)
        .env("HERALD_AUTH__ANONYMOUS", "true")
        .env("HERALD_LIMITS__MESSAGES_PER_SECOND", "1000000")
        .env("HERALD_LIMITS__MESSAGES_BURST", "1000000")
        .env("HERALD_NAMESPACES__DEFAULT__HISTORY_SIZE", "1000000")
        .env("HERALD_CLUSTER__ENABLED", "true")
        .env("HERALD_CLUSTER__AMQP_URL", AMQP)
        .env("HERALD_CLUSTER__NAME", cluster)
        .env("HERALD_CLUSTER__SHARDS", SHARDS.to_string())
        .env("RUST_LOG", "warn");
    start_binary(cmd).await
}

/// Reads messages until the offset `upto`, checking order and recording offsets; `None` if the
/// connection dies first.
async fn read_until(c: &mut Client, upto: u64, seen: &mut Vec<(u64, i64)>) -> Option<()> {
    loop {
        if seen.last().is_some_and(|(o, _)| *o >= upto) {
            return Some(());
        }
        match c.next_event().await {
            Event::Frame(f) if f["type"] == "message" => {
                let off = f["offset"].as_u64().unwrap();
                if let Some((last, _)) = seen.last() {
                    assert!(off > *last, "reordered or doubled: {off} after {last}");
                }
                seen.push((off, f["data"]["i"].as_i64().unwrap()));
            }
            Event::Frame(_) => {}
            Event::Closed(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_node_loses_nothing_acknowledged() {
    let cluster = format!("test-{}", ulid::Ulid::new());
    let _cleanup = common::cluster::StreamsGuard(cluster.clone());
    let base = tempfile::tempdir().unwrap();
    let dir = |n: &str| base.path().join(n);
    for d in ["cwd", "n1", "n2", "n3"] {
        std::fs::create_dir_all(dir(d)).unwrap();
    }
    let cwd = dir("cwd");
    let (mut n1, url1) = node(&dir("n1"), &cwd, &cluster).await;
    let (mut n2, url2) = node(&dir("n2"), &cwd, &cluster).await;
    let (mut n3, url3) = node(&dir("n3"), &cwd, &cluster).await;
    let channel = "crash:one";

    let mut p = Client::connect(&url1, Enc::Msgpack).await;
    let first = publish_when_ready(&mut p, channel, json!({"i": 0})).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    let start = first["offset"].as_u64().unwrap();
    for url in [&url2, &url3] {
        let mut c = Client::connect(url, Enc::Json).await;
        publish_when_ready(&mut c, "crash:warm", json!(1)).await;
    }
    let since = json!({"epoch": epoch, "offset": start});
    let mut s2 = Client::connect(&url2, Enc::Json).await;
    let mut s3 = Client::connect(&url3, Enc::Json).await;
    for s in [&mut s2, &mut s3] {
        let r = s
            .ok(json!({"type": "subscribe", "channel": channel, "since": since}))
            .await;
        assert_eq!(r["recovered"], true, "{r}");
    }

    // The publisher on node 1: 4,000 messages, 32 in flight, every reply recorded.
    const N: u64 = 4_000;
    let acks: Arc<Mutex<Vec<(u64, i64)>>> = Arc::default();
    let publisher = tokio::spawn({
        let acks = acks.clone();
        async move {
            let (mut sent, mut acked) = (0u64, 0u64);
            while acked < N {
                while sent < N && sent - acked < 32 {
                    sent += 1;
                    p.send(
                        json!({"v": 1, "type": "publish", "id": sent, "channel": channel,
                                   "data": {"i": sent}}),
                    )
                    .await;
                }
                let r: Value = p.next_frame().await;
                assert_eq!(r["type"], "reply", "{r}");
                let i = r["id"].as_i64().unwrap();
                acks.lock()
                    .unwrap()
                    .push((r["result"]["offset"].as_u64().unwrap(), i));
                acked += 1;
            }
        }
    });

    // Node 2 dies once a quarter is acknowledged; its subscriber moves to node 3 and resumes.
    let mut seen2 = Vec::new();
    while acks.lock().unwrap().len() < (N / 4) as usize {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    n2.kill().await.expect("kill -9 node 2");
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        read_until(&mut s2, u64::MAX, &mut seen2),
    )
    .await;
    let last2 = seen2.last().map_or(start, |(o, _)| *o);
    let mut s2 = Client::connect(&url3, Enc::Json).await;
    let since2 = json!({"epoch": epoch, "offset": last2});
    let r = s2
        .ok(json!({"type": "subscribe", "channel": channel, "since": since2}))
        .await;
    assert_eq!(r["recovered"], true, "resumed on another node: {r}");

    publisher.await.expect("publisher");
    let acks = acks.lock().unwrap().clone();
    let head = acks.iter().map(|(o, _)| *o).max().unwrap();
    let mut seen3 = Vec::new();
    read_until(&mut s2, head, &mut seen2)
        .await
        .expect("node 3 serves the moved subscriber");
    read_until(&mut s3, head, &mut seen3)
        .await
        .expect("node 3's own subscriber");

    // Every acknowledged message exactly once, in offset order, for both subscribers.
    let want: Vec<(u64, i64)> = {
        let mut a = acks.clone();
        a.sort();
        a
    };
    for (who, seen) in [("moved subscriber", &seen2), ("node 3 subscriber", &seen3)] {
        let offsets: HashSet<u64> = seen.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets.len(), seen.len(), "{who}: duplicates");
        let lost: Vec<_> = want.iter().filter(|(o, _)| !offsets.contains(o)).collect();
        assert!(
            lost.is_empty(),
            "{who}: lost {} acknowledged, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        let is: Vec<i64> = seen.iter().map(|(_, i)| *i).collect();
        assert_eq!(
            is,
            (1..=N as i64).collect::<Vec<_>>(),
            "{who}: the publisher's order"
        );
    }

    // Node 2 restarts on its data dir and catches up from its stored positions.
    let (mut n2, url2) = node(&dir("n2"), &cwd, &cluster).await;
    let mut c = Client::connect(&url2, Enc::Json).await;
    let r = c
        .ok(json!({"type": "subscribe", "channel": channel, "since": since}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let mut seen = Vec::new();
    read_until(&mut c, head, &mut seen)
        .await
        .expect("restarted node 2");
    assert_eq!(
        seen, want,
        "the restarted node has every message, once, in order"
    );

    for n in [&mut n1, &mut n2, &mut n3] {
        let _ = n.kill().await;
    }
    delete_streams(&cluster, &epoch).await;
}
