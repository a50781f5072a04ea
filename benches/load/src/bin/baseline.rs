//! baseline-server: the physical limit for herald's fan-out on this machine.
//!
//! One tokio runtime (`--threads 1`: a current-thread runtime, one core), raw WebSocket framing
//! (herald_bench::ws: the handshake, then frames parsed in place in a 4 KiB read buffer per
//! connection), a subscriber list per channel, and per-connection write coalescing: a publish is
//! encoded once into a complete WebSocket frame (`Bytes`, shared by reference count), pushed onto
//! every subscriber's queue, and each connection's writer task takes everything queued since it
//! last ran and sends it with one write(2). The busier the server, the more frames each write
//! carries. It speaks just enough of herald's JSON protocol (welcome, subscribe/publish with
//! reply, message with `data` echoed verbatim, close 4001 for a slow consumer) for herald-bench to
//! drive it. No history, no durability, no auth: it is a ceiling, not a competitor.
use bytes::Bytes;
use clap::Parser;
use herald_bench::ws::{self, FrameBuf};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Parser)]
#[command(
    name = "baseline-server",
    about = "Minimal coalescing WebSocket fan-out server (benchmark ceiling)"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Threads: 1 = a current-thread runtime (the minimal single-threaded server), N > 1 = a
    /// multi-threaded runtime with N workers, 0 = one worker per core
    #[arg(long, default_value_t = 1)]
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

/// One connection's outgoing side: complete frames queued for its writer task.
struct Out {
    q: Mutex<Outq>,
    wake: Notify,
    limit: usize,
}

#[derive(Default)]
struct Outq {
    frames: Vec<Bytes>,
    /// no more frames: the writer sends what is queued, then closes
    closed: bool,
}

impl Out {
    /// Queue a frame; `false` (and the connection is being closed with 4001) if `limit` frames
    /// were already waiting: a slow consumer.
    fn push(&self, f: Bytes) -> bool {
        let mut q = self.q.lock().unwrap();
        if q.closed {
            return false;
        }
        let ok = q.frames.len() < self.limit;
        if ok {
            q.frames.push(f);
        } else {
            q.frames.push(frame(ws::OP_CLOSE, b"\x0f\xa1slow consumer"));
            q.closed = true;
        }
        drop(q);
        self.wake.notify_one();
        ok
    }

    fn close(&self) {
        self.q.lock().unwrap().closed = true;
        self.wake.notify_one();
    }
}

/// A complete unmasked frame.
fn frame(op: u8, payload: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(payload.len() + 10);
    ws::put_server_frame(&mut v, op, payload);
    v.into()
}

fn text(s: String) -> Bytes {
    frame(ws::OP_TEXT, s.as_bytes())
}

/// (connection id, its outgoing queue) of a channel's subscribers
type Subs = Vec<(u64, Arc<Out>)>;

#[derive(Default)]
struct Channel {
    subs: Mutex<(u64, Subs)>, // (head offset, subscribers)
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
    let mut b = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if args.threads > 1 {
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

fn reply(id: &str, result: &str) -> Bytes {
    text(format!(
        r#"{{"v":1,"type":"reply","ts":{},"id":{id},"result":{result}}}"#,
        ts()
    ))
}

fn error(id: &str, code: &str) -> Bytes {
    text(format!(
        r#"{{"v":1,"type":"error","ts":{},"id":{id},"code":"{code}","message":"{code}"}}"#,
        ts()
    ))
}

/// The writer task: everything queued since it last ran leaves in one write(2).
async fn writer(mut w: tokio::net::tcp::OwnedWriteHalf, out: Arc<Out>) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        out.wake.notified().await;
        let closed = {
            let mut q = out.q.lock().unwrap();
            std::mem::swap(&mut q.frames, &mut batch);
            q.closed
        };
        for f in batch.drain(..) {
            buf.extend_from_slice(&f);
        }
        if !buf.is_empty() {
            if w.write_all(&buf).await.is_err() {
                break;
            }
            buf.clear();
            buf.shrink_to(64 << 10);
        }
        if closed {
            break;
        }
    }
    out.close();
    let _ = w.shutdown().await;
}

async fn conn(
    mut stream: TcpStream,
    reg: Arc<Registry>,
    outbox: usize,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    stream.set_nodelay(true)?;
    let mut fb = FrameBuf::new(4096);
    ws::server_handshake(&mut stream, &mut fb).await?;
    let (mut r, w) = stream.into_split();
    let me = reg.next_conn.fetch_add(1, Ordering::Relaxed);
    let out = Arc::new(Out {
        q: Mutex::new(Outq::default()),
        wake: Notify::new(),
        limit: outbox,
    });
    let wr = tokio::spawn(writer(w, out.clone()));
    out.push(text(format!(
        r#"{{"v":1,"type":"welcome","ts":{},"session":"b{me}","node":"baseline","heartbeat_ms":25000,"encoding":"json","user":null}}"#,
        ts()
    )));
    let mut subscribed: Vec<Arc<Channel>> = Vec::new();
    'read: while fb.read_from(&mut r).await.unwrap_or(false) {
        while let Some((op, p)) = fb.next_frame()? {
            let out_frame = match op {
                ws::OP_TEXT => command(p, &reg, &out, me, &mut subscribed)?,
                ws::OP_PING => frame(ws::OP_PONG, p),
                ws::OP_CLOSE => {
                    out.push(frame(ws::OP_CLOSE, p.get(..2).unwrap_or(&b"\x03\xe8"[..])));
                    break 'read;
                }
                _ => continue,
            };
            if !out.push(out_frame) {
                break 'read;
            }
        }
    }
    for ch in subscribed {
        ch.subs.lock().unwrap().1.retain(|(c, _)| *c != me);
    }
    out.close();
    let _ = wr.await;
    Ok(())
}

/// Execute one command; returns the frame that answers it.
fn command(
    payload: &[u8],
    reg: &Registry,
    out: &Arc<Out>,
    me: u64,
    subscribed: &mut Vec<Arc<Channel>>,
) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    let cmd: Cmd = match serde_json::from_slice(payload) {
        Ok(c) => c,
        Err(_) => return Ok(error("null", "bad_request")),
    };
    let id = cmd.id.map(|r| r.get()).unwrap_or("null");
    Ok(match (&*cmd.ty, cmd.channel.as_deref()) {
        ("subscribe", Some(name)) => {
            let ch = reg.channel(name);
            if subscribed.iter().any(|c| Arc::ptr_eq(c, &ch)) {
                error(id, "already_subscribed")
            } else {
                let mut g = ch.subs.lock().unwrap();
                g.1.push((me, out.clone()));
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
            // encoded once, shared by every subscriber's queue
            let f = text(format!(
                r#"{{"v":1,"type":"message","ts":{},"channel":{name_json},"id":"m{off}","epoch":"baseline","offset":{off},"data":{data}}}"#,
                ts()
            ));
            // slow consumers (queue full) are dropped from the channel, like herald's 4001
            g.1.retain(|(_, o)| o.push(f.clone()));
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
    })
}
