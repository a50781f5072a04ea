//! The fanout and replay scenarios and what all scenarios share (idle and churn have their own
//! modules). Each scenario returns one JSON object (see docs in benches/compare.sh).
use crate::client::{find_offset, frame_type, publish_json, sched, Client, Target};
use crate::pace::Timer;
use crate::sub::LeanSub;
use crate::util::{
    clock_cpu, gen_cpu, hist_json, machine_cores_busy, machine_jiffies, new_hist, now_ns, progress,
    thread_cpu, thread_cpu_clock, Server, R,
};
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

/// Open `range` connections with `connect(i)`, `conc` at a time; failures are counted, not fatal.
pub async fn open_many<C, F, Fut>(
    range: std::ops::Range<usize>,
    conc: usize,
    connect: F,
    pb: &indicatif::ProgressBar,
) -> (Vec<C>, Vec<String>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = R<C>>,
{
    let results: Vec<R<C>> = futures_util::stream::iter(range)
        .map(|i| {
            let c = connect(i);
            async move {
                let c = c.await?;
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
    /// Publish rates (messages/s) to step through, in this order (instead of the search below)
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<f64>>,
    /// Search: first rate in messages/s (default: 100,000 deliveries/s worth)
    #[arg(long)]
    pub start_rate: Option<f64>,
    /// Search: factor between rates until a step fails
    #[arg(long, default_value_t = 1.5)]
    pub growth: f64,
    /// Search: bisections between the last passing and the first failing rate
    #[arg(long, default_value_t = 3)]
    pub refine: u32,
    /// Search: never go above this rate (messages/s)
    #[arg(long, default_value_t = 1e6)]
    pub max_rate: f64,
    /// Search: no extra step at half the best rate at the end
    #[arg(long)]
    pub no_half_step: bool,
    /// Read buffer per subscriber connection (bytes)
    #[arg(long, default_value_t = 8192)]
    pub read_buf: usize,
    /// A failing step is run again (at most `--retries` times) when other processes used more
    /// than this many cores during it
    #[arg(long, default_value_t = 0.3)]
    pub shared_cores: f64,
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// A step is `generator-bound` when the receiving or the publisher thread used more than
    /// this share of a core
    #[arg(long, default_value_t = 0.9)]
    pub generator_bound_util: f64,
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
    /// With --rates: run every rate even after the limit was crossed
    #[arg(long)]
    pub all_steps: bool,
    /// Publish through this URL instead of `--url` (a cluster: publisher on one node, subscribers on
    /// another, so every delivery crosses RabbitMQ)
    #[arg(long)]
    pub publish_url: Option<String>,
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

/// The publisher thread: commands go in through `tx`; `cpu` is its CPU-time clock.
pub(crate) struct Publisher {
    pub tx: mpsc::UnboundedSender<PubRun>,
    pub cpu: libc::clockid_t,
}

/// Wake-ups of the publisher are at least this far apart: at rates above 20k msg/s it sends the
/// frames due since the last wake-up together (their stamps stay on the schedule).
const MIN_WAKE_GAP_NS: u64 = 50_000;

/// Open-loop publisher on its own thread and runtime, so its schedule does not depend on how busy
/// the receiving core is. A timerfd (pace.rs) wakes it at the scheduled time of the next frame;
/// it then sends every frame that is due, stamped with its scheduled time (not the time it was
/// sent: a late publisher, or a server that stops reading, shows up as latency).
pub(crate) fn spawn_publisher(t: Target, channel: String, size: usize) -> R<Publisher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PubRun>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<libc::clockid_t, String>>();
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            // 1 ns timer slack instead of 50 µs: wake-ups land on the schedule
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let conn = async { R::Ok((Client::connect(&t, None).await?, Timer::new()?)) };
                let (mut c, timer) = match conn.await {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(thread_cpu_clock()));
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
                enum Ev {
                    Cmd(Option<PubRun>),
                    Tick,
                    Frame(R<Option<bytes::Bytes>>),
                }
                loop {
                    let busy = cur.is_some();
                    let ev = tokio::select! {
                        cmd = rx.recv(), if !busy => Ev::Cmd(cmd),
                        _ = timer.wait(), if busy => Ev::Tick,
                        f = c.recv(), if !rep.closed => Ev::Frame(f),
                    };
                    match ev {
                        Ev::Cmd(None) => break,
                        Ev::Cmd(Some(run)) => {
                            let _ = timer.set(run.start_ns);
                            cur = Some((run, 0));
                        }
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
                            let period = 1e9 / run.rate;
                            let now = now_ns();
                            if now < sched(run.start_ns, *i, period) {
                                let _ = timer.set(sched(run.start_ns, *i, period));
                                continue;
                            }
                            rep.max_lag_ms = rep.max_lag_ms.max(
                                now.saturating_sub(sched(run.start_ns, *i, period)) as f64 / 1e6,
                            );
                            let mut failed = rep.closed;
                            while *i < run.n && !failed && sched(run.start_ns, *i, period) <= now {
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
                            } else {
                                let next = sched(run.start_ns, *i, period);
                                let _ = timer.set(next.max(now + MIN_WAKE_GAP_NS));
                            }
                        }
                    }
                }
            });
        })?;
    let cpu = ready_rx
        .recv()?
        .map_err(|e| format!("publisher connect: {e}"))?;
    Ok(Publisher { tx, cpu })
}

