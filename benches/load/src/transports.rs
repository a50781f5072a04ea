//! `transports`: what herald's long-polling fallback costs next to WebSocket, in one run against one
//! node. One channel, `--subscribers` WebSocket subscribers, then as many long-polling subscribers
//! (herald's `/poll` transport over HTTP/1.1 keep-alive), and the open-loop publisher of `fanout` at
//! `--rate` msg/s for `--secs`. Per transport: delivery latency (intended send time to receipt,
//! p50/p99), HTTP requests per delivered message, and the server's CPU per delivery.
//!
//! Why not the JS client in Node: its HTTP stack costs more CPU per poll than herald spends answering
//! it (benches/polling, generator-bound at 99% of two threads). Here every subscriber runs on this
//! one receiving thread with hand-written HTTP (one request per connection at a time, bodies found by
//! `Content-Length`, message timestamps found with `memchr`), and the thread's CPU is reported:
//! `generator-bound` when it is the limit.
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use clap::Args;
use hdrhistogram::Histogram;
use memchr::memmem;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::client::{find_t, frame_type, Client, Target};
use crate::scenarios::{spawn_publisher, target, PubRun};
use crate::util::{hist_json, new_hist, now_ns, thread_cpu, Server, R};
use crate::Common;

#[derive(Args, Clone, Debug)]
pub struct TransportsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers per transport
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Messages per second
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing per transport
    #[arg(long, default_value_t = 20)]
    pub secs: u64,
    /// Payload bytes
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

#[derive(Default)]
struct Seen {
    hist: Option<Histogram<u64>>,
    delivered: u64,
    requests: u64,
    errors: Vec<String>,
}

type Shared = Rc<RefCell<Seen>>;

fn record(seen: &Shared, body: &[u8]) {
    let now = now_ns();
    let finder = memmem::Finder::new(b"\"t\":");
    let mut s = seen.borrow_mut();
    for i in finder.find_iter(body) {
        if let Some(t) = find_t(&body[i..]) {
            s.delivered += 1;
            if let Some(h) = s.hist.as_mut() {
                let _ = h.record(now.saturating_sub(t) / 1000);
            }
        }
    }
}

