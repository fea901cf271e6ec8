//! Server-Sent Events: `GET /{stage}/events?rooms=a,b`, for clients that cannot open a
//! WebSocket (proxies that strip the upgrade, old browsers).
//!
//! An SSE client is a connection like a WebSocket's: the same admission, token and
//! `authorizer`, `$connect` (so it counts toward every connection limit), its rooms joined
//! in the store, an outbox in the registry that fan-out posts into, and `$disconnect` once
//! when the stream ends. Only the writer differs: each queued notification goes out as one
//! event, `event: notification`, `data:` the JSON a WebSocket client gets, `id:` the
//! cursor of every channel after it. A reconnect with `Last-Event-ID` (or `?cursor=`)
//! first gets what it missed from history, or one `event: reset` when history no longer
//! covers the cursor; notifications both replayed and delivered live are sent once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald::auth::Identity;
use herald::protocol::{Cursor, RoomName};
use herald::reader::{CatchUp, Follow, catch_up};
use herald::store::Channel;
use serde_json::json;
use tokio::time::Instant;
use tracing::warn;

use crate::answer::json_response;
use crate::handshake::{admit_and_authorize, connect};
use crate::registry::{Frame, Socket};
use crate::wire::{self, Opcode};
use crate::{App, close_code, ws};

/// A comment line this often keeps proxies from closing an idle stream.
pub const SSE_HEARTBEAT: Duration = Duration::from_secs(25);
/// How long a browser waits before reconnecting (the `retry:` field), in ms.
pub const SSE_RETRY_MS: u64 = 1_000;

/// `GET /{stage}/events`: the stream.
pub(crate) async fn events(
    State(app): State<Arc<App>>,
    Path(stage): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (request, meta) = match admit_and_authorize(&app, &stage, peer, query.as_deref(), &headers)
    {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    let context = meta.context.clone().into_iter().collect();
    let identity = match Identity::from_context(&context) {
        Ok(identity) => identity,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
    };
    let rooms = match rooms(request.query("rooms").unwrap_or("")) {
        Ok(rooms) => rooms,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message, None),
    };
    if let Some(max) = app.services.limits.max_rooms_per_connection
        && rooms.len() > max
    {
        let message = format!("at most {max} rooms per connection, not {}", rooms.len());
        return error(StatusCode::BAD_REQUEST, &message, None);
    }
    if let Some(room) = rooms.iter().find(|r| !identity.can_subscribe(r)) {
        let message = format!("you may not subscribe to {room}");
        return error(StatusCode::FORBIDDEN, &message, Some(room));
    }
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(request.query("cursor"))
        .filter(|c| !c.is_empty());
    let since = match since.map(Cursor::decode).transpose() {
        Ok(since) => since,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.message, None),
    };
    let socket = match connect(&app, &request, meta).await {
        Ok(socket) => socket,
        Err(refusal) => return refusal.into_response(),
    };
    let ended = Ended {
        app: app.clone(),
        socket: socket.clone(),
    };
    let mut channels: Vec<Channel> = Vec::with_capacity(rooms.len() + 1);
    for room in rooms {
        if let Err(e) = app.services.store.join(&socket.meta.id, &room).await {
            warn!(connection_id = %socket.meta.id, error = %e, "SSE join failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "the store failed", None);
        }
        channels.push(Channel::Room(room));
    }
    channels.push(Channel::User(identity.user));
    let store = &*app.services.store;
    let first = match catch_up(
        store,
        app.services.limits.history,
        &channels,
        since.as_ref(),
    )
    .await
    {
        Ok(first) => first,
        Err(e) => {
            warn!(connection_id = %socket.meta.id, error = %e, "SSE catch-up failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "the store failed", None);
        }
    };
    let mut opening = format!("retry: {SSE_RETRY_MS}\n\n").into_bytes();
    let follow = match first {
        CatchUp::Replay { entries, cursor } => {
            let mut follow = Follow::from(since.unwrap_or_default());
            for entry in entries {
                if follow.take(&entry.bytes) {
                    event(&mut opening, "notification", follow.cursor(), &entry.bytes);
                }
            }
            Follow::from(merge(follow.cursor().clone(), cursor))
        }
        CatchUp::Reset { cursor } => {
            let data = json!({"cursor": cursor.encode()}).to_string();
            event(&mut opening, "reset", &cursor, data.as_bytes());
            Follow::from(cursor)
        }
    };
    let deadline = Instant::now() + app.settings.limits.max_duration;
    let stream = Stream {
        socket,
        follow,
        batch: VecDeque::new(),
        opening: Some(Bytes::from(opening)),
        deadline,
        _ended: ended,
    };
    let body = Body::from_stream(futures::stream::unfold(stream, Stream::next));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx buffer responses unless told not to.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The rooms of `?rooms=a,b`: each a valid name, none twice; why not, otherwise.
fn rooms(list: &str) -> Result<Vec<RoomName>, String> {
    let mut rooms: Vec<RoomName> = Vec::new();
    for name in list.split(',').filter(|n| !n.is_empty()) {
        let room = RoomName::parse(name).map_err(|e| format!("rooms: {e}"))?;
        if !rooms.contains(&room) {
            rooms.push(room);
        }
    }
    Ok(rooms)
}

/// A JSON error naming the room it is about, when there is one.
fn error(status: StatusCode, message: &str, room: Option<&RoomName>) -> Response {
    let mut body = json!({"message": message});
    if let Some(room) = room {
        body["room"] = json!(room.as_str());
    }
    json_response(status, &body)
}

/// Appends one event to `out`.
fn event(out: &mut Vec<u8>, kind: &str, cursor: &Cursor, data: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\nid: ");
    out.extend_from_slice(cursor.encode().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // The contract's JSON has no raw line breaks (they are escaped inside strings).
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// The cursor after a replay: every channel the replay passed, at what it passed; the
/// others where the catch-up put them (channels added since the client's cursor).
fn merge(replayed: Cursor, caught_up: Cursor) -> Cursor {
    let mut cursor = caught_up;
    for (key, position) in replayed.entries() {
        if cursor.get(key).is_some() {
            cursor.set(key.clone(), position.clone());
        }
    }
    cursor
}

/// The stream's state between chunks.
struct Stream {
    socket: Arc<Socket>,
    follow: Follow,
    batch: VecDeque<Frame>,
    opening: Option<Bytes>,
    deadline: Instant,
    _ended: Ended,
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
                n = self.socket.outbox.take(&mut self.batch) => n,
                () = tokio::time::sleep(SSE_HEARTBEAT) => {
                    return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), self));
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
                match wire::decode(&frame) {
                    // A notification the reader has already (replayed, then live) is dropped.
                    Some((op, payload))
                        if op == Opcode::Text as u8 && self.follow.take(payload) =>
                    {
                        event(&mut chunk, "notification", self.follow.cursor(), payload);
                    }
                    Some((op, _)) if op == Opcode::Close as u8 => closed = true,
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

/// Runs `$disconnect` once the stream is gone, however it ended (the client left, the
/// gateway closed it, shutdown).
struct Ended {
    app: Arc<App>,
    socket: Arc<Socket>,
}

impl Drop for Ended {
    fn drop(&mut self) {
        let (app, socket) = (self.app.clone(), self.socket.clone());
        app.registry.remove(&socket.meta.id);
        socket.outbox.close();
        let (code, reason) = socket
            .close_reason()
            .unwrap_or((close_code::NORMAL, "Stream closed".to_owned()));
        let finish = app
            .connections
            .track_future(ws::finish(app.clone(), socket, code, reason));
        tokio::spawn(finish);
    }
}
