//! `herald-bench cost`: what each operation asks of DynamoDB, counted on the wire, and
//! what that costs at on-demand prices.
//!
//! A `herald-local` on DynamoDB (a plain `moto_server` started here) pushes through its own
//! `@connections` over HTTP (`HERALD_PUSH_VIA_HTTP`), so it lists a room's members from the
//! table as the `publish` function does on AWS. Between it and `moto_server` sits a counting
//! proxy that reads each request's `X-Amz-Target` and, for writes, how many items it
//! writes. The clients connect, subscribe, are published to, unsubscribe and leave, one
//! phase at a time; each phase's requests divided by its operations are the table.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::load::token;
use crate::procs;
use crate::publisher::{INVOKE_PATH, exchange, http_connection};
use crate::server::Ws;

/// DynamoDB on-demand, us-east-1 (price list of 2026-12-06, as `infra/COST.md`): dollars per
/// million write request units.
const PER_MILLION_WRU: f64 = 0.625;
/// Dollars per million read request units.
const PER_MILLION_RRU: f64 = 0.125;
/// How long the table must be quiet before a phase counts as done.
const SETTLE: Duration = Duration::from_millis(500);

/// Requests and write units, per DynamoDB operation.
#[derive(Clone, Debug, Default, PartialEq)]
struct Tally(BTreeMap<String, (u64, u64)>);

impl Tally {
    fn minus(&self, before: &Tally) -> Tally {
        let mut left = self.0.clone();
        for (op, (requests, units)) in &before.0 {
            if let Some(now) = left.get_mut(op) {
                now.0 -= requests;
                now.1 -= units;
            }
        }
        left.retain(|_, (requests, _)| *requests > 0);
        Tally(left)
    }
}

/// Write units a request of `op` with `body` costs, items under 1 KB: one per item, two
/// per item of a transaction (a `ConditionCheck` too); reads cost none here.
fn write_units(op: &str, body: &str) -> u64 {
    let count = |needle: &str| body.matches(needle).count() as u64;
    match op {
        "PutItem" | "UpdateItem" | "DeleteItem" => 1,
        "BatchWriteItem" => count("\"PutRequest\"") + count("\"DeleteRequest\""),
        "TransactWriteItems" => {
            2 * (count("{\"Put\"")
                + count("{\"Delete\"")
                + count("{\"Update\"")
                + count("{\"ConditionCheck\""))
        }
        _ => 0,
    }
}

/// A proxy in front of `upstream` that tallies every request it passes on.
async fn counting_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Tally>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let addr = listener.local_addr().expect("bound");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let kept = tally.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let tally = kept.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let mut requests = BufReader::new(client_read);
                loop {
                    let mut head = String::new();
                    let (mut length, mut op) = (0usize, String::new());
                    loop {
                        let mut line = String::new();
                        match requests.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            match name.trim().to_ascii_lowercase().as_str() {
                                "content-length" => length = value.trim().parse().unwrap_or(0),
                                // `DynamoDB_20120810.PutItem`: the operation's name.
                                "x-amz-target" => {
                                    op = value.trim().rsplit('.').next().unwrap_or("").to_owned();
                                }
                                _ => {}
                            }
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if requests.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if !op.is_empty() {
                        let units = write_units(&op, &String::from_utf8_lossy(&body));
                        let mut tally = tally.lock().expect("the tally");
                        let entry = tally.0.entry(op).or_default();
                        entry.0 += 1;
                        entry.1 += units;
                    }
                    if server_write.write_all(head.as_bytes()).await.is_err()
                        || server_write.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, tally)
}

