//! The load: real WebSocket (or Server-Sent Events) clients, a publisher, and what they
//! measure.
//!
//! Every publish carries its sequence number and the time it was sent (µs since the
//! epoch; clients and servers share the machine's clock). Each client counts what arrives
//! per sequence number, so losses and duplicates are exact, and records the latency of
//! each delivery. Clients decode only the two numbers they need.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use herald::protocol::{self, ClientRequest, RoomName};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::procs::{self, SECRET};
use crate::publisher::Publisher;
use crate::server::{Server, Ws, now_us};
use crate::sse::SseClient;

/// The figures of one fan-out run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fanout {
    /// `gateway`, `baseline` or `multi-instance`.
    pub server: String,
    /// Subscribed connections.
    pub connections: usize,
    /// Publishes.
    pub publishes: usize,
    /// Bytes of `data` per publish.
    pub size: usize,
    /// Notifications received.
    pub deliveries: u64,
    /// Expected but never received.
    pub lost: u64,
    /// Received more than once.
    pub duplicated: u64,
    /// From the first publish to the last delivery.
    pub seconds: f64,
    /// Deliveries per second over that time.
    pub deliveries_per_sec: f64,
    /// Publish-to-delivery latency, median, in ms.
    pub p50_ms: f64,
    /// 99th percentile, in ms.
    pub p99_ms: f64,
    /// Worst, in ms.
    pub max_ms: f64,
    /// How long a publish call took until the server acknowledged it, mean, in ms.
    pub publish_ms: f64,
    /// CPU the load generator used, as % of one core.
    pub client_cpu_pct: f64,
    /// CPU the server(s) used, as % of one core.
    pub server_cpu_pct: f64,
    /// Publish calls in flight at once (1: one after another).
    #[serde(default = "one")]
    pub in_flight: usize,
    /// Redis commands per publish while publishing (`INFO commandstats`), where the run
    /// had a Redis.
    #[serde(default)]
    pub redis_commands_per_publish: Option<f64>,
}

fn one() -> usize {
    1
}

/// What a run adds to [`fanout_over`]: publish calls in flight at once, and the Redis
/// whose commands are counted.
#[derive(Clone, Debug)]
pub struct Extras {
    /// Publish calls in flight at once, each on a connection of its own.
    pub in_flight: usize,
    /// The Redis the servers use, whose `INFO commandstats` is read around the publishes.
    pub redis_url: Option<String>,
}

impl Default for Extras {
    fn default() -> Self {
        Self {
            in_flight: 1,
            redis_url: None,
        }
    }
}

/// Every command Redis has run, by `INFO commandstats`, through `redis-cli`.
fn redis_commands(url: &str) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-u", url, "INFO", "commandstats"])
        .output()
        .expect("redis-cli runs (it comes with redis-server)");
    herald::testing::commands_run(&String::from_utf8_lossy(&out.stdout))
}

#[derive(Deserialize)]
struct Stamp {
    seq: usize,
    sent: u64,
}

#[derive(Deserialize)]
struct Received {
    #[serde(default)]
    data: Option<Stamp>,
    #[serde(default)]
    seq: Option<usize>,
    #[serde(default)]
    sent: Option<u64>,
}

struct ClientStats {
    counts: Vec<u8>,
    latencies_us: Vec<u32>,
    last_us: u64,
}

/// A token for `user` that may join every room.
pub fn token(user: &str) -> String {
    herald::auth::sign_hs256(SECRET.as_bytes(), user, &["*"], &["*"], 3600)
        .expect("the benchmark's token signs")
}

