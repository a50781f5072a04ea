//! Crash safety of the real binary: publish with pipelining, `kill -9` the process in the middle, restart on
//! the same data dir, and check that every acknowledged publish is in history, in order, under the same
//! epoch.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::process::Child;

const CHANNELS: usize = 4;

struct Proc {
    child: Child,
    ws_url: String,
}

/// Starts `herald serve` on port 0 with `data_dir`, in a cwd without `config/default.toml`, and waits for its
/// `herald listening ws=ADDR admin=ADDR` line.
async fn spawn_herald(data_dir: &Path, cwd: &Path) -> Proc {
    let mut cmd = serve_command(data_dir);
    cmd.current_dir(cwd)
        // No config/default.toml here, and the built-in default refuses anonymous clients.
        .env("HERALD_AUTH__ANONYMOUS", "true")
        .env("HERALD_STORAGE__GROUP_COMMIT_MS", "2")
        .env("HERALD_LIMITS__MESSAGES_PER_SECOND", "1000000")
        .env("HERALD_LIMITS__MESSAGES_BURST", "1000000")
        .env("HERALD_NAMESPACES__DEFAULT__HISTORY_SIZE", "10000000")
        .env("RUST_LOG", "warn");
    let (child, ws_url) = start_binary(cmd).await;
    Proc { child, ws_url }
}

/// An acknowledged publish.
#[derive(Clone, Debug)]
struct Ack {
    offset: u64,
    id: String,
    epoch: String,
    i: u64,
}

/// Publishes `{"i": n}` for n = first_i, first_i+1, ... on `channel` with up to `window` publishes in flight,
/// recording every reply in `acks`, until the connection dies. Returns how many were sent.
async fn publish_until_dead(
    url: String,
    channel: String,
    first_i: u64,
    window: usize,
    acks: Arc<Mutex<Vec<Ack>>>,
) -> u64 {
    let mut c = Client::connect(&url, Enc::Json).await;
    let mut in_flight: HashMap<u64, u64> = HashMap::new(); // request id -> i
    let mut next = first_i;
    loop {
        while in_flight.len() < window {
            let f = json!({"v": 1, "type": "publish", "id": next, "channel": channel, "data": {"i": next}});
            let m = c.encode(&f);
            if c.ws.send(m).await.is_err() {
                return next - first_i;
            }
            in_flight.insert(next, next);
            next += 1;
        }
        let f = match c.next_event().await {
            Event::Frame(f) => f,
            Event::Closed(_) => return next - first_i,
        };
        match f["type"].as_str() {
            Some("reply") => {
                let rid = f["id"].as_u64().unwrap();
                let i = in_flight
                    .remove(&rid)
                    .expect("reply to a publish in flight");
                let r = &f["result"];
                acks.lock().unwrap().push(Ack {
                    offset: r["offset"].as_u64().unwrap(),
                    id: r["id"].as_str().unwrap().to_string(),
                    epoch: r["epoch"].as_str().unwrap().to_string(),
                    i,
                });
            }
            // A killed process sends nothing; anything else is a failure of the test setup.
            _ => panic!("unexpected frame while publishing: {f}"),
        }
    }
}

/// Reads a channel's whole history with `history` pages.
async fn full_history(c: &mut Client, channel: &str) -> (String, u64, Vec<Value>) {
    let mut since = Value::from(0);
    let mut out = Vec::new();
    let mut epoch = String::new();
    let mut head = 0;
    while !since.is_null() {
        let h = c
            .ok(json!({"type": "history", "channel": channel, "since": since, "limit": 1000}))
            .await;
        epoch = h["epoch"].as_str().unwrap().to_string();
        head = h["head"].as_u64().unwrap();
        out.extend(h["messages"].as_array().unwrap().iter().cloned());
        since = h["next"].clone();
    }
    (epoch, head, out)
}

