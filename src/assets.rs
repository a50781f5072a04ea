//! Files the node serves over plain HTTP on the client listener: the JavaScript client, so a web page
//! needs nothing but the node (`<script type="module">` from `/client/herald.js`), and, when
//! `server.examples` is on (development), the chat example page at `/`.
//!
//! Both are embedded in the binary at build time, so a node serves the client of its own version and
//! never a file from its working directory. `/client/herald-<version>.js` never changes and is cached
//! for a year (`immutable`); `/client/herald.js` follows the node's version, so it is cached for an
//! hour and carries an `ETag`. The client is public code fetched without credentials, so any origin
//! may load it (`Access-Control-Allow-Origin: *`), which module scripts from another origin need.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

/// The JavaScript client (`clients/js/herald.js`).
pub const CLIENT_JS: &str = include_str!("../clients/js/herald.js");
/// The version of the node, and of the client it embeds.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

const CHAT_HTML: &str = include_str!("../examples/chat/index.html");
const CHAT_JS: &str = include_str!("../examples/chat/chat.js");
const CHAT_CSS: &str = include_str!("../examples/chat/chat.css");

const JS: &str = "text/javascript; charset=utf-8";

/// The routes, for the client listener's app.
pub fn routes(cfg: &mut web::ServiceConfig, examples: bool) {
    cfg.route("/client/herald.js", web::get().to(client_current))
        .route(
            &format!("/client/herald-{VERSION}.js"),
            web::get().to(client_versioned),
        );
    if examples {
        cfg.route(
            "/",
            web::get().to(|| page(CHAT_HTML, "text/html; charset=utf-8")),
        )
        .route("/chat.js", web::get().to(|| page(CHAT_JS, JS)))
        .route(
            "/chat.css",
            web::get().to(|| page(CHAT_CSS, "text/css; charset=utf-8")),
        );
    }
}

fn etag() -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, CLIENT_JS.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("\"{VERSION}-{hex}\"")
}

fn client(req: &HttpRequest, cache: &'static str) -> HttpResponse {
    let tag = etag();
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut resp = if matches {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    resp.insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::ETAG, tag))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header(("x-herald-client-version", VERSION));
    if matches {
        resp.finish()
    } else {
        resp.content_type(JS).body(CLIENT_JS)
    }
}

async fn client_current(req: HttpRequest) -> HttpResponse {
    client(&req, "public, max-age=3600")
}

async fn client_versioned(req: HttpRequest) -> HttpResponse {
    client(&req, "public, max-age=31536000, immutable")
}

async fn page(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_client_is_of_the_nodes_version() {
        let declared = ["\"", "'"]
            .iter()
            .any(|q| CLIENT_JS.contains(&format!("export const VERSION = {q}{VERSION}{q}")));
        assert!(
            declared,
            "clients/js/herald.js must export VERSION = '{VERSION}' (the crate's version)"
        );
    }
}
