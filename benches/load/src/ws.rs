//! WebSocket (RFC 6455) framing without a library, shared by herald-bench's fan-out subscribers and
//! baseline-server: frames are parsed in place in one reusable buffer per connection (masked
//! client frames are unmasked in place), so reading costs no allocation per frame. Plus the two
//! halves of the opening handshake over a raw `TcpStream`, keeping whatever the peer sent after
//! the HTTP head (e.g. the server's first frame) in the frame buffer.
use memchr::memmem;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

pub const OP_CONT: u8 = 0;
pub const OP_TEXT: u8 = 1;
pub const OP_BINARY: u8 = 2;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

/// A frame bigger than this is a protocol error (the buffer would grow to hold it).
pub const MAX_FRAME: usize = 64 << 20;

type Io<T> = std::io::Result<T>;

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// Header of the frame at the start of `b`: (opcode, masking key, header length, payload length),
/// or `None` while `b` does not hold the whole header.
fn parse_head(b: &[u8]) -> Option<(u8, Option<[u8; 4]>, usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let (len, mut h) = match b[1] & 0x7f {
        126 => (
            u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask = if b[1] & 0x80 != 0 {
        let m: [u8; 4] = b.get(h..h + 4)?.try_into().ok()?;
        h += 4;
        Some(m)
    } else {
        None
    };
    Some((b[0] & 0x0f, mask, h, len))
}

/// One connection's read buffer: bytes read but not yet consumed are `buf[start..end]`.
pub struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameBuf {
    pub fn new(cap: usize) -> Self {
        FrameBuf {
            buf: vec![0; cap.max(64)],
            start: 0,
            end: 0,
        }
    }

    /// Free space to read into; moves the unconsumed tail (at most a partial frame) to the front
    /// first, and grows the buffer only when one frame does not fit in it.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let need = match parse_head(&self.buf[..self.end]) {
                Some((_, _, h, len)) => (h + len).min(MAX_FRAME + 14),
                None => self.end + 1,
            };
            self.buf
                .resize(need.max(self.buf.len() * 2).min(MAX_FRAME + 14), 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into `spare()`.
    pub fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// Read once from `s`; `Ok(false)` at end of stream.
    pub async fn read_from<S: AsyncRead + Unpin>(&mut self, s: &mut S) -> Io<bool> {
        let n = s.read(self.spare()).await?;
        self.filled(n);
        Ok(n > 0)
    }

    /// The next complete frame (opcode, payload), unmasked in place; `None` until more is read.
    /// Fragmented messages come out fragment by fragment (opcode `OP_CONT` after the first).
    pub fn next_frame(&mut self) -> Io<Option<(u8, &[u8])>> {
        let b = &mut self.buf[self.start..self.end];
        let Some((op, mask, h, len)) = parse_head(b) else {
            return Ok(None);
        };
        if len > MAX_FRAME {
            return Err(bad(format!("frame of {len} bytes")));
        }
        if b.len() < h + len {
            return Ok(None);
        }
        let p = &mut b[h..h + len];
        if let Some(m) = mask {
            for (i, x) in p.iter_mut().enumerate() {
                *x ^= m[i & 3];
            }
        }
        let s = self.start + h;
        self.start += h + len;
        Ok(Some((op, &self.buf[s..s + len])))
    }

    /// Read until the HTTP head (through the blank line) is complete and consume it; what follows
    /// it stays buffered for `next_frame`.
    pub async fn read_http_head<S: AsyncRead + Unpin>(&mut self, s: &mut S) -> Io<String> {
        loop {
            if let Some(i) = memmem::find(&self.buf[self.start..self.end], b"\r\n\r\n") {
                let head = &self.buf[self.start..self.start + i + 4];
                let head = String::from_utf8_lossy(head).into_owned();
                self.start += i + 4;
                return Ok(head);
            }
            if self.end - self.start > 16 << 10 {
                return Err(bad("HTTP head over 16 KiB"));
            }
            if !self.read_from(s).await? {
                return Err(bad("closed during the handshake"));
            }
        }
    }
}

/// Append a frame header; `mask` makes it a client frame (the payload must then be masked).
fn put_head(out: &mut Vec<u8>, op: u8, len: usize, mask: Option<[u8; 4]>) {
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    out.push(0x80 | op);
    if len < 126 {
        out.push(mbit | len as u8);
    } else if len <= 0xffff {
        out.push(mbit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mbit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// Append an unmasked (server) frame.
pub fn put_server_frame(out: &mut Vec<u8>, op: u8, payload: &[u8]) {
    put_head(out, op, payload.len(), None);
    out.extend_from_slice(payload);
}

/// Append a masked (client) frame with masking key `key`.
pub fn put_client_frame(out: &mut Vec<u8>, op: u8, payload: &[u8], key: [u8; 4]) {
    put_head(out, op, payload.len(), Some(key));
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
}

/// Close code and reason of a close frame's payload, as `close CODE REASON`.
pub fn close_reason(p: &[u8]) -> String {
    if p.len() < 2 {
        return "close without code".into();
    }
    let code = u16::from_be_bytes([p[0], p[1]]);
    format!("close {code} {}", String::from_utf8_lossy(&p[2..]))
}

/// Client side of the handshake: send the upgrade request for `path` (with its query) on `host`,
/// read the response head into `fb` and check for 101.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    fb: &mut FrameBuf,
    host: &str,
    path: &str,
) -> Io<()> {
    let key = generate_key();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let head = fb.read_http_head(s).await?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(bad(format!("handshake refused: {status}")));
    }
    if header(&head, "sec-websocket-accept") != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(bad("handshake: wrong Sec-WebSocket-Accept"));
    }
    Ok(())
}

/// Server side of the handshake: read the upgrade request into `fb` and answer 101.
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    fb: &mut FrameBuf,
) -> Io<()> {
    let head = fb.read_http_head(s).await?;
    let key = header(&head, "sec-websocket-key").ok_or_else(|| bad("no Sec-WebSocket-Key"))?;
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    s.write_all(resp.as_bytes()).await
}

/// Value of header `name` (lower case) in an HTTP head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(fb: &mut FrameBuf) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some((op, p)) = fb.next_frame().unwrap() {
            v.push((op, p.to_vec()));
        }
        v
    }

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let big = vec![b'x'; 70_000];
        let mut wire = Vec::new();
        put_server_frame(&mut wire, OP_TEXT, b"hello");
        put_client_frame(&mut wire, OP_BINARY, &big[..300], [1, 2, 3, 4]);
        put_server_frame(&mut wire, OP_TEXT, &big);
        put_client_frame(&mut wire, OP_CLOSE, b"\x0f\xa1bye", [9, 8, 7, 6]);
        for chunk in [1, 7, 100, 4096] {
            let mut fb = FrameBuf::new(256);
            let mut got = Vec::new();
            for c in wire.chunks(chunk) {
                let mut c = c;
                while !c.is_empty() {
                    let sp = fb.spare();
                    let n = sp.len().min(c.len());
                    sp[..n].copy_from_slice(&c[..n]);
                    fb.filled(n);
                    c = &c[n..];
                    got.extend(parse_all(&mut fb));
                }
            }
            assert_eq!(got.len(), 4, "chunk {chunk}");
            assert_eq!(got[0], (OP_TEXT, b"hello".to_vec()));
            assert_eq!(got[1], (OP_BINARY, big[..300].to_vec()));
            assert_eq!(got[2].1.len(), 70_000);
            assert_eq!(close_reason(&got[3].1), "close 4001 bye");
        }
    }

    #[test]
    fn headers_are_case_insensitive() {
        let head = "HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: abc \r\n\r\n";
        assert_eq!(header(head, "sec-websocket-accept"), Some("abc"));
        assert_eq!(header(head, "upgrade"), None);
    }
}
