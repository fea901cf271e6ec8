//! Server-Sent Events: `GET /{stage}/events?rooms=a,b`, for clients that cannot open a
//! WebSocket (proxies that strip the upgrade, old browsers).
//!
//! An SSE client is a reader (`fallback.rs`): a connection like a WebSocket's, counted
//! toward the limits, whose outbox fan-out posts into. Only the writer differs: each queued
//! notification goes out as one
//! event, `event: notification`, `data:` the JSON a WebSocket client gets, `id:` the
//! cursor of every channel after it. A reconnect with `Last-Event-ID` (or `?cursor=`)
//! first gets what it missed from history, or one `event: reset` when history no longer
//! covers the cursor; notifications both replayed and delivered live are sent once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald::reader::sse;
use herald::reader::{Follow, presence_event};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::app::App;
use crate::connection::close_code;
use crate::connection::registry::{Frame, Socket};
use crate::connection::wire::Opcode;
use crate::http::ConnectionAbort;
use crate::readers::{Ended, Reader, open};

/// `GET /{stage}/events`: the stream.
pub(crate) async fn events(
    State(app): State<Arc<App>>,
    Path(stage): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    abort: Option<Extension<ConnectionAbort>>,
    headers: HeaderMap,
) -> Response {
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let reader = match open(
        &app,
        &stage,
        peer,
        query.as_deref(),
        &headers,
        last_event_id,
    )
    .await
    {
        Ok(reader) => reader,
        Err(refused) => return refused.into_response(),
    };
    let Reader {
        socket,
        ended,
        since,
        first,
    } = reader;
    let done = CancellationToken::new();
    if let Some(Extension(abort)) = abort {
        tokio::spawn(tear_down(socket.clone(), abort, done.clone()));
    }
    let mut opening = sse::retry();
    let follow = sse::catch_up_events(&mut opening, first, since);
    let deadline = Instant::now() + app.settings.limits.max_duration;
    let stream = Stream {
        socket,
        follow,
        batch: VecDeque::new(),
        opening: Some(Bytes::from(opening)),
        deadline,
        _ended: ended,
        _done: done.drop_guard(),
    };
    let body = Body::from_stream(futures::stream::unfold(stream, Stream::next));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(sse::CONTENT_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx buffer responses unless told not to.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The stream's state between chunks.
struct Stream {
    socket: Arc<Socket>,
    follow: Follow,
    batch: VecDeque<Frame>,
    opening: Option<Bytes>,
    deadline: Instant,
    _ended: Ended,
    /// Ends the tear-down watch with the stream.
    _done: DropGuard,
}

/// How long a closed stream has to end by itself (its last chunk, `retry:`) before its
/// connection is dropped under it.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Once the gateway closes the socket (a slow consumer, `DELETE @connections`, shutdown),
/// drops the stream's HTTP connection unless the stream ends within [`CLOSE_GRACE`]: a
/// client that stopped reading never lets the stream be polled again, and would otherwise
/// hold its connection, its socket and its place under every limit.
async fn tear_down(socket: Arc<Socket>, abort: ConnectionAbort, done: CancellationToken) {
    tokio::select! {
        () = socket.closing.cancelled() => {}
        () = done.cancelled() => return,
    }
    tokio::select! {
        () = tokio::time::sleep(CLOSE_GRACE) => abort.0.cancel(),
        () = done.cancelled() => {}
    }
}

impl Stream {
    /// The next chunk: the opening, then each batch of notifications, a comment line when
    /// idle; `None` once the socket closes or has lived its maximum.
    async fn next(mut self) -> Option<(Result<Bytes, std::io::Error>, Self)> {
        if let Some(opening) = self.opening.take() {
            return Some((Ok(opening), self));
        }
        loop {
            let taken = tokio::select! {
                n = self.socket.take(&mut self.batch) => n,
                () = tokio::time::sleep(sse::SSE_HEARTBEAT) => {
                    return Some((Ok(Bytes::from_static(sse::KEEP_ALIVE)), self));
                }
                () = tokio::time::sleep_until(self.deadline) => {
                    self.socket.close(close_code::GOING_AWAY, "Going away");
                    return None;
                }
            };
            if taken == 0 {
                return None;
            }
            let mut chunk = Vec::new();
            let mut closed = false;
            for frame in self.batch.drain(..) {
                match frame.opcode() {
                    // A notification the reader has already (replayed, then live) is dropped.
                    Some(Opcode::Text) if self.follow.take(frame.payload()) => {
                        let cursor = self.follow.cursor();
                        let kind = presence_event(frame.payload()).unwrap_or("notification");
                        sse::event(&mut chunk, kind, cursor, frame.payload());
                    }
                    Some(Opcode::Close) => closed = true,
                    _ => {}
                }
            }
            if !chunk.is_empty() {
                if closed {
                    self.socket.outbox.close();
                }
                return Some((Ok(Bytes::from(chunk)), self));
            }
            if closed {
                return None;
            }
        }
    }
}
