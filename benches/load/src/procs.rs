//! One scenario run fanned out over several herald-bench processes (`--procs N`).
//!
//! A process may hold at most RLIMIT_NOFILE sockets (20,000 on the benchmark machine), so `idle`
//! and `churn` keep their connections in N worker processes: this same binary, started with the
//! coordinator's own arguments plus the hidden `--worker I --run-id R`. The coordinator (the process
//! the user started) reads the server's CPU/RSS/fds, publishes the idle burst, merges the workers'
//! results and writes the usual JSON. `--procs 1` runs the same way with one worker.
//!
//! The protocol is JSON lines. Coordinator to worker, on the worker's stdin: `{"cmd": …}`. Worker to
//! coordinator, on the worker's stdout: `{"ev": …}`: `ready` once, `progress` (`{"done": n}`, at
//! most five a second), the answers to commands, and last `result` or `error`, after which it
//! exits. Workers inherit stderr. A worker exits when its stdin closes or its parent dies.
use crate::client::Target;
use crate::util::R;
use clap::Args;
use indicatif::ProgressBar;
use serde_json::{json, Value};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Source addresses each worker binds its connections to (on loopback).
const ADDRS_PER_WORKER: usize = 4;
const MAX_PROCS: u64 = (253 / ADDRS_PER_WORKER) as u64;

#[derive(Args, Clone, Debug)]
pub struct ProcsArgs {
    /// Worker processes that hold the connections (one process holds at most ~19.9k sockets);
    /// on loopback each binds its connections to its own 127.0.0.x source addresses
    #[arg(long, default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_PROCS))]
    pub procs: usize,
    /// Internal: index of this worker process (set by the coordinator)
    #[arg(long, hide = true)]
    pub worker: Option<usize>,
    /// Internal: run id shared by the coordinator and its workers (channel names)
    #[arg(long, hide = true)]
    pub run_id: Option<String>,
}

impl ProcsArgs {
    /// (worker index, run id) of a worker process.
    pub fn worker_id(&self) -> R<(usize, String)> {
        let w = self.worker.ok_or("not a worker")?;
        let run = self.run_id.clone().ok_or("worker without --run-id")?;
        if w >= self.procs {
            return Err(format!("--worker {w} but --procs {}", self.procs).into());
        }
        Ok((w, run))
    }
}

/// Worker `w`'s part of `n` items, as contiguous index ranges of near-equal size.
pub fn share(n: usize, procs: usize, w: usize) -> std::ops::Range<usize> {
    n * w / procs..n * (w + 1) / procs
}

