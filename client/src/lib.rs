//! Rust client for the herald message broker (`docs/protocol.md`, version 1).
//!
//! Why this crate exists: a herald application wants "every message of a channel, once, in order"
//! even though WebSocket connections drop. This crate keeps that promise on the client side: it
//! reconnects with jittered exponential backoff, resubscribes with the last seen `{epoch, offset}`,
//! suppresses duplicates, re-sends unanswered publishes with the same idempotency key, and says so
//! explicitly when the server cannot recover a gap ([`SubscriptionEvent::NotRecovered`]).
//!
//! For a cluster, give the client every node's URL ([`Client::start_any`],
//! [`Client::connect_any`]): each client starts at a random node, so a fleet spreads over the
//! nodes, and moves to the next node of its list when its connection is lost or an attempt fails
//! (a node that stops or drains for a rolling restart closes with 1001 "going away"). Subscriptions
//! resume there where they stopped, since every node of a cluster holds the same channel log.
//!
//! Data values are [`rmpv::Value`] in both encodings (JSON and MessagePack), because it is the one
//! type that carries every value herald accepts (64-bit integers, binary); use
//! [`Message::data_as`] / [`Message::data_json`] to convert, and [`Client::publish`] takes any
//! `Serialize` value.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use herald_client::{Client, ClientOptions, SubscriptionEvent};
//!
//! # async fn demo() -> Result<(), herald_client::Error> {
//! let (client, _states) = Client::connect(
//!     "ws://127.0.0.1:8000/ws",
//!     || async { Some("my-token".to_string()) },
//!     ClientOptions::default(),
//! )
//! .await?;
//! let mut sub = client.subscribe("chat:room1").await?;
//! let ack = client.publish("chat:room1", &serde_json::json!({"text": "hi"})).await?;
//! println!("stored at {}:{}", ack.epoch, ack.offset);
//! while let Some(ev) = sub.next().await {
//!     if let SubscriptionEvent::Message(m) = ev {
//!         println!("{} {}: {:?}", m.channel, m.offset, m.data_json()?);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Modules: `frame` (wire format), `backoff` (reconnect delays), `endpoints` (which server URL the
//! next attempt uses), `dedup` (resume positions and duplicate suppression), `connect` (handshake
//! and close-code rules), `driver`/`session` (the background connection task), `client` (the
//! handle), `events` (what the application receives), `options` (tunables and the token provider),
//! `error`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
mod client;
mod connect;
pub mod dedup;
mod driver;
mod endpoints;
mod error;
mod events;
pub mod frame;
mod options;

pub use backoff::{Backoff, BackoffPolicy};
pub use client::Client;
pub use connect::NO_RECONNECT_CODES;
pub use error::{Error, Result};
pub use events::{ConnectionState, Message, StateStream, Subscription, SubscriptionEvent};
pub use frame::{Encoding, HistoryPage, Member, Position, Presence, PublishAck};
pub use options::{no_token, static_token, ClientOptions, TokenFuture, TokenProvider};
pub use rmpv::Value;
