//! The faults: each scenario runs the workload against a fresh cluster (3 herald nodes, a private
//! RabbitMQ node) while it injects one kind of fault, bounded in time, on loopback only; then it lets the
//! cluster settle, waits for the subscribers to converge, and analyses the records.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::analysis::{Records, Report};
use crate::cluster::{Cluster, ClusterError};
use crate::rabbit::PrivateRabbit;
use crate::workload::{self, Load, Recorder, Running, WorkloadError};

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// `kill -9` of a random node every few seconds, restarted a second later.
    Kill9,
    /// SIGTERM rolling restarts: each node in turn drains, restarts, becomes ready.
    Rolling,
    /// RabbitMQ `kill -9` and restart.
    RabbitKill,
    /// RabbitMQ frozen (SIGSTOP) for longer than the AMQP heartbeat timeout, then SIGCONT.
    RabbitFreeze,
    /// TCP cuts between clients and nodes (an in-process proxy resets every connection of a node).
    ClientCuts,
    /// TCP cuts between a node and RabbitMQ.
    BrokerCuts,
    /// Subscribers that stop reading long enough to fall behind the channels' windows.
    Stall,
    /// 5,000 clients dropped at once, all resuming.
    Storm,
    /// All of the above (but the storm) at random.
    Combined,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::Kill9,
        Scenario::Rolling,
        Scenario::RabbitKill,
        Scenario::RabbitFreeze,
        Scenario::ClientCuts,
        Scenario::BrokerCuts,
        Scenario::Stall,
        Scenario::Storm,
        Scenario::Combined,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Kill9 => "kill9",
            Scenario::Rolling => "rolling",
            Scenario::RabbitKill => "rabbit-kill",
            Scenario::RabbitFreeze => "rabbit-freeze",
            Scenario::ClientCuts => "client-cuts",
            Scenario::BrokerCuts => "broker-cuts",
            Scenario::Stall => "stall",
            Scenario::Storm => "storm",
            Scenario::Combined => "combined",
        }
    }

    fn load(self) -> Load {
        let channels = |n: usize| (0..n).map(|i| format!("check:c{i}")).collect();
        match self {
            Scenario::Storm => Load {
                publishers: 1,
                subscribers: 5_000,
                channels: channels(1),
                rate: 5,
            },
            // Fast enough that a stalled subscriber falls behind the channel window (1024).
            Scenario::Stall => Load {
                publishers: 2,
                subscribers: 4,
                channels: channels(2),
                rate: 200,
            },
            _ => Load {
                publishers: 2,
                subscribers: 4,
                channels: channels(2),
                rate: 50,
            },
        }
    }
}

/// A scenario's directory: deleted at the end, or kept.
enum Kept {
    Temp(tempfile::TempDir),
    Path(PathBuf),
}

impl Kept {
    fn path(&self) -> &std::path::Path {
        match self {
            Kept::Temp(t) => t.path(),
            Kept::Path(p) => p,
        }
    }
}

/// Why a scenario could not run (not a finding about herald: that is the report).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("workload: {0}")]
    Workload(#[from] WorkloadError),
    #[error("rabbitmq: {0}")]
    Rabbit(#[from] crate::rabbit::RabbitError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub duration: Duration,
    pub herald_bin: PathBuf,
    /// How long to wait for the subscribers to converge after the faults stop.
    pub converge_within: Duration,
    /// Keep each scenario's directory (node logs and data, RabbitMQ logs) instead of deleting it.
    pub keep: bool,
}

/// What one scenario run found, besides the counters.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub report: Report,
    pub faults: usize,
    /// The faults and the `recovered: false` events, in time order.
    pub events: Vec<crate::analysis::Event>,
    pub clients: usize,
    /// Clients connected at the end (every client must be).
    pub clients_connected: bool,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.report.ok && self.clients_connected
    }
}

/// Runs one scenario from scratch.
pub async fn run(scenario: Scenario, settings: &Settings) -> Result<Outcome, CheckError> {
    let dir = tempfile::Builder::new().prefix("herald-check-").tempdir()?;
    let base = if settings.keep {
        let kept = dir.keep();
        tracing::info!(dir = %kept.display(), "keeping the scenario's directory");
        Kept::Path(kept)
    } else {
        Kept::Temp(dir)
    };
    let mut rabbit = PrivateRabbit::new(&base.path().join("rabbit"))?;
    rabbit.start().await?;
    let amqp = ([127, 0, 0, 1], rabbit.port()).into();
    let mut cluster = Cluster::new(&settings.herald_bin, base.path(), 3, amqp).await?;
    cluster.start_all().await?;
    let rec = Arc::new(Recorder::default());
    let load = scenario.load();
    let started = Instant::now();
    let mut running = workload::start(&cluster.urls(), &load, &rec).await?;
    tracing::info!(scenario = scenario.name(), "load running");

    let result = faults(
        scenario,
        settings.duration,
        &mut cluster,
        &mut rabbit,
        &running,
        &rec,
    )
    .await;
    running.stop_publishing().await;
    // Whatever the faults left down comes back: the check is about what was promised, after recovery.
    let _ = rabbit.thaw();
    if !rabbit.is_running() {
        let _ = rabbit.start().await;
    }
    for n in &mut cluster.nodes {
        if !n.is_running() {
            n.start().await?;
        }
    }
    result?;
    let converged = wait_converged(&rec, settings.converge_within).await;
    let records = rec.snapshot();
    let clients_connected = running.all_connected();
    let clients = running.clients.len();
    let faults = fault_count(&records);
    let events = records
        .events
        .iter()
        .filter(|e| !matches!(e, crate::analysis::Event::PublishFailed { .. }))
        .cloned()
        .collect();
    tracing::info!(scenario = scenario.name(), converged, faults, "done");
    let report = Report::new(
        scenario.name(),
        started.elapsed().as_millis() as u64,
        &records,
    );
    running.close().await;
    cluster.stop_all().await;
    drop(rabbit);
    Ok(Outcome {
        report,
        faults,
        events,
        clients,
        clients_connected,
    })
}

