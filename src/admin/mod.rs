//! The admin HTTP listener: health and readiness probes (the full admin API and metrics come with the admin
//! issue). It asks the node's registries; it never reaches into actor state.

use std::sync::Arc;

use actix_web::{web, HttpResponse};

use crate::node::Node;

/// Registers the admin routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(node: web::Data<Arc<Node>>) -> HttpResponse {
    if node.is_draining() {
        return HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "draining"}));
    }
    HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
}
