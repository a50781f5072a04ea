//! The lean fan-out subscriber: raw handshake, then the TcpStream is read into one small reusable
//! buffer per connection and the server's frames are parsed in place (ws.rs): no allocation and no
//! JSON parsing per frame, one clock reading per read(2), only the publisher's `"t":` stamp is
//! looked for. This is what lets one receiving thread keep up with a server delivering well over
//! a million frames/s. Herald framing and socket.io (engine.io pings answered) both work.
use crate::client::{
    find_t, frame_type, reply_to, subscribe_json, subscribed, tcp_connect, Target,
};
use crate::util::{now_ns, R};
use herald_bench::ws::{self, FrameBuf};
use std::cell::RefCell;
use std::net::IpAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What a subscriber reports to the scenario, per read(2) and when it ends.
pub trait Sink {
    /// A frame carrying publish stamp `t_ns` arrived at `now_ns`.
    fn delivered(&mut self, now_ns: u64, t_ns: u64);
    /// The connection ended (`why`: close frame, `disconnect` frame or error).
    fn closed(&mut self, why: Option<String>);
}

pub struct LeanSub {
    s: TcpStream,
    fb: FrameBuf,
    sio: bool,
    /// frames to send (pongs), masked
    out: Vec<u8>,
    key: u32,
    closed_with: Option<String>,
}

/// Payload of a herald frame inside socket.io framing (`42["msg",{…}]`), else the frame itself.
fn unwrap_sio(sio: bool, p: &[u8]) -> &[u8] {
    if sio && p.starts_with(b"42[\"msg\",") && p.len() > 10 {
        &p[9..p.len() - 1]
    } else {
        p
    }
}

impl LeanSub {
    /// Connect, handshake, wait for `welcome`, subscribe to `channel` and wait for the reply.
    pub async fn connect(
        t: &Target,
        bind: Option<IpAddr>,
        channel: &str,
        buf: usize,
    ) -> R<LeanSub> {
        let mut s = tcp_connect(t, bind).await?;
        let mut fb = FrameBuf::new(buf);
        ws::client_handshake(&mut s, &mut fb, &t.host, &t.path).await?;
        let port = s.local_addr()?.port() as u32;
        let mut c = LeanSub {
            s,
            fb,
            sio: t.sio,
            out: Vec::new(),
            key: port.wrapping_mul(0x9e37_79b9) | 1,
            closed_with: None,
        };
        if c.sio {
            c.send_text("40").await?;
        }
        c.wait_for(|f| frame_type(f) == b"welcome").await?;
        let cmd = subscribe_json(1, channel);
        c.send_text(&if c.sio {
            format!("42[\"cmd\",{cmd}]")
        } else {
            cmd
        })
        .await?;
        let f = c.wait_for(|f| reply_to(f, 1).is_some()).await?;
        subscribed(reply_to(&f, 1) == Some(true), &f)?;
        Ok(c)
    }

    fn queue(&mut self, op: u8, payload: &[u8]) {
        self.key ^= self.key << 13;
        self.key ^= self.key >> 17;
        self.key ^= self.key << 5;
        ws::put_client_frame(&mut self.out, op, payload, self.key.to_le_bytes());
    }

    async fn send_text(&mut self, text: &str) -> R<()> {
        self.queue(ws::OP_TEXT, text.as_bytes());
        self.flush().await
    }

    async fn flush(&mut self) -> R<()> {
        if !self.out.is_empty() {
            self.s.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Handle one frame: `true` for a herald frame, `false` for control frames (pings answered
    /// here) and socket.io's own packets. Sets `closed_with` when the server ends the connection.
    fn control(&mut self, op: u8, p: &[u8]) -> bool {
        match op {
            ws::OP_CLOSE => {
                self.closed_with.get_or_insert_with(|| ws::close_reason(p));
            }
            ws::OP_PING => {
                let p = p.to_vec();
                self.queue(ws::OP_PONG, &p);
            }
            _ if self.sio && p == b"2" => self.queue(ws::OP_TEXT, b"3"),
            _ if self.sio && (p.starts_with(b"41") || p.starts_with(b"1")) => {
                self.closed_with
                    .get_or_insert_with(|| "socket.io disconnect".into());
            }
            ws::OP_TEXT | ws::OP_BINARY | ws::OP_CONT => return true,
            _ => {}
        }
        false
    }

    /// Read until a herald frame satisfies `want` (set-up only: it copies that frame).
    async fn wait_for(&mut self, want: impl Fn(&[u8]) -> bool) -> R<Vec<u8>> {
        loop {
            while let Some((op, p)) = self.fb.next_frame()? {
                let p = p.to_vec();
                if self.control(op, &p) {
                    let f = unwrap_sio(self.sio, &p);
                    if want(f) {
                        return Ok(f.to_vec());
                    }
                }
            }
            self.flush().await?;
            if let Some(w) = &self.closed_with {
                return Err(w.clone().into());
            }
            if !self.fb.read_from(&mut self.s).await? {
                return Err("closed during set-up".into());
            }
        }
    }

    /// Receive until the connection ends, reporting every stamped frame to `sink` (borrowed once
    /// per read(2), never across an await).
    pub async fn run<S: Sink>(mut self, sink: &RefCell<S>) {
        let why = loop {
            match self.fb.read_from(&mut self.s).await {
                Ok(true) => {}
                Ok(false) => break self.closed_with.take(),
                Err(e) => break Some(self.closed_with.take().unwrap_or(e.to_string())),
            }
            let now = now_ns();
            let err = {
                let mut k = sink.borrow_mut();
                loop {
                    let (op, p) = match self.fb.next_frame() {
                        Ok(Some(f)) => f,
                        Ok(None) => break None,
                        Err(e) => break Some(e.to_string()),
                    };
                    if op == ws::OP_TEXT || op == ws::OP_BINARY {
                        if let Some(t) = find_t(p) {
                            k.delivered(now, t);
                            continue;
                        }
                        if frame_type(p) == b"disconnect" {
                            let w = String::from_utf8_lossy(p).into_owned();
                            self.closed_with.get_or_insert(w);
                            continue;
                        }
                    }
                    let p = p.to_vec();
                    self.control(op, &p);
                }
            };
            if err.is_some() {
                break err;
            }
            if self.flush().await.is_err() || self.closed_with.is_some() {
                break self.closed_with.take();
            }
        };
        sink.borrow_mut().closed(why);
    }
}
