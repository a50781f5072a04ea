//! herald-bench: a lean load generator for herald and its comparison peers.
//!
//! Everything that receives runs on one current-thread tokio runtime (one generator core), so
//! the generator's own CPU (reported next to every result) shows when it, not the server, is the
//! limit. Publishers are open-loop: they send at a fixed rate and stamp each frame with its
//! *intended* send time, so a server that queues cannot hide it.
//!
//! `idle` and `churn` keep their connections in `--procs N` worker processes (procs.rs), because one
//! process may hold only RLIMIT_NOFILE sockets.
mod churn;
mod client;
mod idle;
mod pace;
mod plot;
mod procs;
mod scenarios;
mod sub;
mod transports;
mod util;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for herald, the baseline server and the Node peers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone, Debug)]
pub struct Common {
    /// WebSocket URL of the server (herald: ws://ADDR/ws; socket.io: ws://ADDR/socket.io/?EIO=4&transport=websocket)
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
    pub url: String,
    /// Wire framing: `herald` (plain JSON frames) or `sio` (socket.io v5 over engine.io v4)
    #[arg(long, default_value = "herald", value_parser = ["herald", "sio"])]
    pub proto: String,
    /// Pid of the server process, to read its CPU (/proc/PID/stat), RSS and fd count
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Free-form label copied into the results (e.g. "herald", "baseline", "ws")
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the JSON results here instead of stdout
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write PNG plots into this directory
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Connections opened concurrently while setting up
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open N idle connections (2 subscriptions each) and report the server's RSS per connection
    Idle(idle::IdleArgs),
    /// S subscribers on one channel, one open-loop publisher at stepped rates until p99 > limit
    Fanout(scenarios::FanoutArgs),
    /// Open-loop connects/s: connect, subscribe, hold 1-5 s, close
    Churn(churn::ChurnArgs),
    /// Publish M messages, then resume from offset 0 and time the replay (herald only)
    Replay(scenarios::ReplayArgs),
    /// WebSocket against long-polling subscribers at a fixed rate (herald only): latency, HTTP
    /// requests per delivery, server CPU per delivery
    Transports(transports::TransportsArgs),
    /// Draw comparison plots from several result files
    Plot {
        /// Output directory
        #[arg(long)]
        dir: PathBuf,
        /// Result JSON files (each written by one scenario run)
        files: Vec<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    let nofile = util::raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let (common, result): (Option<Common>, util::R<Value>) = match cli.cmd {
        // a worker process (started by `idle`/`churn --procs`) answers on stdout and exits
        Cmd::Idle(a) if a.procs.worker.is_some() => {
            procs::worker_exit(local.block_on(&rt, idle::worker(a)))
        }
        Cmd::Churn(a) if a.procs.worker.is_some() => {
            procs::worker_exit(local.block_on(&rt, churn::worker(a)))
        }
        Cmd::Idle(a) => (
            Some(a.common.clone()),
            local.block_on(&rt, idle::run(a, nofile)),
        ),
        Cmd::Fanout(a) => (
            Some(a.common.clone()),
            local.block_on(&rt, scenarios::fanout(a)),
        ),
        Cmd::Churn(a) => (
            Some(a.common.clone()),
            local.block_on(&rt, churn::run(a, nofile)),
        ),
        Cmd::Replay(a) => (
            Some(a.common.clone()),
            local.block_on(&rt, scenarios::replay(a)),
        ),
        Cmd::Transports(a) => (
            Some(a.common.clone()),
            local.block_on(&rt, transports::run(a)),
        ),
        Cmd::Plot { dir, files } => {
            let mut runs = Vec::new();
            for f in files {
                match std::fs::read(&f)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()))
                {
                    Ok(v) => runs.push(v),
                    Err(e) => eprintln!("skipping {}: {e}", f.display()),
                }
            }
            if let Err(e) = plot::plot_all(&dir, &runs) {
                eprintln!("plot failed: {e}");
                std::process::exit(1);
            }
            return;
        }
    };
    let common = common.unwrap();
    let mut v = match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("herald-bench: {e}");
            std::process::exit(1);
        }
    };
    if let Value::Object(m) = &mut v {
        m.insert("label".into(), json!(common.label));
        m.insert("url".into(), json!(common.url));
        m.insert("proto".into(), json!(common.proto));
        m.insert("generator_cpu_s_total".into(), json!(util::gen_cpu()));
    }
    if let Some(dir) = &common.plot {
        if let Err(e) = plot::plot_all(dir, std::slice::from_ref(&v)) {
            eprintln!("plot failed: {e}");
        }
    }
    let text = serde_json::to_string_pretty(&v).unwrap();
    match &common.out {
        Some(p) => std::fs::write(p, text + "\n").expect("write --out"),
        None => println!("{text}"),
    }
}
