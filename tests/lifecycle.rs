//! Node and channel lifecycle: SIGTERM/SIGINT shut the real binary down cleanly, idle channel actors stop
//! and come back with their history.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::json;

fn spawn_binary(dir: &std::path::Path) -> (std::process::Child, String) {
    let mut child = serve_command(&dir.join("data"))
        .current_dir(dir)
        // No config/default.toml here, and the built-in default refuses anonymous clients.
        .env("HERALD_AUTH__ANONYMOUS", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn herald");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let (ws, _) = parse_listening(line.trim());
    (child, format!("ws://{ws}/ws"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_shut_down_cleanly_with_1001_and_exit_0() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, url) = spawn_binary(dir.path());
        let mut c = Client::connect(&url, Enc::Json).await;
        c.subscribe("s").await;
        let p = c.publish("s", json!(1)).await;
        assert_eq!(p["offset"], 1);
        c.next_message().await;
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let f = c.next_frame().await;
        assert_eq!(f["type"], "disconnect", "{f}");
        assert_eq!(
            (f["code"].as_u64(), f["reconnect"].as_bool()),
            (Some(1001), Some(true))
        );
        match c.next_event().await {
            Event::Closed(code) => assert_eq!(code, Some(1001)),
            Event::Frame(f) => panic!("expected close, got {f}"),
        }
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(0), "signal {signal}: clean exit");
        // The message survived: a restarted node resumes it.
        let (mut child, url) = spawn_binary(dir.path());
        let mut c = Client::connect(&url, Enc::Json).await;
        let h = c.ok(json!({"type": "history", "channel": "s"})).await;
        assert_eq!(h["head"], 1);
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_channel_actors_stop_and_restart_with_their_history() {
    let (mut cfg, _dir) = test_config();
    cfg.channel.idle_ms = 200;
    let node = start(cfg);
    let stats = &node.node().stats;
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    for i in 0..3 {
        // Publishing starts no actor (the applier writes without one); a subscription does.
        let ch = format!("idle:{i}");
        c.publish(&ch, json!(i)).await;
        c.subscribe(&ch).await;
        c.ok(json!({"type": "unsubscribe", "channel": ch})).await;
    }
    let s = c.subscribe("busy").await;
    assert_eq!(stats.channels.load(Ordering::Relaxed), 4);
    eventually("idle channels stopped, the subscribed one kept", || {
        stats.channels.load(Ordering::Relaxed) == 1 && node.node().channels.len() == 1
    })
    .await;
    // Still idle long after: the subscribed channel stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.node().channels.len(), 1);
    // A stopped channel comes back with its epoch and offsets.
    let again = c.publish("idle:0", json!("again")).await;
    assert_eq!(again["offset"], 2);
    let h = c.ok(json!({"type": "history", "channel": "idle:0"})).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 2);
    assert_eq!(h["epoch"], again["epoch"]);
    let _ = s;
}
