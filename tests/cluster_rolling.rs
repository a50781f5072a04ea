//! A rolling restart under load, the way an operator runs it: `cluster/run-local` starts three real
//! `herald` processes (configs of the test's own: free ports, a cluster name of its own on the shared
//! RabbitMQ), herald-client publishers and subscribers connected through `Client::start_any` keep
//! going, and `cluster/rolling-restart` replaces the nodes one at a time. Every acknowledged message
//! reaches every subscriber exactly once, in order; the clients move to the other nodes and end
//! connected.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{delete_streams, StreamsGuard, AMQP, SHARDS};
use common::http::http;
use futures_util::StreamExt;
use herald_client::{
    no_token, Client, ClientOptions, ConnectionState, StateStream, Subscription, SubscriptionEvent,
};

const CHANNELS: [&str; 2] = ["roll:a", "roll:b"];
const PUBLISHERS: u64 = 2;
const SUBSCRIBERS: usize = 4;
const ADMIN_TOKEN: &str = "rolling-restart-test-admin";
/// How long one publish (with its retries, same idempotency key) may take before the test gives up on it.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(20);

/// A delivered or published message: (channel index, publisher, i).
type Key = (usize, u64, u64);

#[derive(Default)]
struct Published {
    /// Every (channel, p, i) a publish was sent for (acknowledged or not).
    attempted: HashSet<Key>,
    /// The acknowledged ones: (epoch, offset).
    acked: HashMap<Key, (String, u64)>,
    /// Publishes that returned an error (and were retried with the same key).
    errors: Vec<String>,
    /// Publishes given up after PUBLISH_PATIENCE.
    given_up: Vec<Key>,
}

#[derive(Default)]
struct Received {
    /// Per channel, in delivery order: (epoch, offset, p, i).
    messages: [Vec<(String, u64, u64, u64)>; 2],
    /// Anything else a subscription yielded that is not a message of the test.
    odd: Vec<String>,
    not_recovered: usize,
}

/// How a client ended: connected or not, the ports of the nodes it connected to, in order.
#[derive(Debug)]
struct ClientEnd {
    who: String,
    connected: bool,
    ports: Vec<String>,
    lost: usize,
    gave_up: Option<String>,
}

#[derive(Default)]
struct Connections {
    /// The URL of every `Connected`, in order.
    urls: Vec<String>,
    /// Every `Disconnected` (a lost connection or a failed attempt): (code, reason).
    lost: Vec<(Option<u16>, String)>,
    gave_up: Option<String>,
}

