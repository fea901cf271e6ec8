//! What one client can make the `herald-local` process hold, measured from `/proc` on the
//! real binary: the asynchronous queue keeps what its byte bound says, not what the
//! payloads become once parsed.

use std::net::SocketAddr;

use herald::testing::Server;

use crate::common::{self, raw_http};

/// The queue's byte bound (64 MiB of payload), as the README states it.
const QUEUED_BYTES: u64 = 64 * 1024 * 1024;

/// The process's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("a live process");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

async fn event(addr: SocketAddr, body: &str) -> String {
    let request = format!(
        "POST /2015-03-31/functions/publish/invocations HTTP/1.1\r\nhost: {addr}\r\n\
         x-amz-invocation-type: Event\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_http(addr, &request).await
}

#[tokio::test]
async fn the_async_queue_holds_its_byte_bound_whatever_the_payloads_parse_into() {
    let redis = Server::redis();
    let url = redis.url();
    let env = [
        ("HERALD_STORE", "redis"),
        ("HERALD_REDIS_URL", url.as_str()),
    ];
    let (child, addr) = common::spawn_binary(&[], &env).await;
    let pid = child.id().expect("running");
    // Every store call waits while Redis is paused (until the pause ends or the test stops
    // both processes): nothing leaves the queue.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let before = rss(pid);
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(20_000)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();
    // A publish of 100 KiB of `[0,0,…]` (under the 128 KiB a notification may be): each element is a whole JSON value once parsed.
    // Each one waits on the paused store, so the worker takes one every few seconds.
    let body = format!(r#"{{"room":"r","data":[{}0]}}"#, "0,".repeat(50 * 1024));
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..900 {
        let answer = event(addr, &body).await;
        if answer.starts_with("HTTP/1.1 202") {
            accepted += 1;
        } else {
            assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
            refused += 1;
        }
    }
    let grown = rss(pid).saturating_sub(before);
    eprintln!(
        "async queue: {accepted} accepted, {refused} refused, the process grew {} MiB",
        grown / (1024 * 1024)
    );
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
    assert!(
        grown <= 2 * QUEUED_BYTES,
        "the process grew {} MiB holding {accepted} queued payloads of {} KiB",
        grown / (1024 * 1024),
        body.len() / 1024
    );
    drop(child);
}

/// Connections one user may hold at the default limits.
const CONNECTIONS_PER_USER: usize = herald::limits::DEFAULT_MAX_CONNECTIONS_PER_USER;
/// What the README promises one user at the default limits can make the process hold
/// (256 MB).
const ONE_USER_BOUND: u64 = 256_000_000;

/// A WebSocket whose client reads nothing and keeps a small receive buffer, so that what
/// the gateway sends it stays in the gateway rather than in the kernel's buffers.
async fn stalled_socket(
    addr: SocketAddr,
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("handshake");
    ws
}

#[tokio::test]
async fn one_user_asking_for_history_and_never_reading_holds_at_most_its_budget() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    // Two kept notifications of 60 KiB: every `history` reply is nearly as large as a frame
    // may be, and cheap to make, so the replies are made faster than any budget drains.
    let env = [("HERALD_HISTORY_SIZE", "2")];
    let (child, addr) = common::spawn_binary(&[], &env).await;
    let pid = child.id().expect("running");
    let gateway = common::Gateway::at(addr);
    let data = "x".repeat(60 * 1024);
    for _ in 0..2 {
        gateway
            .invoke(serde_json::json!({"room": "big", "data": data}))
            .await
            .expect("published");
    }
    let url = format!(
        "{}?token={}",
        gateway.url(),
        gateway.token("u", &["big"], &[])
    );
    let mut sockets = Vec::new();
    for _ in 0..CONNECTIONS_PER_USER {
        sockets.push(stalled_socket(addr, &url).await);
    }
    let before = rss(pid);
    let request = r#"{"action":"history","room":"big","limit":100}"#;
    // Each socket asks as fast as its frame rate lets it (50 a second) and never reads; a
    // send that cannot go out (the gateway stopped reading it) ends its task.
    let askers: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                for _ in 0..400 {
                    let sent = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        ws.send(Message::text(request)),
                    );
                    if !matches!(sent.await, Ok(Ok(()))) {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                ws
            })
        })
        .collect();
    let mut peak = 0;
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(8);
    while tokio::time::Instant::now() < until {
        peak = peak.max(rss(pid).saturating_sub(before));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    eprintln!(
        "one user, {CONNECTIONS_PER_USER} sockets asking for history: the process grew {} MiB at most",
        peak / (1024 * 1024)
    );
    assert!(
        peak <= ONE_USER_BOUND,
        "one user made the process grow {} MiB",
        peak / (1024 * 1024)
    );
    for asker in askers {
        drop(asker.await.unwrap());
    }
    drop(child);
}
