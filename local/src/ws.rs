//! The WebSocket side: the handshake as API Gateway runs it, then one reader and one writer
//! per connection.
//!
//! Handshake: connection limits (429), the token (401 without calling the authorizer when
//! there is none), the `authorizer` handler (401 on refusal, 403 on a Deny policy), then
//! `connect` (its non-2xx refuses the upgrade with that status). The socket's queue is in
//! the registry before `connect` stores the connection, so a publish that sees the stored
//! connection always finds a socket to queue into, even before the upgrade has finished.
//!
//! Connection: the socket is split in two halves. The writer owns the writing half: it takes
//! everything queued in the outbox and writes it in one vectored write, each frame as the
//! bytes encoded once per publish (`wire.rs`), so nothing is framed or copied per recipient
//! in user space. tungstenite owns the reading half: the reader runs each text frame
//! through `message` in order, enforces the size, binary, idle and duration limits, and
//! watches for a close requested by the gateway (DELETE, slow consumer, shutdown); the
//! pongs tungstenite writes go through the outbox, so the writer alone writes to the
//! socket. When the reader ends, the writer sends the close frame (echoing the client's
//! when it closed), and `$disconnect` runs exactly once with the close code and reason.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use herald::auth::token_from_request;
use herald::events::iam::IamPolicyEffect;
use herald::ids::{ConnectionId, now_ms};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, info, warn};

use crate::App;
use crate::events::ConnectionMeta;
use crate::http::{decode_query, message_response};
use crate::registry::{Frame, SLOW_CONSUMER_CODE, Socket};
use crate::upgrade::{Upgrade, Upgraded};
use crate::wire::{self, Opcode};

type Ws = WebSocketStream<Incoming>;

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
            let (read_half, write_half) = stream.into_split();
            let incoming = Incoming {
                read: read_half,
                socket: socket.clone(),
            };
            // With nothing read early this is `from_raw_socket`: the same buffer, empty.
            let ws =
                WebSocketStream::from_partially_read(incoming, early, Role::Server, Some(config))
                    .await;
            serve(app, socket, ws, write_half).await;
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
async fn serve(app: Arc<App>, socket: Arc<Socket>, ws: Ws, out: OwnedWriteHalf) {
    debug!(connection_id = %socket.meta.id, "connected");
    let writer = tokio::spawn(write(out, socket.clone()));
    let (code, reason) = read(&app, &socket, ws).await;
    socket.close(code, &reason);
    if let Err(e) = writer.await {
        warn!(connection_id = %socket.meta.id, error = %e, "writer task failed");
    }
    app.registry.remove(&socket.meta.id);
    // A close the gateway asked for names the reason; otherwise the client's.
    let (code, reason) = socket.close_reason().unwrap_or((code, reason));
    Box::pin(finish(app, socket, code, reason)).await;
}

/// The connection as tungstenite sees it: it reads from the socket, and what it writes on
/// its own (the pong that answers a ping) joins the outbox, so that the writer is the only
/// one writing to the socket and a pong never lands inside a notification.
struct Incoming {
    read: OwnedReadHalf,
    socket: Arc<Socket>,
}

impl AsyncRead for Incoming {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Incoming {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.socket
            .outbox
            .push_control(Arc::new(Bytes::copy_from_slice(buf)));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
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
async fn read(app: &App, socket: &Socket, mut stream: Ws) -> (u16, String) {
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

/// Drains the outbox into the socket, one vectored write per batch; on close, sends what
/// was already queued (unless the client is the slow one) and the close frame.
async fn write(mut out: OwnedWriteHalf, socket: Arc<Socket>) {
    let mut unsent = Unsent::default();
    'serving: loop {
        let taken = tokio::select! {
            biased;
            taken = socket.outbox.take(&mut unsent.frames) => taken,
            () = socket.closing.cancelled() => break,
        };
        if taken == 0 {
            break;
        }
        while !unsent.frames.is_empty() {
            // A client that stops reading blocks the write; a close must still get through.
            // One write at a time, so a close that interrupts knows what went out.
            let wrote = tokio::select! {
                wrote = unsent.write_some(&mut out) => wrote,
                () = socket.closing.cancelled() => break 'serving,
            };
            if let Err(e) = wrote {
                debug!(connection_id = %socket.meta.id, error = %e, "write failed");
                socket.close(1006, "Connection was closed abnormally");
                return;
            }
        }
        socket.touch();
    }
    let (code, reason) = socket.close_reason().unwrap_or((1000, String::new()));
    let slow = code == SLOW_CONSUMER_CODE;
    let goodbye = async {
        if slow {
            // Only the end of a frame already begun, so that the close frame parses.
            unsent
                .frames
                .truncate(usize::from(unsent.front_written > 0));
        } else {
            // What was queued when the close came goes first, in order.
            socket.outbox.take_now(&mut unsent.frames);
        }
        while !unsent.frames.is_empty() {
            unsent.write_some(&mut out).await?;
        }
        if let Some(frame) = close_frame(code, &reason) {
            out.write_all(&frame).await?;
        }
        out.shutdown().await
    };
    // A client that stopped reading must not hold the connection open, nor the gateway's
    // shutdown: a slow consumer's socket is most likely full, so it gets only a moment.
    let patience = Duration::from_millis(if slow { 50 } else { 1_000 });
    let _ = tokio::time::timeout(patience, goodbye).await;
}

/// The close frame for `code`: none for 1006, which says no close frame came, and an empty
/// one for 1005, which says the client's had no code (RFC 6455 §7.4.1).
fn close_frame(code: u16, reason: &str) -> Option<Bytes> {
    match code {
        1006 => None,
        1005 => Some(wire::encode(Opcode::Close, &[])),
        code => Some(wire::close(code, reason)),
    }
}

/// Frames taken from the outbox and not yet written.
#[derive(Default)]
struct Unsent {
    frames: VecDeque<Frame>,
    /// How much of the first frame is already written.
    front_written: usize,
}

/// Frames handed to one `writev`: more than a batch under load holds, well under `IOV_MAX`.
const SLICES_PER_WRITE: usize = 128;

impl Unsent {
    /// One vectored write of what is unsent; forgets what it wrote. Cancel-safe: a write
    /// that has not completed has written nothing.
    ///
    /// Polled by hand so that the slices are built on the stack at each poll rather than
    /// kept in the writer's task, where 2 KiB of them would sit for the connection's life.
    fn write_some<'a>(
        &'a mut self,
        out: &'a mut OwnedWriteHalf,
    ) -> impl Future<Output = io::Result<()>> + 'a {
        poll_fn(move |cx| {
            let written = {
                let mut slices = [IoSlice::new(&[]); SLICES_PER_WRITE];
                let mut count = 0;
                for (slot, frame) in slices.iter_mut().zip(&self.frames) {
                    let skip = if count == 0 { self.front_written } else { 0 };
                    *slot = IoSlice::new(&frame[skip..]);
                    count += 1;
                }
                ready!(Pin::new(&mut *out).poll_write_vectored(cx, &slices[..count]))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.forget(written);
            Poll::Ready(Ok(()))
        })
    }

    /// Drops the first `written` bytes.
    fn forget(&mut self, mut written: usize) {
        while let Some(front) = self.frames.front() {
            let left = front.len() - self.front_written;
            if written < left {
                self.front_written += written;
                return;
            }
            written -= left;
            self.front_written = 0;
            self.frames.pop_front();
        }
    }
}

/// The JSON body API Gateway gives its own errors.
pub(crate) fn error_body(message: &str) -> String {
    json!({ "message": message }).to_string()
}
