//! S4: open-loop connects/s. Connection `k` of the run is due at `start + k / rate`; it connects,
//! subscribes to one of `--channels` channels, holds for a uniform 1-5 s and closes. The schedule
//! is dealt round-robin over `--procs` worker processes (worker `w` runs every `k ≡ w mod procs`),
//! so together they follow the one-process schedule exactly. Each worker reports its counts and
//! its connect-to-subscribed histogram, which the coordinator merges bucket by bucket.
use crate::client::Client;
use crate::procs::{self, emit, Link, ProcsArgs, Workers};
use crate::scenarios::{run_id, sleep_until_ns, target};
use crate::util::{self, gen_cpu, hist_add_json, hist_json, hist_to_json, new_hist, now_ns, R};
use crate::Common;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

#[derive(Args, Clone, Debug)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub procs: ProcsArgs,
    /// New connections per second (open loop)
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    #[arg(long, default_value_t = 1.0)]
    pub hold_min_secs: f64,
    #[arg(long, default_value_t = 5.0)]
    pub hold_max_secs: f64,
    /// Channels the connections spread over
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
}

/// Width of the windows in which workers record their highest number of live connections.
const BUCKET_NS: u64 = 100_000_000;

struct ChurnStats {
    hist: Histogram<u64>,
    connect_err: u64,
    subscribe_err: u64,
    first_err: Option<String>,
    live: u64,
    peak: u64,
    /// Highest `live` in each BUCKET_NS window since the start.
    live_max: Vec<u64>,
    start: u64,
    done: u64,
}

impl ChurnStats {
    fn live_add(&mut self, up: bool) {
        let i = (now_ns().saturating_sub(self.start) / BUCKET_NS) as usize;
        while self.live_max.len() <= i {
            self.live_max.push(self.live);
        }
        self.live = if up {
            self.live + 1
        } else {
            self.live.saturating_sub(1)
        };
        self.peak = self.peak.max(self.live);
        let b = &mut self.live_max[i];
        *b = (*b).max(self.live);
    }

    fn failed(&mut self, connecting: bool, e: String) {
        if connecting {
            self.connect_err += 1;
        } else {
            self.subscribe_err += 1;
        }
        self.first_err.get_or_insert(e);
        self.done += 1;
    }
}

/// The coordinator.
pub async fn run(a: ChurnArgs, nofile: u64) -> R<Value> {
    let (_, server) = target(&a.common).await?;
    let procs = a.procs.procs;
    let per_proc = a.rate / procs as f64 * a.hold_max_secs;
    if per_proc + 64.0 > nofile as f64 {
        eprintln!(
            "herald-bench churn: up to ~{per_proc:.0} open sockets per process at the longest hold, \
             over the {nofile} fd limit; expect EMFILE (try --procs {})",
            (a.rate * a.hold_max_secs / (nofile as f64 * 0.75)).ceil()
        );
    }
    let run = run_id();
    let (rss0, fds0, cpu0, g0) = (server.rss_kb(), server.fds(), server.cpu(), gen_cpu());
    let n = (a.rate * a.duration_secs).round() as u64;
    let mut w = Workers::start(procs, &run, util::progress(n, "connects")).await?;
    let start = now_ns() + 100_000_000;
    let wait = Duration::from_secs_f64(a.duration_secs + a.hold_max_secs + 60.0);
    let res = w
        .ask("start", json!({ "start_ns": start }), "result", wait)
        .await?;
    w.finish().await?;
    let mut hist = new_hist();
    let mut live_max: Vec<u64> = Vec::new();
    for r in &res {
        hist_add_json(&mut hist, &r["connect_to_subscribed_hist"])?;
        for (i, x) in r["live_max_per_100ms"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if live_max.len() <= i {
                live_max.push(0);
            }
            live_max[i] += x.as_u64().unwrap_or(0);
        }
    }
    let total = |key: &str| -> u64 { res.iter().filter_map(|r| r[key].as_u64()).sum() };
    let first_error = res.iter().find_map(|r| r["first_error"].as_str());
    let max_lag = res
        .iter()
        .filter_map(|r| r["generator_max_lag_ms"].as_f64())
        .fold(0.0, f64::max);
    let workers: Vec<Value> = res
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if let Value::Object(m) = &mut r {
                m.remove("connect_to_subscribed_hist");
                m.remove("live_max_per_100ms");
            }
            r
        })
        .collect();
    let (rss_mid, fds_mid) = (server.rss_kb(), server.fds());
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(json!({
        "scenario": "churn",
        "rate": a.rate,
        "duration_secs": a.duration_secs,
        "procs": procs,
        "attempted": total("attempted"),
        "completed": total("completed"),
        // still connecting or holding when the worker gave up (hold_max + 15 s after the last due)
        "unfinished": total("unfinished"),
        "connect_errors": total("connect_errors"),
        "subscribe_errors": total("subscribe_errors"),
        "first_error": first_error,
        "peak_concurrent": live_max.iter().copied().max().unwrap_or(0),
        "peak_concurrent_is": if procs == 1 {
            "exact"
        } else {
            "an upper bound: the sum over workers of each one's peak within the same 100 ms window"
        },
        "connect_to_subscribed": hist_json(&hist),
        "generator_max_lag_ms": max_lag,
        "server_rss_kb_before": rss0,
        "server_rss_kb_after": server.rss_kb(),
        "server_rss_kb_after_closes": rss_mid,
        "server_fds_before": fds0,
        "server_fds_after_closes": fds_mid,
        "server_fds_after": server.fds(),
        "server_cpu_s": server.cpu().zip(cpu0).map(|(b, a)| b - a),
        "generator_cpu_s": gen_cpu() - g0,
        "workers": workers,
    }))
}

