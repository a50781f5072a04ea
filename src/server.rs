//! Builds a node from its config and already-bound listeners, runs it until a shutdown signal, then shuts
//! it down in order: stop accepting, tell every client (`disconnect`, close 1001), flush storage.
//!
//! Taking bound listeners (instead of addresses) lets tests bind port 0 and learn the port before the
//! node starts. [`spawn`] runs a whole node on its own thread for tests and tools.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use actix_http::body::BoxBody;
use actix_http::HttpService;
use actix_service::{map_config, ServiceFactory};
use actix_web::dev::{AppConfig, ServiceRequest, ServiceResponse};
use actix_web::{web, App, HttpServer};
use tokio::sync::oneshot;

use crate::admin;
use crate::auth::Authenticator;
use crate::channel::{Evict, Registry};
use crate::cluster::{LocalLog, Log};
use crate::config::Config;
use crate::history::{Store, StoreConfig};
use crate::node::Node;
use crate::protocol::CloseCode;
use crate::session;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot bind or serve: {0}")]
    Io(#[from] io::Error),
    #[error("auth configuration: {0}")]
    Auth(#[from] crate::auth::AuthSetupError),
    #[error("cannot open storage at {path}: {source}")]
    Storage {
        path: String,
        source: crate::history::HistoryError,
    },
}

/// The listeners of a node: client WebSocket and admin HTTP.
pub struct Listeners {
    pub client: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both addresses of the config (port 0 picks a free port).
    pub fn bind(config: &Config) -> io::Result<Listeners> {
        Ok(Listeners {
            client: listen(config.server.listen, config.server.backlog)?,
            admin: TcpListener::bind(config.server.admin_listen)?,
        })
    }
}

/// A listening socket with an accept queue of `backlog` (std's `TcpListener::bind` always asks for 128).
fn listen(addr: std::net::SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

fn threads(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        thread::available_parallelism().map_or(2, |n| n.get())
    }
}

/// Builds the node's [`Log`] on its store. The default is [`LocalLog`]; tests inject logs that delay,
/// re-deliver or fail entries ([`spawn_with_log`]).
pub type LogFactory =
    Box<dyn FnOnce(&Store) -> Result<Arc<dyn Log>, crate::history::HistoryError> + Send>;

/// The log a config asks for: RabbitMQ streams when `cluster.enabled`, else the local log.
fn configured_log(config: &Config) -> LogFactory {
    if !config.cluster.enabled {
        return local_log();
    }
    let cluster = config.cluster.clone();
    let node = if config.server.node_id.is_empty() {
        format!("node-{}", ulid::Ulid::new())
    } else {
        config.server.node_id.clone()
    };
    Box::new(move |store| {
        let log = crate::cluster::StreamLog::start(cluster, node, store.clone());
        Ok(Arc::new(log) as Arc<dyn Log>)
    })
}

fn local_log() -> LogFactory {
    Box::new(|store| Ok(Arc::new(LocalLog::open(store.clone())?) as Arc<dyn Log>))
}

/// Opens storage and builds the shared node state. Must run inside an actix system.
pub fn build_node(config: Config) -> Result<Arc<Node>, ServerError> {
    let log = configured_log(&config);
    build_node_with(config, log)
}

fn build_node_with(config: Config, make_log: LogFactory) -> Result<Arc<Node>, ServerError> {
    let auth = Authenticator::from_config(&config.auth)?;
    if config.auth.anonymous {
        tracing::warn!("auth.anonymous = true: connections without a token are accepted; do not use in production");
    }
    let path = config.server.data_dir.join("history");
    let (store, report) = Store::open(&StoreConfig {
        path: path.clone(),
        group_commit: Duration::from_millis(config.storage.group_commit_ms),
        cache_bytes: config.storage.cache_mb * 1024 * 1024,
    })
    .map_err(|source| ServerError::Storage {
        path: path.display().to_string(),
        source,
    })?;
    if let Some(aside) = report.moved_aside {
        tracing::error!(moved_to = %aside.display(), "storage was unreadable and has been moved aside; every channel starts a new epoch");
    }
    let registry = Registry::new(
        threads(config.server.channel_threads),
        config.limits.max_channels,
    );
    let log = make_log(&store).map_err(|source| ServerError::Storage {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Arc::new(Node::new(
        Arc::new(config),
        auth,
        store,
        log,
        registry,
    )))
}

/// Runs a node on `listeners` until `shutdown` resolves, then shuts it down gracefully.
/// Must be called inside an actix system (`actix_rt::System`).
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    run_with(listeners, config, shutdown, |_| {}).await
}

/// Like [`run`], and calls `on_ready` with the node's state once it accepts connections.
pub async fn run_with(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(Arc<Node>),
) -> Result<(), ServerError> {
    let log = configured_log(&config);
    run_inner(listeners, config, log, shutdown, on_ready).await
}

async fn run_inner(
    listeners: Listeners,
    config: Config,
    make_log: LogFactory,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(Arc<Node>),
) -> Result<(), ServerError> {
    admin::log_token_status(&config);
    let node = build_node_with(config, make_log)?;
    let _ = node.addresses.set((
        listeners.client.local_addr()?.to_string(),
        listeners.admin.local_addr()?.to_string(),
    ));
    crate::channel::start_applier(node.hub.clone(), &node.channels.applier_arbiter());
    if node.config.cluster.enabled {
        start_bus(&node);
    }
    crate::channel::start_sweeper(node.hub.clone());
    let polls = Arc::new(session::polling::Polls::default());
    session::polling::start_sweeper(polls.clone(), node.config.session.poll_wait());
    let polls = web::Data::new(polls);
    let workers = threads(node.config.server.workers);
    let data = web::Data::new(node.clone());
    let client = serve_clients(listeners.client, workers, &data, polls)?;
    let admin = HttpServer::new({
        let data = data.clone();
        move || App::new().app_data(data.clone()).configure(admin::routes)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listeners.admin)?
    .run();
    let client_handle = client.handle();
    let admin_handle = admin.handle();
    let client_task = actix_rt::spawn(client);
    let admin_task = actix_rt::spawn(admin);
    on_ready(node.clone());

    shutdown.await;
    tracing::info!("shutting down: closing sessions");
    // The listener keeps accepting while the node drains: handshakes are answered 503 (`Retry-After`)
    // at once, so a client moves to another node instead of waiting in the accept backlog until the
    // node exits.
    node.start_draining();
    for (_, entry) in node.sessions.snapshot() {
        entry.evict.do_send(Evict {
            code: CloseCode::GoingAway,
            reason: None,
        });
    }
    let deadline = Instant::now() + Duration::from_millis(node.config.server.shutdown_grace_ms);
    while !node.sessions.is_empty() && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    // Give writers a moment to put the close frames on the wire.
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    if let Err(e) = node.store.flush() {
        tracing::error!(error = %e, "final flush failed");
    }
    client_handle.stop(true).await;
    admin_handle.stop(true).await;
    let _ = client_task.await;
    let _ = admin_task.await;
    node.channels.stop();
    // The log's own threads (the cluster bridge) stop too, so nothing of this node talks to RabbitMQ
    // after it stopped (several nodes may live in one process: tests).
    node.log.stop();
    tracing::info!("shutdown complete");
    Ok(())
}

/// The routes of the client listener: WebSocket handshake, long-polling, the JS client and examples.
fn client_app(
    data: web::Data<Arc<Node>>,
    polls: web::Data<Arc<session::polling::Polls>>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let max_frame = data.config.limits.max_frame_bytes;
    let examples = data.config.server.examples;
    let echo = data.config.server.conformance_echo;
    App::new()
        .app_data(data)
        .route("/ws", web::get().to(session::handshake::route))
        .configure(|cfg| session::polling::routes(cfg, polls, max_frame))
        .configure(|cfg| crate::assets::routes(cfg, examples))
        .configure(|cfg| {
            if echo {
                cfg.route("/conformance/echo", web::get().to(session::echo::route));
            }
        })
}

/// The client listener: actix-http with the application for plain requests and, for upgrade requests,
/// the hook that hands the socket of an accepted WebSocket to herald (see [`session::socket`]).
fn serve_clients(
    listener: TcpListener,
    workers: usize,
    data: &web::Data<Arc<Node>>,
    polls: web::Data<Arc<session::polling::Polls>>,
) -> io::Result<actix_server::Server> {
    let config = &data.config;
    // A peer that stops acknowledging, or keeps a zero receive window (a client that stopped reading),
    // for the heartbeat timeout gets its connection aborted by the kernel. Without it a cut slow consumer
    // could keep its socket, and what is queued for it, forever: the writer would wait on a write that
    // never completes.
    let user_timeout = Duration::from_millis(config.session.heartbeat_timeout_ms);
    let request_timeout = Duration::from_millis(config.session.handshake_timeout_ms);
    let local = listener.local_addr()?;
    let make_app = {
        let data = data.clone();
        move || client_app(data.clone(), polls.clone())
    };
    Ok(actix_server::Server::build()
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(1)
        .listen("herald-client", listener, move || {
            let app = make_app();
            HttpService::build()
                .client_request_timeout(request_timeout)
                // Plain HTTP connections (long-polling, assets) close at once once answered and the
                // client hung up; WebSocket connections leave the HTTP layer at the upgrade.
                .client_disconnect_timeout(Duration::ZERO)
                // Small frames must not wait for Nagle + delayed ACK (up to 40 ms per stall).
                .tcp_nodelay(true)
                .local_addr(local)
                .on_connect_ext(move |io: &actix_rt::net::TcpStream, _| {
                    if let Err(e) =
                        socket2::SockRef::from(io).set_tcp_user_timeout(Some(user_timeout))
                    {
                        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
                    }
                })
                .upgrade(session::socket::upgrade_service(make_app.clone()))
                .finish(map_config(app, |_| AppConfig::default()))
                .tcp()
        })?
        .run())
}

/// Starts the cluster bus on the applier thread: membership, presence across nodes, and the admin API's
/// questions to the other nodes.
fn start_bus(node: &Arc<Node>) {
    let hooks = crate::cluster::BusHooks {
        heartbeat: {
            let node = node.clone();
            Arc::new(move |version| node.heartbeat(version))
        },
        membership: node.membership.clone(),
        state: node.cluster_state.clone(),
        answer: admin::answerer(node.clone()),
    };
    // Weak: the hub owns the sink (through its cluster state), which must not keep the hub alive.
    let hub = Arc::downgrade(&node.hub);
    node.cluster_state.set_sink(Arc::new(move |events| {
        if let Some(hub) = hub.upgrade() {
            crate::channel::deliver_remote_presence(&hub, events)
        }
    }));
    let cfg = node.config.cluster.clone();
    let bus = actix::Actor::start_in_arbiter(&node.channels.applier_arbiter(), move |_| {
        crate::cluster::Bus::new(cfg, hooks)
    });
    let _ = node.bus.set(bus);
}

/// A node running on its own thread, for tests and tools.
pub struct RunningNode {
    pub client_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<Result<(), ServerError>>>,
    node: Arc<Node>,
}

impl RunningNode {
    /// `ws://` URL of the client endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.client_addr)
    }

    /// The node's shared state (sessions, channels, stats).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Shuts the node down gracefully and waits for it.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(ServerError::Io(io::Error::other("node thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Binds the config's addresses and runs a node on a new thread until [`RunningNode::shutdown`].
pub fn spawn(config: Config) -> Result<RunningNode, ServerError> {
    let log = configured_log(&config);
    spawn_with_log(config, log)
}

/// Like [`spawn`], with the node's log built by `make_log` (tests: a log that misbehaves on purpose).
pub fn spawn_with_log(config: Config, make_log: LogFactory) -> Result<RunningNode, ServerError> {
    let listeners = Listeners::bind(&config)?;
    let client_addr = listeners.client.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (node_tx, node_rx) = std::sync::mpsc::channel();
    let thread = thread::Builder::new()
        .name("herald-node".into())
        .spawn(move || {
            actix_rt::System::new().block_on(async move {
                let signal = async move {
                    let _ = stop_rx.await;
                };
                run_inner(listeners, config, make_log, signal, move |node| {
                    let _ = node_tx.send(node);
                })
                .await
            })
        })?;
    let node = match node_rx.recv() {
        Ok(node) => node,
        Err(_) => {
            return Err(match thread.join() {
                Ok(Err(e)) => e,
                _ => ServerError::Io(io::Error::other("node failed to start")),
            })
        }
    };
    Ok(RunningNode {
        client_addr,
        admin_addr,
        stop: Some(stop_tx),
        thread: Some(thread),
        node,
    })
}
