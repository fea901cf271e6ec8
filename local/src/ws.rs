//! The WebSocket side: the handshake as API Gateway runs it, then one reader and one writer
//! per connection.
//!
//! Handshake: connection limits (429), the token (401 without calling the authorizer when
//! there is none), the `authorizer` handler (401 on refusal, 403 on a Deny policy), then
//! `connect` (its non-2xx refuses the upgrade with that status). The socket's queue is in
//! the registry before `connect` stores the connection, so a publish that sees the stored
//! connection always finds a socket to queue into, even before the upgrade has finished.
//!
//! Connection: the writer drains the bounded queue into the socket, all that is queued,
//! then one flush. The reader runs each text frame through `message` in order, enforces
//! the size, binary, idle and duration limits, and watches for a close requested by the
//! gateway (DELETE, slow consumer, shutdown). When the reader ends, the writer sends the
//! close frame, and `$disconnect` runs exactly once with the close code and reason.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use herald::auth::token_from_request;
use herald::events::iam::IamPolicyEffect;
use herald::ids::{ConnectionId, now_ms};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::{debug, info, warn};

use crate::App;
use crate::events::ConnectionMeta;
use crate::http::{decode_query, message_response};
use crate::registry::{SLOW_CONSUMER_CODE, Socket};
use crate::upgrade::{Upgrade, Upgraded};

type Ws = WebSocketStream<TcpStream>;

/// The read buffer per connection (see the upgrade below).
const READ_BUFFER_BYTES: usize = 1024;

