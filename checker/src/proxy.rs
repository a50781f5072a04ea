//! An in-process TCP proxy that can cut, refuse or freeze the connections it carries.
//!
//! It exists because herald's delivery promise has to hold when the network misbehaves, between
//! clients and herald nodes and between a herald node and RabbitMQ, and the checker must be able to
//! break those links on demand, from inside its own process, without root, iptables or tc. Every
//! connection a scenario wants to break goes through a [`Proxy`] in front of the real address:
//!
//! - [`Proxy::cut_all`] resets every current connection at once (TCP RST on both sides, as after a
//!   crashed peer or a lost NAT entry); new connections are accepted as before;
//! - [`Proxy::set_refusing`] makes new connections fail at once (accepted, then reset), as a node
//!   that is down;
//! - [`Proxy::set_frozen`] stalls both directions without closing anything, as a partition that
//!   heals: bytes are held (in the proxy or the kernel buffers behind it), not dropped, and forwarded
//!   in order once thawed. A connection accepted while frozen reaches the upstream only after the thaw.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long the proxy waits for the upstream to accept a connection before it resets the client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes moved per read, per direction.
const BUF: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy cannot listen on 127.0.0.1: {0}")]
    Bind(#[source] io::Error),
}

/// A TCP proxy listening on `127.0.0.1:<ephemeral>` and forwarding to one upstream address.
///
/// Must be started inside a tokio runtime. Controls are cheap, synchronous and callable from any
/// task. Dropping the proxy (or [`Proxy::stop`]) stops listening and resets every connection.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: SocketAddr,
    refusing: AtomicBool,
    live: AtomicUsize,
    frozen: watch::Sender<bool>,
    /// Bumped by every `cut_all`; a connection is cut when it changes after the connection began.
    cuts: watch::Sender<u64>,
    stopped: watch::Sender<bool>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (ephemeral port) and forwards every accepted connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Proxy, ProxyError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(ProxyError::Bind)?;
        let addr = listener.local_addr().map_err(ProxyError::Bind)?;
        let shared = Arc::new(Shared {
            upstream,
            refusing: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            frozen: watch::Sender::new(false),
            cuts: watch::Sender::new(0),
            stopped: watch::Sender::new(false),
        });
        tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Proxy { addr, shared })
    }

    /// The address clients connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address every connection is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Resets every current connection, both sides, at once. New connections are still accepted.
    pub fn cut_all(&self) {
        self.shared.cuts.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// While true, new connections are accepted and reset at once; current ones are left alone.
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// While true, no byte is forwarded in either direction; held bytes go on, in order, when false.
    pub fn set_frozen(&self, frozen: bool) {
        self.shared.frozen.send_replace(frozen);
    }

    pub fn is_frozen(&self) -> bool {
        *self.shared.frozen.borrow()
    }

    pub fn is_refusing(&self) -> bool {
        self.shared.refusing.load(Ordering::SeqCst)
    }

    /// Live proxied connections (accepted and not yet closed, including those waiting out a freeze).
    pub fn connections(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Stops listening and resets every connection. Idempotent; also done on drop.
    pub fn stop(&self) {
        self.shared.stopped.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counts a live connection for as long as it exists.
struct Live(Arc<Shared>);

impl Live {
    fn new(shared: &Arc<Shared>) -> Live {
        shared.live.fetch_add(1, Ordering::SeqCst);
        Live(shared.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Closes with a TCP RST instead of a FIN: SO_LINGER 0, then close.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Returns once the proxy is not frozen (at once if it is not).
async fn thawed(frozen: &mut watch::Receiver<bool>) {
    let _ = frozen.wait_for(|f| !*f).await;
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut stopped = shared.stopped.subscribe();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of descriptors or an aborted handshake: keep listening.
                tracing::debug!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if shared.refusing.load(Ordering::SeqCst) {
            reset(client);
            continue;
        }
        // Subscribing here, before the spawn, makes any later `cut_all` reach this connection.
        let cut = shared.cuts.subscribe();
        let live = Live::new(&shared);
        tokio::spawn(serve(client, shared.clone(), cut, live));
    }
}

async fn serve(
    mut client: TcpStream,
    shared: Arc<Shared>,
    mut cut: watch::Receiver<u64>,
    _live: Live,
) {
    let mut stopped = shared.stopped.subscribe();
    let interrupted = async {
        tokio::select! {
            _ = cut.changed() => {}
            _ = stopped.wait_for(|s| *s) => {}
        }
    };
    tokio::pin!(interrupted);
    let mut frozen = shared.frozen.subscribe();
    let connect = async {
        thawed(&mut frozen).await;
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(shared.upstream)).await
    };
    let mut server = tokio::select! {
        r = connect => match r {
            Ok(Ok(server)) => server,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, upstream = %shared.upstream, "proxy cannot reach upstream");
                return reset(client);
            }
            Err(_) => return reset(client),
        },
        _ = &mut interrupted => return reset(client),
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let clean = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let up = pump(cr, sw, shared.frozen.subscribe());
        let down = pump(sr, cw, shared.frozen.subscribe());
        tokio::select! {
            r = async { tokio::try_join!(up, down) } => r.is_ok(),
            _ = &mut interrupted => false,
        }
    };
    // Both directions ended with a FIN: close normally. Otherwise (cut, stop, or an error on one
    // side, such as a reset by the peer) reset both sides, so each end sees what a dead link does.
    if !clean {
        reset(client);
        reset(server);
    }
}

/// Copies `from` to `to` until EOF (then half-closes `to`), holding bytes while frozen.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut frozen: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        thawed(&mut frozen).await;
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        thawed(&mut frozen).await;
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tokio::time::{sleep, timeout, Instant};

    const WAIT: Duration = Duration::from_secs(5);

    /// An echo server; reports, per connection, the bytes echoed or the error kind that ended it.
    async fn echo_server() -> (
        SocketAddr,
        mpsc::UnboundedReceiver<Result<u64, io::ErrorKind>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let res = tokio::io::copy(&mut r, &mut w).await;
                    let _ = tx.send(res.map_err(|e| e.kind()));
                });
            }
        });
        (addr, rx)
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        timeout(WAIT, s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }

    /// What a client sees of a closed link: the error kind, or `None` for a clean EOF.
    async fn closed(s: &mut TcpStream) -> Option<io::ErrorKind> {
        let mut b = [0u8; 16];
        match timeout(WAIT, s.read(&mut b))
            .await
            .expect("connection closed")
        {
            Ok(0) => None,
            Ok(n) => panic!("unexpected {n} bytes"),
            Err(e) => Some(e.kind()),
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
            sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forwards_both_ways() {
        let (up, _) = echo_server().await;
        let p = Proxy::start(up).await.unwrap();
        assert_eq!(p.upstream(), up);
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        roundtrip(&mut c, b"hello").await;
        roundtrip(&mut c, &[7u8; 100_000]).await;
        assert_eq!(p.connections(), 1);
        // A clean half-close travels through and ends the connection cleanly.
        c.shutdown().await.unwrap();
        assert_eq!(closed(&mut c).await, None);
        until("no live connection", || p.connections() == 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cut_all_resets_both_sides_and_reconnecting_works() {
        let (up, mut ends) = echo_server().await;
        let p = Proxy::start(up).await.unwrap();
        let mut a = TcpStream::connect(p.addr()).await.unwrap();
        let mut b = TcpStream::connect(p.addr()).await.unwrap();
        roundtrip(&mut a, b"a").await;
        roundtrip(&mut b, b"b").await;
        assert_eq!(p.connections(), 2);
        p.cut_all();
        assert_eq!(closed(&mut a).await, Some(io::ErrorKind::ConnectionReset));
        assert_eq!(closed(&mut b).await, Some(io::ErrorKind::ConnectionReset));
        for _ in 0..2 {
            let end = timeout(WAIT, ends.recv()).await.unwrap().unwrap();
            assert_eq!(end, Err(io::ErrorKind::ConnectionReset), "upstream side");
        }
        until("no live connection", || p.connections() == 0).await;
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        roundtrip(&mut c, b"again").await;
        assert_eq!(p.connections(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusing_resets_new_connections_only() {
        let (up, _) = echo_server().await;
        let p = Proxy::start(up).await.unwrap();
        let mut old = TcpStream::connect(p.addr()).await.unwrap();
        roundtrip(&mut old, b"old").await;
        p.set_refusing(true);
        assert!(p.is_refusing());
        // The reset may even beat the end of `connect`.
        if let Ok(mut c) = TcpStream::connect(p.addr()).await {
            let _ = c.write_all(b"x").await;
            assert!(closed(&mut c).await.is_some(), "refused with a reset");
        }
        roundtrip(&mut old, b"still here").await;
        p.set_refusing(false);
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        roundtrip(&mut c, b"accepted").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frozen_holds_bytes_and_delivers_them_in_order_after_thaw() {
        let (up, _) = echo_server().await;
        let p = Proxy::start(up).await.unwrap();
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        roundtrip(&mut c, b"warm").await;
        p.set_frozen(true);
        assert!(p.is_frozen());
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = c.into_split();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move { w.write_all(&sent).await.map(|_| w) })
        };
        // A connection opened during the freeze waits too.
        let mut late = TcpStream::connect(p.addr()).await.unwrap();
        late.write_all(b"late").await.unwrap();
        let mut b = [0u8; 1];
        assert!(timeout(Duration::from_millis(500), r.read(&mut b))
            .await
            .is_err());
        assert!(timeout(Duration::from_millis(10), late.read(&mut b))
            .await
            .is_err());
        p.set_frozen(false);
        let mut got = vec![0u8; sent.len()];
        timeout(WAIT, r.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got == sent, "bytes lost or reordered across the freeze");
        let _w = writer.await.unwrap().unwrap();
        let mut l = [0u8; 4];
        timeout(WAIT, late.read_exact(&mut l))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&l, b"late");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_closes_everything_and_stops_listening() {
        let (up, _) = echo_server().await;
        let p = Proxy::start(up).await.unwrap();
        let addr = p.addr();
        let mut c = TcpStream::connect(addr).await.unwrap();
        roundtrip(&mut c, b"x").await;
        p.set_frozen(true);
        drop(p);
        assert_eq!(closed(&mut c).await, Some(io::ErrorKind::ConnectionReset));
        let t0 = Instant::now();
        while TcpStream::connect(addr).await.is_ok() {
            assert!(t0.elapsed() < WAIT, "still listening after stop");
            sleep(Duration::from_millis(5)).await;
        }
    }
}