/// Opens one client, subscribed to `room` when there is one and the server is a gateway.
async fn subscriber(server: &Server, i: usize, room: Option<&str>) -> Ws {
    let url = match server {
        Server::Gateway(addrs) => {
            let addr = addrs[i % addrs.len()];
            format!("ws://{addr}/local?token={}", token(&format!("bench-{i}")))
        }
        Server::Baseline(addr) => format!("ws://{addr}/sub"),
        Server::Ring(addr) => format!("ws://{addr}/ring-sub"),
        Server::Seed(addrs) => format!("ws://{}/", addrs[i % addrs.len()]),
    };
    let config = crate::placement::client_config();
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, config, false)
        .await
        .unwrap_or_else(|e| panic!("client {i} cannot connect to {url}: {e}"));
    if let (Server::Gateway(_), Some(room)) = (server, room) {
        let room = RoomName::parse(room).expect("the bench's rooms are valid");
        let subscribe = ClientRequest::Subscribe { room, since: None };
        ws.send(Message::text(subscribe.to_frame(None)))
            .await
            .expect("subscribe");
        let reply = ws.next().await.expect("a reply").expect("a frame");
        let answer = protocol::Received::parse(reply.to_text().unwrap_or(""));
        assert!(
            answer.is_ok_and(|answer| answer.kind == "subscribed"),
            "{reply:?}"
        );
    }
    ws
}

/// Handshakes in flight at once while clients open.
const OPENING_BATCH: usize = 64;

/// Opens `n` clients (subscribed to `room`, if any), [`OPENING_BATCH`] at a time.
pub async fn subscribers(server: &Server, n: usize, room: Option<&str>) -> Vec<Ws> {
    let mut all = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + OPENING_BATCH).min(n);
        let batch = (start..end).map(|i| subscriber(server, i, room));
        all.extend(futures::future::join_all(batch).await);
        start = end;
    }
    all
}

/// How a run's subscribers read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A WebSocket each, subscribed with the `subscribe` action.
    WebSocket,
    /// A Server-Sent Events stream each (`GET /local/events?rooms=…`), gateway only.
    Sse,
}

/// One subscriber, however it reads.
enum Client {
    Ws(Box<Ws>),
    Sse(SseClient),
}

impl Client {
    /// The next notification's JSON; `None` once the connection ends or sends anything
    /// but text.
    async fn next_text(&mut self) -> Option<bytes::Bytes> {
        match self {
            Self::Ws(ws) => match ws.next().await {
                Some(Ok(Message::Text(text))) => Some(text.into()),
                _ => None,
            },
            Self::Sse(sse) => sse.next_data().await.map(bytes::Bytes::from),
        }
    }
}

