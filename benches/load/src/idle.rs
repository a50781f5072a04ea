//! S1: idle connections (2 subscriptions each) and the server's memory per connection, optionally
//! after a burst of large messages to every connection. The connections live in `--procs` worker
//! processes (see procs.rs); the coordinator reads the server and publishes the burst.
//!
//! Commands to a worker: `open {upto}` (open its connections below global index `upto`, answer
//! `opened`), `status` (answer `status` with deliveries received and connections closed), `close`
//! (answer with the final `result` and exit).
use crate::client::{frame_type, publish_json, Client};
use crate::procs::{self, emit, Link, ProcsArgs, Workers};
use crate::scenarios::{first_errors, open_many, run_id, target};
use crate::util::{gen_cpu, now_ns, progress, R};
use crate::Common;
use clap::Args;
use serde_json::{json, Value};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub procs: ProcsArgs,
    /// Connections to open (one process holds at most ~19.9k: use --procs beyond that)
    #[arg(long, default_value_t = 5000)]
    pub connections: usize,
    /// RSS samples taken while connecting (for the memory-vs-connections plot)
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// Seconds to wait after the last connection before the final reading
    #[arg(long, default_value_t = 5.0)]
    pub settle_secs: f64,
    /// After the idle reading, publish a burst of large messages to every connection, then rest
    #[arg(long)]
    pub burst: bool,
    /// Messages in the burst
    #[arg(long, default_value_t = 20)]
    pub burst_count: u64,
    /// Size of each burst message's `data` (herald refuses more than limits.max_publish_bytes = 32 KiB)
    #[arg(long, default_value_t = 30000)]
    pub burst_size: usize,
    /// Seconds to rest after the burst before reading RSS again
    #[arg(long, default_value_t = 60.0)]
    pub rest_secs: f64,
}

fn all_channel(run: &str) -> String {
    format!("idle-all-{run}")
}

fn sum(vs: &[Value], key: &str) -> u64 {
    vs.iter().filter_map(|v| v[key].as_u64()).sum()
}

/// Deliveries received and connections closed, over all workers.
async fn status(w: &mut Workers) -> R<(u64, u64)> {
    let st = w
        .ask("status", json!({}), "status", Duration::from_secs(30))
        .await?;
    Ok((sum(&st, "received"), sum(&st, "closed")))
}

