//! The WebSocket handshake: the connection is opened as every transport opens one
//! (`session`), and only then upgraded; the socket then runs on the connections' runtime
//! (`socket.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::upgrade::Upgrade;
use crate::app::App;
use crate::connection::registry::Transport;
use crate::session::{admit_and_authorize, connect};

/// The read buffer per connection, and the most one read takes. tungstenite reads into a
/// 128 KiB buffer by default, allocated per connection: most of an idle connection's
/// memory. Clients send small frames (a subscribe is under 100 bytes); a larger frame still
/// arrives whole, its buffer grown to its length, over several reads of this size.
const READ_BUFFER_BYTES: usize = 256;

/// `GET /{stage}` with an upgrade: the handshake.
pub(crate) async fn handshake(
    State(app): State<Arc<App>>,
    Path(stage): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Response {
    let (request, meta) =
        match admit_and_authorize(&app, &stage, peer, query.as_deref(), &headers).await {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal.into_response(),
        };
    let socket = match connect(&app, &request, meta, Transport::WebSocket).await {
        Ok(socket) => socket,
        Err(refusal) => return refusal.into_response(),
    };
    let limits = &app.settings.limits;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_frame_bytes));
    let (response, upgraded) = upgrade.accept();
    let connection =
        app.connections
            .track_future(super::socket::run(app.clone(), socket, upgraded, config));
    app.sockets.handle().spawn(connection);
    response
}
