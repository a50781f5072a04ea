//! The herald nodes of a check: real `herald serve` processes the checker starts, kills and restarts.
//!
//! Each node keeps its ports and data directory across restarts, so clients reconnect to the same
//! addresses and a restarted node resumes from its stored positions, as in production. Clients reach a
//! node through an in-process [`Proxy`] (so a scenario can cut client connections), and a node reaches
//! RabbitMQ through another one (so a scenario can cut the node from the broker).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proxy::Proxy;

/// Why the cluster could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("proxy: {0}")]
    Proxy(String),
    #[error(
        "node {node} did not become ready within {secs} s (log: {log}); last log lines:\n{tail}"
    )]
    NotReady {
        node: String,
        secs: u64,
        log: String,
        tail: String,
    },
    #[error("node {node} did not exit within {secs} s after SIGTERM")]
    NoExit { node: String, secs: u64 },
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16, std::io::Error> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One herald node.
pub struct Node {
    pub id: String,
    bin: PathBuf,
    dir: PathBuf,
    cluster: String,
    client: SocketAddr,
    admin: SocketAddr,
    /// Clients connect here.
    pub client_proxy: Proxy,
    /// The node connects to RabbitMQ through this.
    pub amqp_proxy: Proxy,
    child: Option<tokio::process::Child>,
    pub restarts: u32,
}

impl Node {
    /// The URL clients use (through the client proxy).
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.client_proxy.addr())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// Starts the node process (returns once it is ready: `/readyz` 200).
    pub async fn start(&mut self) -> Result<(), ClusterError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let amqp = format!(
            "amqp://guest:guest@{}/%2f?heartbeat=5",
            self.amqp_proxy.addr()
        );
        let child = tokio::process::Command::new(&self.bin)
            .arg("serve")
            .arg("--listen")
            .arg(self.client.to_string())
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .current_dir(&self.dir)
            .env("HERALD_SERVER__NODE_ID", &self.id)
            .env("HERALD_AUTH__ANONYMOUS", "true")
            .env("HERALD_LIMITS__MESSAGES_PER_SECOND", "1000000")
            .env("HERALD_LIMITS__MESSAGES_BURST", "1000000")
            .env("HERALD_LIMITS__MAX_CONNECTIONS_PER_IP", "100000")
            .env("HERALD_LIMITS__CONNECTS_PER_SECOND_PER_IP", "100000")
            .env("HERALD_NAMESPACES__DEFAULT__HISTORY_SIZE", "1000000")
            .env("HERALD_CLUSTER__ENABLED", "true")
            .env("HERALD_CLUSTER__AMQP_URL", amqp)
            .env("HERALD_CLUSTER__NAME", &self.cluster)
            .env("HERALD_CLUSTER__SHARDS", "2")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        // A first connect to a freshly booted RabbitMQ can take one set-up timeout (15 s) and a retry.
        self.wait_ready(Duration::from_secs(60)).await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if http_status(self.admin, "/readyz").await == Some(200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ClusterError::NotReady {
            node: self.id.clone(),
            secs: within.as_secs(),
            log: self.log_path().display().to_string(),
            tail: last_lines(
                &std::fs::read_to_string(self.log_path()).unwrap_or_default(),
                20,
            ),
        })
    }

    /// `kill -9`.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// SIGTERM and wait for the exit (the node drains: clients get 1001 and move on).
    pub async fn stop(&mut self) -> Result<(), ClusterError> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = c.id() {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), c.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = c.start_kill();
                Err(ClusterError::NoExit {
                    node: self.id.clone(),
                    secs: 30,
                })
            }
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// Three (or more) nodes of one cluster.
pub struct Cluster {
    pub name: String,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Prepares `n` nodes under `base` (not started) for the RabbitMQ at `amqp`.
    pub async fn new(
        bin: &Path,
        base: &Path,
        n: usize,
        amqp: SocketAddr,
    ) -> Result<Cluster, ClusterError> {
        let name = format!("check-{}", ulid::Ulid::new());
        let mut nodes = Vec::new();
        for i in 1..=n {
            let dir = base.join(format!("node{i}"));
            std::fs::create_dir_all(&dir)?;
            let client: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            let client_proxy = Proxy::start(client)
                .await
                .map_err(|e| ClusterError::Proxy(e.to_string()))?;
            let amqp_proxy = Proxy::start(amqp)
                .await
                .map_err(|e| ClusterError::Proxy(e.to_string()))?;
            nodes.push(Node {
                id: format!("n{i}"),
                bin: bin.to_path_buf(),
                dir,
                cluster: name.clone(),
                client,
                admin,
                client_proxy,
                amqp_proxy,
                child: None,
                restarts: 0,
            });
        }
        Ok(Cluster { name, nodes })
    }

    pub async fn start_all(&mut self) -> Result<(), ClusterError> {
        for n in &mut self.nodes {
            n.start().await?;
        }
        Ok(())
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    pub async fn stop_all(&mut self) {
        for n in &mut self.nodes {
            if n.stop().await.is_err() {
                n.kill9().await;
            }
        }
    }
}

/// The status code of `GET path` on `addr`, if it answered.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        head.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}
