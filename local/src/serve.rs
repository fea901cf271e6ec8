//! Accepting HTTP connections, bounded in every way a client could stretch them: a request
//! head must arrive within a deadline or the socket is closed (slowloris); every socket
//! counts toward the connection limits from the moment it is accepted, so half-open and
//! stalled ones cannot crowd out real clients; and shutdown drains for a bounded time,
//! whatever the clients do.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::app::App;
use crate::http::ConnectionAbort;

/// How long accepting pauses after it failed (out of file descriptors, say), so that a
/// failing `accept` does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// What a socket over a connection limit is told before it is closed.
const OVER_LIMIT: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
content-length: 31\r\nconnection: close\r\n\r\n{\"message\":\"Too Many Requests\"}";

/// The HTTP connections open now, in all and per source address.
#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Counts open connections; a [`Slot`] is one of them.
#[derive(Default)]
struct Counter(Mutex<Open>);

/// One counted connection; dropping it uncounts it.
struct Slot {
    counter: Arc<Counter>,
    ip: IpAddr,
    /// Whether it is counted now: a request reading its body gives its place up meanwhile.
    held: AtomicBool,
}

/// A connection's place under the connection limits, as its requests see it: `serve` puts
/// one in every request's extensions. A request that reads a body steps aside while the
/// body arrives ([`Place::aside`]): bodies have a byte budget of their own (`control_plane`),
/// so a client dribbling bodies holds no place a WebSocket client needs.
#[derive(Clone)]
pub(crate) struct Place(Arc<Slot>);

/// Gives the place back when dropped.
pub(crate) struct Aside(Arc<Slot>);

impl Place {
    /// Uncounts the connection until the guard is dropped.
    pub(crate) fn aside(&self) -> Aside {
        self.0.release();
        Aside(self.0.clone())
    }
}

impl Drop for Aside {
    fn drop(&mut self) {
        self.0.reclaim();
    }
}

impl Counter {
    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a connection from `ip`, unless it would take the gateway past a limit.
    /// WebSockets already upgraded count too: they are in the registry, and no longer here.
    /// A reader (SSE, a long poll) is its HTTP connection, counted here once.
    fn admit(self: &Arc<Self>, app: &App, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open();
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        let (websockets, websockets_from_ip) = app.registry.websockets(&ip.to_string());
        if app
            .settings
            .limits
            .full(open.total + websockets, from_ip + websockets_from_ip)
        {
            return None;
        }
        open.count(ip);
        Some(Slot {
            counter: self.clone(),
            ip,
            held: AtomicBool::new(true),
        })
    }
}

impl Open {
    fn count(&mut self, ip: IpAddr) {
        self.total += 1;
        *self.per_ip.entry(ip).or_default() += 1;
    }

    fn uncount(&mut self, ip: IpAddr) {
        self.total -= 1;
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

impl Slot {
    fn release(&self) {
        if self.held.swap(false, Ordering::AcqRel) {
            self.counter.open().uncount(self.ip);
        }
    }

    /// Counts the connection again, over the limits or not: it was admitted once, and its
    /// request is already read.
    fn reclaim(&self) {
        if !self.held.swap(true, Ordering::AcqRel) {
            self.counter.open().count(self.ip);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Accepts and serves until the gateway shuts down, then drains for at most
/// `HttpLimits::drain`: HTTP connections finish their request, WebSockets close with 1001
/// and run `$disconnect`.
pub(crate) async fn serve(app: Arc<App>, listener: TcpListener, router: Router) {
    let counter = Arc::new(Counter::default());
    let http = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.settings.http.head_timeout);
    loop {
        let accepted = tokio::select! {
            () = app.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(slot) = counter.admit(&app, peer.ip()) else {
            refuse(&stream, peer);
            continue;
        };
        let place = Place(Arc::new(slot));
        let held = place.clone();
        // The router as hyper calls it, with the peer's address for `ConnectInfo` and a way
        // to drop this connection.
        let router = router.clone();
        let abort = ConnectionAbort::default();
        let aborted = abort.0.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(abort.clone());
            request.extensions_mut().insert(place.clone());
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = app.shutdown.clone();
        http.spawn(async move {
            // Counted until the connection ends (or while a request steps aside).
            let _place = held;
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = aborted.cancelled() => {
                    debug!(%peer, "http connection dropped: its reader was closed");
                    return;
                }
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                debug!(%peer, %error, "http connection ended");
            }
        });
    }
    drop(listener);
    http.close();
    app.connections.close();
    let drained = tokio::time::timeout(app.settings.http.drain, async {
        http.wait().await;
        app.connections.wait().await;
    })
    .await;
    if drained.is_err() {
        info!(
            http = http.len(),
            sockets = app.connections.len(),
            "drain time is up: leaving connections that did not finish"
        );
    }
}

/// Tells a socket over a connection limit so, without waiting on it, and closes it.
fn refuse(stream: &TcpStream, peer: SocketAddr) {
    // A full send buffer (a client that does not read) just loses the courtesy.
    let _ = stream.try_write(OVER_LIMIT);
    debug!(%peer, "connection refused: over a connection limit");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_well_formed_response() {
        let text = std::str::from_utf8(OVER_LIMIT).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 429 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(body).unwrap()["message"],
            "Too Many Requests"
        );
    }
}