/// Source addresses for worker `w`: 127.0.0.(2+4w)..=(5+4w) when the server is on IPv4 loopback
/// (each has its own ~28k ephemeral ports towards the server), else none (the kernel chooses).
pub fn source_addrs(t: &Target, w: usize) -> Vec<IpAddr> {
    match t.addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => (0..ADDRS_PER_WORKER)
            .map(|j| {
                IpAddr::V4(Ipv4Addr::new(
                    127,
                    0,
                    0,
                    (2 + w * ADDRS_PER_WORKER + j) as u8,
                ))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The source address for a worker's `k`-th connection.
pub fn pick(addrs: &[IpAddr], k: usize) -> Option<IpAddr> {
    (!addrs.is_empty()).then(|| addrs[k % addrs.len()])
}

// ---------------------------------------------------------------- worker side

/// Send one event line to the coordinator. A coordinator that stopped reading ends the worker.
pub fn emit(ev: &str, mut v: Value) {
    if let Value::Object(m) = &mut v {
        m.insert("ev".into(), json!(ev));
    }
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{v}").and_then(|_| out.flush()).is_err() {
        std::process::exit(3);
    }
}

/// Commands from the coordinator, read from stdin by a local task.
pub struct Link {
    cmds: mpsc::UnboundedReceiver<Value>,
}

impl Link {
    /// Start reading commands (inside the LocalSet); also die with the parent.
    pub fn open() -> Link {
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        let (tx, cmds) = mpsc::unbounded_channel();
        tokio::task::spawn_local(async move {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let v = serde_json::from_str::<Value>(&l).unwrap_or_else(
                    |e| json!({"cmd": "unreadable", "line": l, "error": e.to_string()}),
                );
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Link { cmds }
    }

    /// The next command (its `cmd` field and the whole line); an error once stdin closed.
    pub async fn next(&mut self) -> R<(String, Value)> {
        let v = self.cmds.recv().await.ok_or("coordinator closed stdin")?;
        let c = v["cmd"].as_str().unwrap_or("").to_string();
        Ok((c, v))
    }
}

/// Report `pb`'s position to the coordinator every 200 ms while it changes.
pub fn report_progress(pb: &ProgressBar) {
    let pb = pb.clone();
    tokio::task::spawn_local(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let p = pb.position();
            if p != last {
                emit("progress", json!({ "done": p }));
                last = p;
            }
        }
    });
}

/// End a worker: its result (or error) as the last line, then exit.
pub fn worker_exit(r: R<Value>) -> ! {
    match r {
        Ok(v) => {
            emit("result", v);
            std::process::exit(0)
        }
        Err(e) => {
            emit("error", json!({ "msg": e.to_string() }));
            std::process::exit(1)
        }
    }
}

// ---------------------------------------------------------------- coordinator side

/// The coordinator's handle on its worker processes. Dropping it kills them.
pub struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    events: mpsc::UnboundedReceiver<(usize, Value)>,
    done: Vec<u64>,
    /// Shows the sum of the workers' `progress`.
    pub pb: ProgressBar,
}

impl Workers {
    /// Start `n` workers (inside the LocalSet) and wait until each is `ready`.
    pub async fn start(n: usize, run_id: &str, pb: ProgressBar) -> R<Workers> {
        let exe = std::env::current_exe()?;
        let (tx, events) = mpsc::unbounded_channel();
        let mut w = Workers {
            children: Vec::new(),
            stdins: Vec::new(),
            events,
            done: vec![0; n],
            pb,
        };
        for i in 0..n {
            let mut child = Command::new(&exe)
                .args(std::env::args_os().skip(1))
                .args(["--worker", &i.to_string(), "--run-id", run_id])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("starting worker {i} ({}): {e}", exe.display()))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(format!("worker {i} has no stdin/stdout pipe").into());
            };
            w.children.push(child);
            w.stdins.push(stdin);
            let tx = tx.clone();
            tokio::task::spawn_local(async move {
                let mut lines = BufReader::new(stdout).lines();
                loop {
                    let (v, end) = match lines.next_line().await {
                        Ok(Some(l)) => match serde_json::from_str::<Value>(&l) {
                            Ok(v) => (v, false),
                            Err(e) => (
                                json!({"ev": "error", "msg": format!("unreadable line {l:?}: {e}")}),
                                true,
                            ),
                        },
                        Ok(None) => (json!({"ev": "exit"}), true),
                        Err(e) => (json!({"ev": "error", "msg": e.to_string()}), true),
                    };
                    if tx.send((i, v)).is_err() || end {
                        break;
                    }
                }
            });
        }
        w.collect("ready", Duration::from_secs(30)).await?;
        Ok(w)
    }

    /// Send `cmd` (a JSON object) to every worker.
    pub async fn send_all(&mut self, cmd: Value) -> R<()> {
        let line = format!("{cmd}\n");
        for (i, s) in self.stdins.iter_mut().enumerate() {
            let r = s.write_all(line.as_bytes()).await;
            if let Err(e) = r.and(s.flush().await) {
                let status = self.children[i].try_wait();
                return Err(format!("writing to worker {i} (exit status {status:?}): {e}").into());
            }
        }
        Ok(())
    }

    /// Send `{"cmd": cmd, …extra}` to every worker and collect the answers, events named `answer`.
    pub async fn ask(
        &mut self,
        cmd: &str,
        extra: Value,
        answer: &str,
        t: Duration,
    ) -> R<Vec<Value>> {
        let mut v = json!({ "cmd": cmd });
        if let (Value::Object(m), Value::Object(x)) = (&mut v, extra) {
            m.extend(x);
        }
        self.send_all(v).await?;
        self.collect(answer, t).await
    }

    /// Wait until every worker sent event `ev`; the events in worker order. A worker's `error`,
    /// its exit, or the timeout ends the wait with an error naming the worker.
    pub async fn collect(&mut self, ev: &str, timeout: Duration) -> R<Vec<Value>> {
        let mut got: Vec<Option<Value>> = vec![None; self.children.len()];
        let deadline = Instant::now() + timeout;
        while got.iter().any(Option::is_none) {
            let (i, mut v) = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(x)) => x,
                Ok(None) => return Err("all workers gone".into()),
                Err(_) => {
                    let missing: Vec<usize> =
                        (0..got.len()).filter(|&i| got[i].is_none()).collect();
                    return Err(
                        format!("no {ev:?} from workers {missing:?} within {timeout:?}").into(),
                    );
                }
            };
            match v["ev"].as_str().unwrap_or("") {
                "progress" => {
                    self.done[i] = v["done"].as_u64().unwrap_or(self.done[i]);
                    self.pb.set_position(self.done.iter().sum());
                }
                e if e == ev => {
                    if let Value::Object(m) = &mut v {
                        m.remove("ev");
                    }
                    got[i] = Some(v)
                }
                "exit" if got[i].is_some() => {}
                "error" => return Err(format!("worker {i}: {}", v["msg"]).into()),
                "exit" => {
                    let status =
                        tokio::time::timeout(Duration::from_secs(5), self.children[i].wait()).await;
                    return Err(
                        format!("worker {i} exited before sending {ev:?}: {status:?}").into(),
                    );
                }
                _ => return Err(format!("worker {i} sent {v} while {ev:?} was expected").into()),
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Wait for every worker to exit (after its `result`), so its CPU counts as this process's
    /// children's (see util::gen_cpu).
    pub async fn finish(mut self) -> R<()> {
        self.pb.finish_and_clear();
        self.stdins.clear();
        for (i, c) in self.children.iter_mut().enumerate() {
            match tokio::time::timeout(Duration::from_secs(10), c.wait()).await {
                Ok(Ok(s)) if s.success() => {}
                Ok(Ok(s)) => return Err(format!("worker {i} exited with {s}").into()),
                Ok(Err(e)) => return Err(format!("worker {i}: {e}").into()),
                Err(_) => return Err(format!("worker {i} did not exit after its result").into()),
            }
        }
        Ok(())
    }
}