/// Runs one publish-and-kill round against a fresh process on `data_dir`; returns the acks per channel.
async fn publish_and_kill(
    data_dir: &Path,
    cwd: &Path,
    round: u64,
    min_acks: usize,
) -> Vec<Vec<Ack>> {
    let mut p = spawn_herald(data_dir, cwd).await;
    let acks: Vec<Arc<Mutex<Vec<Ack>>>> = (0..CHANNELS).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = (0..CHANNELS)
        .map(|k| {
            tokio::spawn(publish_until_dead(
                p.ws_url.clone(),
                format!("crash:{k}"),
                round * 1_000_000_000,
                64,
                acks[k].clone(),
            ))
        })
        .collect();
    // Kill once every publisher has had a good number of publishes acknowledged: mid-stream, with a full
    // pipeline of unacknowledged ones.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while acks.iter().any(|a| a.lock().unwrap().len() < min_acks) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing too slow"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    p.child.kill().await.expect("SIGKILL herald"); // Child::kill sends SIGKILL and reaps.
    let status = p.child.wait().await.unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");
    let mut sent = Vec::new();
    for t in tasks {
        sent.push(
            tokio::time::timeout(TIMEOUT, t)
                .await
                .expect("publisher ends")
                .unwrap(),
        );
    }
    let acks: Vec<Vec<Ack>> = acks.iter().map(|a| a.lock().unwrap().clone()).collect();
    let acked: Vec<usize> = acks.iter().map(Vec::len).collect();
    eprintln!("round {round}: sent {sent:?}, acknowledged {acked:?}");
    for (k, a) in acks.iter().enumerate() {
        assert!(
            (a.len() as u64) < sent[k],
            "channel {k}: the kill must leave publishes unacknowledged ({} acked of {} sent)",
            a.len(),
            sent[k]
        );
    }
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_publish() {
    let base = tempfile::tempdir().unwrap();
    let data_dir = base.path().join("data");
    let cwd = base.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();

    // Two crash rounds on the same data dir: the second one appends to the recovered history.
    let mut all: Vec<Vec<Ack>> = vec![Vec::new(); CHANNELS];
    for round in 0..2u64 {
        let acks = publish_and_kill(&data_dir, &cwd, round, 1500).await;
        for (k, a) in acks.into_iter().enumerate() {
            all[k].extend(a);
        }
    }

    let mut p = spawn_herald(&data_dir, &cwd).await;
    let mut c = Client::connect(&p.ws_url, Enc::Json).await;
    for (k, acks) in all.iter().enumerate() {
        let channel = format!("crash:{k}");
        let (epoch, head, msgs) = full_history(&mut c, &channel).await;
        let epochs: std::collections::BTreeSet<&str> =
            acks.iter().map(|a| a.epoch.as_str()).collect();
        assert_eq!(
            epochs.len(),
            1,
            "{channel}: the epoch never changes across kill -9: {epochs:?}"
        );
        assert_eq!(
            epoch, acks[0].epoch,
            "{channel}: epoch unchanged after restart"
        );
        // History is contiguous from 1 to the head.
        let offsets: Vec<u64> = msgs.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
        assert_eq!(
            offsets,
            (1..=head).collect::<Vec<_>>(),
            "{channel}: history has no holes"
        );
        // Nothing applied twice: a kill between apply and acknowledgement must not make the restarted
        // node apply an entry again (the applied log position is stored in the same transaction).
        let mut ids = std::collections::HashSet::new();
        for m in &msgs {
            assert!(
                ids.insert(m["id"].as_str().unwrap().to_string()),
                "{channel}: message {} applied twice: {m}",
                m["id"]
            );
        }
        // Every acknowledged publish is there, at its offset, with its id and data.
        let max_acked = acks.iter().map(|a| a.offset).max().unwrap();
        eprintln!("{channel}: head {head} after restart, {} acknowledged, last acknowledged offset {max_acked}", acks.len());
        assert!(
            head >= max_acked,
            "{channel}: head {head} < last acknowledged offset {max_acked}"
        );
        for a in acks {
            let m = &msgs[(a.offset - 1) as usize];
            assert_eq!(
                m["id"],
                a.id.as_str(),
                "{channel}: acknowledged message {} lost or replaced",
                a.offset
            );
            assert_eq!(
                m["data"],
                json!({"i": a.i}),
                "{channel}: message {} has other data",
                a.offset
            );
        }
        // One pipelined publisher: offsets follow the order it sent in, within each round.
        let mut by_offset: Vec<&Ack> = acks.iter().collect();
        by_offset.sort_by_key(|a| a.offset);
        for w in by_offset.windows(2) {
            assert!(
                w[0].i < w[1].i,
                "{channel}: order of a publisher kept: {:?} {:?}",
                w[0],
                w[1]
            );
        }
        // The same holds for a resume from offset 0 of the old epoch.
        if k == 0 {
            let mut r = Client::connect(&p.ws_url, Enc::Msgpack).await;
            let res = r
                .ok(json!({"type": "subscribe", "channel": channel, "since": {"epoch": acks[0].epoch, "offset": 0}}))
                .await;
            assert_eq!(res["recovered"], true, "{res}");
            assert_eq!(res["replayed"], head, "{res}");
            for off in 1..=head {
                let m = r.next_message().await;
                assert_eq!(m["offset"], off);
                assert_eq!(m["id"], msgs[(off - 1) as usize]["id"]);
            }
        }
        // And the channel continues right after the head.
        let next = c.publish(&channel, json!("after")).await;
        assert_eq!(next["offset"], head + 1);
        assert_eq!(next["epoch"], epoch.as_str());
    }
    p.child.kill().await.unwrap();
}
