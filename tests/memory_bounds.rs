//! What a hostile or careless client can make the node hold, measured on the real binary.
//!
//! A client pipelines `history` requests for a channel of 1,000 messages of ~30 KB and reads its socket
//! slowly. Before the byte bounds (outbox in bytes, pages capped in bytes, a cap on commands in
//! flight), every reply of up to 1,000 × 30 KB was queued in an outbox bounded only in frames, so the
//! node's memory grew by gigabytes. Now the node's RSS may grow by at most the documented per-connection
//! bound (docs/operations.md, "Capacity and memory per connection"), and the client is cut as a slow
//! consumer (4001) instead of being buffered for.

mod common;

use std::time::{Duration, Instant};

use common::{serve_command, start_binary, TIMEOUT};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Resident set size of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc status");
    kb * 1024
}

/// The documented bound for one such connection (outbox 1 MiB + 32 pages in flight of 256 KiB, stored
/// and encoded), with room for allocator slack.
const BOUND_BYTES: u64 = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pipelining_slow_reader_keeps_rss_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve_command(&dir.path().join("data"));
    cmd.env("HERALD_STORAGE__GROUP_COMMIT_MS", "1")
        .env("HERALD_LIMITS__MESSAGES_PER_SECOND", "100000")
        .env("HERALD_LIMITS__MESSAGES_BURST", "100000")
        .env("RUST_LOG", "warn");
    let (mut child, url) = start_binary(cmd).await;
    let pid = child.id().expect("pid");

    // 1,000 messages of ~30 KB (the default history_size keeps all of them).
    let (mut publisher, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    publisher.next().await.unwrap().unwrap(); // welcome
    let text = "x".repeat(30_000);
    for i in 0..1000 {
        let frame = json!({"v":1,"type":"publish","id":i,"channel":"big:1","data":text});
        publisher
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < 1000 {
        let m = tokio::time::timeout(TIMEOUT, publisher.next())
            .await
            .expect("publish replies")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["type"], "reply", "{v}");
            acked += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes(pid);

    // The reader: 500 pipelined `history` requests for the whole channel, then one frame per 50 ms.
    let (mut reader, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    reader.next().await.unwrap().unwrap(); // welcome
    for i in 0..500 {
        let frame = json!({"v":1,"type":"history","id":i,"channel":"big:1","since":0,"limit":1000});
        reader
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let mut peak = before;
    let mut replies = 0;
    let mut close_code = None;
    while started.elapsed() < Duration::from_secs(20) {
        peak = peak.max(rss_bytes(pid));
        match tokio::time::timeout(Duration::from_millis(50), reader.next()).await {
            Err(_) => {}
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(Message::Close(f)))) => {
                close_code = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "reply" {
                    replies += 1;
                    let n = v["result"]["messages"].as_array().map_or(0, Vec::len);
                    assert!(n <= 9, "a page holds at most 256 KiB of data: {n} messages");
                }
            }
            Ok(Some(Ok(_))) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak = peak.max(rss_bytes(pid));
    let growth = peak.saturating_sub(before);
    eprintln!(
        "rss before {:.1} MiB, peak {:.1} MiB, growth {:.1} MiB; {replies} replies read, close {close_code:?}",
        before as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        growth as f64 / 1048576.0
    );
    assert!(
        growth < BOUND_BYTES,
        "node RSS grew by {growth} bytes (bound {BOUND_BYTES})"
    );
    assert_eq!(
        close_code,
        Some(4001),
        "a client that does not read its replies is a slow consumer"
    );
    assert!(
        replies < 500,
        "not every reply was buffered for the slow reader"
    );
    child.kill().await.ok();
}