fn fault_count(records: &Records) -> usize {
    records
        .events
        .iter()
        .filter(|e| matches!(e, crate::analysis::Event::Fault { .. }))
        .count()
}

/// Waits until every subscriber has every acknowledged message (or the time is up).
async fn wait_converged(rec: &Recorder, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let report = Report::new("converging", 0, &rec.snapshot());
        if report.channels.iter().all(|c| c.lost == 0) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Load without faults before the first one.
const WARM_UP: Duration = Duration::from_secs(3);

/// Injects the scenario's faults for `duration` (the first [`WARM_UP`] of it without).
async fn faults(
    scenario: Scenario,
    duration: Duration,
    cluster: &mut Cluster,
    rabbit: &mut PrivateRabbit,
    running: &Running,
    rec: &Recorder,
) -> Result<(), CheckError> {
    // Faults start once the load runs steadily (a broker killed within milliseconds of creating the
    // streams is a different experiment: see docs/reliability.md).
    tokio::time::sleep(WARM_UP.min(duration)).await;
    let end = Instant::now() + duration.saturating_sub(WARM_UP);
    let mut storms = 0;
    while Instant::now() < end {
        let kind = match scenario {
            Scenario::Combined => {
                // Every single fault but the storm (a load of its own).
                let pick = &Scenario::ALL[..7];
                pick[rand::rng().random_range(0..pick.len())]
            }
            s => s,
        };
        let node = rand::rng().random_range(0..cluster.nodes.len());
        match kind {
            Scenario::Kill9 => {
                let n = &mut cluster.nodes[node];
                rec.fault(format!("kill -9 {}", n.id));
                n.kill9().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                n.start().await?;
                pause(3, end).await;
            }
            Scenario::Rolling => {
                for n in &mut cluster.nodes {
                    rec.fault(format!("SIGTERM {}", n.id));
                    n.stop().await?;
                    n.start().await?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Scenario::RabbitKill => {
                rec.fault("kill -9 rabbitmq");
                rabbit.kill9()?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                rabbit.start().await?;
                pause(6, end).await;
            }
            Scenario::RabbitFreeze => {
                rec.fault("SIGSTOP rabbitmq");
                rabbit.freeze()?;
                // Longer than the nodes' AMQP heartbeat timeout (heartbeat=5).
                tokio::time::sleep(Duration::from_secs(12)).await;
                rabbit.thaw()?;
                rec.fault("SIGCONT rabbitmq");
                pause(6, end).await;
            }
            Scenario::ClientCuts => {
                let n = &cluster.nodes[node];
                rec.fault(format!("cut clients of {}", n.id));
                n.client_proxy.cut_all();
                pause(2, end).await;
            }
            Scenario::BrokerCuts => {
                let n = &cluster.nodes[node];
                rec.fault(format!("cut {} from rabbitmq", n.id));
                n.amqp_proxy.cut_all();
                pause(4, end).await;
            }
            Scenario::Stall => {
                let s = rand::rng().random_range(0..running.subscribers().max(1));
                rec.fault(format!("stall subscriber {s} for 5 s"));
                running.stall(s, Duration::from_secs(5));
                pause(7, end).await;
            }
            Scenario::Storm => {
                // Two storms: at a third and at two thirds of the run.
                pause(duration.as_secs() / 3, end).await;
                if storms < 2 && Instant::now() < end {
                    storms += 1;
                    rec.fault(format!("storm {storms}: every client connection cut"));
                    for n in &cluster.nodes {
                        n.client_proxy.cut_all();
                    }
                }
            }
            Scenario::Combined => {}
        }
    }
    Ok(())
}

/// Sleeps `secs` seconds, or until `end`.
async fn pause(secs: u64, end: Instant) {
    let until = (Instant::now() + Duration::from_secs(secs)).min(end);
    tokio::time::sleep_until(until.into()).await;
}