/// The rates a fan-out run steps through: a fixed list, or a search that grows the rate
/// geometrically until a step fails (or shrinks it until one passes), then bisects (geometric mean) between the last good and the
/// first bad rate `refine` times, and ends with one step at half the best rate (latency at 50%).
enum Ladder {
    Fixed(std::collections::VecDeque<f64>),
    Search {
        next: Option<f64>,
        growth: f64,
        max_rate: f64,
        refine: u32,
        good: Option<f64>,
        bad: Option<f64>,
        half_done: bool,
    },
}

impl Ladder {
    fn new(a: &FanoutArgs) -> Ladder {
        match &a.rates {
            Some(r) => Ladder::Fixed(r.iter().copied().collect()),
            None => Ladder::Search {
                next: Some(
                    a.start_rate
                        .unwrap_or(100_000.0 / a.subscribers.max(1) as f64)
                        .max(1.0),
                ),
                growth: a.growth.max(1.01),
                max_rate: a.max_rate,
                refine: a.refine,
                good: None,
                bad: None,
                half_done: a.no_half_step,
            },
        }
    }

    /// The next rate, and whether it is the extra step at half the best rate.
    fn next(&mut self) -> Option<(f64, bool)> {
        match self {
            Ladder::Fixed(q) => q.pop_front().map(|r| (r, false)),
            Ladder::Search {
                next,
                good,
                half_done,
                ..
            } => match (next.take(), *half_done, *good) {
                (Some(r), _, _) => Some((r, false)),
                (None, false, Some(g)) => {
                    *half_done = true;
                    Some((g / 2.0, true))
                }
                _ => None,
            },
        }
    }

    /// The step at `rate` passed (`ok`) or failed (the half step is not reported here).
    fn result(&mut self, rate: f64, ok: bool) {
        let Ladder::Search {
            next,
            growth,
            max_rate,
            refine,
            good,
            bad,
            ..
        } = self
        else {
            return;
        };
        if ok {
            *good = Some(good.map_or(rate, |g| g.max(rate)));
        } else {
            *bad = Some(bad.map_or(rate, |b| b.min(rate)));
        }
        *next = match (*good, *bad) {
            (Some(g), None) if g * *growth <= *max_rate => Some(g * *growth),
            // even the first rate failed: step down (to 1 msg/s at the lowest)
            (None, Some(b)) if b > 1.0 => Some((b / (*growth * *growth)).max(1.0)),
            (Some(g), Some(b)) if *refine > 0 && b > g => {
                *refine -= 1;
                Some((g * b).sqrt())
            }
            _ => None,
        };
    }
}

