//! RabbitMQ killed and restarted mid-traffic, on a private RabbitMQ node this test starts on its own ports
//! (never the shared one on 5672): publishes during the outage get `unavailable`, subscribers stay
//! connected, and afterwards every acknowledged message is delivered exactly once, in order, on every
//! node.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::cluster_config;
use common::*;
use serde_json::json;

/// A RabbitMQ node of this test: own node name, ports and directories.
struct PrivateRabbit {
    dir: PathBuf,
    port: u16,
    dist_port: u16,
    name: String,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

impl PrivateRabbit {
    fn new(dir: &Path) -> PrivateRabbit {
        let p = PrivateRabbit {
            dir: dir.to_path_buf(),
            port: free_port(),
            dist_port: free_port(),
            name: format!("herald-test-{}@localhost", ulid::Ulid::new()),
            child: None,
        };
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        // As root, Debian's rabbitmq-server runs the broker as the `rabbitmq` user.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir)
            .status();
        p
    }

    /// Starts (or restarts, on the same data) the node and waits until it accepts AMQP connections.
    fn start(&mut self) {
        let d = &self.dir;
        let child = Command::new("rabbitmq-server")
            .current_dir(d)
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rabbitmq-server (Debian package rabbitmq-server)");
        self.child = Some(child);
        let t0 = Instant::now();
        while !port_open(self.port) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "private RabbitMQ did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -9` of the broker (the Erlang VM, by the PID it wrote).
    fn kill(&mut self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).unwrap_or_default();
        let pid = pid.trim();
        if !pid.is_empty() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let t0 = Instant::now();
        while port_open(self.port) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.dir.join("pid"));
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=2", self.port)
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn publish(p: &mut Client, channel: &str, i: i64) -> serde_json::Value {
    p.request(json!({"type": "publish", "channel": channel, "data": {"i": i}}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_restarted_mid_traffic_loses_and_doubles_nothing_acknowledged() {
    let base = tempfile::tempdir().unwrap();
    let mut rabbit = PrivateRabbit::new(&base.path().join("rabbit"));
    tokio::task::block_in_place(|| rabbit.start());

    let name = format!("test-{}", ulid::Ulid::new());
    let (mut cfg_a, _da) = cluster_config(&name);
    let (mut cfg_b, _db) = cluster_config(&name);
    for c in [&mut cfg_a, &mut cfg_b] {
        c.cluster.amqp_url = rabbit.url();
        c.cluster.confirm_timeout_ms = 2_000;
        c.cluster.connect_timeout_ms = 2_000;
    }
    let a = start(cfg_a);
    let b = start(cfg_b);
    let channel = "broker:restart";
    let mut p = Client::connect(&a.ws_url(), Enc::Msgpack).await;
    let first = common::cluster::publish_when_ready(&mut p, channel, json!({"i": 0})).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    let mut pb = Client::connect(&b.ws_url(), Enc::Msgpack).await;
    common::cluster::publish_when_ready(&mut pb, "broker:warm", json!(1)).await;
    let since = json!({"epoch": epoch, "offset": first["offset"]});
    let mut subs = Vec::new();
    for url in [a.ws_url(), b.ws_url()] {
        let mut s = Client::connect(&url, Enc::Json).await;
        let r = s
            .ok(json!({"type": "subscribe", "channel": channel, "since": since}))
            .await;
        assert_eq!(r["recovered"], true, "{r}");
        subs.push(s);
    }

    // Publish one at a time: before, during and after a broker outage.
    let mut acked: Vec<(u64, i64)> = Vec::new();
    let mut refused = 0u32;
    let mut i = 0i64;
    while acked.len() < 300 {
        i += 1;
        let r = publish(&mut p, channel, i).await;
        assert_eq!(r["type"], "reply", "{r}");
        acked.push((r["result"]["offset"].as_u64().unwrap(), i));
    }
    tokio::task::block_in_place(|| rabbit.kill());
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(3) {
        i += 1;
        let r = publish(&mut p, channel, i).await;
        if r["type"] == "reply" {
            acked.push((r["result"]["offset"].as_u64().unwrap(), i));
        } else {
            assert_eq!(r["code"], "unavailable", "{r}");
            assert!(r["retry_after_ms"].as_u64().is_some(), "{r}");
            refused += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(refused > 0, "publishes during the outage are refused");
    // During the outage, resume and history keep working within what the node applied.
    let mut late = Client::connect(&b.ws_url(), Enc::Json).await;
    let r = late
        .ok(json!({"type": "subscribe", "channel": channel, "since": since}))
        .await;
    assert_eq!(r["recovered"], true, "resume during the outage: {r}");
    let h = late
        .ok(json!({"type": "history", "channel": channel, "limit": 10}))
        .await;
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(10), "{h}");
    drop(late);
    tokio::task::block_in_place(|| rabbit.start());
    let back = Instant::now();
    let mut after = 0;
    while after < 300 {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "publishing never recovered"
        );
        i += 1;
        let r = publish(&mut p, channel, i).await;
        if r["type"] == "reply" {
            acked.push((r["result"]["offset"].as_u64().unwrap(), i));
            after += 1;
        } else {
            assert_eq!(r["code"], "unavailable", "{r}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "acknowledged {}, refused during the outage {refused}, recovered after {:?}",
        acked.len(),
        back.elapsed()
    );

    // Every node delivers every acknowledged message once, in order; subscribers stayed connected.
    let head = acked.iter().map(|(o, _)| *o).max().unwrap();
    for (n, s) in subs.iter_mut().enumerate() {
        let mut seen: Vec<(u64, i64)> = Vec::new();
        while seen.last().is_none_or(|(o, _)| *o < head) {
            match s.next_event().await {
                Event::Frame(f) if f["type"] == "message" => {
                    let off = f["offset"].as_u64().unwrap();
                    if let Some((last, _)) = seen.last() {
                        assert!(off > *last, "node {n}: reordered or doubled at {off}");
                    }
                    seen.push((off, f["data"]["i"].as_i64().unwrap()));
                }
                Event::Frame(_) => {}
                Event::Closed(code) => panic!("node {n}: subscriber cut ({code:?})"),
            }
        }
        let got: HashSet<(u64, i64)> = seen.iter().copied().collect();
        let lost: Vec<_> = acked.iter().filter(|a| !got.contains(a)).collect();
        assert!(
            lost.is_empty(),
            "node {n}: lost {} acknowledged: {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
    a.shutdown().expect("node a stops");
    b.shutdown().expect("node b stops");
}
