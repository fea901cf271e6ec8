//! The asynchronous flood: large `Event` invocations sent as fast as the gateway takes
//! them, while subscribers read as fast as they can. Shows what the bounded queue of
//! asynchronous invokes promises: a full queue answers 429 instead of growing, no reader
//! that keeps up is closed, every accepted publish reaches every reader, and the
//! gateway's memory stays bounded (its peak resident memory is sampled throughout).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::load;
use crate::server::{Server, Ws};
use crate::{procs, publisher};

/// How often the gateway's resident memory is read.
const RSS_SAMPLE: Duration = Duration::from_millis(20);
/// How long the final publish may wait for room in the queue, and a reader for it.
const PATIENCE: Duration = Duration::from_secs(120);

/// The figures of one flood.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Flood {
    /// `Event` invocations sent.
    pub invocations: usize,
    /// Bytes of each payload's padding.
    pub size: usize,
    /// Readers subscribed to the room.
    pub readers: usize,
    /// Invocations answered 202.
    pub accepted: u64,
    /// Invocations answered 429 (the queue was full).
    pub throttled: u64,
    /// Seconds the invocations took to send.
    pub send_secs: f64,
    /// Readers the gateway closed.
    pub closed: usize,
    /// Notifications the readers received, fewest and most (the final one included).
    pub received_min: u64,
    /// See `received_min`.
    pub received_max: u64,
    /// The gateway's resident memory before the flood, in KiB.
    pub idle_rss_kib: u64,
    /// Its peak resident memory during the flood, in KiB.
    pub peak_rss_kib: u64,
}

/// Sends one `Event` invocation; answers its HTTP status.
async fn invoke_event(http: &mut BufReader<TcpStream>, body: &str) -> u16 {
    let request = format!(
        "POST /2015-03-31/functions/publish/invocations HTTP/1.1\r\nhost: bench\r\n\
         x-amz-invocation-type: Event\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    http.get_mut()
        .write_all(request.as_bytes())
        .await
        .expect("the request is sent");
    publisher::read_answer(http).await.status
}

/// Reads until the notification `"last"`: how many arrived, or the close code.
async fn read_all(mut ws: Ws) -> Result<u64, u16> {
    let mut received = 0;
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("notifications keep coming");
        match message {
            Some(Ok(Message::Text(text))) => {
                received += 1;
                let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if value["data"] == "last" {
                    return Ok(received);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(frame.map_or(1005, |f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(1006),
        }
    }
}

/// Floods the gateway at `addr` (process `pid`) with `invocations` `Event` publishes of
/// `size` bytes, `in_flight` at a time, while `readers` subscribers read.
pub async fn flood(
    addr: SocketAddr,
    pid: u32,
    invocations: usize,
    size: usize,
    readers: usize,
    in_flight: usize,
) -> Flood {
    let server = Server::Gateway(vec![addr]);
    let clients = load::subscribers(&server, readers, Some("flood")).await;
    let reading: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(read_all(ws)))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = pid.to_string();
    let idle_rss_kib = procs::rss_kib(&pid);
    let peak = Arc::new(AtomicU64::new(idle_rss_kib));
    let sampling = {
        let (peak, pid) = (peak.clone(), pid.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(procs::rss_kib(&pid), Ordering::Relaxed);
                tokio::time::sleep(RSS_SAMPLE).await;
            }
        })
    };

    let pad = "x".repeat(size);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let senders: Vec<_> = (0..in_flight.max(1))
        .map(|_| {
            let (next, pad) = (next.clone(), pad.clone());
            tokio::spawn(async move {
                let mut http = publisher::http_connection(addr).await;
                let (mut accepted, mut throttled) = (0u64, 0u64);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= invocations as u64 {
                        return (accepted, throttled);
                    }
                    let body = json!({"room":"flood","data":{"n":n,"pad":pad}}).to_string();
                    match invoke_event(&mut http, &body).await {
                        202 => accepted += 1,
                        429 => throttled += 1,
                        other => panic!("an Event invocation answered {other}"),
                    }
                }
            })
        })
        .collect();
    let (mut accepted, mut throttled) = (0, 0);
    for sender in senders {
        let (a, t) = sender.await.expect("a sender");
        accepted += a;
        throttled += t;
    }
    let send_secs = started.elapsed().as_secs_f64();

    // The final publish queues behind every accepted one.
    let mut http = publisher::http_connection(addr).await;
    let last = json!({"room":"flood","data":"last"}).to_string();
    while invoke_event(&mut http, &last).await != 202 {
        assert!(started.elapsed() < PATIENCE, "the queue never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut received = Vec::new();
    let mut closed = 0;
    for reader in reading {
        match reader.await.expect("a reader") {
            Ok(n) => received.push(n),
            Err(_) => closed += 1,
        }
    }
    sampling.abort();
    Flood {
        invocations,
        size,
        readers,
        accepted,
        throttled,
        send_secs,
        closed,
        received_min: received.iter().copied().min().unwrap_or(0),
        received_max: received.iter().copied().max().unwrap_or(0),
        idle_rss_kib,
        peak_rss_kib: peak.load(Ordering::Relaxed),
    }
}
