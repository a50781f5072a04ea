//! Helpers of the cluster tests: configs for nodes sharing a cluster on the shared RabbitMQ, readiness,
//! and removing a test cluster's streams.

use std::time::Duration;

use herald::cluster::StreamNames;
use serde_json::{json, Value};

use super::{test_config, Client};

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=5";
pub const SHARDS: u32 = 2;

pub fn cluster_config(name: &str) -> (herald::config::Config, tempfile::TempDir) {
    let (mut cfg, dir) = test_config();
    cfg.cluster.enabled = true;
    cfg.cluster.amqp_url = AMQP.into();
    cfg.cluster.name = name.into();
    cfg.cluster.shards = SHARDS;
    cfg.limits.messages_per_second = 100_000;
    cfg.limits.messages_burst = 100_000;
    cfg.namespaces.get_mut("default").unwrap().history_size = Some(10_000);
    (cfg, dir)
}

/// Deletes the streams of cluster `name` (generation from an epoch `<generation>.<shard>`).
pub async fn delete_streams(name: &str, epoch: &str) {
    let generation = epoch.split('.').next().unwrap_or_default();
    let names = StreamNames {
        cluster: name.to_string(),
    };
    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let ch = conn.create_channel().await.unwrap();
    let mut streams: Vec<String> = (0..SHARDS).map(|s| names.shard(generation, s)).collect();
    streams.push(names.meta());
    for s in streams {
        let _ = ch
            .queue_delete(
                s.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await;
    }
}

/// Publishes until the node is connected to the cluster (`unavailable` while it connects).
pub async fn publish_when_ready(c: &mut Client, channel: &str, data: Value) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .request(json!({"type": "publish", "channel": channel, "data": data}))
            .await;
        if r["type"] == "reply" {
            return r["result"].clone();
        }
        assert_eq!(r["code"], "unavailable", "{r}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never connected: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deletes every stream of a test cluster when dropped, also when the test failed half-way (through
/// `rabbitmqctl`, which lists them by name; tests that pass delete them with [`delete_streams`] too).
pub struct StreamsGuard(pub String);

impl Drop for StreamsGuard {
    fn drop(&mut self) {
        let prefix = format!("herald.{}.", self.0);
        let Ok(out) = std::process::Command::new("rabbitmqctl")
            .args(["list_queues", "name", "--quiet"])
            .output()
        else {
            return;
        };
        for q in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&prefix))
        {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["delete_queue", q])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
