//! herald-check: a delivery checker for herald.
//!
//! It exists to back herald's promise (every message of a channel, in one order, exactly once, across
//! reconnects, node crashes and broker restarts) with measurements anyone can rerun: it starts a cluster
//! of its own (herald nodes and, for broker faults, a private RabbitMQ node), runs numbered publishers
//! and resuming subscribers (herald-client) while it injects faults, and counts what went wrong.
//!
//! Layout: `analysis.rs` (the records and the counters: lost, duplicated, reordered, unexpected),
//! `proxy.rs` (an in-process TCP proxy that can cut or freeze connections), `rabbit.rs` (a private
//! RabbitMQ node that can be killed, restarted, frozen), `cluster.rs` (herald nodes as processes),
//! `workload.rs` (publishers and subscribers), `scenarios.rs` (the faults), `main.rs` (the CLI).

pub mod analysis;
pub mod cluster;
pub mod proxy;
pub mod rabbit;
pub mod scenarios;
pub mod workload;