/// Everything the subscribers saw, shared by all subscriber tasks on the receiving thread.
#[derive(Clone)]
struct FanStats {
    /// measuring window [ws, we): unix ns
    ws: u64,
    we: u64,
    /// latency (scheduled send -> arrival) of the frames scheduled inside the window
    hist: Histogram<u64>,
    /// frames scheduled inside the window that arrived (whenever)
    matched: u64,
    /// frames that arrived inside the window (whenever scheduled): the throughput
    arrived: u64,
    /// frames received at all
    total: u64,
    closed: u64,
    first_close: Option<String>,
}

impl crate::sub::Sink for FanStats {
    fn delivered(&mut self, now: u64, t: u64) {
        self.total += 1;
        if now >= self.ws && now < self.we {
            self.arrived += 1;
        }
        if t >= self.ws && t < self.we {
            self.matched += 1;
            let _ = self.hist.record((now.saturating_sub(t) / 1000).max(1));
        }
    }
    fn closed(&mut self, why: Option<String>) {
        self.closed += 1;
        if self.first_close.is_none() {
            self.first_close = why;
        }
    }
}

/// A step's CPU readings: wall clock, server, generator process, receiving thread, publisher
/// thread, whole machine.
struct Cpu(u64, Option<f64>, f64, f64, f64, Option<(u64, u64)>);

impl Cpu {
    fn read(server: &Server, publisher: &Publisher) -> Cpu {
        Cpu(
            now_ns(),
            server.cpu(),
            gen_cpu(),
            thread_cpu(),
            clock_cpu(publisher.cpu),
            machine_jiffies(),
        )
    }
}

/// Wait until no frame arrived for 100 ms (at most `max_ns`): the previous step's backlog is
/// delivered before the next step starts.
async fn settle(st: &RefCell<FanStats>, max_ns: u64) {
    let deadline = now_ns() + max_ns;
    let mut last = st.borrow().total;
    while now_ns() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = st.borrow().total;
        if t == last {
            return;
        }
        last = t;
    }
}