/// One worker process: runs its part of the schedule once the coordinator says `start`.
pub async fn worker(a: ChurnArgs) -> R<Value> {
    let (w, run) = a.procs.worker_id()?;
    let (t, _) = target(&a.common).await?;
    let addrs = procs::source_addrs(&t, w);
    let mut link = Link::open();
    let pb = indicatif::ProgressBar::hidden();
    procs::report_progress(&pb);
    emit("ready", json!({}));
    let (cmd, v) = link.next().await?;
    let start = match (cmd.as_str(), v["start_ns"].as_u64()) {
        ("start", Some(s)) => s,
        _ => return Err(format!("expected start, got {v}").into()),
    };
    let n = (a.rate * a.duration_secs).round() as u64;
    let period = 1e9 / a.rate;
    let st = Rc::new(RefCell::new(ChurnStats {
        hist: new_hist(),
        connect_err: 0,
        subscribe_err: 0,
        first_err: None,
        live: 0,
        peak: 0,
        live_max: Vec::new(),
        start,
        done: 0,
    }));
    let mut rng = util::Rng::new(now_ns() ^ ((w as u64) << 48));
    let mut max_lag_ms: f64 = 0.0;
    let mine = (w as u64..n).step_by(a.procs.procs);
    let count = mine.clone().count() as u64;
    for (j, k) in mine.enumerate() {
        let intended = start + (k as f64 * period) as u64;
        sleep_until_ns(intended).await;
        max_lag_ms = max_lag_ms.max(now_ns().saturating_sub(intended) as f64 / 1e6);
        let hold = Duration::from_secs_f64(
            a.hold_min_secs
                + (a.hold_max_secs - a.hold_min_secs) * (rng.next() % 10_000) as f64 / 10_000.0,
        );
        let ch = format!("churn-{run}-{}", rng.range(0, a.channels as u64));
        let (t, st, pb, src) = (t.clone(), st.clone(), pb.clone(), procs::pick(&addrs, j));
        tokio::task::spawn_local(async move {
            let mut c = match Client::connect(&t, src).await {
                Ok(c) => c,
                Err(e) => return st.borrow_mut().failed(true, e.to_string()),
            };
            if let Err(e) = c.subscribe(1, &ch).await {
                return st.borrow_mut().failed(false, e.to_string());
            }
            {
                let mut s = st.borrow_mut();
                let _ = s
                    .hist
                    .record((now_ns().saturating_sub(intended) / 1000).max(1));
                s.live_add(true);
            }
            pb.inc(1);
            let _ = tokio::time::timeout(hold, async { while let Ok(Some(_)) = c.recv().await {} })
                .await;
            c.close().await;
            let mut s = st.borrow_mut();
            s.live_add(false);
            s.done += 1;
        });
    }
    let deadline = Instant::now() + Duration::from_secs_f64(a.hold_max_secs + 15.0);
    while st.borrow().done < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = st.borrow();
    Ok(json!({
        "worker": w,
        "source_addrs": addrs,
        "attempted": count,
        "completed": s.done,
        "unfinished": count - s.done,
        "connect_errors": s.connect_err,
        "subscribe_errors": s.subscribe_err,
        "first_error": s.first_err,
        "peak_concurrent": s.peak,
        "generator_max_lag_ms": max_lag_ms,
        "generator_cpu_s": gen_cpu(),
        "connect_to_subscribed": hist_json(&s.hist),
        "connect_to_subscribed_hist": hist_to_json(&s.hist),
        "live_max_per_100ms": s.live_max,
    }))
}
