//! The `herald` command: run a node (`serve`) and development helpers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::config::{CliOverrides, Config};
use herald::server::{self, Listeners};

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "A real-time message broker over WebSocket"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker node until SIGINT or SIGTERM.
    Serve {
        /// A TOML config file, read after config/default.toml and before HERALD_* environment variables.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Client WebSocket address (server.listen), e.g. 127.0.0.1:8000; port 0 picks a free port.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Admin HTTP address (server.admin_listen), e.g. 127.0.0.1:8001.
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<SocketAddr>,
        /// Directory for channel history (server.data_dir).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Log format: `text` (default) or `json` lines. RUST_LOG sets the level (default info).
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        log_format: LogFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}

fn serve(cli: CliOverrides, log_format: LogFormat) -> ExitCode {
    init_logging(log_format);
    let config = match Config::load(Path::new("config/default.toml"), &cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    let listeners = match Listeners::bind(&config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "herald: cannot bind {} / {}: {e}",
                config.server.listen, config.server.admin_listen
            );
            return ExitCode::from(1);
        }
    };
    let (client, admin) = match (listeners.client.local_addr(), listeners.admin.local_addr()) {
        (Ok(c), Ok(a)) => (c, a),
        _ => {
            eprintln!("herald: cannot read bound addresses");
            return ExitCode::from(1);
        }
    };
    let result = actix_rt::System::new().block_on(server::run_with(
        listeners,
        config,
        shutdown_signal(),
        move |node| {
            tracing::info!(node = %node.id, %client, %admin, "herald listening");
            // One machine-readable line on stdout, for scripts and tests that bind port 0.
            println!("herald listening ws={client} admin={admin}");
        },
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            admin_listen,
            data_dir,
            log_format,
        } => serve(
            CliOverrides {
                config_file: config,
                listen,
                admin_listen,
                data_dir,
            },
            log_format,
        ),
    }
}