pub async fn fanout(a: FanoutArgs) -> R<Value> {
    let (t, server) = target(&a.common).await?;
    let channel = format!("bench-{}", run_id());
    let s = a.subscribers;
    let pb = progress(s as u64, "subscribers");
    let (subs, errs) = open_many(
        0..s,
        a.common.connect_concurrency,
        |i| LeanSub::connect(&t, bind_for(&t, i, s), &channel, a.read_buf),
        &pb,
    )
    .await;
    pb.finish_and_clear();
    if subs.is_empty() {
        return Err(format!("no subscriber connected: {:?}", first_errors(&errs)).into());
    }
    let alive0 = subs.len() as u64;
    let st = Rc::new(RefCell::new(FanStats {
        ws: 0,
        we: 0,
        hist: new_hist(),
        matched: 0,
        arrived: 0,
        total: 0,
        closed: 0,
        first_close: None,
    }));
    for c in subs {
        let st = st.clone();
        tokio::task::spawn_local(async move { c.run(&st).await });
    }
    let pt = match &a.publish_url {
        Some(url) => Target::resolve(url, a.common.proto == "sio").await?,
        None => t.clone(),
    };
    let publisher = spawn_publisher(pt, channel.clone(), a.size)?;
    let mut steps = Vec::new();
    let mut stopped = "all rates done".to_string();
    // (deliveries/s, generator-bound, subscribers alive) of the best passing step
    let mut best: Option<(f64, bool, u64)> = None;
    let mut first_bad_gen_bound = None;
    let mut ladder = Ladder::new(&a);
    let pb = progress(0, "steps");
    let (mut again, mut tries) = (None, 0);
    while let Some((rate, half)) = again.take().or_else(|| ladder.next()) {
        pb.set_message(format!("{rate:.0} msg/s"));
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
            s.hist.reset();
            s.matched = 0;
            s.arrived = 0;
        }
        let (done_tx, done_rx) = oneshot::channel();
        publisher
            .tx
            .send(PubRun {
                start_ns: start,
                rate,
                n,
                done: done_tx,
            })
            .map_err(|_| "publisher gone")?;
        sleep_until_ns(ws).await;
        let c0 = Cpu::read(&server, &publisher);
        sleep_until_ns(we).await;
        let c1 = Cpu::read(&server, &publisher);
        let rss = server.rss_kb();
        let rep = done_rx.await.unwrap_or_default();
        let expected = expected_msgs * alive;
        let deadline = now_ns() + (a.drain_secs * 1e9) as u64;
        while st.borrow().matched < expected && now_ns() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // CPU over the wall time actually slept; deliveries over the window they were counted in
        let wall = (c1.0 - c0.0) as f64 / 1e9;
        let window = (we - ws) as f64 / 1e9;
        let srv_cpu = c1.1.zip(c0.1).map(|(b, a)| b - a);
        let (g_util, recv_util, pub_util) = (
            (c1.2 - c0.2) / wall,
            (c1.3 - c0.3) / wall,
            (c1.4 - c0.4) / wall,
        );
        // An owned copy, so no RefCell borrow lives across the awaits below.
        let s = st.borrow().clone();
        let h = &s.hist;
        let dps = s.arrived as f64 / window;
        let lost = expected.saturating_sub(s.matched);
        let p99 = if !h.is_empty() {
            h.value_at_quantile(0.99) as f64 / 1000.0
        } else {
            f64::INFINITY
        };
        let gen_bound = recv_util > a.generator_bound_util || pub_util > a.generator_bound_util;
        let machine = machine_cores_busy(c0.5, c1.5);
        // cores that neither the server nor the generator used: other processes on the machine
        let others = machine.zip(srv_cpu).map(|(m, c)| m - c / wall - g_util);
        let shared = others.is_some_and(|o| o > a.shared_cores);
        let per_million = srv_cpu.map(|c| {
            if s.arrived > 0 {
                c * 1e6 / s.arrived as f64
            } else {
                0.0
            }
        });
        steps.push(json!({
            "rate": rate,
            "half_of_best": half,
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
            "window_s": window,
            "server_cpu_s": srv_cpu,
            "server_cpu_util": srv_cpu.map(|c| c / wall),
            "server_cpu_us_per_delivery": per_million,
            "server_cpu_s_per_million_deliveries": per_million,
            "server_rss_kb": rss,
            "generator_cpu_s": c1.2 - c0.2,
            "generator_cpu_util": g_util,
            "generator_recv_thread_util": recv_util,
            "generator_publisher_thread_util": pub_util,
            "generator_bound": gen_bound,
            "machine_cores_busy": machine,
            "other_cores_busy": others,
            "machine_shared": shared,
        }));
        pb.inc(1);
        let lost_frac = if expected > 0 {
            lost as f64 / expected as f64
        } else {
            1.0
        };
        let fatal = if rep.closed {
            Some(format!(
                "publisher connection closed: {:?}",
                rep.first_error
            ))
        } else if rep.errors > 0 {
            Some(format!("publish errors: {:?}", rep.first_error))
        } else if s.closed >= alive0 {
            Some(format!("all subscribers disconnected: {:?}", s.first_close))
        } else if !server.alive() {
            Some("server died".into())
        } else {
            None
        };
        let why = fatal.clone().or_else(|| {
            if p99 > a.p99_limit_ms {
                Some(format!(
                    "p99 {p99:.1} ms > {} ms at {rate:.0} msg/s",
                    a.p99_limit_ms
                ))
            } else if lost_frac > 0.01 {
                Some(format!(
                    "{lost} of {expected} deliveries missing at {rate:.0} msg/s"
                ))
            } else {
                None
            }
        });
        let retry = why.is_some() && fatal.is_none() && shared && tries < a.retries;
        pb.suspend(|| {
            eprintln!(
                "{rate:>8.0} msg/s: {dps:>9.0} deliveries/s, p50 {:.1} ms, p99 {p99:.1} ms, lost \
                 {lost}; CPU server {:.2}, generator {g_util:.2} (receiving thread \
                 {recv_util:.2}, publisher {pub_util:.2}), other processes {:.2}{}{}{}",
                h.value_at_quantile(0.5) as f64 / 1000.0,
                srv_cpu.unwrap_or(f64::NAN) / wall,
                others.unwrap_or(f64::NAN),
                if gen_bound { " generator-bound" } else { "" },
                if why.is_some() { " FAIL" } else { "" },
                if retry {
                    " (machine shared: again)"
                } else {
                    ""
                },
            )
        });
        if let Some(Value::Object(m)) = steps.last_mut() {
            m.insert("retried".into(), json!(retry));
        }
        if retry {
            tries += 1;
            again = Some((rate, half));
            settle(&st, (a.drain_secs * 1e9) as u64 + 5_000_000_000).await;
            continue;
        }
        tries = 0;
        if why.is_none() && best.is_none_or(|(b, _, _)| dps > b) {
            best = Some((dps, gen_bound, alive));
        }
        if !half {
            ladder.result(rate, why.is_none());
        }
        if let Some(w) = why {
            if first_bad_gen_bound.is_none() {
                first_bad_gen_bound = Some(gen_bound);
            }
            if !half {
                stopped = w;
            }
            let fixed = matches!(ladder, Ladder::Fixed(_));
            if fatal.is_some() || (fixed && !a.all_steps) {
                break;
            }
        }
        settle(&st, (a.drain_secs * 1e9) as u64 + 5_000_000_000).await;
    }
    pb.finish_and_clear();
    drop(publisher);
    // the generator may be what limits the result: the best step or the first failing one was
    // generator-bound
    let generator_bound = best.is_some_and(|(_, g, _)| g) || first_bad_gen_bound == Some(true);
    let closed = st.borrow().closed;
    eprintln!(
        "max {:.0} deliveries/s within p99 <= {} ms to {} subscribers; stopped: {stopped}{}{}",
        best.map_or(0.0, |b| b.0),
        a.p99_limit_ms,
        best.map_or(alive0, |b| b.2),
        if closed > 0 {
            format!(
                "; {closed} subscribers were disconnected ({:?})",
                st.borrow().first_close
            )
        } else {
            String::new()
        },
        if generator_bound {
            "; generator-bound: the generator, not the server, may be the limit"
        } else {
            ""
        }
    );
    Ok(json!({
        "scenario": "fanout",
        "channel": channel,
        "subscribers": s,
        "subscribers_connected": alive0,
        "connect_errors": errs.len(),
        "connect_first_errors": first_errors(&errs),
        "size": a.size,
        "p99_limit_ms": a.p99_limit_ms,
        "max_deliveries_per_s_within_limit": best.map_or(0.0, |b| b.0),
        "subscribers_alive_at_best": best.map(|b| b.2),
        "generator_bound": generator_bound,
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

#[cfg(test)]
mod tests {
    use super::Ladder;

    /// Rates a search visits when every rate up to `limit` passes.
    fn search(start: f64, limit: f64) -> Vec<f64> {
        let mut l = Ladder::Search {
            next: Some(start),
            growth: 1.5,
            max_rate: 1e6,
            refine: 3,
            good: None,
            bad: None,
            half_done: false,
        };
        let mut seen = Vec::new();
        while let Some((r, half)) = l.next() {
            seen.push(r.round());
            if !half {
                l.result(r, r <= limit);
            }
        }
        seen
    }

    #[test]
    fn search_grows_bisects_and_ends_at_half_the_best() {
        let s = search(100.0, 1400.0);
        assert_eq!(
            &s[..8],
            &[100.0, 150.0, 225.0, 338.0, 506.0, 759.0, 1139.0, 1709.0]
        );
        // three bisections (1395 passes, 1544 and 1468 fail), then half of the best passing rate
        assert_eq!(&s[8..], &[1395.0, 1544.0, 1468.0, 698.0]);
    }

    #[test]
    fn search_steps_down_when_the_first_rate_fails() {
        let s = search(100.0, 30.0);
        // 44 fails, 20 passes, then bisections between them
        assert_eq!(&s[..4], &[100.0, 44.0, 20.0, 30.0]);
        assert!(s.len() < 10);
    }
}
