//! The admin HTTP listener: the operator's window into a running node.
//!
//! It exists so operators can see which channels exist, who is connected and how far each channel's history
//! reaches, publish from their backend, cut off a user, and scrape Prometheus metrics, without touching the
//! client port. It follows the house rule of the design: it asks channel actors through messages
//! ([`Inspect`](crate::channel::Inspect), [`Publish`](crate::channel::Publish), ...) and reads the node's
//! registries and the store's listing API; it never reaches into actor state.
//!
//! Layout: `auth.rs` (bearer token), `error.rs` (JSON errors, 400 for bad parameters), `params.rs` (query
//! parameters), `channels.rs` (channel listing, inspection, history, presence, reset), `publish.rs` (server
//! publish), `sessions.rs` (connections, disconnect), `node_info.rs` (node summary, probes), `metrics.rs`
//! (Prometheus text), `scatter.rs` (asking the other nodes of a cluster), `openapi.rs` (the generated OpenAPI 3
//! document). `docs/operations.md` is the human-readable reference.

mod auth;
mod channels;
mod error;
mod metrics;
mod node_info;
mod openapi;
mod params;
mod publish;
mod scatter;
mod sessions;

use std::sync::Arc;

use actix_web::{middleware::from_fn, web};

use crate::node::Node;

pub use auth::log_token_status;
pub use error::ApiError;
pub use metrics::render as render_metrics;
pub use openapi::ApiDoc;
pub use scatter::answerer;

/// The node as admin handlers receive it (`app_data` of the admin `App`).
pub(crate) type NodeData = web::Data<Arc<Node>>;

/// Registers the admin routes: the probes and `/metrics` without a token, `/api/*` behind the bearer token.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(node_info::healthz))
        .route("/readyz", web::get().to(node_info::readyz))
        .route("/metrics", web::get().to(metrics::handler))
        .service(
            web::scope("/api")
                .wrap(from_fn(auth::require_token))
                .app_data(error::query_config())
                .app_data(error::path_config())
                .app_data(error::json_config())
                .route("/channels", web::get().to(channels::list))
                .route("/channels/{name}", web::get().to(channels::detail))
                .route("/channels/{name}/history", web::get().to(channels::history))
                .route(
                    "/channels/{name}/history",
                    web::delete().to(channels::reset_history),
                )
                .route(
                    "/channels/{name}/presence",
                    web::get().to(channels::presence),
                )
                .route("/publish", web::post().to(publish::publish))
                .route("/disconnect", web::post().to(sessions::disconnect))
                .route("/connections", web::get().to(sessions::connections))
                .route("/node", web::get().to(node_info::node))
                .route("/cluster", web::get().to(node_info::cluster))
                .route("/openapi.json", web::get().to(openapi::handler))
                .default_service(web::to(error::not_found)),
        )
        .default_service(web::to(error::not_found));
}
