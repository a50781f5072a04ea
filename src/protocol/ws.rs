//! The incoming side of RFC 6455 for a server: client frames parsed, validated, unmasked and assembled
//! into messages, with the close code each violation earns.
//!
//! The decoder owns nothing while a connection is idle: bytes are parsed straight from the read buffer
//! the worker thread shares (`session::socket::reader`), and only what belongs to a frame that has not fully
//! arrived (`pending`) or to a fragmented message (`message`) is copied into the connection's own
//! memory. The frame-size limit is checked on the header, before the payload arrives, so an oversized
//! frame is refused at once (1009) instead of being buffered first.
//!
//! After the connection is closed the same decoder keeps the framing ([`Decoder::discard`]): while the
//! server lingers for the client's close frame it skips payloads and stops at the close frame, even when
//! the close was caused by a frame that was refused half-read.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use super::CloseCode;

/// One message, or control frame, from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// A close frame and its status code, if it carried one (its reason is checked, then dropped).
    Close(Option<u16>),
}

/// A violation of the WebSocket protocol by the client: the connection is closed with its code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    #[error("frame or message of more than {0} bytes")]
    TooBig(usize),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
}

impl WsError {
    /// The close code the RFC asks for: 1009, 1002 or 1007.
    pub fn close_code(&self) -> CloseCode {
        match self {
            WsError::TooBig(_) => CloseCode::TooBig,
            WsError::Protocol(_) => CloseCode::ProtocolError,
            WsError::InvalidUtf8 => CloseCode::InvalidPayload,
        }
    }
}

const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: u8,
    masked: bool,
    mask: [u8; 4],
    /// Payload length.
    len: u64,
    /// Header length (with the masking key).
    size: usize,
}

/// Parses the header at the start of `buf`; `None` until all of it has arrived. Only the structure is
/// read here; [`check`] applies the rules.
fn header(buf: &[u8]) -> Option<Header> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let masked = b1 & 0x80 != 0;
    let (len, at) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let ext: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(ext), 10)
        }
        n => (u64::from(n), 2),
    };
    let mut mask = [0; 4];
    let size = if masked {
        mask.copy_from_slice(buf.get(at..at + 4)?);
        at + 4
    } else {
        at
    };
    Some(Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        masked,
        mask,
        len,
        size,
    })
}

/// The rules a client frame header must follow (RFC 6455 5.2, 5.5), and the size limit.
fn check(h: &Header, b0: u8, max: usize) -> Result<(), WsError> {
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set without an extension"));
    }
    if !matches!(
        h.opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(WsError::Protocol("unknown opcode"));
    }
    if !h.masked {
        return Err(WsError::Protocol("client frames must be masked"));
    }
    if h.len >> 63 != 0 {
        return Err(WsError::Protocol("payload length with the top bit set"));
    }
    if h.opcode >= OP_CLOSE {
        if !h.fin {
            return Err(WsError::Protocol("fragmented control frame"));
        }
        if h.len > 125 {
            return Err(WsError::Protocol("control frame over 125 bytes"));
        }
    }
    if h.len > max as u64 {
        return Err(WsError::TooBig(max));
    }
    Ok(())
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A fragmented message being assembled.
#[derive(Debug)]
struct Partial {
    text: bool,
    data: BytesMut,
    /// How much of `data` is known to be valid UTF-8 (text only): checked as fragments arrive, so an
    /// invalid message fails at the fragment that breaks it.
    valid: usize,
}

impl Partial {
    fn check_utf8(&mut self, fin: bool) -> Result<(), WsError> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.valid..]) {
            Ok(_) => self.valid = self.data.len(),
            // An incomplete character at the end of a fragment may be completed by the next one.
            Err(e) if e.error_len().is_none() && !fin => self.valid += e.valid_up_to(),
            Err(_) => return Err(WsError::InvalidUtf8),
        }
        Ok(())
    }
}

/// Where the byte stream stands after the connection stopped reading messages (see
/// [`Decoder::discard`]).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// At a frame boundary after skipping this many bytes.
    Known { skip: u64 },
    /// Lost (a malformed header): only the end of the stream or the deadline ends the linger.
    Lost,
}

/// Turns a client's byte stream into [`Incoming`] messages.
#[derive(Debug)]
pub struct Decoder {
    /// Largest frame, and largest assembled message, accepted (`limits.max_frame_bytes`).
    max: usize,
    /// The start of a frame that has not fully arrived.
    pending: BytesMut,
    /// Boxed: it exists only while a fragmented message arrives, and inline it would cost every
    /// connection its size.
    message: Option<Box<Partial>>,
    framing: Framing,
}

impl Decoder {
    pub fn new(max: usize) -> Decoder {
        Decoder {
            max,
            pending: BytesMut::new(),
            message: None,
            framing: Framing::Known { skip: 0 },
        }
    }