/// The coordinator.
pub async fn run(a: IdleArgs, nofile: u64) -> R<Value> {
    let (t, server) = target(&a.common).await?;
    let (n, procs) = (a.connections, a.procs.procs);
    let most = n.div_ceil(procs);
    if most as u64 + 64 > nofile {
        let need = n.div_ceil((nofile.max(1064) - 64) as usize);
        return Err(format!(
            "{n} connections over {procs} processes are {most} sockets per process, but a process may \
             hold {nofile} fds; use --procs {need} or more"
        )
        .into());
    }
    let run = run_id();
    let all = all_channel(&run);
    let rss0 = server.rss_kb();
    let cpu0 = server.cpu();
    let mut samples = vec![json!({"connections": 0, "rss_kb": rss0})];
    let mut w = Workers::start(procs, &run, progress(n as u64, "connections")).await?;
    let batches = a.samples.max(1);
    let started = Instant::now();
    let mut ok = 0;
    let open_timeout = Duration::from_secs(600);
    for b in 0..batches {
        let hi = n * (b + 1) / batches;
        let opened = w
            .ask("open", json!({ "upto": hi }), "opened", open_timeout)
            .await?;
        ok = sum(&opened, "connected");
        tokio::time::sleep(Duration::from_millis(300)).await;
        samples.push(json!({"connections": ok, "rss_kb": server.rss_kb()}));
    }
    w.pb.finish_and_clear();
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(a.settle_secs)).await;
    let rss1 = server.rss_kb();
    let per_conn = |r: Option<u64>| -> Option<f64> {
        let (r, r0) = (r?, rss0?);
        (ok > 0).then(|| (r as f64 - r0 as f64) * 1024.0 / ok as f64)
    };
    let (_, closed_idle) = status(&mut w).await?;
    let mut out = json!({
        "scenario": "idle",
        "connections": n,
        "procs": procs,
        "connected": ok,
        "connect_errors": n as u64 - ok,
        "connect_secs": connect_secs,
        "server_rss_kb_before": rss0,
        "server_rss_kb_idle": rss1,
        "server_bytes_per_connection": per_conn(rss1),
        "server_fds": server.fds(),
        "server_cpu_s_connecting": server.cpu().zip(cpu0).map(|(b, a)| b - a),
        "samples": samples,
        "disconnected_while_idle": closed_idle,
    });
    if a.burst {
        let mut p = Client::connect(&t, None).await?;
        let t0 = Instant::now();
        for i in 0..a.burst_count {
            p.feed(publish_json(1000 + i, &all, now_ns(), a.burst_size))
                .await?;
        }
        p.flush().await?;
        let mut replies = 0;
        while replies < a.burst_count {
            match tokio::time::timeout(Duration::from_secs(30), p.recv()).await {
                Ok(Ok(Some(f))) if frame_type(&f) == b"reply" || frame_type(&f) == b"error" => {
                    replies += 1
                }
                Ok(Ok(Some(_))) => {}
                _ => break,
            }
        }
        let (mut received, mut closed) = status(&mut w).await?;
        let want = a.burst_count * ok.saturating_sub(closed);
        let deadline = Instant::now() + Duration::from_secs(120);
        while received < want && closed < ok && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            (received, closed) = status(&mut w).await?;
        }
        let burst_secs = t0.elapsed().as_secs_f64();
        let rss2 = server.rss_kb();
        let pb = indicatif::ProgressBar::new((a.rest_secs * 10.0) as u64);
        pb.set_message("resting");
        for _ in 0..(a.rest_secs * 10.0) as u64 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            pb.inc(1);
        }
        pb.finish_and_clear();
        let rss3 = server.rss_kb();
        out["burst"] = json!({
            "messages": a.burst_count,
            "size": a.burst_size,
            "publish_replies": replies,
            "deliveries_expected": want,
            "deliveries_received": received,
            "deliver_secs": burst_secs,
            "server_rss_kb_after_burst": rss2,
            "server_bytes_per_connection_after_burst": per_conn(rss2),
            "rest_secs": a.rest_secs,
            "server_rss_kb_after_rest": rss3,
            "server_bytes_per_connection_after_rest": per_conn(rss3),
            "disconnected": closed,
        });
        p.close().await;
    }
    let res = w
        .ask("close", json!({}), "result", Duration::from_secs(30))
        .await?;
    w.finish().await?;
    let errs: Vec<String> = res
        .iter()
        .flat_map(|r| {
            r["connect_first_errors"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|e| e.as_str().map(String::from))
        .collect();
    out["connect_first_errors"] = first_errors(&errs);
    out["workers"] = json!(res);
    Ok(out)
}

/// One worker process: holds its share of the connections.
pub async fn worker(a: IdleArgs) -> R<Value> {
    let (w, run) = a.procs.worker_id()?;
    let (t, _) = target(&a.common).await?;
    let mine = procs::share(a.connections, a.procs.procs, w);
    let addrs = procs::source_addrs(&t, w);
    let conc = a.common.connect_concurrency.div_ceil(a.procs.procs);
    let mut link = Link::open();
    let pb = indicatif::ProgressBar::hidden();
    procs::report_progress(&pb);
    emit("ready", json!({}));
    let all = all_channel(&run);
    let chans = move |i: usize| vec![all.clone(), format!("idle-{run}-{}", i % 1000)];
    let bind = |i: usize| procs::pick(&addrs, i);
    let received = Rc::new(Cell::new(0u64));
    let closed = Rc::new(Cell::new(0u64));
    let mut errs = Vec::new();
    let mut opened = mine.start;
    let mut ok = 0u64;
    loop {
        let (cmd, v) = link.next().await?;
        match cmd.as_str() {
            "open" => {
                let upto = (v["upto"].as_u64().ok_or("open without upto")? as usize)
                    .clamp(mine.start, mine.end);
                let (cs, e) = open_many(
                    opened..upto.max(opened),
                    conc,
                    |i| Client::connect_subscribed(&t, bind(i), chans(i)),
                    &pb,
                )
                .await;
                opened = upto.max(opened);
                errs.extend(e);
                ok += cs.len() as u64;
                for mut c in cs {
                    let (received, closed) = (received.clone(), closed.clone());
                    tokio::task::spawn_local(async move {
                        loop {
                            match c.recv().await {
                                Ok(Some(f)) => {
                                    if frame_type(&f) == b"message" {
                                        received.set(received.get() + 1);
                                    }
                                }
                                _ => {
                                    closed.set(closed.get() + 1);
                                    break;
                                }
                            }
                        }
                    });
                }
                emit("opened", json!({"connected": ok, "errors": errs.len()}));
            }
            "status" => emit(
                "status",
                json!({"received": received.get(), "closed": closed.get()}),
            ),
            "close" => {
                return Ok(json!({
                    "worker": w,
                    "source_addrs": addrs,
                    "connections": mine.len(),
                    "connected": ok,
                    "connect_errors": errs.len(),
                    "connect_first_errors": first_errors(&errs),
                    "received": received.get(),
                    "closed": closed.get(),
                    "generator_cpu_s": gen_cpu(),
                }))
            }
            _ => return Err(format!("unknown command {v}").into()),
        }
    }
}
