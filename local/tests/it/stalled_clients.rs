//! The HTTP side under clients that stall: request heads that never complete are closed,
//! stalled sockets count toward the connection limits from accept, and shutdown finishes
//! within its drain time whatever clients do (a second signal exits at once).

use crate::common;

use std::time::{Duration, Instant};

use common::{Gateway, PATIENCE, settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A socket that sent `partial` (perhaps nothing) and then stalls.
async fn stalled(gw: &Gateway, partial: &str) -> TcpStream {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(partial.as_bytes()).await.unwrap();
    stream
}

/// How long until the server closes `stream` (reading to its end); what it said.
async fn closed_after(mut stream: TcpStream) -> (Duration, String) {
    let started = Instant::now();
    let mut said = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut said))
        .await
        .expect("the server closes the socket");
    (
        started.elapsed(),
        String::from_utf8_lossy(&said).into_owned(),
    )
}

#[tokio::test]
async fn request_heads_that_never_complete_are_closed() {
    let mut settings = settings();
    settings.http.head_timeout = Duration::from_millis(300);
    let gw = Gateway::start_with(settings).await;
    for partial in ["", "GET /lo", "GET /local HTTP/1.1\r\nhost: x\r\n"] {
        let (waited, _) = closed_after(stalled(&gw, partial).await).await;
        assert!(
            waited < Duration::from_secs(3),
            "{partial:?}: closed after {waited:?}"
        );
    }
    // A complete request in time is served as ever.
    let mut client = gw.connect("ann", &[], &[]).await;
    assert!(!client.whoami().await.is_empty());
}

#[tokio::test]
async fn stalled_sockets_count_toward_the_connection_limits() {
    let mut settings = settings();
    settings.limits.max_total = Some(3);
    settings.http.head_timeout = Duration::from_millis(800);
    let gw = Gateway::start_with(settings).await;
    let _connected = gw.connect("ann", &[], &[]).await;
    let first = stalled(&gw, "GET /lo").await;
    let second = stalled(&gw, "").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One WebSocket and two stalled sockets make three: a fourth is refused at once.
    let (waited, said) = closed_after(stalled(&gw, "").await).await;
    assert!(said.starts_with("HTTP/1.1 429"), "{said}");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    let url = format!("{}?token={}", gw.url(), gw.token("bob", &[], &[]));
    assert_eq!(gw.handshake(&url, None).await.err(), Some(429));
    // Once the stalled ones are timed out, there is room again.
    closed_after(first).await;
    closed_after(second).await;
    assert!(gw.handshake(&url, None).await.is_ok());
}

#[tokio::test]
async fn stalled_sockets_count_per_source_address() {
    let mut settings = settings();
    settings.limits.max_per_ip = Some(2);
    let gw = Gateway::start_with(settings).await;
    let _a = stalled(&gw, "GET /lo").await;
    let _b = stalled(&gw, "GET /lo").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, said) = closed_after(stalled(&gw, "").await).await;
    assert!(said.starts_with("HTTP/1.1 429"), "{said}");
}

#[tokio::test]
async fn shutdown_finishes_within_the_drain_whatever_clients_do() {
    let mut settings = settings();
    settings.http.head_timeout = Duration::from_secs(60);
    settings.http.drain = Duration::from_millis(500);
    let gw = Gateway::start_with(settings).await;
    let mut client = gw.connect("ann", &[], &[]).await;
    let _stalled = stalled(&gw, "GET /lo").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    gw.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.closed().await.0, 1001);
}

/// Starts the binary on a free port with `args`; it and the address it listens on.
async fn binary(args: &[&str]) -> (tokio::process::Child, String) {
    let (child, addr) = common::spawn_binary(args, &[]).await;
    (child, addr.to_string())
}

fn signal(child: &tokio::process::Child) {
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A request whose body stops half way: the server is in the middle of it.
async fn half_sent_body(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /2015-03-31/functions/publish/invocations HTTP/1.1\r\nhost: x\r\n\
              content-length: 1000\r\n\r\n{\"room\":",
        )
        .await
        .unwrap();
    stream
}

#[tokio::test]
async fn sigterm_drains_within_its_bound_despite_a_half_sent_request() {
    let (mut child, addr) = binary(&["--head-timeout-secs", "60", "--drain-secs", "1"]).await;
    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /lo").await.unwrap();
    let _body = half_sent_body(&addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    signal(&child);
    let exit = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("it exits within the drain")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_second_sigterm_exits_at_once() {
    let (mut child, addr) = binary(&["--head-timeout-secs", "60", "--drain-secs", "60"]).await;
    let _body = half_sent_body(&addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&child);
    // The half-sent request holds the drain open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still draining after the first signal"
    );
    let started = Instant::now();
    signal(&child);
    let exit = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("it exits at once on the second signal")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let _ = exit;
}