/// Opens `n` subscribers of `room` reading over `transport`.
async fn clients(server: &Server, transport: Transport, n: usize, room: &str) -> Vec<Client> {
    match transport {
        Transport::WebSocket => subscribers(server, n, Some(room))
            .await
            .into_iter()
            .map(|ws| Client::Ws(Box::new(ws)))
            .collect(),
        Transport::Sse => {
            let Server::Gateway(addrs) = server else {
                panic!("SSE clients read from a gateway")
            };
            let mut all = Vec::with_capacity(n);
            for start in (0..n).step_by(OPENING_BATCH) {
                let batch = (start..(start + OPENING_BATCH).min(n)).map(|i| async move {
                    let query = format!("rooms={room}&token={}", token(&format!("bench-{i}")));
                    SseClient::open(addrs[i % addrs.len()], &query).await
                });
                let opened = futures::future::join_all(batch).await;
                all.extend(opened.into_iter().map(Client::Sse));
            }
            all
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
}

/// One fan-out run: `connections` WebSocket subscribers of one room, `publishes`
/// publishes of `size` bytes of data, one after another; `server_pids` are read for CPU.
pub async fn fanout(
    server: &Server,
    label: &str,
    server_pids: &[u32],
    connections: usize,
    publishes: usize,
    size: usize,
) -> Fanout {
    let run = (connections, publishes, size);
    fanout_over(Transport::WebSocket, server, label, server_pids, run).await
}

/// [`fanout`] with subscribers reading over `transport`; `run` is (connections,
/// publishes, size).
pub async fn fanout_over(
    transport: Transport,
    server: &Server,
    label: &str,
    server_pids: &[u32],
    run: (usize, usize, usize),
) -> Fanout {
    let extras = Extras::default();
    fanout_with(transport, server, label, server_pids, run, &extras).await
}

/// [`fanout_over`] with `extras`: publish calls in flight at once, Redis commands counted.
pub async fn fanout_with(
    transport: Transport,
    server: &Server,
    label: &str,
    server_pids: &[u32],
    (connections, publishes, size): (usize, usize, usize),
    extras: &Extras,
) -> Fanout {
    let in_flight = extras.in_flight.max(1);
    let room = "bench";
    let clients = clients(server, transport, connections, room).await;
    let (stop_tx, stop) = watch::channel(false);
    let received = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let mut stop = stop.clone();
            let received = received.clone();
            tokio::spawn(async move {
                let mut stats = ClientStats {
                    counts: vec![0; publishes],
                    latencies_us: Vec::with_capacity(publishes),
                    last_us: 0,
                };
                let mut got = 0;
                while got < publishes {
                    let text = tokio::select! {
                        text = client.next_text() => text,
                        _ = stop.changed() => break,
                    };
                    let Some(text) = text else {
                        break;
                    };
                    let now = now_us();
                    let Ok(message) = serde_json::from_slice::<Received>(&text) else {
                        continue;
                    };
                    let (seq, sent) = match (message.data, message.seq, message.sent) {
                        (Some(stamp), _, _) => (stamp.seq, stamp.sent),
                        (None, Some(seq), Some(sent)) => (seq, sent),
                        _ => continue,
                    };
                    if let Some(count) = stats.counts.get_mut(seq) {
                        *count = count.saturating_add(1);
                    }
                    stats
                        .latencies_us
                        .push(u32::try_from(now.saturating_sub(sent)).unwrap_or(u32::MAX));
                    stats.last_us = now;
                    got += 1;
                    received.fetch_add(1, Ordering::Relaxed);
                }
                // Keep the socket open until every client is done, so nobody's leaving
                // changes what the others measure.
                let _ = stop.changed().await;
                drop(client);
                stats
            })
        })
        .collect();

    // The publisher gets a thread and runtime of its own: thousands of busy readers must not
    // delay its calls, or the publish rate would measure the load generator.
    let (go, ready) = tokio::sync::oneshot::channel::<()>();
    let (opened_tx, opened) = tokio::sync::oneshot::channel::<()>();
    let publishing = {
        let server = server.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the publisher");
            runtime.block_on(async move {
                let pad = "x".repeat(size);
                let mut publishers = Vec::with_capacity(in_flight);
                for _ in 0..in_flight {
                    publishers.push(Publisher::open(&server).await);
                }
                let _ = opened_tx.send(());
                let _ = ready.await;
                let started = Instant::now();
                // Each connection takes the next sequence number when its last call answers.
                let next = std::sync::atomic::AtomicUsize::new(0);
                let calls = publishers.iter_mut().map(|publisher| {
                    let (next, pad) = (&next, &pad);
                    async move {
                        loop {
                            let seq = next.fetch_add(1, Ordering::Relaxed);
                            if seq >= publishes {
                                break;
                            }
                            publisher.publish(room, seq, pad).await;
                        }
                    }
                });
                futures::future::join_all(calls).await;
                // The mean time a call took, however many were in flight.
                started.elapsed().as_secs_f64() * 1000.0 * in_flight as f64
                    / publishes.max(1) as f64
            })
        })
    };
    opened.await.expect("the publisher opens");
    let commands_before = extras.redis_url.as_deref().map(redis_commands);
    let (client_cpu, server_cpu) = (procs::cpu_seconds("self"), servers_cpu(server_pids));
    let started_us = now_us();
    let started = Instant::now();
    let _ = go.send(());
    let publish_ms = tokio::task::spawn_blocking(move || publishing.join().expect("the publisher"))
        .await
        .expect("the publisher thread");
    let expected = u64::try_from(connections * publishes).unwrap_or(u64::MAX);
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    // `INFO commandstats` counts itself too: one call, taken off.
    let redis_commands_per_publish =
        extras
            .redis_url
            .as_deref()
            .zip(commands_before)
            .map(|(url, before)| {
                (redis_commands(url).saturating_sub(before + 1)) as f64 / publishes.max(1) as f64
            });
    let client_cpu = procs::cpu_seconds("self") - client_cpu;
    let server_cpu = servers_cpu(server_pids) - server_cpu;
    let _ = stop_tx.send(true);

    let (mut latencies, mut lost, mut duplicated, mut last_us) = (Vec::new(), 0, 0, started_us);
    for reader in readers {
        let stats = reader.await.expect("a client task");
        for &count in &stats.counts {
            match count {
                0 => lost += 1,
                1 => {}
                n => duplicated += u64::from(n - 1),
            }
        }
        latencies.extend(stats.latencies_us);
        last_us = last_us.max(stats.last_us);
    }
    latencies.sort_unstable();
    let seconds = (last_us.saturating_sub(started_us) as f64 / 1e6).max(1e-6);
    let deliveries = latencies.len() as u64;
    Fanout {
        server: label.to_owned(),
        connections,
        publishes,
        size,
        deliveries,
        lost,
        duplicated,
        seconds,
        deliveries_per_sec: deliveries as f64 / seconds,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: percentile(&latencies, 1.0),
        publish_ms,
        client_cpu_pct: 100.0 * client_cpu / wall,
        server_cpu_pct: 100.0 * server_cpu / wall,
        in_flight,
        redis_commands_per_publish,
    }
}