    /// Decodes the complete frames of what arrived (after what was pending), queueing messages in `out`.
    /// Stops at the first violation; the messages before it are queued.
    pub fn feed(&mut self, input: &[u8], out: &mut VecDeque<Incoming>) -> Result<(), WsError> {
        if self.pending.is_empty() {
            let (used, result) = self.frames(input, out);
            if used < input.len() {
                self.pending.extend_from_slice(&input[used..]);
            }
            result
        } else {
            self.pending.extend_from_slice(input);
            let mut buf = std::mem::take(&mut self.pending);
            let (used, result) = self.frames(&buf, out);
            if used < buf.len() {
                buf.advance(used);
                self.pending = buf;
            }
            result
        }
    }

    /// Decodes frames from the start of `buf`: how many bytes were used, and the first violation.
    fn frames(&mut self, buf: &[u8], out: &mut VecDeque<Incoming>) -> (usize, Result<(), WsError>) {
        let mut at = 0;
        while let Some(h) = header(&buf[at..]) {
            if let Err(e) = check(&h, buf[at], self.max) {
                let rest = (buf.len() - at - h.size) as u64;
                self.framing = match e {
                    // The header was sound: skip the payload and the framing is kept.
                    WsError::TooBig(_) => Framing::Known {
                        skip: h.len.saturating_sub(rest),
                    },
                    _ => Framing::Lost,
                };
                let used = at + h.size + h.len.min(rest) as usize;
                return (used, Err(e));
            }
            let end = at + h.size + h.len as usize;
            if buf.len() < end {
                break;
            }
            let payload = &buf[at + h.size..end];
            at = end;
            if let Err(e) = self.frame(h, payload, out) {
                return (at, Err(e));
            }
        }
        (at, Ok(()))
    }

    /// One complete, checked frame.
    fn frame(
        &mut self,
        h: Header,
        payload: &[u8],
        out: &mut VecDeque<Incoming>,
    ) -> Result<(), WsError> {
        let unmasked = || {
            let mut data = BytesMut::from(payload);
            unmask(&mut data, h.mask);
            data
        };
        match h.opcode {
            OP_TEXT | OP_BINARY => {
                if self.message.is_some() {
                    return Err(WsError::Protocol("a new message before the last one ended"));
                }
                let mut m = Partial {
                    text: h.opcode == OP_TEXT,
                    data: unmasked(),
                    valid: 0,
                };
                m.check_utf8(h.fin)?;
                if h.fin {
                    out.push_back(finish(m));
                } else {
                    self.message = Some(Box::new(m));
                }
            }
            OP_CONTINUATION => {
                let Some(m) = self.message.as_mut() else {
                    return Err(WsError::Protocol("continuation frame without a message"));
                };
                if m.data.len() + payload.len() > self.max {
                    return Err(WsError::TooBig(self.max));
                }
                let start = m.data.len();
                m.data.extend_from_slice(payload);
                // The mask restarts at every frame.
                unmask(&mut m.data[start..], h.mask);
                m.check_utf8(h.fin)?;
                if h.fin {
                    if let Some(m) = self.message.take() {
                        out.push_back(finish(*m));
                    }
                }
            }
            OP_CLOSE => out.push_back(close(&unmasked())?),
            OP_PING => out.push_back(Incoming::Ping(unmasked().freeze())),
            _ => out.push_back(Incoming::Pong),
        }
        Ok(())
    }

    /// Switches to discarding: what arrives from now on is skipped frame by frame (no size limit, nothing
    /// kept) until the client's close frame. Called once the connection is closing; `true` if the close
    /// frame has already arrived.
    pub fn discard(&mut self) -> bool {
        self.message = None;
        let pending = std::mem::take(&mut self.pending);
        self.skip(&pending)
    }

    /// Skips `input` (see [`Decoder::discard`]); `true` once the client's close frame has been seen.
    pub fn skip(&mut self, mut input: &[u8]) -> bool {
        loop {
            let Framing::Known { skip } = self.framing else {
                return false;
            };
            let n = skip.min(input.len() as u64);
            self.framing = Framing::Known { skip: skip - n };
            input = &input[n as usize..];
            if input.is_empty() {
                return false;
            }
            // Only a header split between two reads is kept (at most 14 bytes).
            let before = self.pending.len();
            let take = input.len().min(14);
            self.pending.extend_from_slice(&input[..take]);
            let Some(h) = header(&self.pending) else {
                return false;
            };
            self.pending = BytesMut::new();
            if h.opcode == OP_CLOSE {
                return true;
            }
            input = &input[h.size - before..];
            self.framing = Framing::Known { skip: h.len };
        }
    }
}

/// A complete data message.
fn finish(m: Partial) -> Incoming {
    let data = m.data.freeze();
    if m.text {
        Incoming::Text(data)
    } else {
        Incoming::Binary(data)
    }
}

/// A close frame's payload: empty, or a code and a UTF-8 reason.
fn close(payload: &[u8]) -> Result<Incoming, WsError> {
    match payload {
        [] => Ok(Incoming::Close(None)),
        [_] => Err(WsError::Protocol("close frame with a 1-byte payload")),
        [a, b, reason @ ..] => {
            std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Incoming::Close(Some(u16::from_be_bytes([*a, *b]))))
        }
    }
}

#[cfg(test)]
#[path = "ws_tests.rs"]
mod tests;
