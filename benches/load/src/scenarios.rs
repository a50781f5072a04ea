//! The fanout and replay scenarios and what all scenarios share (idle and churn have their own
//! modules). Each scenario returns one JSON object (see docs in benches/compare.sh).
use crate::client::{find_offset, find_t, frame_type, publish_json, sched, Client, Target};
use crate::util::{gen_cpu, hist_json, new_hist, now_ns, progress, thread_cpu, Server, R};
use crate::Common;
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub async fn sleep_until_ns(t: u64) {
    let now = now_ns();
    if t > now {
        tokio::time::sleep(Duration::from_nanos(t - now)).await;
    }
}

pub fn run_id() -> String {
    format!("{:x}", now_ns() / 1000 % 0xffff_ffff)
}

/// Source address for fan-out subscriber `i`: beyond 20k connections spread over 127.0.0.2..=9
/// so the ~28k ephemeral ports per (source, destination) pair do not run out.
fn bind_for(t: &Target, i: usize, n: usize) -> Option<IpAddr> {
    (n > 20_000 && t.addr.ip().is_loopback())
        .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8)))
}

pub async fn target(c: &Common) -> R<(Target, Server)> {
    let t = Target::resolve(&c.url, c.proto == "sio").await?;
    Ok((t, Server { pid: c.server_pid }))
}

/// Open `range` connections, connection `i` from source address `bind(i)` and subscribing to
/// `chans(i)`; failures are counted, not fatal.
pub async fn open_many(
    t: &Target,
    range: std::ops::Range<usize>,
    conc: usize,
    chans: &dyn Fn(usize) -> Vec<String>,
    bind: &dyn Fn(usize) -> Option<IpAddr>,
    pb: &indicatif::ProgressBar,
) -> (Vec<Client>, Vec<String>) {
    let results: Vec<R<Client>> = futures_util::stream::iter(range)
        .map(|i| {
            let names = chans(i);
            let src = bind(i);
            async move {
                let mut c = Client::connect(t, src).await?;
                for (k, ch) in names.iter().enumerate() {
                    c.subscribe(k as u64 + 1, ch).await?;
                }
                pb.inc(1);
                Ok(c)
            }
        })
        .buffer_unordered(conc.max(1))
        .collect()
        .await;
    let mut ok = Vec::new();
    let mut errs = Vec::new();
    for r in results {
        match r {
            Ok(c) => ok.push(c),
            Err(e) => errs.push(e.to_string()),
        }
    }
    (ok, errs)
}

/// The first few distinct error messages.
pub fn first_errors<'a>(errs: impl IntoIterator<Item = &'a String>) -> Value {
    let mut e: Vec<&String> = Vec::new();
    for x in errs {
        if e.len() == 3 {
            break;
        }
        if !e.contains(&x) {
            e.push(x);
        }
    }
    json!(e)
}

// ---------------------------------------------------------------- fanout

#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers on the channel
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Size of `data` in bytes (64 or 1024 are the standard points)
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Publish rates (messages/s) to step through
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,200,500,1000,2000,3000,5000,7000,10000,15000,20000,30000,50000"
    )]
    pub rates: Vec<f64>,
    /// Seconds per step
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    /// Seconds at the start of each step that are not measured
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Stop after the first step whose p99 exceeds this
    #[arg(long, default_value_t = 100.0)]
    pub p99_limit_ms: f64,
    /// Seconds to wait after a step for late deliveries
    #[arg(long, default_value_t = 2.0)]
    pub drain_secs: f64,
    /// Run every rate even after the limit was crossed
    #[arg(long)]
    pub all_steps: bool,
    /// Publish through this URL instead of `--url` (a cluster: publisher on one node, subscribers on
    /// another, so every delivery crosses RabbitMQ)
    #[arg(long)]
    pub publish_url: Option<String>,
}

#[derive(Default, Clone)]
struct FanStats {
    ws: u64,
    we: u64,
    hist: Option<Histogram<u64>>,
    matched: u64,
    arrived: u64,
    total: u64,
    closed: u64,
    first_close: Option<String>,
}

