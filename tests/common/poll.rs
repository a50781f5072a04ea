//! A long-polling client for the integration tests: raw HTTP/1.1 over TCP (one request per
//! connection), so a test can also lose an answer on purpose or cut a held poll.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Enc, TIMEOUT};

/// A raw HTTP answer.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Writes one request; the caller reads (or drops) the connection.
pub async fn send_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<(&str, &[u8])>,
) -> TcpStream {
    let mut s = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect timeout")
        .expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    match body {
        Some((ct, b)) => req.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
            b.len()
        )),
        None if method == "POST" => req.push_str("Content-Length: 0\r\n\r\n"),
        None => req.push_str("\r\n"),
    }
    let mut bytes = req.into_bytes();
    if let Some((_, b)) = body {
        bytes.extend_from_slice(b);
    }
    s.write_all(&bytes).await.expect("write request");
    s
}

/// Reads a whole answer (the server closes after it).
pub async fn read_response(mut s: TcpStream) -> Raw {
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT * 3, s.read_to_end(&mut raw))
        .await
        .expect("response timeout")
        .expect("read");
    let (status, headers, body) = super::http::parse_response(&raw);
    Raw {
        status,
        headers,
        body,
    }
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<(&str, &[u8])>,
) -> Raw {
    read_response(send_request(addr, method, path, headers, body).await).await
}

/// A decoded server batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub session: Option<String>,
    pub seq: u64,
    pub frames: Vec<Value>,
}

pub fn decode_batch(enc: Enc, body: &[u8]) -> Batch {
    match enc {
        Enc::Json => {
            let v: Value = serde_json::from_slice(body).expect("JSON batch");
            Batch {
                session: v["session"].as_str().map(str::to_owned),
                seq: v["seq"].as_u64().expect("seq"),
                frames: v["frames"].as_array().expect("frames").clone(),
            }
        }
        Enc::Msgpack => {
            let v = rmpv::decode::read_value(&mut &body[..]).expect("MessagePack batch");
            let map = v.as_map().expect("a map");
            let get = |k: &str| {
                map.iter()
                    .find(|(key, _)| key.as_str() == Some(k))
                    .map(|e| &e.1)
            };
            Batch {
                session: get("session").and_then(|s| s.as_str()).map(str::to_owned),
                seq: get("seq").and_then(|s| s.as_u64()).expect("seq"),
                frames: get("frames")
                    .and_then(|f| f.as_array())
                    .expect("frames")
                    .iter()
                    .map(|b| {
                        rmp_serde::from_slice(b.as_slice().expect("frames are bin"))
                            .expect("a MessagePack frame")
                    })
                    .collect(),
            }
        }
    }
}

pub fn content_type(enc: Enc) -> &'static str {
    match enc {
        Enc::Json => "application/json",
        Enc::Msgpack => "application/msgpack",
    }
}

/// One long-polling session, driven by hand.
pub struct PollClient {
    pub addr: SocketAddr,
    pub enc: Enc,
    pub session: String,
    pub token: Option<String>,
    pub origin: Option<String>,
    /// The last batch received.
    pub ack: u64,
    pub sent: u64,
    next_id: u64,
    pub backlog: VecDeque<Value>,
    pub welcome: Value,
}

impl PollClient {
    /// Opens a session; `Err` is the refusal.
    pub async fn try_open(
        addr: SocketAddr,
        enc: Enc,
        token: Option<&str>,
        origin: Option<&str>,
    ) -> Result<PollClient, Raw> {
        let q = match enc {
            Enc::Json => "json",
            Enc::Msgpack => "msgpack",
        };
        let mut headers = Vec::new();
        if let Some(t) = token {
            headers.push(("Authorization", format!("Bearer {t}")));
        }
        if let Some(o) = origin {
            headers.push(("Origin", o.to_string()));
        }
        let r = request(
            addr,
            "POST",
            &format!("/poll/open?encoding={q}"),
            &headers,
            None,
        )
        .await;
        if r.status != 200 {
            return Err(r);
        }
        let b = decode_batch(enc, &r.body);
        let welcome = b
            .frames
            .first()
            .cloned()
            .expect("welcome in the first batch");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        Ok(PollClient {
            addr,
            enc,
            session: b.session.expect("the session id"),
            token: token.map(str::to_owned),
            origin: origin.map(str::to_owned),
            ack: b.seq,
            sent: 0,
            next_id: 1,
            backlog: b.frames[1..].iter().cloned().collect(),
            welcome,
        })
    }