/// One HTTP/1.1 keep-alive connection to the node.
struct Http {
    addr: std::net::SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Http {
    fn new(addr: std::net::SocketAddr) -> Self {
        Http {
            addr,
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends one request and returns the status and body.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        session: Option<&str>,
        body: &[u8],
    ) -> R<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.buf.clear();
        }
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(s) = session {
            req.push_str(&format!("Herald-Session: {s}\r\n"));
        }
        if method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        let mut out = req.into_bytes();
        out.extend_from_slice(body);
        let result = self.exchange(&out).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(&mut self, out: &[u8]) -> R<(u16, Vec<u8>)> {
        let s = self.stream.as_mut().ok_or("not connected")?;
        s.write_all(out).await?;
        let head_end = loop {
            if let Some(i) = memmem::find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            read_more(s, &mut self.buf).await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])?.to_ascii_lowercase();
        let status: u16 = head.split_whitespace().nth(1).ok_or("no status")?.parse()?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse())
            .transpose()?
            .unwrap_or(0);
        let close = head.contains("connection: close");
        while self.buf.len() < head_end + 4 + len {
            read_more(s, &mut self.buf).await?;
        }
        let body = self.buf[head_end + 4..head_end + 4 + len].to_vec();
        self.buf.drain(..head_end + 4 + len);
        if close {
            self.stream = None;
        }
        Ok((status, body))
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> R<()> {
    let mut chunk = [0u8; 16 << 10];
    let n = s.read(&mut chunk).await?;
    if n == 0 {
        return Err("connection closed".into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// `"seq":<n>` of a batch.
fn batch_seq(body: &[u8]) -> Option<u64> {
    let i = memmem::find(body, b"\"seq\":")?;
    let digits: Vec<u8> = body[i + 6..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// A long-polling subscriber: open, subscribe, then poll until dropped.
async fn poller(
    addr: std::net::SocketAddr,
    channel: String,
    seen: Shared,
    ready: oneshot::Sender<()>,
) -> R<()> {
    let mut http = Http::new(addr);
    let (status, body) = http
        .request("POST", "/poll/open?encoding=json", None, b"")
        .await?;
    if status != 200 {
        return Err(format!("poll open: HTTP {status}").into());
    }
    let v: Value = serde_json::from_slice(&body)?;
    let session = v["session"].as_str().ok_or("no session")?.to_string();
    let mut ack = v["seq"].as_u64().unwrap_or(0);
    let sub = format!(r#"[{{"v":1,"type":"subscribe","id":1,"channel":"{channel}"}}]"#);
    let (status, _) = http
        .request("POST", "/poll/send?seq=1", Some(&session), sub.as_bytes())
        .await?;
    if status != 204 {
        return Err(format!("poll send: HTTP {status}").into());
    }
    let mut ready = Some(ready);
    loop {
        let path = format!("/poll/recv?ack={ack}");
        let (status, body) = http.request("GET", &path, Some(&session), b"").await?;
        seen.borrow_mut().requests += 1;
        if status != 200 {
            return Err(format!("poll recv: HTTP {status}").into());
        }
        if memmem::find(&body, b"\"frames\":[]").is_none() {
            ack = batch_seq(&body).ok_or("batch without seq")?;
        }
        if memmem::find(&body, b"\"type\":\"reply\"").is_some() {
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
        }
        record(&seen, &body);
    }
}

/// A WebSocket subscriber.
async fn websocket(t: Target, channel: String, seen: Shared, ready: oneshot::Sender<()>) -> R<()> {
    let mut c = Client::connect(&t, None).await?;
    c.subscribe(1, &channel).await?;
    let _ = ready.send(());
    while let Some(f) = c.recv().await? {
        if frame_type(&f) == b"message" {
            record(&seen, &f);
        }
    }
    Err(c.closed_with.unwrap_or_else(|| "closed".into()).into())
}

async fn phase(a: &TransportsArgs, t: &Target, server: Server, transport: &str) -> R<Value> {
    let channel = format!(
        "bench:transports:{transport}:{}",
        crate::scenarios::run_id()
    );
    let seen: Shared = Rc::new(RefCell::new(Seen::default()));
    let mut tasks = Vec::new();
    for _ in 0..a.subscribers {
        let (tx, rx) = oneshot::channel();
        let (seen2, ch) = (seen.clone(), channel.clone());
        let task = match transport {
            "websocket" => tokio::task::spawn_local(websocket(t.clone(), ch, seen2.clone(), tx)),
            _ => tokio::task::spawn_local(poller(t.addr, ch, seen2.clone(), tx)),
        };
        let errs = seen.clone();
        tasks.push(tokio::task::spawn_local(async move {
            if let Ok(Err(e)) = task.await {
                errs.borrow_mut().errors.push(e.to_string());
            }
        }));
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .map_err(|_| format!("{transport} subscriber not subscribed in 10 s"))??;
    }
    let publisher = spawn_publisher(t.clone(), channel, a.size)?;
    {
        let mut s = seen.borrow_mut();
        s.hist = Some(new_hist());
        s.delivered = 0;
        s.requests = 0;
    }
    let n = (a.rate * a.secs as f64) as u64;
    let start_ns = now_ns() + 200_000_000;
    let (cpu0, gen0) = (server.cpu(), thread_cpu());
    let (done_tx, done_rx) = oneshot::channel();
    publisher.tx.send(PubRun {
        start_ns,
        rate: a.rate,
        n,
        done: done_tx,
    })?;
    let pubrep = done_rx.await?;
    let expected = pubrep.sent * a.subscribers as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.borrow().delivered < expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = (now_ns() - start_ns) as f64 / 1e9;
    let (cpu1, gen1) = (server.cpu(), thread_cpu());
    for t in tasks {
        t.abort();
    }
    let s = seen.borrow();
    let hist = s.hist.as_ref().ok_or("no histogram")?;
    let server_cpu = cpu0.zip(cpu1).map(|(a, b)| b - a);
    let gen_util = (gen1 - gen0) / wall;
    Ok(json!({
        "transport": transport,
        "subscribers": a.subscribers,
        "rate": a.rate,
        "secs": a.secs,
        "sent": pubrep.sent,
        "delivered": s.delivered,
        "expected": expected,
        "latency_us": hist_json(hist),
        "p50_ms": hist.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": hist.value_at_quantile(0.99) as f64 / 1000.0,
        "http_requests_per_delivery": s.requests as f64 / (s.delivered.max(1)) as f64,
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_delivery": server_cpu.map(|c| c * 1e6 / s.delivered.max(1) as f64),
        "generator_recv_thread_util": gen_util,
        "generator_bound": gen_util > 0.9,
        "publisher_max_lag_ms": pubrep.max_lag_ms,
        "errors": s.errors.iter().take(3).collect::<Vec<_>>(),
    }))
}

pub async fn run(a: TransportsArgs) -> R<Value> {
    let (t, server) = target(&a.common).await?;
    let ws = phase(&a, &t, server, "websocket").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lp = phase(&a, &t, server, "long_polling").await?;
    let ratio = |k: &str| match (lp[k].as_f64(), ws[k].as_f64()) {
        (Some(x), Some(y)) if y > 0.0 => json!(x / y),
        _ => Value::Null,
    };
    for r in [&ws, &lp] {
        if r["generator_bound"] == json!(true) {
            eprintln!("generator-bound ({})", r["transport"]);
        }
    }
    Ok(json!({
        "scenario": "transports",
        "websocket": ws,
        "long_polling": lp,
        "long_polling_over_websocket": {
            "p50": ratio("p50_ms"),
            "p99": ratio("p99_ms"),
            "server_cpu_per_delivery": ratio("server_cpu_us_per_delivery"),
        },
    }))
}
