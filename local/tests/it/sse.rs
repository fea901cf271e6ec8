//! Server-Sent Events on `herald-local`, read by a streaming HTTP client written here on a
//! plain TCP socket (HTTP/1.1, chunked): delivery with the WebSocket's JSON and offsets,
//! the token and room checks, resuming by `Last-Event-ID` with nothing lost or twice,
//! `reset` when history no longer covers the cursor, on the memory store and on Redis.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Gateway, PATIENCE, settings_with};
use herald::testing::Server;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One event of the stream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    pub kind: String,
    pub id: String,
    pub data: Value,
}

/// An open event stream.
pub(crate) struct Sse {
    body: BufReader<TcpStream>,
    /// Decoded body text not yet split into events.
    text: String,
}

/// The answer to a request for a stream: the status, and the stream when it is 200.
pub(crate) async fn open(
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<Sse>, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "GET /local/events?{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n"
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut body = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        tokio::time::timeout(PATIENCE, body.read_line(&mut line))
            .await
            .expect("a response head in time")
            .unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    if status != 200 {
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        let mut rest = vec![0; length];
        body.read_exact(&mut rest).await.unwrap();
        let rest = String::from_utf8_lossy(&rest);
        return (status, None, format!("{head}\n{rest}"));
    }
    assert!(
        head.to_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    (
        status,
        Some(Sse {
            body,
            text: String::new(),
        }),
        head,
    )
}

impl Sse {
    /// The next chunk of the chunked body, decoded.
    async fn chunk(&mut self) -> Option<String> {
        let mut size = String::new();
        self.body.read_line(&mut size).await.ok()?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return None;
        }
        let mut data = vec![0; size + 2];
        self.body.read_exact(&mut data).await.ok()?;
        data.truncate(size);
        Some(String::from_utf8(data).unwrap())
    }

    /// The next event (comments and `retry:` skipped); panics after [`PATIENCE`].
    pub(crate) async fn next(&mut self) -> Event {
        tokio::time::timeout(PATIENCE, self.next_event())
            .await
            .expect("an event in time")
            .expect("the stream is open")
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let (mut kind, mut id, mut data) = (None, None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        kind = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                if let (Some(kind), Some(id), Some(data)) = (kind, id, data) {
                    return Some(Event { kind, id, data });
                }
                continue;
            }
            let chunk = self.chunk().await?;
            self.text.push_str(&chunk);
        }
    }

    /// Asserts no event arrives for `wait`.
    async fn expect_nothing(&mut self, wait: Duration) {
        if let Ok(Some(event)) = tokio::time::timeout(wait, self.next_event()).await {
            panic!("expected nothing, got {event:?}");
        }
    }
}

async fn gateway(redis: Option<&Server>, vars: &[(&str, &str)]) -> Gateway {
    let url = redis.map(Server::url).unwrap_or_default();
    let mut all: Vec<(&str, &str)> = match redis {
        Some(_) => vec![("HERALD_STORE", "redis"), ("HERALD_REDIS_URL", &url)],
        None => vec![],
    };
    all.extend_from_slice(vars);
    Gateway::start_with(settings_with(&all)).await
}

fn query(gw: &Gateway, user: &str, rooms: &str) -> String {
    format!(
        "rooms={rooms}&token={}",
        gw.token(user, &["orders", "team:*"], &[])
    )
}

