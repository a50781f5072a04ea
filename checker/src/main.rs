//! `herald-check`: runs delivery scenarios against a cluster it starts itself and prints JSON results.
//! The exit status is 1 when any count that must be 0 is not (or a client ended disconnected), 2 when a
//! scenario could not run at all.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use herald_check::analysis;
use herald_check::scenarios::{self, Scenario, Settings};

#[derive(Parser)]
#[command(
    name = "herald-check",
    about = "Counts lost, duplicated and reordered messages under faults"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios (all by default), each on a fresh cluster.
    Run {
        /// Scenarios to run (repeatable); default: all.
        #[arg(long = "scenario", value_enum)]
        scenarios: Vec<Scenario>,
        /// Seconds of faults per scenario.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Seconds allowed to converge after the faults stop.
        #[arg(long, default_value_t = 60)]
        converge: u64,
        /// The herald binary (default: `herald` next to this binary).
        #[arg(long)]
        herald_bin: Option<PathBuf>,
        /// Also write the JSON results to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Keep each scenario's directory (node and RabbitMQ logs); its path is logged.
        #[arg(long)]
        keep: bool,
    },
    /// Show that each counter detects what it counts (injected drops, doubles, swaps).
    SelfTest,
}

fn default_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("herald")))
        .unwrap_or_else(|| PathBuf::from("herald"))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "herald_check=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = match Cli::parse().command {
        Cmd::SelfTest => {
            let cases = analysis::self_test();
            let ok = cases.iter().all(|c| c.passed);
            print_json(&cases);
            i32::from(!ok)
        }
        Cmd::Run {
            scenarios,
            duration,
            converge,
            herald_bin,
            out,
            keep,
        } => {
            let list = if scenarios.is_empty() {
                Scenario::ALL.to_vec()
            } else {
                scenarios
            };
            let settings = Settings {
                duration: Duration::from_secs(duration),
                herald_bin: herald_bin.unwrap_or_else(default_bin),
                converge_within: Duration::from_secs(converge),
                keep,
            };
            let mut results = Vec::new();
            let mut code = 0;
            for s in list {
                eprintln!("herald-check: {} ({duration} s)", s.name());
                match scenarios::run(s, &settings).await {
                    Ok(outcome) => {
                        if !outcome.ok() {
                            code = code.max(1);
                        }
                        eprintln!(
                            "herald-check: {}: {} ({} faults)",
                            s.name(),
                            if outcome.ok() { "ok" } else { "FAILED" },
                            outcome.faults
                        );
                        results.push(serde_json::to_value(&outcome).unwrap_or_default());
                    }
                    Err(e) => {
                        eprintln!("herald-check: {}: could not run: {e}", s.name());
                        results.push(
                            serde_json::json!({"scenario": s.name(), "error": e.to_string()}),
                        );
                        code = 2;
                    }
                }
            }
            print_json(&results);
            if let Some(path) = out {
                let text = serde_json::to_string_pretty(&results).unwrap_or_default();
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("herald-check: cannot write {}: {e}", path.display());
                    code = 2;
                }
            }
            code
        }
    };
    std::process::exit(code);
}

fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("herald-check: cannot print results: {e}"),
    }
}
