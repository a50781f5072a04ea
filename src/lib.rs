//! herald: a real-time message broker.
//!
//! Apps connect over WebSocket, subscribe to channels and publish; every subscriber gets every message of a
//! channel in order, exactly once, and a client that reconnects resumes from the last position it saw. The
//! binary (`src/main.rs`) is a thin CLI over this library, which the integration tests and benchmarks use
//! too. See `docs/architecture.md` for how the modules fit together.

pub mod admin;
pub mod admission;
pub mod assets;
pub mod auth;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod history;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod server;
pub mod session;
pub mod stats;
