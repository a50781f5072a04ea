//! One WebSocket client speaking herald's JSON subset, either directly (`herald` mode) or wrapped in
//! socket.io v5 / engine.io v4 framing over a plain WebSocket (`sio` mode): commands go out as
//! `42["cmd",<json>]`, server frames come back as `42["msg",<json>]`, engine.io pings `2` are
//! answered with `3`. Incoming frames are handed out as `Bytes` without JSON parsing; the helpers
//! below find single fields by byte search, which is what keeps one generator core ahead of the
//! servers.
use crate::util::R;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use memchr::memmem;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    pub sio: bool,
    /// `Host` header value and request path with query, for the raw handshake (sub.rs)
    pub host: String,
    pub path: String,
}

impl Target {
    pub async fn resolve(url: &str, sio: bool) -> R<Target> {
        let req = url.into_client_request()?;
        let host = req.uri().host().ok_or("url without host")?.to_string();
        let port = req.uri().port_u16().unwrap_or(80);
        let path = req
            .uri()
            .path_and_query()
            .map_or("/".into(), |p| p.as_str().to_string());
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or("unresolvable host")?;
        Ok(Target {
            url: url.to_string(),
            addr,
            sio,
            host: format!("{host}:{port}"),
            path,
        })
    }
}

pub struct Client {
    pub ws: WebSocketStream<TcpStream>,
    sio: bool,
    /// Close code and reason (or herald's `disconnect` frame) if the server closed the connection.
    pub closed_with: Option<String>,
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

impl Client {
    /// TCP connect (optionally from a given source address), WebSocket handshake, and wait for
    /// the server's `welcome`.
    pub async fn connect(t: &Target, bind: Option<IpAddr>) -> R<Client> {
        let stream = tcp_connect(t, bind).await?;
        let req = t.url.as_str().into_client_request()?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(req, stream, Some(config())).await?;
        let mut c = Client {
            ws,
            sio: t.sio,
            closed_with: None,
        };
        if c.sio {
            // engine.io sends `0{...}` (open) first; socket.io needs the `40` connect packet.
            c.ws.send(Message::text("40")).await?;
        }
        loop {
            let f = c.recv().await?.ok_or("closed before welcome")?;
            if frame_type(&f) == b"welcome" {
                break;
            }
        }
        Ok(c)
    }

    fn wrap(&self, json: String) -> Message {
        if self.sio {
            Message::text(format!("42[\"cmd\",{json}]"))
        } else {
            Message::text(json)
        }
    }

    pub async fn send(&mut self, json: String) -> R<()> {
        let m = self.wrap(json);
        self.ws.send(m).await?;
        Ok(())
    }

