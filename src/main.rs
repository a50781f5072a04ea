//! The `herald` command: run a node (`serve`) and development helpers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::config::{CliOverrides, Config};
use herald::server::{self, Listeners, ServerError};

/// jemalloc instead of glibc's malloc, for memory that comes back after bursts: with glibc an idle
/// connection kept what a burst of large messages made its buffers grow to (S1 in docs/benchmarks.md);
/// jemalloc's background thread returns freed pages to the OS within about a second.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options (read before `main`): purge freed pages from a background thread, after
/// 1 s, instead of only when the allocating thread happens to allocate again (an idle server never does).
/// `_RJEM_MALLOC_CONF` in the environment overrides it. jemalloc reads this symbol as a C `const char *`,
/// hence a pointer-sized static pointing at a NUL-terminated string.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: Option<&'static u8> =
    Some(&b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0]);

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
    /// Mint a development JWT signed with the configured auth.hmac_secret, printed on stdout.
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// A TOML config file whose auth.hmac_secret signs the token (HERALD_AUTH__HMAC_SECRET works too).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The user id (`sub` claim).
    #[arg(long)]
    sub: String,
    /// A channel pattern the user may subscribe to, e.g. 'chat:*'; repeat for more. None: namespace rules.
    #[arg(long, value_name = "PATTERN")]
    subscribe: Vec<String>,
    /// A channel pattern the user may publish to; repeat for more. None: namespace rules.
    #[arg(long, value_name = "PATTERN")]
    publish: Vec<String>,
    /// Lifetime, e.g. 30s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: u64,
}

/// Parses `<n>[s|m|h|d]` into seconds.
fn parse_ttl(s: &str) -> Result<u64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad ttl {s:?}: expected e.g. 30s, 15m, 1h, 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad ttl unit {unit:?}: use s, m, h or d")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "ttl too large".to_string())
}

fn token(args: TokenArgs) -> ExitCode {
    let cli = CliOverrides {
        config_file: args.config,
        ..CliOverrides::default()
    };
    let config = match Config::load(Path::new("config/default.toml"), &cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = herald::auth::Claims {
        sub: args.sub,
        exp: now + args.ttl,
        subscribe: (!args.subscribe.is_empty()).then_some(args.subscribe),
        publish: (!args.publish.is_empty()).then_some(args.publish),
    };
    let minted = herald::auth::Authenticator::from_config(&config.auth)
        .map_err(|e| e.to_string())
        .and_then(|a| a.mint(&claims).map_err(|e| e.to_string()));
    match minted {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: files, pipes and journald get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
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
        // A key file named by the configuration that cannot be read or parsed is a configuration error.
        Err(ServerError::Auth(e)) => {
            eprintln!("herald: configuration error: {e}");
            ExitCode::from(2)
        }
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
        Command::Token(args) => token(args),
    }
}
