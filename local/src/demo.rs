//! The demo page at `/`: a person joins rooms, publishes, and watches notifications arrive
//! with their offsets, the connection's state and a live chart, on the same JavaScript
//! client (`clients/js/`) a user's app runs, served here beside it.
//!
//! In dev mode a visitor from loopback finds the dev token filled in; anyone else pastes a
//! token. The chart's figures (`STATS_PATH`: connections, publishes and deliveries, the
//! numbers `/metrics` gives) are answered to loopback visitors only: they are the
//! gateway's, not the visitor's. "From loopback" means the peer's address
//! and the `Host` the browser asked for: a page on another name that resolves to 127.0.0.1
//! (DNS rebinding) is served neither the token nor the figures.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::App;
use crate::http::answer::json_response;

/// Where the page loads the client from; its modules (`src/*.js`) are beside it.
pub(crate) const CLIENT_PATH: &str = "/_herald/client/{*file}";
/// Where the page reads the gateway's figures from.
pub(crate) const STATS_PATH: &str = "/_herald/stats";

const PAGE: &str = include_str!("../demo/index.html");
/// The client's files, by their path in `clients/js/` (which the page's imports follow).
const CLIENT: [(&str, &str); 6] = [
    (
        "herald-client.js",
        include_str!("../../clients/js/herald-client.js"),
    ),
    (
        "src/errors.js",
        include_str!("../../clients/js/src/errors.js"),
    ),
    (
        "src/cursor.js",
        include_str!("../../clients/js/src/cursor.js"),
    ),
    (
        "src/sequencer.js",
        include_str!("../../clients/js/src/sequencer.js"),
    ),
    (
        "src/websocket.js",
        include_str!("../../clients/js/src/websocket.js"),
    ),
    (
        "src/readers.js",
        include_str!("../../clients/js/src/readers.js"),
    ),
];
/// Where the page's configuration goes.
const CONFIG_SLOT: &str = "/*HERALD_CONFIG*/";

/// `GET /`: the page, with the stage (and, in dev mode for a loopback visitor, the token).
pub(crate) async fn page(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let local = from_loopback(peer, &headers);
    let token = app.dev_token.as_ref().filter(|_| local);
    let config = json!({ "stage": app.settings.stage, "token": token });
    // JSON inside a <script>: no `<` may close it early.
    let config = config.to_string().replace('<', "\\u003c");
    let html = PAGE.replace(CONFIG_SLOT, &format!("window.HERALD = {config};"));
    typed(html, "text/html; charset=utf-8")
}

/// `GET /_herald/client/{file}`: the client's modules.
pub(crate) async fn client(Path(file): Path<String>) -> Response {
    match CLIENT.iter().find(|(name, _)| *name == file) {
        Some((_, text)) => typed((*text).to_owned(), "text/javascript; charset=utf-8"),
        None => json_response(StatusCode::NOT_FOUND, &json!({"message": "no such file"})),
    }
}

/// `GET /_herald/stats`: connections now and publish and delivery totals (the figures
/// `/metrics` gives), to loopback visitors only.
pub(crate) async fn stats(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if !from_loopback(peer, &headers) {
        let refusal = json!({"message": "the gateway's figures are for loopback visitors"});
        return json_response(StatusCode::FORBIDDEN, &refusal);
    }
    // The numbers `/metrics` gives, so the chart and a scrape never disagree.
    let (websockets, readers) = app.registry.by_transport();
    let mut figures = json!(app.services.metrics.totals());
    figures["connections"] = json!(websockets + readers);
    figures["websockets"] = json!(websockets);
    figures["readers"] = json!(readers);
    json_response(StatusCode::OK, &figures)
}

fn typed(body: String, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Whether a request comes from loopback and names a loopback host (`localhost`,
/// `127.0.0.1`, `[::1]`, with any port).
pub(crate) fn from_loopback(peer: SocketAddr, headers: &HeaderMap) -> bool {
    peer.ip().is_loopback()
        && headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(is_loopback_host)
}

/// Whether an HTTP `Host` (host and optional port) names this machine's loopback.
fn is_loopback_host(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_are_loopback_hosts() {
        for local in [
            "localhost",
            "LOCALHOST:3001",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]:3001",
            "[::1]",
        ] {
            assert!(is_loopback_host(local), "{local}");
        }
        for remote in [
            "evil.example",
            "evil.example:3001",
            "localhost.evil.example",
            "10.0.0.1:3001",
            "[::2]:1",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_host(remote), "{remote}");
        }
    }
}
