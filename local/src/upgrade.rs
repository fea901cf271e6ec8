//! The WebSocket upgrade, done here rather than by axum's extractor, and the runtime the
//! upgraded connections run on.
//!
//! Connections run on a runtime of their own ([`SocketRuntime`]), apart from the one that
//! serves HTTP. A publish wakes one writer per recipient; on a shared runtime the next
//! publish request (or `@connections` call) would wait in the run queue behind thousands of
//! those writers, so publishes could never overlap the writes of the previous one. On
//! separate threads the operating system shares the cores between the two, the way API
//! Gateway's control plane is apart from its connections.
//!
//! The connections' threads also run at a lower priority (nice 10, on Linux): with both
//! cores busy, a publish otherwise waited for a core as long as it ran, and the writers it
//! woke each sent one or two notifications per `send(2)`. Yielding to the HTTP side lets
//! the publish finish at once and the writers find more queued per write, which is cheaper
//! for the gateway and the clients alike (BENCHMARKS.md has the measured effect). The
//! publish is then faster than the writers can drain under a flood, so fan-out paces
//! itself on their queues (`Registry::pace`) instead of letting them overflow.
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

use crate::answer::message_response;

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

/// The runtime connections run on; shut down (without blocking) when dropped.
pub(crate) struct SocketRuntime(Option<tokio::runtime::Runtime>);

impl SocketRuntime {
    /// A multi-threaded runtime with one worker per core.
    pub(crate) fn new() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("herald-sockets")
            .on_thread_start(yield_to_http)
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    /// Where connection tasks are spawned.
    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime is only taken when dropped")
            .handle()
    }
}

/// How much lower the connections' threads run than the HTTP side's, as a nice value: low
/// enough that a publish gets a core at once, high enough that the writers still run
/// whenever the HTTP side is idle (BENCHMARKS.md compares values).
pub(crate) const CONNECTIONS_NICE: i32 = 10;

/// Lowers the calling thread's priority (see the module header). Linux keeps a nice value
/// per thread; elsewhere it is per process, so this does nothing there.
fn yield_to_http() {
    #[cfg(target_os = "linux")]
    if let Err(error) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), CONNECTIONS_NICE)
    {
        tracing::debug!(%error, "could not lower the connections' thread priority");
    }
}

impl Drop for SocketRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks stop, which is not allowed inside
        // another runtime, where the gateway's last reference usually goes.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_connections_threads_yield_to_the_http_side() {
        let nice = || {
            rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                .expect("a thread's own nice value")
        };
        let here = nice();
        let runtime = SocketRuntime::new().unwrap();
        // Run on one of the runtime's workers, not on this thread.
        let there = runtime
            .handle()
            .block_on(async { tokio::spawn(async move { nice() }).await.unwrap() });
        // An unprivileged process cannot go back below its own nice value.
        assert_eq!(there, CONNECTIONS_NICE.max(here));
        assert_eq!(nice(), here, "the calling thread keeps its priority");
    }

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