    pub async fn open(addr: SocketAddr, enc: Enc) -> PollClient {
        PollClient::try_open(addr, enc, None, None)
            .await
            .expect("open")
    }

    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("Herald-Session", self.session.clone())];
        if let Some(t) = &self.token {
            h.push(("Authorization", format!("Bearer {t}")));
        }
        if let Some(o) = &self.origin {
            h.push(("Origin", o.clone()));
        }
        h
    }

    /// Starts a poll acknowledging `ack`; the caller reads or drops it.
    pub async fn start_poll(&self, ack: u64) -> TcpStream {
        send_request(
            self.addr,
            "GET",
            &format!("/poll/recv?ack={ack}"),
            &self.headers(),
            None,
        )
        .await
    }

    /// One poll: its raw answer (the acknowledgement is not moved).
    pub async fn poll_raw(&self, ack: u64) -> Raw {
        read_response(self.start_poll(ack).await).await
    }

    /// One poll; the acknowledgement moves to its batch.
    pub async fn poll(&mut self) -> Batch {
        let r = self.poll_raw(self.ack).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let b = decode_batch(self.enc, &r.body);
        if !b.frames.is_empty() {
            assert_eq!(b.seq, self.ack + 1, "batches come in sequence");
            self.ack = b.seq;
        }
        b
    }

    pub fn encode_batch(&self, frames: &[Value]) -> Vec<u8> {
        match self.enc {
            Enc::Json => serde_json::to_vec(frames).unwrap(),
            Enc::Msgpack => {
                let bins: Vec<serde_bytes::ByteBuf> = frames
                    .iter()
                    .map(|f| serde_bytes::ByteBuf::from(rmp_serde::to_vec_named(f).unwrap()))
                    .collect();
                rmp_serde::to_vec(&bins).unwrap()
            }
        }
    }

    /// Sends a raw body as batch `seq`.
    pub async fn send_body(&self, seq: u64, body: &[u8]) -> Raw {
        request(
            self.addr,
            "POST",
            &format!("/poll/send?seq={seq}"),
            &self.headers(),
            Some((content_type(self.enc), body)),
        )
        .await
    }

    /// Sends frames as the next batch; asserts 204.
    pub async fn send(&mut self, frames: &[Value]) {
        self.sent += 1;
        let r = self.send_body(self.sent, &self.encode_batch(frames)).await;
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    }

    /// The next frame, polling as needed.
    pub async fn next_frame(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.backlog.is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no frame in time");
            let b = self.poll().await;
            self.backlog.extend(b.frames);
        }
        self.backlog.pop_front().unwrap()
    }

    /// Sends a command and returns its `reply` or `error`; other frames meanwhile stay in the backlog.
    pub async fn request(&mut self, mut cmd: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        cmd["v"] = json!(1);
        cmd["id"] = json!(id);
        self.send(&[cmd]).await;
        let mut skipped = VecDeque::new();
        loop {
            let f = self.next_frame().await;
            if (f["type"] == "reply" || f["type"] == "error") && f["id"] == json!(id) {
                skipped.extend(self.backlog.drain(..));
                self.backlog = skipped;
                return f;
            }
            skipped.push_back(f);
        }
    }

    pub async fn ok(&mut self, cmd: Value) -> Value {
        let r = self.request(cmd.clone()).await;
        assert_eq!(r["type"], "reply", "command {cmd} failed: {r}");
        r["result"].clone()
    }

    /// The next `message` frame.
    pub async fn next_message(&mut self) -> Value {
        loop {
            let f = self.next_frame().await;
            if f["type"] == "message" {
                return f;
            }
        }
    }
}