pub(crate) struct PubRun {
    pub start_ns: u64,
    pub rate: f64,
    pub n: u64,
    pub done: oneshot::Sender<PubReport>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct PubReport {
    pub sent: u64,
    replies: u64,
    errors: u64,
    first_error: Option<String>,
    pub max_lag_ms: f64,
    closed: bool,
}

/// Open-loop publisher on its own thread and runtime, so its schedule does not depend on how busy
/// the receiving core is. Every 1 ms tick it sends all frames that are due, in one write.
pub(crate) fn spawn_publisher(
    t: Target,
    channel: String,
    size: usize,
) -> R<mpsc::UnboundedSender<PubRun>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PubRun>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut c = match Client::connect(&t, None).await {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let mut rep = PubReport::default();
                let mut cur: Option<(PubRun, u64)> = None;
                let mut id = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                enum Ev {
                    Cmd(Option<PubRun>),
                    Tick,
                    Frame(R<Option<bytes::Bytes>>),
                }
                loop {
                    let busy = cur.is_some();
                    let ev = tokio::select! {
                        cmd = rx.recv(), if !busy => Ev::Cmd(cmd),
                        _ = tick.tick(), if busy => Ev::Tick,
                        f = c.recv(), if !rep.closed => Ev::Frame(f),
                    };
                    match ev {
                        Ev::Cmd(None) => break,
                        Ev::Cmd(Some(run)) => cur = Some((run, 0)),
                        Ev::Frame(Ok(Some(f))) => {
                            let ty = frame_type(&f);
                            if ty == b"reply" {
                                rep.replies += 1;
                            } else if ty == b"error" {
                                rep.errors += 1;
                                if rep.first_error.is_none() {
                                    rep.first_error =
                                        Some(String::from_utf8_lossy(&f).into_owned());
                                }
                            }
                        }
                        Ev::Frame(r) => {
                            rep.closed = true;
                            if let Err(e) = r {
                                rep.first_error.get_or_insert(e.to_string());
                            }
                            if let Some(w) = &c.closed_with {
                                rep.first_error.get_or_insert(w.clone());
                            }
                        }
                        Ev::Tick => {
                            let (run, i) = cur.as_mut().unwrap();
                            let now = now_ns();
                            if now < run.start_ns {
                                continue;
                            }
                            let period = 1e9 / run.rate;
                            let due =
                                (((now - run.start_ns) as f64 / period) as u64 + 1).min(run.n);
                            if *i < due {
                                let first_t = sched(run.start_ns, *i, period);
                                rep.max_lag_ms = rep
                                    .max_lag_ms
                                    .max((now.saturating_sub(first_t)) as f64 / 1e6);
                            }
                            let mut failed = rep.closed;
                            while *i < due && !failed {
                                id += 1;
                                let ts = sched(run.start_ns, *i, period);
                                failed =
                                    c.feed(publish_json(id, &channel, ts, size)).await.is_err();
                                *i += 1;
                                rep.sent += 1;
                            }
                            failed |= c.flush().await.is_err();
                            if failed {
                                rep.closed = true;
                            }
                            if *i >= run.n || failed {
                                let (run, _) = cur.take().unwrap();
                                let _ = run.done.send(rep.clone());
                                let closed = rep.closed;
                                rep = PubReport {
                                    closed,
                                    ..Default::default()
                                };
                            }
                        }
                    }
                }
            });
        })?;
    ready_rx
        .recv()?
        .map_err(|e| format!("publisher connect: {e}"))?;
    Ok(tx)
}