    /// Queue without flushing (publishers batch a tick's frames into one write).
    pub async fn feed(&mut self, json: String) -> R<()> {
        let m = self.wrap(json);
        self.ws.feed(m).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> R<()> {
        self.ws.flush().await?;
        Ok(())
    }

    /// Next herald JSON frame; `None` when the connection closed.
    pub async fn recv(&mut self) -> R<Option<Bytes>> {
        loop {
            match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(t))) => {
                    let b: Bytes = t.into();
                    if !self.sio {
                        if frame_type(&b) == b"disconnect" {
                            self.closed_with = Some(String::from_utf8_lossy(&b).into_owned());
                        }
                        return Ok(Some(b));
                    }
                    if b.starts_with(b"42[\"msg\",") && b.len() > 10 {
                        return Ok(Some(b.slice(9..b.len() - 1)));
                    }
                    if &b[..] == b"2" {
                        self.ws.send(Message::text("3")).await?;
                    } else if b.starts_with(b"41") || b.starts_with(b"1") {
                        return Ok(None);
                    }
                }
                Some(Ok(Message::Binary(b))) if !self.sio => return Ok(Some(b)),
                Some(Ok(Message::Close(cf))) => {
                    if self.closed_with.is_none() {
                        self.closed_with = Some(match cf {
                            Some(cf) => format!("close {} {}", u16::from(cf.code), cf.reason),
                            None => "close without code".into(),
                        });
                    }
                    return Ok(None);
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Send a command and wait for the `reply`/`error` with the same integer id. Frames of other
    /// types in between are skipped. Returns (is_reply, frame).
    pub async fn request(&mut self, id: u64, json: String) -> R<(bool, Bytes)> {
        self.send(json).await?;
        self.wait_reply(id).await
    }

    pub async fn wait_reply(&mut self, id: u64) -> R<(bool, Bytes)> {
        loop {
            let f = self.recv().await?.ok_or("closed while waiting for reply")?;
            if let Some(ok) = reply_to(&f, id) {
                return Ok((ok, f));
            }
        }
    }

    /// Connect and subscribe to `channels` (request ids 1, 2, …).
    pub async fn connect_subscribed(
        t: &Target,
        bind: Option<IpAddr>,
        channels: Vec<String>,
    ) -> R<Client> {
        let mut c = Client::connect(t, bind).await?;
        for (k, ch) in channels.iter().enumerate() {
            c.subscribe(k as u64 + 1, ch).await?;
        }
        Ok(c)
    }

    pub async fn subscribe(&mut self, id: u64, channel: &str) -> R<()> {
        let (ok, f) = self.request(id, subscribe_json(id, channel)).await?;
        subscribed(ok, &f)
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// TCP connection to the target (optionally from a given source address), Nagle off.
pub async fn tcp_connect(t: &Target, bind: Option<IpAddr>) -> R<TcpStream> {
    let sock = if t.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind {
        bind_address_no_port(&sock)?;
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = sock.connect(t.addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The subscribe command for `channel` with request id `id` (herald framing; sio wraps it).
pub fn subscribe_json(id: u64, channel: &str) -> String {
    format!(r#"{{"v":1,"type":"subscribe","id":{id},"channel":"{channel}"}}"#)
}

/// Let connect() choose the source port by the whole 4-tuple (and reuse TIME_WAIT ports like an
/// unbound socket) instead of bind() reserving a port of the source address for good.
fn bind_address_no_port(sock: &TcpSocket) -> R<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(format!(
            "IP_BIND_ADDRESS_NO_PORT: {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    Ok(())
}

/// `Some(true)` if frame `f` is the `reply` to request `id`, `Some(false)` if it is its `error`.
pub fn reply_to(f: &[u8], id: u64) -> Option<bool> {
    let ty = frame_type(f);
    if ty != b"reply" && ty != b"error" {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(f).ok()?;
    (v.get("id").and_then(|x| x.as_u64()) == Some(id)).then_some(ty == b"reply")
}

/// `Err` with the frame if a subscribe was answered with an `error`.
pub fn subscribed(ok: bool, f: &[u8]) -> R<()> {
    if !ok {
        return Err(format!("subscribe refused: {}", String::from_utf8_lossy(f)).into());
    }
    Ok(())
}

/// The value of the first `"type":"…"` in a frame (herald and the peers put no spaces there).
pub fn frame_type(b: &[u8]) -> &[u8] {
    static F: OnceLock<memmem::Finder<'static>> = OnceLock::new();
    let f = F.get_or_init(|| memmem::Finder::new(b"\"type\":\""));
    match f.find(b) {
        Some(i) => {
            let rest = &b[i + 8..];
            match memchr::memchr(b'"', rest) {
                Some(j) => &rest[..j],
                None => b"",
            }
        }
        None => b"",
    }
}

fn parse_uint(b: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    let mut any = false;
    for &c in b {
        if c.is_ascii_digit() {
            n = n.wrapping_mul(10).wrapping_add((c - b'0') as u64);
            any = true;
        } else if c == b' ' && !any {
            continue;
        } else {
            break;
        }
    }
    any.then_some(n)
}

/// The send timestamp `"t":<unix micros>` that publishers put into `data`, returned in nanoseconds.
/// Microseconds, not nanoseconds, on the wire: JavaScript peers parse numbers as doubles, exact only
/// below 2^53, and unix nanoseconds are above that.
pub fn find_t(b: &[u8]) -> Option<u64> {
    static F: OnceLock<memmem::Finder<'static>> = OnceLock::new();
    let f = F.get_or_init(|| memmem::Finder::new(b"\"t\":"));
    let i = f.find(b)?;
    Some(parse_uint(&b[i + 4..])? * 1000)
}

/// Intended send time (ns, whole microseconds) of message `i` of an open-loop schedule.
pub fn sched(start_ns: u64, i: u64, period_ns: f64) -> u64 {
    (start_ns + (i as f64 * period_ns) as u64) / 1000 * 1000
}

/// `"offset":<n>` of a message frame.
pub fn find_offset(b: &[u8]) -> Option<u64> {
    static F: OnceLock<memmem::Finder<'static>> = OnceLock::new();
    let f = F.get_or_init(|| memmem::Finder::new(b"\"offset\":"));
    let i = f.find(b)?;
    parse_uint(&b[i + 9..])
}

/// A publish command whose `data` is `{"t":<t_ns/1000>,"p":"xxx…"}`, padded so that `data` is `size` bytes.
pub fn publish_json(id: u64, channel: &str, t_ns: u64, size: usize) -> String {
    let head = format!(r#"{{"t":{},"p":""#, t_ns / 1000);
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(size + 80);
    s.push_str(r#"{"v":1,"type":"publish","id":"#);
    s.push_str(&id.to_string());
    s.push_str(r#","channel":""#);
    s.push_str(channel);
    s.push_str(r#"","data":"#);
    s.push_str(&head);
    for _ in 0..pad {
        s.push('x');
    }
    s.push_str("\"}}");
    s
}
