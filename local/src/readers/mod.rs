//! What the fallback transports (SSE, long polling) share: a reader is a connection like a
//! WebSocket's, opened by the same admission, token, `authorizer` and `$connect` (so it
//! counts toward every connection limit), with its rooms joined in the store and an outbox
//! that fan-out posts into; it reads its rooms and its own inbox from a cursor, catching up
//! from history first, and `$disconnect` runs once when it is gone. In Lambda mode the
//! `poll` and `stream` functions answer instead, as on AWS (`lambda.rs`).

pub(crate) mod cors;
pub(crate) mod lambda;
pub(crate) mod poll;
pub(crate) mod sse;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use herald::auth::Identity;
use herald::presence_events::Change;
use herald::protocol::{Cursor, RoomName};
use herald::reader::admission::{self, Parsed};
use herald::reader::{CatchUp, catch_up};
use herald::store::Channel;
use tracing::warn;

use crate::app::App;
use crate::connection::close_code;
use crate::connection::registry::{Socket, Transport};
use crate::http::answer::json_response;
use crate::session::finish;
use crate::session::{self, admit_and_authorize, connect};

/// An open reader: its connection, what it gets first, and the cursor it came with.
pub(crate) struct Reader {
    pub socket: Arc<Socket>,
    /// Runs `$disconnect` when dropped: keep it as long as the reader lives.
    pub ended: Ended,
    pub since: Option<Cursor>,
    pub first: CatchUp,
}

/// Why a reader was not opened.
pub(crate) enum Refused {
    /// As the WebSocket handshake refuses.
    Handshake(session::Refusal),
    /// A JSON error, naming the room it is about when there is one.
    Error(StatusCode, String, Option<RoomName>),
}

impl From<admission::Refusal> for Refused {
    fn from(refusal: admission::Refusal) -> Self {
        let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
        Self::Error(status, refusal.message, refusal.room)
    }
}

impl Refused {
    pub(crate) fn into_response(self) -> Response {
        match self {
            Self::Handshake(refusal) => refusal.into_response(),
            Self::Error(status, message, room) => error(status, &message, room.as_ref()),
        }
    }
}

/// Opens a reader of `?rooms=a,b` (and the user's inbox) from `?cursor=` or `cursor`.
pub(crate) async fn open(
    app: &Arc<App>,
    stage: &str,
    peer: SocketAddr,
    query: Option<&str>,
    headers: &HeaderMap,
    cursor: Option<&str>,
) -> Result<Reader, Refused> {
    let (request, meta) = admit_and_authorize(app, stage, peer, query, headers)
        .await
        .map_err(Refused::Handshake)?;
    let context = meta.context.map().into_iter().collect();
    let identity = Identity::from_context(&context)
        .map_err(|e| Refused::Error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?;
    let cursor = cursor.or(request.query("cursor"));
    let max = app.services.limits.max_rooms_per_connection;
    let rooms = request.query("rooms").unwrap_or("");
    let parsed = admission::parse(rooms, cursor, max).map_err(Refused::from)?;
    admission::allow(&parsed, &identity, max).map_err(Refused::from)?;
    let Parsed { rooms, since } = parsed;
    let socket = connect(app, &request, meta, Transport::Reader)
        .await
        .map_err(Refused::Handshake)?;
    let ended = Ended {
        app: app.clone(),
        socket: socket.clone(),
    };
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        warn!(connection_id = %socket.meta.id, error = %e, "{what} failed");
        Refused::Error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the store failed; try again".into(),
            None,
        )
    };
    // Joined before the catch-up reads history: a notification published meanwhile is in
    // what is read or in the outbox (or both: the reader drops the second).
    let mut channels: Vec<Channel> = Vec::with_capacity(rooms.len() + 1);
    for room in rooms {
        let joined = app.services.store.join(&socket.meta.id, &room).await;
        joined.map_err(|e| failed("join", &e))?;
        // A reader is a member as a socket is: with presence events on, its room hears it
        // join (and, through `$disconnect`, leave).
        let id = &socket.meta.id;
        app.services
            .announce(&*app.control, Change::Join, &room, &identity.user, id)
            .await;
        channels.push(Channel::Room(room));
    }
    channels.push(Channel::User(identity.user));
    let store = &*app.services.store;
    let first = catch_up(
        store,
        app.services.limits.history,
        &channels,
        since.as_ref(),
    )
    .await
    .map_err(|e| failed("catch-up", &e))?;
    Ok(Reader {
        socket,
        ended,
        since,
        first,
    })
}

/// A JSON error naming the room it is about, when there is one.
pub(crate) fn error(status: StatusCode, message: &str, room: Option<&RoomName>) -> Response {
    let refusal = admission::Refusal {
        status: status.as_u16(),
        message: message.to_owned(),
        room: room.cloned(),
    };
    json_response(status, &refusal.body())
}

/// Runs `$disconnect` once the stream is gone, however it ended (the client left, the
/// gateway closed it, shutdown).
pub(crate) struct Ended {
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
            .track_future(finish(app.clone(), socket, code, reason));
        tokio::spawn(finish);
    }
}
