//! The WebSocket upgrade, done here rather than by axum's extractor, so that the upgraded
//! connection can run on the connections' own runtime (`connection/runtime.rs`).
//!
//! To move a connection there, its TCP socket is taken out of hyper after the `101` and
//! registered with the connections' runtime, so its reads and writes are driven there too
//! (axum's `WebSocket` would keep it behind hyper's boxed `Upgraded`, on the HTTP runtime).

use std::io;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::http::answer::message_response;

/// A request to upgrade to a WebSocket (RFC 6455 §4.2.1), checked.
pub(crate) struct Upgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade")
            || !has_token(headers, header::UPGRADE, "websocket")
        {
            let mut refusal = message_response(StatusCode::UPGRADE_REQUIRED, "Upgrade Required");
            refusal
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            return Err(refusal);
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            let mut refusal = message_response(
                StatusCode::BAD_REQUEST,
                "Unsupported Sec-WebSocket-Version; this gateway speaks 13",
            );
            refusal.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return Err(refusal);
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(message_response(
                StatusCode::BAD_REQUEST,
                "Missing Sec-WebSocket-Key",
            ));
        };
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("an accept key is base64, a valid header value");
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(message_response(
                StatusCode::UPGRADE_REQUIRED,
                "This connection cannot be upgraded",
            ));
        };
        Ok(Self { accept, on_upgrade })
    }
}

impl Upgrade {
    /// The `101 Switching Protocols` that completes the handshake, and the connection,
    /// ready once that answer has gone out.
    pub(crate) fn accept(self) -> (Response, Upgraded) {
        let response = (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, self.accept),
            ],
        )
            .into_response();
        (response, Upgraded(self.on_upgrade))
    }
}

/// A connection that becomes a WebSocket once its `101` is written.
pub(crate) struct Upgraded(OnUpgrade);

impl Upgraded {
    /// The TCP socket, registered with the runtime this is awaited on, and any bytes the
    /// client sent after its request that hyper already read.
    pub(crate) async fn into_socket(self) -> io::Result<(TcpStream, Vec<u8>)> {
        let upgraded = self.0.await.map_err(io::Error::other)?;
        let parts = upgraded
            .downcast::<TokioIo<TcpStream>>()
            .map_err(|_| io::Error::other("the upgraded connection is not a TCP socket"))?;
        // Re-registering moves the socket's readiness events to this runtime's driver.
        let socket = TcpStream::from_std(parts.io.into_inner().into_std()?)?;
        // Notifications are flushed once per batch; waiting for more (Nagle) only adds latency.
        socket.set_nodelay(true)?;
        // The early bytes are a view of hyper's 8-16 KiB read buffer, which lives as long as
        // any view of it (even an empty one): copy them out and let the buffer go.
        Ok((socket, parts.read_buf.to_vec()))
    }
}

/// Whether a comma-separated header holds `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_tokens_are_matched_in_lists_and_case_insensitively() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(!has_token(&headers, header::CONNECTION, "close"));
        assert!(!has_token(&headers, header::UPGRADE, "websocket"));
    }
}
