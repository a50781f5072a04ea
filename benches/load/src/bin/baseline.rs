//! baseline-server: the physical limit for herald's fan-out on this machine.
//!
//! One tokio runtime, tokio-tungstenite with a 4 KiB read buffer, a subscriber list per channel,
//! and per-connection write coalescing: every connection has a bounded queue and one writer task
//! that takes everything queued, `feed`s it all and then `flush`es once, so the frames queued for
//! a connection leave in one write(2). Each message is encoded once per publish and shared
//! (`Utf8Bytes` is reference-counted). It speaks just enough of herald's JSON protocol (welcome,
//! subscribe/publish with reply, message with `data` echoed verbatim) for herald-bench to drive it.
//! No history, no durability, no auth: it is a ceiling, not a competitor.
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(
    name = "baseline-server",
    about = "Minimal coalescing WebSocket fan-out server (benchmark ceiling)"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Worker threads (0 = one per core)
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Frames a connection may have queued before it is dropped as a slow consumer
    #[arg(long, default_value_t = 8192)]
    outbox: usize,
}

#[derive(Deserialize)]
struct Cmd<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

type Tx = mpsc::Sender<Message>;

#[derive(Default)]
struct Channel {
    subs: Mutex<(u64, Vec<(u64, Tx)>)>, // (head offset, subscribers)
}

#[derive(Default)]
struct Registry {
    channels: RwLock<HashMap<String, Arc<Channel>>>,
    next_conn: AtomicU64,
}

impl Registry {
    fn channel(&self, name: &str) -> Arc<Channel> {
        if let Some(c) = self.channels.read().unwrap().get(name) {
            return c.clone();
        }
        self.channels
            .write()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone()
    }
}

fn ts() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn main() {
    let args = Args::parse();
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        b.worker_threads(args.threads);
    }
    b.enable_all().build().unwrap().block_on(async move {
        // An accept queue of 1024, as herald's `server.backlog` (std and tokio's `bind` ask for 128, which
        // overflows under a few thousand connects/s and turns into 1 s SYN retries).
        let addr: std::net::SocketAddr = args.listen.parse().expect("--listen must be IP:PORT");
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("socket");
        sock.set_reuseaddr(true).expect("SO_REUSEADDR");
        sock.bind(addr).expect("bind");
        let listener: TcpListener = sock.listen(1024).expect("listen");
        println!("listening ws={}", listener.local_addr().unwrap());
        std::io::stdout().flush().ok();
        let reg = Arc::new(Registry::default());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let reg = reg.clone();
            let outbox = args.outbox;
            tokio::spawn(async move {
                let _ = conn(stream, reg, outbox).await;
            });
        }
    });
}

fn reply(id: &str, result: &str) -> Message {
    Message::text(format!(
        r#"{{"v":1,"type":"reply","ts":{},"id":{id},"result":{result}}}"#,
        ts()
    ))
}

fn error(id: &str, code: &str) -> Message {
    Message::text(format!(
        r#"{{"v":1,"type":"error","ts":{},"id":{id},"code":"{code}","message":"{code}"}}"#,
        ts()
    ))
}

async fn conn(
    stream: TcpStream,
    reg: Arc<Registry>,
    outbox: usize,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    stream.set_nodelay(true)?;
    let cfg = WebSocketConfig::default().read_buffer_size(4096);
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(cfg)).await?;
    let (mut sink, mut source) = ws.split();
    let me = reg.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Message>(outbox);
    // writer: drain everything queued, one flush (= one write syscall) per batch
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.feed(m).await.is_err() {
                return;
            }
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let welcome = format!(
        r#"{{"v":1,"type":"welcome","ts":{},"session":"b{me}","node":"baseline","heartbeat_ms":25000,"encoding":"json","user":null}}"#,
        ts()
    );
    tx.send(Message::text(welcome)).await?;
    let mut subscribed: Vec<Arc<Channel>> = Vec::new();
    while let Some(msg) = source.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let cmd: Cmd = match serde_json::from_str(text.as_str()) {
            Ok(c) => c,
            Err(_) => {
                if tx.send(error("null", "bad_request")).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let id = cmd.id.map(|r| r.get()).unwrap_or("null");
        let out = match (&*cmd.ty, cmd.channel.as_deref()) {
            ("subscribe", Some(name)) => {
                let ch = reg.channel(name);
                if subscribed.iter().any(|c| Arc::ptr_eq(c, &ch)) {
                    error(id, "already_subscribed")
                } else {
                    let mut g = ch.subs.lock().unwrap();
                    g.1.push((me, tx.clone()));
                    let head = g.0;
                    drop(g);
                    subscribed.push(ch);
                    let name_json = serde_json::to_string(name)?;
                    reply(
                        id,
                        &format!(r#"{{"channel":{name_json},"epoch":"baseline","offset":{head}}}"#),
                    )
                }
            }
            ("publish", Some(name)) => {
                let data = cmd.data.map(|d| d.get()).unwrap_or("null");
                let ch = reg.channel(name);
                let name_json = serde_json::to_string(name)?;
                let mut g = ch.subs.lock().unwrap();
                g.0 += 1;
                let off = g.0;
                let frame = Message::text(format!(
                    r#"{{"v":1,"type":"message","ts":{},"channel":{name_json},"id":"m{off}","epoch":"baseline","offset":{off},"data":{data}}}"#,
                    ts()
                ));
                // slow consumers (full queue) are dropped from the channel, like herald's 4001
                g.1.retain(|(_, s)| match s.try_send(frame.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => false,
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
                drop(g);
                reply(
                    id,
                    &format!(r#"{{"id":"m{off}","epoch":"baseline","offset":{off}}}"#),
                )
            }
            ("unsubscribe", Some(name)) => {
                let ch = reg.channel(name);
                if let Some(i) = subscribed.iter().position(|c| Arc::ptr_eq(c, &ch)) {
                    subscribed.swap_remove(i);
                    ch.subs.lock().unwrap().1.retain(|(c, _)| *c != me);
                    reply(id, "{}")
                } else {
                    error(id, "not_subscribed")
                }
            }
            ("ping", _) => reply(id, "{}"),
            _ => error(id, "bad_request"),
        };
        if tx.send(out).await.is_err() {
            break;
        }
    }
    for ch in subscribed {
        ch.subs.lock().unwrap().1.retain(|(c, _)| *c != me);
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}