/// Waits until the tally has not moved for [`SETTLE`], and answers it.
async fn settled(tally: &Mutex<Tally>) -> Tally {
    let mut last = tally.lock().expect("the tally").clone();
    loop {
        tokio::time::sleep(SETTLE).await;
        let now = tally.lock().expect("the tally").clone();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Sends `request` and reads the one reply.
async fn ask(ws: &mut Ws, request: serde_json::Value) -> serde_json::Value {
    ws.send(Message::text(request.to_string()))
        .await
        .expect("sent");
    let reply = ws.next().await.expect("a reply").expect("a frame");
    serde_json::from_str(reply.to_text().unwrap_or("")).expect("JSON")
}

/// One row: an operation done `times` times, and what it asked of the table.
fn row(name: &str, times: usize, tally: &Tally) -> serde_json::Value {
    let times = times.max(1) as f64;
    let (mut reads, mut units) = (0u64, 0u64);
    let mut requests = Vec::new();
    for (op, (n, wru)) in &tally.0 {
        requests.push(format!("{op} {:.2}", *n as f64 / times));
        if *wru == 0 {
            reads += n;
        }
        units += wru;
    }
    let (reads, units) = (reads as f64 / times, units as f64 / times);
    // Reads of items under 4 KB: one unit each, strongly consistent at worst.
    let dollars = units * PER_MILLION_WRU + reads * PER_MILLION_RRU;
    println!(
        "{name:<34} {units:>6.2} WRU {reads:>6.2} reads  ${dollars:>7.3} per million   {}",
        requests.join(", ")
    );
    json!({"operation": name, "write_units": units, "read_requests": reads,
           "dollars_per_million": dollars, "requests": tally.0})
}

/// A `whsec_` key for the room webhooks' runs (nothing receives them).
const ROOM_EVENTS_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Runs every operation with `clients` clients in one room, and prints the table; with
/// `room_events`, the room webhooks are on, so the store counts rooms' members.
pub async fn run(clients: usize, room_events: bool) -> serde_json::Value {
    let moto = herald::testing::Server::plain_moto();
    let upstream: SocketAddr = moto
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("moto's address");
    let (proxy, tally) = counting_proxy(upstream).await;
    let endpoint = format!("http://{proxy}");
    // The default limits, as deployed: the per-user limit costs `$connect` a query.
    let mut env = vec![
        ("HERALD_STORE", "dynamodb"),
        ("HERALD_TABLE", "herald-cost"),
        ("AWS_ENDPOINT_URL_DYNAMODB", endpoint.as_str()),
        ("HERALD_PUSH_VIA_HTTP", "true"),
    ];
    if room_events {
        // A refused port: each event is retried in the background and never touches the
        // table.
        let refused = "http://127.0.0.1:9/hooks";
        env.extend([
            ("HERALD_WEBHOOK_URL", refused),
            ("HERALD_WEBHOOK_SECRET", ROOM_EVENTS_SECRET),
            ("HERALD_WEBHOOK_EVENTS", "room.occupied,room.vacated"),
        ]);
    }
    let gateway = procs::gateway_with(&[], &env).await;
    let start = settled(&tally).await;

    let mut sockets = Vec::with_capacity(clients);
    for i in 0..clients {
        let url = format!(
            "ws://{}/local?token={}",
            gateway.addr,
            token(&format!("cost-{i}"))
        );
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        sockets.push(ws);
    }
    let connected = settled(&tally).await;
    for ws in &mut sockets {
        let reply = ask(ws, json!({"action": "subscribe", "room": "costed"})).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }
    let subscribed = settled(&tally).await;
    let mut http = http_connection(gateway.addr).await;
    let body = json!({"room": "costed", "data": {"n": 1}}).to_string();
    let answer = exchange(&mut http, INVOKE_PATH, &body).await.expect("sent");
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let published = settled(&tally).await;
    for ws in &mut sockets {
        // The notification first, then the reply.
        let _ = ws.next().await;
        let reply = ask(ws, json!({"action": "unsubscribe", "room": "costed"})).await;
        assert_eq!(reply["type"], "unsubscribed", "{reply}");
    }
    let unsubscribed = settled(&tally).await;
    for ws in &mut sockets {
        let _ = ws.close(None).await;
    }
    let closed = settled(&tally).await;

    println!(
        "DynamoDB per operation, {clients} clients in one room (moto_server, counted on the wire):"
    );
    let rows = vec![
        row("$connect", clients, &connected.minus(&start)),
        row("subscribe", clients, &subscribed.minus(&connected)),
        row(
            &format!("publish to {clients} members, history on"),
            1,
            &published.minus(&subscribed),
        ),
        row("unsubscribe", clients, &unsubscribed.minus(&published)),
        row(
            "$disconnect (after unsubscribing)",
            clients,
            &closed.minus(&unsubscribed),
        ),
    ];
    json!({"clients": clients, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_units_count_items_and_double_a_transactions() {
        assert_eq!(write_units("PutItem", "{}"), 1);
        assert_eq!(write_units("GetItem", "{}"), 0);
        let batch = r#"{"RequestItems":{"t":[{"PutRequest":{}},{"DeleteRequest":{}}]}}"#;
        assert_eq!(write_units("BatchWriteItem", batch), 2);
        let transaction = r#"{"TransactItems":[{"ConditionCheck":{}},{"Put":{}},{"Put":{}}]}"#;
        assert_eq!(write_units("TransactWriteItems", transaction), 6);
    }
}
