//! Long polling on `herald-local` with plain HTTP requests: an answer at once when anything
//! follows the cursor, at the next notification, or after `wait`; resets; bounds; and one
//! notification reaching a WebSocket, an SSE stream and a poll alike.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Gateway, PATIENCE, settings_with};
use herald::testing::Server;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET path` on a connection of its own; the status and the JSON body.
async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = common::http_get(addr, path).await;
    // The body may come chunked: take the JSON object inside.
    let json = body
        .find('{')
        .map(|start| &body[start..=body.rfind('}').unwrap()])
        .map(|j| serde_json::from_str(j).unwrap())
        .unwrap_or(Value::Null);
    (status, json)
}

fn poll_path(gw: &Gateway, rooms: &str, cursor: Option<&str>, wait: u64) -> String {
    let token = gw.token("alice", &["orders"], &[]);
    let cursor = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
    format!("/local/poll?rooms={rooms}&wait={wait}&token={token}{cursor}")
}

fn offsets(answer: &Value) -> Vec<u64> {
    answer["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["offset"].as_u64().unwrap())
        .collect()
}

async fn answers_at_once_at_the_next_or_after_wait(redis: Option<&Server>) {
    let url = redis.map(Server::url).unwrap_or_default();
    let vars: Vec<(&str, &str)> = match redis {
        Some(_) => vec![("HERALD_STORE", "redis"), ("HERALD_REDIS_URL", &url)],
        None => vec![],
    };
    let gw = Gateway::start_with(settings_with(&vars)).await;

    // Nothing comes: the answer comes after `wait`, empty, with a cursor at "now".
    let started = Instant::now();
    let (status, empty) = get(gw.addr, &poll_path(&gw, "orders", None, 1)).await;
    assert_eq!(status, 200, "{empty}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(empty["notifications"], json!([]));
    assert_eq!(empty["reset"], false);
    let now = empty["cursor"].as_str().unwrap().to_owned();

    // Kept notifications after the cursor: at once, in order.
    for n in 1..=3 {
        gw.invoke(json!({"room":"orders","data":n})).await.unwrap();
    }
    let started = Instant::now();
    let (_, missed) = get(gw.addr, &poll_path(&gw, "orders", Some(&now), 25)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(offsets(&missed), [1, 2, 3]);
    let after = missed["cursor"].as_str().unwrap().to_owned();
    let (_, none) = get(gw.addr, &poll_path(&gw, "orders", Some(&after), 0)).await;
    assert_eq!(none["notifications"], json!([]), "nothing twice");

    // Waiting: the answer follows the next publish at once.
    let addr = gw.addr;
    let path = poll_path(&gw, "orders", Some(&after), 25);
    let waiting = tokio::spawn(async move {
        let answer = get(addr, &path).await;
        (answer, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.invoke(json!({"room":"orders","data":"next"}))
        .await
        .unwrap();
    let published = Instant::now();
    let ((_, next), answered) = waiting.await.unwrap();
    assert_eq!(offsets(&next), [4]);
    assert!(
        answered.saturating_duration_since(published) < Duration::from_millis(100),
        "answered {:?} after the publish",
        answered.saturating_duration_since(published)
    );
}

#[tokio::test]
async fn polls_on_memory() {
    answers_at_once_at_the_next_or_after_wait(None).await;
}

#[tokio::test]
async fn polls_on_redis() {
    let redis = Server::redis();
    answers_at_once_at_the_next_or_after_wait(Some(&redis)).await;
}

#[tokio::test]
async fn a_cursor_history_no_longer_covers_is_reset_and_bad_input_is_400() {
    let gw = Gateway::start_with(settings_with(&[("HERALD_HISTORY_SIZE", "2")])).await;
    let (_, start) = get(gw.addr, &poll_path(&gw, "orders", None, 0)).await;
    let cursor = start["cursor"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        gw.invoke(json!({"room":"orders","data":n})).await.unwrap();
    }
    let (status, reset) = get(gw.addr, &poll_path(&gw, "orders", Some(&cursor), 25)).await;
    assert_eq!(status, 200);
    assert_eq!(reset["reset"], true, "{reset}");
    assert_eq!(reset["notifications"], json!([]));
    let (_, after_reset) = get(
        gw.addr,
        &poll_path(&gw, "orders", reset["cursor"].as_str(), 0),
    )
    .await;
    assert_eq!(after_reset["reset"], false, "the reset's cursor is current");

    let (status, _) = get(gw.addr, &poll_path(&gw, "orders", None, 26)).await;
    assert_eq!(status, 400, "wait is at most 25");
    let (status, answer) = get(gw.addr, &poll_path(&gw, "payroll", None, 0)).await;
    assert_eq!((status, answer["room"].clone()), (403, json!("payroll")));
    let (status, _) = get(gw.addr, "/local/poll?rooms=orders").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_websocket_an_sse_stream_and_a_poll_see_the_same_notifications() {
    let gw = Gateway::start().await;
    let mut ws = gw.connect("bob", &["orders"], &[]).await;
    ws.subscribe("orders").await;
    let (_, start) = get(gw.addr, &poll_path(&gw, "orders", None, 0)).await;
    let cursor = start["cursor"].as_str().unwrap().to_owned();
    let token = gw.token("carol", &["orders"], &[]);
    let mut sse = TcpStream::connect(gw.addr).await.unwrap();
    let request =
        format!("GET /local/events?rooms=orders&token={token} HTTP/1.1\r\nHost: x\r\n\r\n");
    sse.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    for n in 1..=2 {
        gw.invoke(json!({"room":"orders","data":n})).await.unwrap();
    }
    let by_ws = vec![ws.recv().await, ws.recv().await];
    let (_, polled) = get(gw.addr, &poll_path(&gw, "orders", Some(&cursor), 0)).await;
    assert_eq!(polled["notifications"], json!(by_ws));
    let mut streamed = String::new();
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0u8; 4096];
    while streamed.matches("event: notification").count() < 2 {
        assert!(Instant::now() < deadline, "{streamed}");
        let n = tokio::time::timeout(PATIENCE, sse.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        streamed.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let by_sse: Vec<Value> = streamed
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(by_sse, by_ws, "the same JSON, the same offsets");
}
