//! `GET /api/openapi.json`: the OpenAPI 3 description of the admin API, generated from the handlers.
//!
//! Exists so the contract cannot drift from the code: every handler carries a `#[utoipa::path]` attribute
//! next to its extractors and every body type derives `ToSchema`, and [`ApiDoc`] collects them.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{channels, error, metrics, node_info, publish, sessions};

/// The admin API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "herald admin API",
        description = "Operator API of a herald node: channels, history, presence, server publish, \
                       disconnects, node summary. Every /api/* path needs `Authorization: Bearer <admin.token>`. \
                       Errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        channels::list,
        channels::detail,
        channels::history,
        channels::reset_history,
        channels::presence,
        publish::publish,
        sessions::connections,
        sessions::disconnect,
        node_info::node,
        node_info::cluster,
        node_info::healthz,
        node_info::readyz,
        metrics::handler,
        handler,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&BearerAuth),
    tags(
        (name = "channels", description = "Channel listing, inspection, history and presence"),
        (name = "publish", description = "Publishing from the server side"),
        (name = "connections", description = "Live connections and disconnects"),
        (name = "node", description = "Node summary"),
        (name = "probes", description = "Health, readiness and Prometheus metrics (no token)"),
        (name = "api", description = "This document"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the paths refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("the node's admin.token"))
                    .build(),
            ),
        );
    }
}

/// Serves the document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "api",
    responses((status = 200, description = "this OpenAPI 3 document", content_type = "application/json"),
        (status = 401, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn handler() -> HttpResponse {
    match ApiDoc::openapi().to_json() {
        Ok(json) => HttpResponse::Ok()
            .content_type("application/json")
            .body(json),
        Err(e) => actix_web::ResponseError::error_response(&error::ApiError::internal(format!(
            "cannot render OpenAPI: {e}"
        ))),
    }
}