pub async fn fanout(a: FanoutArgs) -> R<Value> {
    let (t, server) = target(&a.common).await?;
    let channel = format!("bench-{}", run_id());
    let s = a.subscribers;
    let pb = progress(s as u64, "subscribers");
    let ch = channel.clone();
    let (subs, errs) = open_many(
        &t,
        0..s,
        a.common.connect_concurrency,
        &|_| vec![ch.clone()],
        &|i| bind_for(&t, i, s),
        &pb,
    )
    .await;
    pb.finish_and_clear();
    if subs.is_empty() {
        return Err(format!("no subscriber connected: {:?}", first_errors(&errs)).into());
    }
    let alive0 = subs.len() as u64;
    let st = Rc::new(RefCell::new(FanStats {
        hist: Some(new_hist()),
        ..Default::default()
    }));
    for mut c in subs {
        let st = st.clone();
        tokio::task::spawn_local(async move {
            loop {
                match c.recv().await {
                    Ok(Some(f)) => {
                        if let Some(ts) = find_t(&f) {
                            let now = now_ns();
                            let mut s = st.borrow_mut();
                            s.total += 1;
                            if now >= s.ws && now < s.we {
                                s.arrived += 1;
                            }
                            if ts >= s.ws && ts < s.we {
                                s.matched += 1;
                                let _ = s
                                    .hist
                                    .as_mut()
                                    .unwrap()
                                    .record(((now.saturating_sub(ts)) / 1000).max(1));
                            }
                        }
                    }
                    _ => {
                        let mut s = st.borrow_mut();
                        s.closed += 1;
                        if s.first_close.is_none() {
                            s.first_close = c.closed_with.clone();
                        }
                        break;
                    }
                }
            }
        });
    }
    let pt = match &a.publish_url {
        Some(url) => Target::resolve(url, a.common.proto == "sio").await?,
        None => t.clone(),
    };
    let publisher = spawn_publisher(pt, channel.clone(), a.size)?;
    let mut steps = Vec::new();
    let mut stopped = "all rates done".to_string();
    let mut best: f64 = 0.0;
    let pb = progress(a.rates.len() as u64, "rates");
    for &rate in &a.rates {
        pb.set_message(format!("{rate} msg/s"));
        let alive = alive0 - st.borrow().closed;
        let start = now_ns() + 200_000_000;
        let dur_ns = (a.step_secs * 1e9) as u64;
        let warm_ns = (a.warmup_secs.min(a.step_secs / 2.0) * 1e9) as u64;
        let (ws, we) = (start + warm_ns, start + dur_ns);
        let n = (rate * a.step_secs).round() as u64;
        let period = 1e9 / rate;
        let expected_msgs = (0..n)
            .map(|i| sched(start, i, period))
            .filter(|&x| x >= ws && x < we)
            .count() as u64;
        {
            let mut s = st.borrow_mut();
            s.ws = ws;
            s.we = we;
            s.hist.as_mut().unwrap().reset();
            s.matched = 0;
            s.arrived = 0;
        }
        let (done_tx, done_rx) = oneshot::channel();
        publisher
            .send(PubRun {
                start_ns: start,
                rate,
                n,
                done: done_tx,
            })
            .map_err(|_| "publisher gone")?;
        sleep_until_ns(ws).await;
        let c0 = (now_ns(), server.cpu(), gen_cpu(), thread_cpu());
        sleep_until_ns(we).await;
        let c1 = (now_ns(), server.cpu(), gen_cpu(), thread_cpu());
        let rss = server.rss_kb();
        let rep = done_rx.await.unwrap_or_default();
        let expected = expected_msgs * alive;
        let deadline = now_ns() + (a.drain_secs * 1e9) as u64;
        while st.borrow().matched < expected && now_ns() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (wall, srv_cpu, g_cpu, th_cpu) = (
            (c1.0 - c0.0) as f64 / 1e9,
            c1.1.zip(c0.1).map(|(b, a)| b - a),
            c1.2 - c0.2,
            c1.3 - c0.3,
        );
        // An owned copy, so no RefCell borrow lives across the awaits below.
        let s = st.borrow().clone();
        let h = s.hist.as_ref().unwrap();
        let dps = s.arrived as f64 / wall;
        let lost = expected.saturating_sub(s.matched);
        let p99 = if !h.is_empty() {
            h.value_at_quantile(0.99) as f64 / 1000.0
        } else {
            f64::INFINITY
        };
        let gen_bound = th_cpu / wall > 0.9;
        steps.push(json!({
            "rate": rate,
            "offered_deliveries_per_s": rate * alive as f64,
            "deliveries_per_s": dps,
            "latency": hist_json(h),
            "expected_deliveries": expected,
            "lost_deliveries": lost,
            "subscribers_alive": alive,
            "subscribers_closed_total": s.closed,
            "subscriber_first_close": s.first_close,
            "published": rep.sent,
            "publish_replies": rep.replies,
            "publish_errors": rep.errors,
            "publish_first_error": rep.first_error,
            "publisher_max_lag_ms": rep.max_lag_ms,
            "window_s": wall,
            "server_cpu_s": srv_cpu,
            "server_cpu_util": srv_cpu.map(|c| c / wall),
            "server_cpu_us_per_delivery": srv_cpu.map(|c| if s.arrived > 0 { c * 1e6 / s.arrived as f64 } else { 0.0 }),
            "server_cpu_s_per_million_deliveries": srv_cpu.map(|c| if s.arrived > 0 { c * 1e6 / s.arrived as f64 } else { 0.0 }),
            "server_rss_kb": rss,
            "generator_cpu_s": g_cpu,
            "generator_cpu_util": g_cpu / wall,
            "generator_recv_thread_util": th_cpu / wall,
            "generator_bound": gen_bound,
        }));
        pb.inc(1);
        let lost_frac = if expected > 0 {
            lost as f64 / expected as f64
        } else {
            1.0
        };
        if p99 <= a.p99_limit_ms && lost_frac <= 0.01 {
            best = best.max(dps);
        }
        let why = if rep.closed {
            Some(format!(
                "publisher connection closed: {:?}",
                rep.first_error
            ))
        } else if rep.errors > 0 {
            Some(format!("publish errors: {:?}", rep.first_error))
        } else if st.borrow().closed >= alive0 {
            Some(format!(
                "all subscribers disconnected: {:?}",
                st.borrow().first_close
            ))
        } else if !server.alive() {
            Some("server died".into())
        } else if p99 > a.p99_limit_ms {
            Some(format!(
                "p99 {p99:.1} ms > {} ms at {rate} msg/s",
                a.p99_limit_ms
            ))
        } else if lost_frac > 0.01 {
            Some(format!(
                "{lost} of {expected} deliveries missing at {rate} msg/s"
            ))
        } else {
            None
        };
        drop(s);
        if let Some(w) = why {
            stopped = w;
            if !a.all_steps || rep.closed || !server.alive() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    pb.finish_and_clear();
    drop(publisher);
    Ok(json!({
        "scenario": "fanout",
        "channel": channel,
        "subscribers": s,
        "subscribers_connected": alive0,
        "connect_errors": errs.len(),
        "connect_first_errors": first_errors(&errs),
        "size": a.size,
        "p99_limit_ms": a.p99_limit_ms,
        "max_deliveries_per_s_within_limit": best,
        "stopped_because": stopped,
        "steps": steps,
    }))
}

// ---------------------------------------------------------------- replay

#[derive(Args, Clone, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub common: Common,
    /// Messages to publish before resuming
    #[arg(long, default_value_t = 10000)]
    pub messages: u64,
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Publishes in flight (awaiting their reply)
    #[arg(long, default_value_t = 256)]
    pub window: u64,
    #[arg(long, default_value_t = 120.0)]
    pub timeout_secs: f64,
}

pub async fn replay(a: ReplayArgs) -> R<Value> {
    let (t, server) = target(&a.common).await?;
    let channel = format!("replay-{}", run_id());
    let mut p = Client::connect(&t, None).await?;
    let (cpu0, g0) = (server.cpu(), gen_cpu());
    let t0 = Instant::now();
    let (mut sent, mut acked, mut errors) = (0u64, 0u64, 0u64);
    let mut epoch: Option<String> = None;
    let (mut first_off, mut last_off) = (u64::MAX, 0u64);
    let mut first_error = None;
    let pb = progress(a.messages, "publishing");
    while acked + errors < a.messages {
        let mut fed = false;
        while sent < a.messages && sent - acked - errors < a.window {
            sent += 1;
            p.feed(publish_json(sent, &channel, now_ns(), a.size))
                .await?;
            fed = true;
        }
        if fed {
            p.flush().await?;
        }
        let f = tokio::time::timeout(Duration::from_secs_f64(a.timeout_secs), p.recv())
            .await
            .map_err(|_| "timeout waiting for publish replies")??
            .ok_or("publisher closed")?;
        let ty = frame_type(&f);
        if ty == b"reply" {
            acked += 1;
            pb.inc(1);
            let v: Value = serde_json::from_slice(&f)?;
            if let Some(o) = v["result"]["offset"].as_u64() {
                first_off = first_off.min(o);
                last_off = last_off.max(o);
            }
            if epoch.is_none() {
                epoch = v["result"]["epoch"].as_str().map(String::from);
            }
        } else if ty == b"error" {
            errors += 1;
            first_error.get_or_insert_with(|| String::from_utf8_lossy(&f).into_owned());
        }
    }
    pb.finish_and_clear();
    let publish_secs = t0.elapsed().as_secs_f64();
    let cpu1 = server.cpu();
    let epoch = epoch
        .ok_or_else(|| format!("no publish reply with an epoch; first error: {first_error:?}"))?;
    let since = first_off.saturating_sub(1);
    let mut r = Client::connect(&t, None).await?;
    let t1 = Instant::now();
    let (ok, reply) = r
        .request(
            1,
            format!(r#"{{"v":1,"type":"subscribe","id":1,"channel":"{channel}","since":{{"epoch":"{epoch}","offset":{since}}}}}"#),
        )
        .await?;
    let reply_ms = t1.elapsed().as_secs_f64() * 1e3;
    let rv: Value = serde_json::from_slice(&reply)?;
    if !ok {
        return Err(format!("resume refused: {rv}").into());
    }
    let (mut expect, mut received, mut gaps, mut dups) = (since + 1, 0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs_f64(a.timeout_secs);
    // recovered:false means nothing will be replayed (e.g. history_size smaller than M): do not wait.
    let refused = rv["result"]["recovered"] == json!(false);
    let mut done = last_off == since || refused;
    while !done && Instant::now() < deadline {
        let f = match tokio::time::timeout_at(deadline.into(), r.recv()).await {
            Ok(Ok(Some(f))) => f,
            _ => break,
        };
        if frame_type(&f) != b"message" {
            continue;
        }
        received += 1;
        let Some(off) = find_offset(&f) else { continue };
        if off == expect {
            expect += 1;
        } else if off < expect {
            dups += 1;
        } else {
            gaps += off - expect;
            expect = off + 1;
        }
        done = off >= last_off;
    }
    let last_ms = t1.elapsed().as_secs_f64() * 1e3;
    if expect <= last_off {
        gaps += last_off + 1 - expect;
    }
    Ok(json!({
        "scenario": "replay",
        "channel": channel,
        "messages": a.messages,
        "size": a.size,
        "publish_acked": acked,
        "publish_errors": errors,
        "publish_first_error": first_error,
        "publish_secs": publish_secs,
        "publish_per_s": acked as f64 / publish_secs,
        "server_cpu_s_publishing": cpu1.zip(cpu0).map(|(b, a)| b - a),
        "epoch": epoch,
        "since_offset": since,
        "last_offset": last_off,
        "resume_reply": rv.get("result"),
        "time_to_reply_ms": reply_ms,
        "time_to_last_ms": last_ms,
        "completed": done && !refused,
        "recovered": !refused,
        "replayed_received": received,
        "replay_msgs_per_s": received as f64 / (last_ms / 1e3),
        "gaps": gaps,
        "duplicates": dups,
        "server_cpu_s_replaying": server.cpu().zip(cpu1).map(|(b, a)| b - a),
        "generator_cpu_s": gen_cpu() - g0,
    }))
}
