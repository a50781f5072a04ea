//! What herald-bench's binaries share: WebSocket framing and handshakes over raw sockets.
pub mod ws;