/// `GET /{stage}` with an upgrade: the handshake.
pub(crate) async fn handshake(
    State(app): State<Arc<App>>,
    Path(stage): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Response {
    if stage != app.settings.stage {
        return message_response(StatusCode::FORBIDDEN, "Forbidden");
    }
    if app.shutdown.is_cancelled() {
        return message_response(StatusCode::SERVICE_UNAVAILABLE, "Shutting down");
    }
    let limits = &app.settings.limits;
    let source_ip = peer.ip().to_string();
    if limits
        .max_total
        .is_some_and(|max| app.registry.len() >= max)
        || limits
            .max_per_ip
            .is_some_and(|max| app.registry.count_ip(&source_ip) >= max)
    {
        return message_response(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
    }

    let query = decode_query(query.as_deref().unwrap_or(""));
    let header_pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let query_token = query
        .iter()
        .rev()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.as_str());
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // API Gateway answers 401 itself, without invoking the authorizer, when the identity
    // source is missing.
    if token_from_request(query_token, authorization).is_none() {
        return message_response(StatusCode::UNAUTHORIZED, "Unauthorized");
    }

    let mut meta = ConnectionMeta {
        id: ConnectionId::generate(),
        connected_at: now_ms(),
        source_ip,
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        domain_name: headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost")
            .to_owned(),
        context: serde_json::Map::new(),
    };
    let request = app.events.authorizer_request(&meta, &header_pairs, &query);
    let allowed = match herald::handlers::authorize(&app.verifier, &request) {
        Ok(allowed) => allowed,
        Err(e) => {
            info!(error = %e, "handshake refused by the authorizer");
            return message_response(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
    };
    let statement = allowed.policy_document.statement.first();
    if !statement.is_some_and(|s| s.effect == IamPolicyEffect::Allow) {
        return message_response(StatusCode::FORBIDDEN, "Forbidden");
    }
    if let Value::Object(context) = allowed.context {
        meta.context = context;
    }

    let socket = Socket::new(meta, limits.outbound_queue);
    app.registry.insert(socket.clone());
    let connect = app.events.connect(&socket.meta, &header_pairs, &query);
    let answer = herald::handlers::connect(&app.services, &connect).await;
    if !(200..300).contains(&answer.status_code) {
        app.registry.remove(&socket.meta.id);
        let status = u16::try_from(answer.status_code)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match answer.body {
            Some(herald::events::encodings::Body::Text(text)) => text,
            _ => status.canonical_reason().unwrap_or("").to_owned(),
        };
        return message_response(status, &body);
    }

    // tungstenite reads into a 128 KiB buffer by default, allocated per connection: most
    // of an idle connection's memory. Clients send small frames; 1 KiB is plenty (larger
    // frames still arrive whole, over several reads).
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_frame_bytes));
    let (response, upgraded) = upgrade.accept();
    let connection = app
        .connections
        .track_future(run(app.clone(), socket, upgraded, config));
    app.sockets.handle().spawn(connection);
    response
}

/// Completes the upgrade on the connections' runtime, then serves the connection.
async fn run(app: Arc<App>, socket: Arc<Socket>, upgraded: Upgraded, config: WebSocketConfig) {
    match upgraded.into_socket().await {
        Ok((stream, early)) => {
            // With nothing read early this is `from_raw_socket`: the same buffer, empty.
            let ws =
                WebSocketStream::from_partially_read(stream, early, Role::Server, Some(config))
                    .await;
            serve(app, socket, ws).await;
        }
        Err(error) => {
            warn!(connection_id = %socket.meta.id, %error, "upgrade failed after $connect");
            app.registry.remove(&socket.meta.id);
            Box::pin(finish(
                app,
                socket,
                1006,
                "Connection was closed abnormally".into(),
            ))
            .await;
        }
    }
}

/// Runs one connection to its end, then `$disconnect`.
async fn serve(app: Arc<App>, socket: Arc<Socket>, ws: Ws) {
    debug!(connection_id = %socket.meta.id, "connected");
    let (sink, stream) = ws.split();
    let writer = tokio::spawn(write(sink, socket.clone()));
    let (code, reason) = read(&app, &socket, stream).await;
    socket.close(code, &reason);
    if let Err(e) = writer.await {
        warn!(connection_id = %socket.meta.id, error = %e, "writer task failed");
    }
    app.registry.remove(&socket.meta.id);
    // A close the gateway asked for names the reason; otherwise the client's.
    let (code, reason) = socket.close_reason().unwrap_or((code, reason));
    Box::pin(finish(app, socket, code, reason)).await;
}

/// Runs `$disconnect`, once per connection whatever path got here.
async fn finish(app: Arc<App>, socket: Arc<Socket>, code: u16, reason: String) {
    if !socket.claim_disconnect() {
        return;
    }
    let event = app.events.disconnect(&socket.meta, code, &reason);
    let answer = herald::handlers::disconnect(&app.services, &event).await;
    debug!(connection_id = %socket.meta.id, code, reason, status = answer.status_code, "disconnected");
}

/// Why a WebSocket read failed: 1009 for a message or frame over the limits, else 1006.
fn read_error_close(error: &WsError) -> (u16, String) {
    match error {
        WsError::Capacity(_) => (1009, "Message too big".into()),
        e => (1006, format!("Connection was closed abnormally: {e}")),
    }
}

/// Reads until the connection ends; returns the close code and reason for `$disconnect`.
async fn read(app: &App, socket: &Socket, mut stream: SplitStream<Ws>) -> (u16, String) {
    let limits = &app.settings.limits;
    let ends_at = Instant::now() + limits.max_duration;
    let mut idle_at = Instant::now() + limits.idle_timeout;
    loop {
        let frame = tokio::select! {
            biased;
            () = socket.closing.cancelled() => {
                return socket.close_reason().unwrap_or((1000, String::new()));
            }
            () = app.shutdown.cancelled() => {
                socket.close(1001, "Going away");
                continue;
            }
            () = sleep_until(ends_at) => {
                socket.close(1001, "Going away: maximum connection duration reached");
                continue;
            }
            () = sleep_until(idle_at) => {
                socket.close(1001, "Going away: idle timeout");
                continue;
            }
            frame = stream.next() => frame,
        };
        idle_at = Instant::now() + limits.idle_timeout;
        match frame {
            None => return (1006, "Connection was closed abnormally".into()),
            Some(Err(e)) => {
                let (code, reason) = read_error_close(&e);
                socket.close(code, &reason);
                return (code, reason);
            }
            Some(Ok(Message::Text(text))) => {
                socket.touch();
                // Boxed, like `$disconnect` below: an event and a handler's state are large,
                // and a connection task that held room for them inline would carry it for
                // all the time the connection sits idle.
                Box::pin(async {
                    let event = app.events.message(&socket.meta, text.as_str());
                    herald::handlers::message(&app.services, &*app.gateway, &event).await;
                })
                .await;
            }
            Some(Ok(Message::Binary(_))) => {
                socket.close(1003, "Binary frames are not supported");
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => socket.touch(),
            Some(Ok(Message::Close(frame))) => {
                return match frame {
                    Some(f) => (u16::from(f.code), f.reason.to_string()),
                    None => (1005, "Client-side close frame status not set".into()),
                };
            }
        }
    }
}

/// Drains the outbox into the socket, flushing once per batch; on close, sends what was
/// already queued (unless the client is the slow one) and the close frame.
async fn write(mut sink: SplitSink<Ws, Message>, socket: Arc<Socket>) {
    let mut batch = VecDeque::new();
    loop {
        let taken = tokio::select! {
            biased;
            taken = socket.outbox.take(&mut batch) => taken,
            () = socket.closing.cancelled() => break,
        };
        if taken == 0 {
            break;
        }
        // A client that stops reading blocks the flush; a close must still get through.
        let sent = tokio::select! {
            sent = send_batch(&mut sink, &mut batch) => sent,
            () = socket.closing.cancelled() => break,
        };
        socket.touch();
        if let Err(e) = sent {
            debug!(connection_id = %socket.meta.id, error = %e, "write failed");
            socket.close(1006, "Connection was closed abnormally");
            return;
        }
    }
    let (code, reason) = socket.close_reason().unwrap_or((1000, String::new()));
    let slow = code == SLOW_CONSUMER_CODE;
    let goodbye = async {
        // What was taken but not sent when the close came goes first, in order.
        if !slow && socket.outbox.take_now(&mut batch) > 0 {
            send_batch(&mut sink, &mut batch).await?;
        }
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from(reason.as_str()),
        };
        sink.send(Message::Close(Some(frame))).await?;
        sink.close().await
    };
    // A client that stopped reading must not hold the connection open, nor the gateway's
    // shutdown: a slow consumer's socket is most likely full, so it gets only a moment.
    let patience = Duration::from_millis(if slow { 50 } else { 1_000 });
    let _ = tokio::time::timeout(patience, goodbye).await;
}

/// Sends `batch` (emptying it) with one flush.
async fn send_batch(
    sink: &mut SplitSink<Ws, Message>,
    batch: &mut VecDeque<Message>,
) -> Result<(), WsError> {
    while let Some(frame) = batch.pop_front() {
        sink.feed(frame).await?;
    }
    sink.flush().await
}

/// The JSON body API Gateway gives its own errors.
pub(crate) fn error_body(message: &str) -> String {
    json!({ "message": message }).to_string()
}