fn servers_cpu(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|p| procs::cpu_seconds(&p.to_string()))
        .sum()
}

/// Memory of one server with `connections` idle clients.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Memory {
    /// `gateway` or `baseline`.
    pub server: String,
    /// Idle connections held.
    pub connections: usize,
    /// Resident memory before any client, KiB.
    pub idle_kib: u64,
    /// Resident memory with the clients, KiB.
    pub loaded_kib: u64,
    /// The difference per connection, bytes.
    pub per_connection_bytes: f64,
}

/// Connects `connections` idle clients (authenticated on the gateway, subscribed to
/// nothing) and reads the server's resident memory before and after.
pub async fn memory(server: &Server, label: &str, pid: u32, connections: usize) -> Memory {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_kib = procs::rss_kib(&pid.to_string());
    let clients = subscribers(server, connections, None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded_kib = procs::rss_kib(&pid.to_string());
    drop(clients);
    Memory {
        server: label.to_owned(),
        connections,
        idle_kib,
        loaded_kib,
        per_connection_bytes: (loaded_kib.saturating_sub(idle_kib) * 1024) as f64
            / connections as f64,
    }
}

/// Connects and disconnects per second, with auth.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Churn {
    /// Connect + disconnect cycles.
    pub cycles: usize,
    /// Cycles in flight at once.
    pub concurrency: usize,
    /// Cycles per second.
    pub per_sec: f64,
}

/// `cycles` connect (with a token: authorizer and `$connect` run) + close cycles.
pub async fn churn(addr: SocketAddr, cycles: usize, concurrency: usize) -> Churn {
    let started = Instant::now();
    let per_worker = cycles / concurrency.max(1);
    let workers = (0..concurrency).map(|w| async move {
        for i in 0..per_worker {
            let url = format!(
                "ws://{addr}/local?token={}",
                token(&format!("churn-{w}-{i}"))
            );
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            ws.close(None).await.expect("close");
            // Wait for the server's close so the cycle is complete.
            while let Some(Ok(_)) = ws.next().await {}
        }
    });
    futures::future::join_all(workers).await;
    let done = per_worker * concurrency;
    Churn {
        cycles: done,
        concurrency,
        per_sec: done as f64 / started.elapsed().as_secs_f64(),
    }
}
