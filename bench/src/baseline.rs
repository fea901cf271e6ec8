//! The baseline: a bare broadcast server on tokio + tungstenite, no auth, no store, no
//! events. What it delivers per second is the machine's practical limit for this traffic,
//! the yardstick the gateway is measured against.
//!
//! `/sub` connections receive; a `/pub` connection sends payloads, each of which is queued
//! once (shared bytes) to every subscriber, then acknowledged with `ok`. Like the gateway,
//! each subscriber's writer drains its whole queue and flushes once.
//!
//! The ring: `/ring-sub` and `/ring-pub` do the same through one `tokio::sync::broadcast`
//! ring instead of a queue per subscriber, so a publish is one append, acknowledged at
//! once, whatever the number of subscribers (a subscriber that falls a whole ring behind
//! skips what it missed, and the bench counts it lost).

use std::sync::{Arc, RwLock};

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

type Subscribers = Arc<RwLock<Vec<mpsc::Sender<Message>>>>;

/// Messages the ring holds: more than a run publishes, so a subscriber that keeps up never
/// falls a whole ring behind.
const RING_CAPACITY: usize = 16_384;

/// Serves until the process ends.
pub async fn serve(listener: TcpListener) {
    let subscribers: Subscribers = Arc::default();
    let (ring, _) = broadcast::channel::<Message>(RING_CAPACITY);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, subscribers.clone(), ring.clone()));
    }
}

async fn connection(stream: TcpStream, subscribers: Subscribers, ring: broadcast::Sender<Message>) {
    let mut path = String::new();
    // The callback's signature is tungstenite's; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let mut feed = match path.as_str() {
        "/pub" | "/ring-pub" => {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(payload) = message else {
                    continue;
                };
                let message = Message::Text(payload);
                if path == "/ring-pub" {
                    let _ = ring.send(message);
                } else {
                    let subscribers = subscribers
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    for subscriber in &subscribers {
                        let _ = subscriber.try_send(message.clone());
                    }
                }
                if sink.send(Message::text("ok")).await.is_err() {
                    return;
                }
            }
            return;
        }
        "/ring-sub" => Feed::Ring(ring.subscribe()),
        _ => {
            let (tx, rx) = mpsc::channel::<Message>(4096);
            subscribers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(tx);
            Feed::Queue(rx)
        }
    };
    let writer = tokio::spawn(async move {
        while let Some(first) = feed.next().await {
            if sink.feed(first).await.is_err() {
                return;
            }
            while let Some(more) = feed.try_next() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(_)) = stream.next().await {}
    writer.abort();
}

/// What a subscriber's writer reads: its own queue, or its place in the ring.
enum Feed {
    Queue(mpsc::Receiver<Message>),
    Ring(broadcast::Receiver<Message>),
}

impl Feed {
    /// The next message, waiting for it; `None` once nothing more can come. A ring reader
    /// that fell a whole ring behind goes on from the oldest message it still holds.
    async fn next(&mut self) -> Option<Message> {
        match self {
            Self::Queue(rx) => rx.recv().await,
            Self::Ring(rx) => loop {
                match rx.recv().await {
                    Ok(message) => return Some(message),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            },
        }
    }

    /// The next message if one is waiting.
    fn try_next(&mut self) -> Option<Message> {
        match self {
            Self::Queue(rx) => rx.try_recv().ok(),
            Self::Ring(rx) => rx.try_recv().ok(),
        }
    }
}
