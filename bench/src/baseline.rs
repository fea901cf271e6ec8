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
    if path == "/ring-pub" {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Text(payload) = message {
                let _ = ring.send(Message::Text(payload));
                if sink.send(Message::text("ok")).await.is_err() {
                    return;
                }
            }
        }
        return;
    }
    if path == "/ring-sub" {
        let mut rx = ring.subscribe();
        let writer = tokio::spawn(async move {
            loop {
                let first = match rx.recv().await {
                    Ok(message) => message,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if sink.feed(first).await.is_err() {
                    return;
                }
                while let Ok(more) = rx.try_recv() {
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
        return;
    }
    if path == "/pub" {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Text(payload) = message {
                let message = Message::Text(payload);
                let subscribers = subscribers
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                for subscriber in &subscribers {
                    let _ = subscriber.try_send(message.clone());
                }
                if sink.send(Message::text("ok")).await.is_err() {
                    return;
                }
            }
        }
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Message>(4096);
    subscribers
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push(tx);
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(first).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
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
