//! One WebSocket connection after its handshake (`handshake.rs`): a reader and a writer.
//!
//! The socket is split in two halves. The writer owns the writing half: it takes
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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use herald::protocol::{ErrorCode, ProtocolError, Reply};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError as WsProtocolError;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, warn};

use crate::app::App;
use crate::connection::close_code;
use crate::connection::frame_rate::{Limiter, Verdict};
use crate::connection::registry::{Bounds, Frame, SLOW_CONSUMER_CODE, Socket};
use crate::connection::wire::{self, Encoded, Opcode};
use crate::session::finish;
use crate::ws::headers::Headers;
use crate::ws::upgrade::Upgraded;

type Ws = WebSocketStream<Incoming>;

/// Completes the upgrade on the connections' runtime, then serves the connection.
pub(crate) async fn run(
    app: Arc<App>,
    socket: Arc<Socket>,
    upgraded: Upgraded,
    config: WebSocketConfig,
) {
    // The upgrade's and the handshake's futures are boxed: held inline, their room would
    // stay in the connection's task for all its life, idle or not.
    match Box::pin(upgraded.into_socket()).await {
        Ok((stream, early)) => {
            let (read_half, write_half) = stream.into_split();
            let mut incoming = Incoming {
                read: read_half,
                socket: socket.clone(),
                bounds: app.registry.bounds(),
                headers: Headers::default(),
                limiter: app
                    .settings
                    .limits
                    .frame_rate
                    .clone()
                    .map(|rate| Limiter::new(rate, std::time::Instant::now())),
            };
            // Bytes read with the handshake go to tungstenite directly: follow them too.
            incoming.count_continuations(&early);
            // With nothing read early this is `from_raw_socket`: the same buffer, empty.
            let ws = Box::pin(WebSocketStream::from_partially_read(
                incoming,
                early,
                Role::Server,
                Some(config),
            ))
            .await;
            serve(app, socket, ws, write_half).await;
        }
        Err(error) => {
            warn!(connection_id = %socket.meta.id, %error, "upgrade failed after $connect");
            app.registry.remove(&socket.meta.id);
            Box::pin(finish(
                app,
                socket,
                close_code::ABNORMAL,
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
/// one writing to the socket and a pong never lands inside a notification. It holds the
/// connection's frame rate limiter, as it counts the continuation frames tungstenite never
/// shows (`headers.rs`); the reader counts every other frame with the same limiter.
struct Incoming {
    read: OwnedReadHalf,
    socket: Arc<Socket>,
    bounds: Bounds,
    headers: Headers,
    limiter: Option<Limiter>,
}

impl Incoming {
    /// Counts the continuation frames that begin in `bytes` toward the frame rate; one the
    /// client sends far over it closes the connection, as any other frame would.
    fn count_continuations(&mut self, bytes: &[u8]) {
        let Some(limiter) = self.limiter.as_mut() else {
            return;
        };
        for _ in 0..self.headers.continuations(bytes) {
            if limiter.fragment(std::time::Instant::now()) {
                self.socket
                    .close(close_code::POLICY_VIOLATION, RATE_LIMIT_REASON);
            }
        }
    }
}

impl AsyncRead for Incoming {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.read).poll_read(cx, buf))?;
        self.count_continuations(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Incoming {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.socket.outbox.push_control(
            Arc::new(Encoded::control(Bytes::copy_from_slice(buf))),
            self.bounds,
        );
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Why a WebSocket read failed, as RFC 6455 names it: 1009 for a message or frame over the
/// limits, 1007 for text that is not UTF-8, 1002 for a protocol violation; 1006 when the
/// connection simply ended.
fn read_error_close(error: &WsError) -> (u16, String) {
    match error {
        WsError::Capacity(_) => (close_code::MESSAGE_TOO_BIG, "Message too big".into()),
        WsError::Utf8(_) => (
            close_code::INVALID_PAYLOAD,
            "Invalid frame payload data".into(),
        ),
        WsError::Protocol(WsProtocolError::ResetWithoutClosingHandshake) | WsError::Io(_) => (
            close_code::ABNORMAL,
            "Connection was closed abnormally".into(),
        ),
        WsError::Protocol(e) => (close_code::PROTOCOL_ERROR, format!("Protocol error: {e}")),
        e => (
            close_code::ABNORMAL,
            format!("Connection was closed abnormally: {e}"),
        ),
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
                return socket
                    .close_reason()
                    .unwrap_or((close_code::NORMAL, String::new()));
            }
            () = app.shutdown.cancelled() => {
                socket.close(close_code::GOING_AWAY, "Going away");
                continue;
            }
            // One timer for both deadlines: each is a few hundred bytes of every idle
            // connection's task.
            () = sleep_until(idle_at.min(ends_at)) => {
                if Instant::now() >= ends_at {
                    socket.close(
                        close_code::GOING_AWAY,
                        "Going away: maximum connection duration reached",
                    );
                } else {
                    socket.close(close_code::GOING_AWAY, "Going away: idle timeout");
                }
                continue;
            }
            frame = stream.next() => frame,
        };
        idle_at = Instant::now() + limits.idle_timeout;
        match frame {
            None => {
                return (
                    close_code::ABNORMAL,
                    "Connection was closed abnormally".into(),
                );
            }
            Some(Err(e)) => {
                let (code, reason) = read_error_close(&e);
                socket.close(code, &reason);
                return (code, reason);
            }
            Some(Ok(Message::Text(text))) => {
                socket.touch();
                if !admit(app, socket, stream.get_mut().limiter.as_mut(), true) {
                    continue;
                }
                // Boxed, like `$disconnect` below: an event and a handler's state are large,
                // and a connection task that held room for them inline would carry it for
                // all the time the connection sits idle.
                Box::pin(async {
                    let event = app.events.message(&socket.meta, text.as_str());
                    app.handlers.message(&event).await;
                })
                .await;
            }
            Some(Ok(Message::Binary(_))) => {
                socket.close(
                    close_code::UNSUPPORTED_DATA,
                    "Binary frames are not supported",
                );
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                socket.touch();
                // Control frames are answered by the protocol itself; they count toward
                // abuse, and are otherwise not refused.
                admit(app, socket, stream.get_mut().limiter.as_mut(), false);
            }
            Some(Ok(Message::Close(frame))) => {
                return match frame {
                    Some(f) => (u16::from(f.code), f.reason.to_string()),
                    None => (
                        close_code::NO_STATUS,
                        "Client-side close frame status not set".into(),
                    ),
                };
            }
        }
    }
}

/// Whether a client frame may be handled, by the connection's frame rate: a refusal is
/// answered `rate_limited` (text frames only), abuse closes the connection with 1008.
fn admit(app: &App, socket: &Socket, limiter: Option<&mut Limiter>, answer: bool) -> bool {
    let Some(limiter) = limiter else {
        return true;
    };
    match limiter.frame(std::time::Instant::now()) {
        Verdict::Pass => true,
        Verdict::Refuse if answer => {
            let reply = Reply {
                message: ProtocolError::new(
                    ErrorCode::RateLimited,
                    "too many messages: this one was dropped; slow down",
                )
                .into(),
                reference: None,
            };
            if let Ok(frame) = crate::connection::registry::frame(Bytes::from(reply.to_json())) {
                let _ = app.registry.post_to(socket, &frame);
            }
            false
        }
        Verdict::Refuse | Verdict::Drop => false,
        Verdict::Close => {
            socket.close(close_code::POLICY_VIOLATION, RATE_LIMIT_REASON);
            false
        }
    }
}

/// The close reason for a client that kept sending far over its rate.
pub const RATE_LIMIT_REASON: &str = "rate limit";

/// Drains the outbox into the socket, one vectored write per batch; on close, sends what
/// was already queued (unless the client is the slow one) and the close frame.
async fn write(mut out: OwnedWriteHalf, socket: Arc<Socket>) {
    let mut unsent = Unsent::default();
    'serving: loop {
        let taken = tokio::select! {
            biased;
            taken = socket.take(&mut unsent.frames) => taken,
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
                socket.close(close_code::ABNORMAL, "Connection was closed abnormally");
                return;
            }
        }
        socket.touch();
    }
    let (code, reason) = socket
        .close_reason()
        .unwrap_or((close_code::NORMAL, String::new()));
    let slow = code == SLOW_CONSUMER_CODE;
    let goodbye = async {
        if slow {
            // Only the end of a frame already begun, so that the close frame parses.
            unsent
                .frames
                .truncate(usize::from(unsent.front_written > 0));
        } else {
            // What was queued when the close came goes first, in order.
            socket.take_now(&mut unsent.frames);
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
fn close_frame(code: u16, reason: &str) -> Option<Encoded> {
    match code {
        close_code::ABNORMAL => None,
        close_code::NO_STATUS => Some(wire::encode(Opcode::Close, &[])),
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
