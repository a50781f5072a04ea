//! Shared test harness: a real node on port 0 and a small raw WebSocket client speaking both encodings.
#![allow(dead_code)]

pub mod cluster;
pub mod http;
pub mod poll;
pub mod raw;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::config::Config;
use herald::server::{spawn, RunningNode};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A config for tests: port 0 everywhere and a fresh temp data dir (kept alive by the returned guard).
pub fn test_config() -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    c.server.data_dir = dir.path().to_path_buf();
    c.server.workers = 2;
    c.server.channel_threads = 2;
    c.storage.group_commit_ms = 1;
    // The built-in default refuses anonymous clients; most tests connect without a token.
    c.auth.anonymous = true;
    (c, dir)
}

/// Stops an in-process node gracefully (its shutdown blocks, so it runs off the async workers).
pub async fn shutdown(node: RunningNode) {
    tokio::task::spawn_blocking(move || node.shutdown())
        .await
        .unwrap()
        .expect("clean shutdown");
}

pub fn start(config: Config) -> RunningNode {
    spawn(config).expect("node starts")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Enc {
    Json,
    Msgpack,
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub enc: Enc,
    next_id: u64,
    /// Frames received while waiting for something else.
    pub backlog: std::collections::VecDeque<Value>,
    pub welcome: Value,
}

/// What the server did to the connection.
#[derive(Debug)]
pub enum Event {
    Frame(Value),
    Closed(Option<u16>),
}

impl Client {
    pub async fn connect(url: &str, enc: Enc) -> Client {
        Self::try_connect(url, enc, &[]).await.expect("connect")
    }

    pub async fn try_connect(
        url: &str,
        enc: Enc,
        headers: &[(&str, &str)],
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut req = url.into_client_request()?;
        let proto = match enc {
            Enc::Json => "herald.v1.json",
            Enc::Msgpack => "herald.v1.msgpack",
        };
        req.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(proto));
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timeout")?;
        let mut c = Client {
            ws,
            enc,
            next_id: 1,
            backlog: Default::default(),
            welcome: Value::Null,
        };
        let w = c.next_frame().await;
        assert_eq!(w["type"], "welcome", "{w}");
        c.welcome = w;
        Ok(c)
    }

    pub fn encode(&self, v: &Value) -> Message {
        match self.enc {
            Enc::Json => Message::Text(v.to_string().into()),
            Enc::Msgpack => Message::Binary(rmp_serde::to_vec_named(v).unwrap().into()),
        }
    }

    pub async fn send(&mut self, v: Value) {
        let m = self.encode(&v);
        self.ws.send(m).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send raw");
    }

    /// The next frame or close, skipping pings.
    pub async fn next_event(&mut self) -> Event {
        if let Some(v) = self.backlog.pop_front() {
            return Event::Frame(v);
        }
        loop {
            let m = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match m {
                None => return Event::Closed(None),
                Some(Err(_)) => return Event::Closed(None),
                Some(Ok(Message::Text(t))) => {
                    return Event::Frame(serde_json::from_str(&t).expect("server sent bad JSON"))
                }
                Some(Ok(Message::Binary(b))) => {
                    return Event::Frame(
                        rmp_serde::from_slice(&b).expect("server sent bad msgpack"),
                    )
                }
                Some(Ok(Message::Close(f))) => {
                    return Event::Closed(f.map(|f: CloseFrame| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn next_frame(&mut self) -> Value {
        match self.next_event().await {
            Event::Frame(v) => v,
            Event::Closed(c) => panic!("connection closed ({c:?}) while waiting for a frame"),
        }
    }

    /// Sends a command and returns its `reply` or `error`; other frames meanwhile go to the backlog.
    pub async fn request(&mut self, mut cmd: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        cmd["v"] = json!(1);
        cmd["id"] = json!(id);
        self.send(cmd).await;
        let mut skipped = std::collections::VecDeque::new();
        loop {
            let f = match self.backlog.pop_front() {
                Some(f) => f,
                None => {
                    let m = tokio::time::timeout(TIMEOUT, self.ws.next())
                        .await
                        .expect("timed out waiting for a reply");
                    match m {
                        Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap(),
                        Some(Ok(Message::Binary(b))) => rmp_serde::from_slice(&b).unwrap(),
                        Some(Ok(Message::Close(f))) => {
                            panic!("closed while waiting for reply: {f:?}")
                        }
                        Some(Ok(_)) => continue,
                        other => panic!("connection ended waiting for reply: {other:?}"),
                    }
                }
            };
            if (f["type"] == "reply" || f["type"] == "error") && f["id"] == json!(id) {
                skipped.extend(self.backlog.drain(..));
                self.backlog = skipped;
                return f;
            }
            skipped.push_back(f);
        }
    }

    pub async fn ok(&mut self, cmd: Value) -> Value {
        let r = self.request(cmd.clone()).await;
        assert_eq!(r["type"], "reply", "command {cmd} failed: {r}");
        r["result"].clone()
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.ok(json!({"type": "subscribe", "channel": channel}))
            .await
    }

    pub async fn publish(&mut self, channel: &str, data: Value) -> Value {
        self.ok(json!({"type": "publish", "channel": channel, "data": data}))
            .await
    }

    /// Waits for the next `message` frame (skipping join/leave).
    pub async fn next_message(&mut self) -> Value {
        loop {
            let f = self.next_frame().await;
            if f["type"] == "message" {
                return f;
            }
        }
    }
}

/// An hour-long HS256 token for `sub`, signed with `secret`.
pub fn hs256_token(secret: &str, sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Polls `f` until it is true or the timeout passes.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `herald serve` command for the real binary on port 0 with `data_dir`; callers add env and stdio.
pub fn serve_command(data_dir: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(data_dir);
    cmd
}

/// Spawns a `herald serve` command (see [`serve_command`]) with piped stdout, waits for its listening
/// line and keeps draining stdout. The child is killed when dropped. Returns it with its ws:// URL.
pub async fn start_binary(cmd: std::process::Command) -> (tokio::process::Child, String) {
    let (child, ws, _) = start_binary_addrs(cmd).await;
    (child, format!("ws://{ws}/ws"))
}

/// Like [`start_binary`], returning the client and admin addresses.
pub async fn start_binary_addrs(
    cmd: std::process::Command,
) -> (
    tokio::process::Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::from(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn herald");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("herald did not print its listening line in time")
        .expect("read stdout")
        .expect("herald exited before listening");
    let (ws, admin) = parse_listening(&line);
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, ws, admin)
}

/// Parses the binary's first stdout line, `herald listening ws=ADDR admin=ADDR`, into (ws, admin).
pub fn parse_listening(line: &str) -> (std::net::SocketAddr, std::net::SocketAddr) {
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {key}ADDR in the listening line {line:?}"))
    };
    assert!(line.starts_with("herald listening "), "{line:?}");
    (field("ws="), field("admin="))
}