impl Connections {
    fn reconnects(&self) -> usize {
        self.urls.len().saturating_sub(1)
    }
    /// Whether some connection went to another URL than the first one.
    fn moved(&self) -> bool {
        self.urls.iter().any(|u| Some(u) != self.urls.first())
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// Writes configs/node{1,2,3}.toml for a three-node cluster `name`; returns (ws URL, admin address) per node.
fn write_configs(base: &Path, name: &str) -> Vec<(String, SocketAddr)> {
    let configs = base.join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    let ports = free_ports(6);
    (1..=3)
        .map(|i| {
            let (ws, admin) = (ports[2 * (i - 1)], ports[2 * (i - 1) + 1]);
            let data = base.join("data").join(format!("node{i}"));
            let data = data.to_str().expect("utf-8 path");
            assert!(!data.contains(['"', '\\']), "{data}");
            let toml = format!(
                r#"[server]
node_id = "node{i}"
listen = "127.0.0.1:{ws}"
admin_listen = "127.0.0.1:{admin}"
data_dir = "{data}"
workers = 2
channel_threads = 2

[storage]
group_commit_ms = 1

[auth]
anonymous = true

[admin]
token = "{ADMIN_TOKEN}"

[limits]
messages_per_second = 100000
messages_burst = 100000

[cluster]
enabled = true
amqp_url = "{AMQP}"
name = "{name}"
shards = {SHARDS}

[namespaces.default]
history_size = 1000000
"#
            );
            std::fs::write(configs.join(format!("node{i}.toml")), toml).unwrap();
            (
                format!("ws://127.0.0.1:{ws}/ws"),
                SocketAddr::from(([127, 0, 0, 1], admin)),
            )
        })
        .collect()
}

/// A `cluster/<script>` command with the test's directories (run from the repository root).
fn script(name: &str, base: &Path) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(root.join("cluster").join(name));
    cmd.arg(env!("CARGO_BIN_EXE_herald"))
        .current_dir(root)
        .env("LOCAL_CLUSTER_DIR", base.join("run"))
        .env("LOCAL_CLUSTER_CONFIGS", base.join("configs"))
        // The nodes log at the default level (info), whoever started them.
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// The pids of `herald serve` processes started with a config of `configs` (zombies have no cmdline).
fn node_processes(configs: &Path) -> Vec<(u32, String)> {
    let needle = configs.to_str().expect("utf-8 path").to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(" serve ") && cmdline.contains(&needle) {
            found.push((pid, cmdline.trim().to_string()));
        }
    }
    found
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `cluster/run-local` running the test's nodes; stopped with SIGTERM (also when the test fails).
struct LocalCluster {
    child: Option<Child>,
    base: PathBuf,
}

impl LocalCluster {
    fn start(base: &Path) -> LocalCluster {
        let mut cmd = script("run-local", base);
        cmd.stdout(std::fs::File::create(base.join("run-local.out")).unwrap())
            .stderr(std::fs::File::create(base.join("run-local.err")).unwrap());
        LocalCluster {
            child: Some(cmd.spawn().expect("spawn cluster/run-local")),
            base: base.to_path_buf(),
        }
    }

    /// Panics (with run-local's output) when run-local exited.
    fn check_running(&mut self) {
        let child = self.child.as_mut().expect("running");
        if let Some(status) = child.try_wait().expect("try_wait") {
            self.child = None;
            panic!(
                "cluster/run-local exited ({status}):\n{}\n{}",
                tail(&self.base.join("run-local.out"), 20),
                tail(&self.base.join("run-local.err"), 20)
            );
        }
    }

    fn print_logs(&self) {
        for i in 1..=3 {
            let log = self.base.join("run").join(format!("node{i}.log"));
            eprintln!("--- last lines of {}:\n{}", log.display(), tail(&log, 25));
        }
        eprintln!(
            "--- run-local:\n{}\n{}",
            tail(&self.base.join("run-local.out"), 10),
            tail(&self.base.join("run-local.err"), 10)
        );
    }

    /// SIGTERM to run-local (it stops the nodes its pid files name), waits for it (60 s), then makes sure
    /// no node of the test is left (those left are killed). Returns run-local's exit code and what was
    /// left over.
    fn stop(&mut self) -> (Option<i32>, Vec<(u32, String)>) {
        let Some(mut child) = self.child.take() else {
            return (None, Vec::new());
        };
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            match child.try_wait().expect("try_wait") {
                Some(status) => break Some(status),
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let configs = self.base.join("configs");
        let left = node_processes(&configs);
        for (pid, _) in &left {
            // SAFETY: kill(2) on a pid that runs `herald serve` with this test's config.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        (status.and_then(|s| s.code()), left)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if std::thread::panicking() {
            self.print_logs();
        }
        let (code, left) = self.stop();
        if !left.is_empty() {
            eprintln!(
                "nodes left after run-local stopped (killed now): {left:?} (run-local: {code:?})"
            );
        }
    }
}

/// Whether the node answers /readyz with 200 (false while nothing listens).
async fn ready(admin: SocketAddr) -> bool {
    if tokio::net::TcpStream::connect(admin).await.is_err() {
        return false;
    }
    http(admin, "GET", "/readyz", None, None).await.status == 200
}

/// Records every connection state of a client.
fn watch_states(mut states: StateStream) -> Arc<Mutex<Connections>> {
    let conns: Arc<Mutex<Connections>> = Arc::default();
    let c = conns.clone();
    tokio::spawn(async move {
        while let Some(s) = states.next().await {
            let mut c = c.lock().unwrap();
            match s {
                ConnectionState::Connected { url, .. } => c.urls.push(url),
                ConnectionState::Disconnected { code, reason, .. } => c.lost.push((code, reason)),
                ConnectionState::GaveUp { reason, .. } => c.gave_up = Some(reason),
                _ => {}
            }
        }
    });
    conns
}

/// Records every event of one subscription of a subscriber.
fn record(mut sub: Subscription, ch: usize, rec: Arc<Mutex<Received>>) {
    tokio::spawn(async move {
        while let Some(ev) = sub.next().await {
            let mut r = rec.lock().unwrap();
            match ev {
                SubscriptionEvent::Message(m) => {
                    let data = m.data_json().unwrap_or_default();
                    match (data["p"].as_u64(), data["i"].as_u64()) {
                        (Some(p), Some(i)) if m.channel == CHANNELS[ch] => {
                            r.messages[ch].push((m.epoch, m.offset, p, i))
                        }
                        _ => r
                            .odd
                            .push(format!("{}: unexpected message {data}", CHANNELS[ch])),
                    }
                }
                SubscriptionEvent::NotRecovered { epoch, head } => {
                    r.not_recovered += 1;
                    r.odd
                        .push(format!("{}: NotRecovered {epoch} {head}", CHANNELS[ch]));
                }
                SubscriptionEvent::Ended(e) => r
                    .odd
                    .push(format!("{}: subscription ended: {e}", CHANNELS[ch])),
                other => r.odd.push(format!("{}: {other:?}", CHANNELS[ch])),
            }
        }
    });
}

/// Publishes {"p": p, "i": 1, 2, ...} to one channel until `stop`, one at a time (the next is sent once
/// the previous one is acknowledged, so their order is the publisher's), each with an idempotency key
/// of its own that a retry after an error reuses.
async fn publish_stream(
    client: Client,
    p: u64,
    ch: usize,
    run: String,
    stop: Arc<AtomicBool>,
    published: Arc<Mutex<Published>>,
) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let key = (ch, p, i);
        let data = herald_client::Value::Map(vec![("p".into(), p.into()), ("i".into(), i.into())]);
        let idem = format!("{run}-{p}-{ch}-{i}");
        published.lock().unwrap().attempted.insert(key);
        let since = Instant::now();
        loop {
            match client
                .publish_value(CHANNELS[ch], data.clone(), Some(idem.clone()))
                .await
            {
                Ok(ack) => {
                    published
                        .lock()
                        .unwrap()
                        .acked
                        .insert(key, (ack.epoch, ack.offset));
                    break;
                }
                Err(e) => {
                    let give_up = {
                        let mut pb = published.lock().unwrap();
                        pb.errors.push(format!("{} p={p} i={i}: {e}", CHANNELS[ch]));
                        let give_up = since.elapsed() > PUBLISH_PATIENCE;
                        if give_up {
                            pb.given_up.push(key);
                        }
                        give_up
                    };
                    if give_up {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// What one subscriber's record says against the acknowledged publishes.
#[derive(Debug, Default)]
struct Verdict {
    delivered: usize,
    lost: Vec<Key>,
    duplicates: Vec<Key>,
    reorders: Vec<String>,
    unexpected: Vec<String>,
}

fn check(rec: &Received, published: &Published) -> Verdict {
    let mut v = Verdict::default();
    for (ch, msgs) in rec.messages.iter().enumerate() {
        v.delivered += msgs.len();
        let mut seen: HashSet<Key> = HashSet::new();
        let mut last_i: HashMap<u64, u64> = HashMap::new();
        let mut last: Option<&(String, u64, u64, u64)> = None;
        for m in msgs {
            let (epoch, offset, p, i) = m;
            let key = (ch, *p, *i);
            if !seen.insert(key) {
                v.duplicates.push(key);
            }
            if let Some((e0, o0, ..)) = last {
                if e0 != epoch || o0 >= offset {
                    v.reorders.push(format!(
                        "{}: {epoch}/{offset} after {e0}/{o0}",
                        CHANNELS[ch]
                    ));
                }
            }
            if let Some(&i0) = last_i.get(p) {
                if i0 >= *i {
                    v.reorders
                        .push(format!("{}: p={p} i={i} after i={i0}", CHANNELS[ch]));
                }
            }
            last_i.insert(*p, *i);
            last = Some(m);
            match published.acked.get(&key) {
                Some((e, o)) if (e, o) != (epoch, offset) => v.unexpected.push(format!(
                    "{}: p={p} i={i} delivered at {epoch}/{offset}, acknowledged at {e}/{o}",
                    CHANNELS[ch]
                )),
                Some(_) => {}
                None if published.attempted.contains(&key) => {}
                None => v.unexpected.push(format!(
                    "{}: p={p} i={i} at {epoch}/{offset} was never published",
                    CHANNELS[ch]
                )),
            }
        }
        v.lost.extend(
            published
                .acked
                .keys()
                .filter(|k| k.0 == ch && !seen.contains(k)),
        );
    }
    v.lost.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_under_load_loses_nothing() {
    let t0 = Instant::now();
    let name = format!("test-{}", ulid::Ulid::new());
    // Dropped in reverse order: the nodes stop first, then their streams go, then the directory.
    let tmp = tempfile::tempdir().expect("tempdir");
    let _streams = StreamsGuard(name.clone());
    let base = tmp.path();
    let nodes = write_configs(base, &name);
    let urls: Vec<String> = nodes.iter().map(|(u, _)| u.clone()).collect();
    let mut cluster = LocalCluster::start(base);

    let deadline = Instant::now() + Duration::from_secs(40);
    for (url, admin) in &nodes {
        while !ready(*admin).await {
            cluster.check_running();
            assert!(Instant::now() < deadline, "{url} not ready in time");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let started = t0.elapsed();

    // Subscribers first: every message published after their subscribe is theirs.
    let mut clients: Vec<(String, Client, Arc<Mutex<Connections>>)> = Vec::new();
    let mut received: Vec<Arc<Mutex<Received>>> = Vec::new();
    for s in 0..SUBSCRIBERS {
        let (client, states) =
            Client::start_any(urls.clone(), no_token(), ClientOptions::default()).expect("start");
        let conns = watch_states(states);
        let rec: Arc<Mutex<Received>> = Arc::default();
        for (ch, channel) in CHANNELS.iter().enumerate() {
            let sub = client.subscribe(*channel).await.expect("subscribe");
            record(sub, ch, rec.clone());
        }
        clients.push((format!("subscriber {s}"), client, conns));
        received.push(rec);
    }
    let published: Arc<Mutex<Published>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (client, states) =
            Client::start_any(urls.clone(), no_token(), ClientOptions::default()).expect("start");
        clients.push((
            format!("publisher {p}"),
            client.clone(),
            watch_states(states),
        ));
        for ch in 0..CHANNELS.len() {
            publishers.push(tokio::spawn(publish_stream(
                client.clone(),
                p,
                ch,
                name.clone(),
                stop.clone(),
                published.clone(),
            )));
        }
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked_before = published.lock().unwrap().acked.len();
    let rolling_started = Instant::now();
    let mut rolling = tokio::process::Command::from(script("rolling-restart", base));
    rolling
        .env("ROLLING_SETTLE_SECS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), rolling.output())
        .await
        .expect("cluster/rolling-restart did not finish in 90 s")
        .expect("run cluster/rolling-restart");
    let rolling_took = rolling_started.elapsed();
    println!(
        "cluster/rolling-restart ({:?}, {:.1} s):\n{}{}",
        out.status,
        rolling_took.as_secs_f64(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "cluster/rolling-restart failed");
    let acked_during = published.lock().unwrap().acked.len() - acked_before;

    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in publishers {
        tokio::time::timeout(PUBLISH_PATIENCE + Duration::from_secs(5), task)
            .await
            .expect("a publisher did not finish")
            .expect("publisher task");
    }

    // Every subscriber gets every acknowledged message (bounded wait), then a moment for strays.
    let wait_started = Instant::now();
    loop {
        let missing: usize = {
            let pb = published.lock().unwrap();
            received
                .iter()
                .map(|r| check(&r.lock().unwrap(), &pb).lost.len())
                .sum()
        };
        if missing == 0 {
            break;
        }
        if wait_started.elapsed() > Duration::from_secs(30) {
            println!("still missing {missing} deliveries after 30 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up = wait_started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The counts (the publishers are done: their record is final).
    let pb = std::mem::take(&mut *published.lock().unwrap());
    let verdicts: Vec<Verdict> = received
        .iter()
        .map(|r| check(&r.lock().unwrap(), &pb))
        .collect();
    let states: Vec<ClientEnd> = clients
        .iter()
        .map(|(who, client, conns)| {
            let c = conns.lock().unwrap();
            ClientEnd {
                who: who.clone(),
                connected: client.is_connected(),
                ports: c
                    .urls
                    .iter()
                    .map(|u| u.trim_start_matches("ws://127.0.0.1:").replace("/ws", ""))
                    .collect(),
                lost: c.lost.len(),
                gave_up: c.gave_up.clone(),
            }
        })
        .collect();
    let reconnects: usize = clients
        .iter()
        .map(|(_, _, c)| c.lock().unwrap().reconnects())
        .sum();
    let moved = clients
        .iter()
        .filter(|(_, _, c)| c.lock().unwrap().moved())
        .count();
    let odd: Vec<String> = received
        .iter()
        .flat_map(|r| r.lock().unwrap().odd.clone())
        .collect();
    let not_recovered: usize = received
        .iter()
        .map(|r| r.lock().unwrap().not_recovered)
        .sum();
    let delivered: usize = verdicts.iter().map(|v| v.delivered).sum();
    let sum = |f: fn(&Verdict) -> usize| verdicts.iter().map(f).sum::<usize>();
    let (lost, dups, reorders, unexpected) = (
        sum(|v| v.lost.len()),
        sum(|v| v.duplicates.len()),
        sum(|v| v.reorders.len()),
        sum(|v| v.unexpected.len()),
    );
    let mut offsets: HashSet<(usize, u64)> = HashSet::new();
    let double_offsets = pb
        .acked
        .iter()
        .filter(|((ch, ..), (_, o))| !offsets.insert((*ch, *o)))
        .count();
    let epochs: HashSet<(usize, &String)> =
        pb.acked.iter().map(|((ch, ..), (e, _))| (*ch, e)).collect();
    println!(
        "cluster {name}: nodes ready {:.1} s after run-local started",
        started.as_secs_f64()
    );
    println!(
        "published {} (acknowledged {}, {} of them during the rolling restart), publish errors retried: {}, given up: {}",
        pb.attempted.len(),
        pb.acked.len(),
        acked_during,
        pb.errors.len(),
        pb.given_up.len()
    );
    for e in pb.errors.iter().take(5) {
        println!("  publish error: {e}");
    }
    println!(
        "delivered {delivered} to {SUBSCRIBERS} subscribers (expected {}), all caught up {:.1} s after publishing stopped",
        pb.acked.len() * SUBSCRIBERS,
        caught_up.as_secs_f64()
    );
    println!(
        "lost {lost}, duplicates {dups}, reorders {reorders}, unexpected {unexpected}, NotRecovered {not_recovered}, other events {}",
        odd.len()
    );
    println!(
        "reconnects {reconnects}, clients that moved to another node {moved} of {}",
        clients.len()
    );
    for c in &states {
        println!(
            "  {}: connected={} nodes (ports) {:?}, disconnects (incl. refused attempts) {}, gave up {:?}",
            c.who, c.connected, c.ports, c.lost, c.gave_up
        );
    }
    println!("rolling restart took {:.1} s", rolling_took.as_secs_f64());

    for (s, v) in verdicts.iter().enumerate() {
        assert!(
            v.lost.is_empty(),
            "subscriber {s} lost {} acknowledged messages, e.g. {:?}",
            v.lost.len(),
            &v.lost[..v.lost.len().min(5)]
        );
        assert!(
            v.duplicates.is_empty(),
            "subscriber {s}: duplicates {:?}",
            v.duplicates
        );
        assert!(
            v.reorders.is_empty(),
            "subscriber {s}: reorders {:?}",
            v.reorders
        );
        assert!(
            v.unexpected.is_empty(),
            "subscriber {s}: {:?}",
            v.unexpected
        );
    }
    assert!(odd.is_empty(), "unexpected subscription events: {odd:?}");
    assert_eq!(not_recovered, 0);
    assert!(
        pb.given_up.is_empty(),
        "publishes never acknowledged: {:?}",
        pb.given_up
    );
    assert_eq!(
        double_offsets, 0,
        "two acknowledged publishes share an offset"
    );
    assert_eq!(
        epochs.len(),
        CHANNELS.len(),
        "one epoch per channel: {epochs:?}"
    );
    assert!(
        pb.acked.len() >= 100 && acked_during >= 20,
        "too little load to say anything: {} acknowledged, {acked_during} during the restart",
        pb.acked.len()
    );
    for c in &states {
        assert!(c.connected, "not connected at the end: {c:?}");
    }
    // Every client was on a node that was restarted, so each moved at least once (to whichever other URL).
    assert!(reconnects >= 3, "only {reconnects} reconnects: {states:?}");
    assert_eq!(moved, clients.len(), "clients that never moved: {states:?}");
    let epoch = pb.acked.values().next().map(|(e, _)| e.clone());

    for (_, client, _) in &clients {
        client.close().await;
    }
    let (code, left) = cluster.stop();
    assert!(
        left.is_empty(),
        "nodes left running after run-local stopped: {left:?}"
    );
    // run-local's SIGTERM trap: stop the nodes, then exit 130.
    assert_eq!(code, Some(130), "run-local's exit after SIGTERM");
    if let Some(epoch) = epoch {
        delete_streams(&name, &epoch).await;
    }
    // Not asserted: what the nodes complained about, for whoever reads the output.
    for i in 1..=3 {
        let log = std::fs::read_to_string(base.join("run").join(format!("node{i}.log")))
            .unwrap_or_default();
        let complaints: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .filter(|l| !l.contains("auth.anonymous = true"))
            .collect();
        println!("node{i}.log: {} WARN/ERROR lines", complaints.len());
        for l in complaints.iter().take(8) {
            println!("  {l}");
        }
    }
    println!("test took {:.1} s", t0.elapsed().as_secs_f64());
}