async fn delivers_what_a_websocket_gets_and_resumes(redis: Option<&Server>) {
    let gw = gateway(redis, &[]).await;
    let mut ws = gw.connect("bob", &["orders"], &[]).await;
    ws.subscribe("orders").await;
    let (status, sse, head) = open(gw.addr, &query(&gw, "alice", "orders"), &[]).await;
    assert_eq!(status, 200, "{head}");
    let mut sse = sse.unwrap();
    for n in 1..=2 {
        gw.invoke(json!({"room":"orders","data":n})).await.unwrap();
    }
    let first = sse.next().await;
    let second = sse.next().await;
    assert_eq!(
        (first.kind.as_str(), second.kind.as_str()),
        ("notification", "notification")
    );
    assert_eq!(
        first.data,
        ws.recv().await,
        "the WebSocket's JSON, offsets and all"
    );
    assert_eq!(second.data, ws.recv().await);
    assert_eq!(second.data["offset"], 2);
    // The user's own inbox comes too.
    gw.invoke(json!({"user":"alice","data":"yours"}))
        .await
        .unwrap();
    let inbox = sse.next().await;
    assert_eq!(inbox.data["user"], "alice");
    drop(sse);

    for n in 3..=5 {
        gw.invoke(json!({"room":"orders","data":n})).await.unwrap();
    }
    let (_, sse, _) = open(
        gw.addr,
        &query(&gw, "alice", "orders"),
        &[("Last-Event-ID", &inbox.id)],
    )
    .await;
    let mut sse = sse.unwrap();
    let mut offsets = Vec::new();
    for _ in 3..=5 {
        offsets.push(sse.next().await.data["offset"].clone());
    }
    assert_eq!(
        offsets,
        [json!(3), json!(4), json!(5)],
        "exactly the missed, in order"
    );
    gw.invoke(json!({"room":"orders","data":"live"}))
        .await
        .unwrap();
    let live = sse.next().await;
    assert_eq!(
        (live.data["offset"].clone(), live.data["data"].clone()),
        (json!(6), json!("live"))
    );
    sse.expect_nothing(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn delivers_and_resumes_on_memory() {
    delivers_what_a_websocket_gets_and_resumes(None).await;
}

#[tokio::test]
async fn delivers_and_resumes_on_redis() {
    let redis = Server::redis();
    delivers_what_a_websocket_gets_and_resumes(Some(&redis)).await;
}

#[tokio::test]
async fn a_cursor_history_no_longer_covers_gets_a_reset() {
    let gw = gateway(None, &[("HERALD_HISTORY_SIZE", "2")]).await;
    let (_, sse, _) = open(gw.addr, &query(&gw, "alice", "orders"), &[]).await;
    let mut sse = sse.unwrap();
    gw.invoke(json!({"room":"orders","data":1})).await.unwrap();
    let seen = sse.next().await;
    drop(sse);
    for n in 2..=5 {
        gw.invoke(json!({"room":"orders","data":n})).await.unwrap();
    }
    let (_, sse, _) = open(
        gw.addr,
        &format!("{}&cursor={}", query(&gw, "alice", "orders"), seen.id),
        &[],
    )
    .await;
    let mut sse = sse.unwrap();
    let reset = sse.next().await;
    assert_eq!(reset.kind, "reset");
    assert_eq!(reset.data["cursor"], json!(reset.id));
    sse.expect_nothing(Duration::from_millis(300)).await;
    gw.invoke(json!({"room":"orders","data":6})).await.unwrap();
    assert_eq!(
        sse.next().await.data["offset"],
        6,
        "live from the reset's cursor"
    );
}

#[tokio::test]
async fn the_token_and_the_rooms_are_checked() {
    let gw = gateway(None, &[]).await;
    let (status, _, _) = open(gw.addr, "rooms=orders", &[]).await;
    assert_eq!(status, 401, "no token");
    let token = gw.token("alice", &["orders"], &[]);
    let (status, _, answer) =
        open(gw.addr, &format!("rooms=orders,payroll&token={token}"), &[]).await;
    assert_eq!(status, 403);
    assert!(answer.contains(r#""room":"payroll""#), "{answer}");
    let (status, _, _) = open(gw.addr, &format!("rooms=a%20b&token={token}"), &[]).await;
    assert_eq!(status, 400, "not a room name");
    let (status, _, _) = open(
        gw.addr,
        &format!("rooms=orders&cursor=!!&token={token}"),
        &[],
    )
    .await;
    assert_eq!(status, 400, "not a cursor");
    // A bearer header works as the query does.
    let bearer = format!("Bearer {token}");
    let (status, _, _) = open(gw.addr, "rooms=orders", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sse_clients_count_toward_the_connection_limits() {
    let gw = gateway(None, &[("HERALD_MAX_CONNECTIONS_PER_USER", "1")]).await;
    let (status, first, _) = open(gw.addr, &query(&gw, "alice", "orders"), &[]).await;
    assert_eq!(status, 200);
    let (status, _, _) = open(gw.addr, &query(&gw, "alice", "orders"), &[]).await;
    assert_eq!(status, 429, "the user's one connection is the stream");
    drop(first);
    // Once the stream is gone, `$disconnect` has run and the user may connect again.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, _, _) = open(gw.addr, &query(&gw, "alice", "orders"), &[]).await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_stream_resumes_on_another_instance() {
    let redis = Server::redis();
    let first = gateway(Some(&redis), &[]).await;
    let second = gateway(Some(&redis), &[]).await;
    let (_, sse, _) = open(first.addr, &query(&first, "alice", "orders"), &[]).await;
    let mut sse = sse.unwrap();
    first
        .invoke(json!({"room":"orders","data":1}))
        .await
        .unwrap();
    let seen = sse.next().await;
    drop(sse);
    for n in 2..=3 {
        second
            .invoke(json!({"room":"orders","data":n}))
            .await
            .unwrap();
    }
    let (_, sse, _) = open(
        second.addr,
        &query(&second, "alice", "orders"),
        &[("Last-Event-ID", &seen.id)],
    )
    .await;
    let mut sse = sse.unwrap();
    assert_eq!(sse.next().await.data["offset"], 2);
    assert_eq!(sse.next().await.data["offset"], 3);
    // Live, published through the other instance.
    first
        .invoke(json!({"room":"orders","data":4}))
        .await
        .unwrap();
    assert_eq!(sse.next().await.data["offset"], 4);
}

/// The gateway's live sockets, as the demo's stats count them.
async fn live_sockets(gw: &Gateway) -> u64 {
    let request = format!(
        "GET /_herald/stats HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        gw.addr
    );
    let answer = common::raw_http(gw.addr, &request).await;
    let body = answer.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str::<Value>(body).unwrap()["connections"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_stream_counts_once_toward_the_connection_limit() {
    let mut s = settings_with(&[]);
    s.limits.max_total = Some(4);
    let gw = Gateway::start_with(s).await;
    let token = gw.token("ann", &["*"], &[]);
    let mut streams = Vec::new();
    for n in 0..4 {
        let (status, stream, head) = open(gw.addr, &format!("rooms=r{n}&token={token}"), &[]).await;
        assert_eq!(status, 200, "stream {n} of a limit of 4: {head}");
        streams.push(stream);
    }
    let (status, _, _) = open(gw.addr, &format!("rooms=r9&token={token}"), &[]).await;
    assert_eq!(status, 429, "the fifth is over the limit");
}

#[tokio::test]
async fn a_stream_whose_client_stopped_reading_is_torn_down_and_released() {
    let mut s = settings_with(&[]);
    s.limits.outbound_queue.frames = 4;
    let gw = Gateway::start_with(s).await;
    let token = gw.token("ann", &["big"], &[]);
    // A client with a small receive buffer that reads its head and then nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /local/events?rooms=big&token={token} HTTP/1.1\r\nHost: {}\r\n\r\n",
        gw.addr
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0; 64];
    let n = stalled.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    assert_eq!(live_sockets(&gw).await, 1);
    // Large notifications until the stream's queue overflows: a slow consumer.
    let data = "x".repeat(64 * 1024);
    let mut gone = 0;
    for _ in 0..400 {
        let answer = gw
            .invoke(json!({"room": "big", "data": data}))
            .await
            .unwrap();
        gone += answer["gone"].as_u64().unwrap();
        if gone > 0 {
            break;
        }
    }
    assert_eq!(gone, 1, "the stalled stream was dropped as a slow consumer");
    // Its connection is dropped under it, and its socket released.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while live_sockets(&gw).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream still holds its socket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The peer sees the connection end once it reads what was already on the wire.
    let mut sink = vec![0; 1 << 16];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was closed");
}
