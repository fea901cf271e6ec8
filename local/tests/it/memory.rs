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
