//! A raw WebSocket client for tests that misbehave in ways a WebSocket library would not allow: a
//! hand-made handshake, hand-made frames, and the server's frames read byte by byte.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::TIMEOUT;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

#[derive(Debug)]
#[allow(dead_code)] // `fin` and `masked` show in failure messages.
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn json(&self) -> Value {
        assert_eq!(self.opcode, OP_TEXT, "expected a text frame: {self:?}");
        serde_json::from_slice(&self.payload).expect("server text frame is JSON")
    }

    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OP_CLOSE);
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// What came next on a raw connection.
#[derive(Debug)]
pub enum Next {
    Frame(Frame),
    /// EOF or reset: the server dropped the TCP connection.
    Eof,
}

/// A raw connection; `S` is the socket, or the read half of a split one (a test that keeps writing on
/// the other half).
pub struct RawWs<S = TcpStream> {
    pub stream: S,
    pub buf: Vec<u8>,
}

/// Result of a hand-made handshake.
pub struct Handshake {
    pub status: u16,
    pub head: String,
    pub ws: RawWs,
}

impl Handshake {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

pub fn request_head(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// Performs the HTTP upgrade on `stream` by hand and returns the status line's code and the head.
pub async fn upgrade_on(
    mut stream: TcpStream,
    addr: SocketAddr,
    extra: &[(&str, &str)],
) -> Handshake {
    stream
        .write_all(request_head(addr, "/ws", extra).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let end = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return p + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read handshake");
            assert!(
                n > 0,
                "server closed during the handshake: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("handshake response timed out");
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let rest = buf[end..].to_vec();
    Handshake {
        status,
        head,
        ws: RawWs { stream, buf: rest },
    }
}

pub async fn upgrade(addr: SocketAddr, extra: &[(&str, &str)]) -> Handshake {
    let stream = TcpStream::connect(addr).await.unwrap();
    upgrade_on(stream, addr, extra).await
}

/// Upgrades and checks for 101 and the `welcome` frame.
pub async fn raw_connect(addr: SocketAddr) -> RawWs {
    let h = upgrade(addr, &[]).await;
    assert_eq!(h.status, 101, "{}", h.head);
    let mut ws = h.ws;
    let w = ws.expect_frame().await;
    assert_eq!(w.json()["type"], "welcome");
    ws
}

pub fn encode_frame(fin: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let mbit = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mbit | n as u8),
        n if n < 65536 => {
            out.push(mbit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mbit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        let key = [0x37u8, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

impl RawWs {
    /// The read half as a `RawWs` (with what was already buffered) and the write half.
    pub fn split(self) -> (RawWs<OwnedReadHalf>, OwnedWriteHalf) {
        let (r, w) = self.stream.into_split();
        (
            RawWs {
                stream: r,
                buf: self.buf,
            },
            w,
        )
    }
}

impl<S: AsyncWrite + Unpin> RawWs<S> {
    pub async fn write_frame(&mut self, fin: bool, opcode: u8, payload: &[u8], mask: bool) {
        let bytes = encode_frame(fin, opcode, payload, mask);
        self.stream.write_all(&bytes).await.expect("write frame");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.write_frame(true, OP_TEXT, v.to_string().as_bytes(), true)
            .await;
    }
}

impl<S: AsyncRead + Unpin> RawWs<S> {
    pub async fn fill(&mut self, want: usize) -> bool {
        while self.buf.len() < want {
            let mut chunk = vec![0u8; 64 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }

    /// Reads one server frame (or EOF), asserting server frames are never masked.
    pub async fn next(&mut self) -> Next {
        if !self.fill(2).await {
            return Next::Eof;
        }
        let fin = self.buf[0] & 0x80 != 0;
        let opcode = self.buf[0] & 0x0f;
        let masked = self.buf[1] & 0x80 != 0;
        let (len, hdr) = match self.buf[1] & 0x7f {
            126 => {
                if !self.fill(4).await {
                    return Next::Eof;
                }
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                if !self.fill(10).await {
                    return Next::Eof;
                }
                (
                    u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                    10,
                )
            }
            n => (n as usize, 2),
        };
        assert!(!masked, "server frames must not be masked");
        if !self.fill(hdr + len).await {
            return Next::Eof;
        }
        let payload = self.buf[hdr..hdr + len].to_vec();
        self.buf.drain(..hdr + len);
        Next::Frame(Frame {
            fin,
            opcode,
            masked,
            payload,
        })
    }

    pub async fn next_timeout(&mut self, t: Duration) -> Next {
        tokio::time::timeout(t, self.next())
            .await
            .expect("timed out waiting for a server frame")
    }

    /// The next data frame, skipping the server's pings.
    pub async fn expect_frame(&mut self) -> Frame {
        loop {
            match self.next_timeout(TIMEOUT).await {
                Next::Frame(f) if f.opcode == OP_PING => continue,
                Next::Frame(f) => return f,
                Next::Eof => panic!("connection ended while waiting for a frame"),
            }
        }
    }

    /// Reads until a close frame or EOF. Returns the JSON text frames seen and the close code (`None` for
    /// a close frame without code, or for EOF without a close frame: `closed_frame` tells which).
    pub async fn read_to_close(&mut self) -> Closing {
        let mut texts = Vec::new();
        let mut pings = 0;
        loop {
            match self.next_timeout(TIMEOUT).await {
                Next::Frame(f) if f.opcode == OP_TEXT => texts.push(f.json()),
                Next::Frame(f) if f.opcode == OP_PING => pings += 1,
                Next::Frame(f) if f.opcode == OP_CLOSE => {
                    return Closing {
                        texts,
                        pings,
                        close_frame: true,
                        code: f.close_code(),
                    }
                }
                Next::Frame(f) => panic!("unexpected frame {f:?}"),
                Next::Eof => {
                    return Closing {
                        texts,
                        pings,
                        close_frame: false,
                        code: None,
                    }
                }
            }
        }
    }

    /// Time until the server drops the connection (EOF or reset), discarding whatever it still sends;
    /// panics if that takes longer than `limit`.
    pub async fn time_to_eof(&mut self, limit: Duration) -> Duration {
        let t0 = std::time::Instant::now();
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(limit, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => continue,
                Ok(_) => return t0.elapsed(),
                Err(_) => panic!("the server kept the socket open for more than {limit:?}"),
            }
        }
    }
}

#[derive(Debug)]
pub struct Closing {
    pub texts: Vec<Value>,
    pub pings: usize,
    pub close_frame: bool,
    pub code: Option<u16>,
}

impl Closing {
    /// The close frame carried `code`, and a `disconnect` frame with the same code came right before it.
    pub fn assert_code(&self, code: u16, reconnect: bool) {
        assert!(self.close_frame, "expected a close frame: {self:?}");
        assert_eq!(self.code, Some(code), "{self:?}");
        let d = self
            .texts
            .iter()
            .rev()
            .find(|t| t["type"] == "disconnect")
            .unwrap_or_else(|| panic!("no disconnect frame before the close: {self:?}"));
        assert_eq!(d["code"], code, "{d}");
        assert_eq!(d["reconnect"], reconnect, "{d}");
        assert_eq!(
            self.texts.last().unwrap()["type"],
            "disconnect",
            "disconnect is the last frame before the close: {self:?}"
        );
    }
}
