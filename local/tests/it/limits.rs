//! API Gateway's limits and the connection lifecycle: close codes 1009 and 1003, idle
//! timeout, maximum duration, `$disconnect` exactly once however a connection ends, the
//! slow-consumer policy, and graceful shutdown.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_apigatewaymanagement::primitives::Blob;
use common::{CountingStore, Gateway, settings};
use futures::SinkExt;
use herald_local::{SLOW_CONSUMER_CODE, Settings};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Settings on a counting store, so tests can see every `$disconnect`.
fn counted() -> (Settings, Arc<CountingStore>) {
    let store = CountingStore::new();
    let mut s = settings();
    s.store = Some(store.clone());
    (s, store)
}

/// Waits until `id` was removed once, then makes sure it stays at once.
async fn disconnected_once(store: &CountingStore, id: &str) {
    for _ in 0..200 {
        if store.removals(id) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(store.removals(id), 1, "$disconnect for {id} ran once");
}

#[tokio::test]
async fn a_single_frame_over_32_kib_closes_with_1009() {
    let (s, store) = counted();
    let gw = Gateway::start_with(s).await;
    let mut c = gw.connect("alice", &[], &[]).await;
    c.send_text(&"x".repeat(33 * 1024)).await;
    assert_eq!(c.closed().await.0, 1009);
    disconnected_once(&store, &c.id).await;
}

#[tokio::test]
async fn a_message_over_128_kib_closes_with_1009_even_in_small_frames() {
    let gw = Gateway::start().await;
    let mut c = gw.connect("alice", &[], &[]).await;
    c.send_fragmented(&"x".repeat(129 * 1024), 16 * 1024).await;
    assert_eq!(c.closed().await.0, 1009);
}

#[tokio::test]
async fn a_binary_frame_closes_with_1003() {
    let (s, store) = counted();
    let gw = Gateway::start_with(s).await;
    let mut c = gw.connect("alice", &[], &[]).await;
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(c.closed().await.0, 1003);
    disconnected_once(&store, &c.id).await;
}

/// A frame as the client builds it, sent raw (masked, as a client's must be).
fn raw_frame(payload: &[u8], opcode: u8, rsv1: bool) -> Message {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;
    let mut frame = Frame::message(payload.to_vec(), OpCode::from(opcode), true);
    frame.header_mut().rsv1 = rsv1;
    Message::Frame(frame)
}

#[tokio::test]
async fn text_that_is_not_utf8_closes_with_1007() {
    let (s, store) = counted();
    let gw = Gateway::start_with(s).await;
    let mut c = gw.connect("alice", &[], &[]).await;
    c.ws.send(raw_frame(&[b'{', 0xff, 0xfe, b'}'], 0x1, false))
        .await
        .unwrap();
    assert_eq!(c.closed().await.0, 1007);
    disconnected_once(&store, &c.id).await;
}

#[tokio::test]
async fn protocol_violations_close_with_1002() {
    let (s, store) = counted();
    let gw = Gateway::start_with(s).await;
    // Reserved bits without an extension that defines them; a reserved opcode.
    for frame in [raw_frame(b"{}", 0x1, true), raw_frame(b"{}", 0x3, false)] {
        let mut c = gw.connect("alice", &[], &[]).await;
        c.ws.send(frame).await.unwrap();
        let (code, reason) = c.closed().await;
        assert_eq!(code, 1002, "{reason}");
        disconnected_once(&store, &c.id).await;
    }
}

#[tokio::test]
async fn idle_connections_are_closed_and_active_ones_kept() {
    let (mut s, store) = counted();
    s.limits.idle_timeout = Duration::from_millis(400);
    let gw = Gateway::start_with(s).await;
    let mut idle = gw.connect("idle", &[], &[]).await;
    let mut busy = gw.connect("busy", &[], &[]).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(busy.ask(json!({"action":"ping"})).await["type"], "pong");
    }
    let (code, reason) = idle.closed().await;
    assert_eq!(code, 1001);
    assert!(reason.contains("idle"), "{reason}");
    disconnected_once(&store, &idle.id).await;
    assert_eq!(
        store.removals(&busy.id),
        0,
        "the active client is still connected"
    );
}

#[tokio::test]
async fn connections_end_at_the_maximum_duration() {
    let mut s = settings();
    s.limits.max_duration = Duration::from_millis(300);
    let gw = Gateway::start_with(s).await;
    let mut c = gw.connect("alice", &[], &[]).await;
    let (code, reason) = c.closed().await;
    assert_eq!(code, 1001);
    assert!(reason.contains("duration"), "{reason}");
}

#[tokio::test]
async fn disconnect_runs_once_however_the_connection_ends() {
    let (s, store) = counted();
    let gw = Gateway::start_with(s).await;
    let api = gw.management();

    // The client closes.
    let mut by_client = gw.connect("a", &[], &[]).await;
    by_client.ws.close(None).await.unwrap();
    disconnected_once(&store, &by_client.id).await;

    // The client vanishes without a close frame.
    let vanished = gw.connect("b", &[], &[]).await;
    let vanished_id = vanished.id.clone();
    drop(vanished);
    disconnected_once(&store, &vanished_id).await;

    // DELETE through @connections, twice.
    let mut deleted = gw.connect("c", &[], &[]).await;
    api.delete_connection()
        .connection_id(&deleted.id)
        .send()
        .await
        .unwrap();
    let _ = api
        .delete_connection()
        .connection_id(&deleted.id)
        .send()
        .await;
    assert_eq!(deleted.closed().await.0, 1000);
    disconnected_once(&store, &deleted.id).await;
}

#[tokio::test]
async fn a_slow_consumer_is_closed_without_slowing_the_others() {
    let (mut s, store) = counted();
    s.limits.outbound_queue.frames = 4;
    let gw = Gateway::start_with(s).await;
    let api = gw.management();
    // The slow client never reads.
    let slow = gw.connect("slow", &[], &[]).await;
    let mut fast = gw.connect("fast", &[], &[]).await;
    let chunk = format!("\"{}\"", "x".repeat(120 * 1024));
    let mut refused = false;
    for _ in 0..2_000 {
        let result = api
            .post_to_connection()
            .connection_id(&slow.id)
            .data(Blob::new(chunk.clone()))
            .send()
            .await;
        if let Err(e) = result {
            assert!(e.into_service_error().is_gone_exception());
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "the slow consumer's queue overflowed and it was closed"
    );
    // Meanwhile the others are served promptly.
    api.post_to_connection()
        .connection_id(&fast.id)
        .data(Blob::new("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(fast.recv().await, json!(1));
    disconnected_once(&store, &slow.id).await;
    assert_eq!(SLOW_CONSUMER_CODE, 1008);
}

#[tokio::test]
async fn shutdown_closes_every_client_and_runs_each_disconnect() {
    let (s, store) = counted();
    let gw = Gateway::start_with(s).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(gw.connect(&format!("u{i}"), &[], &[]).await);
    }
    let addr = gw.addr;
    gw.stop().await;
    for c in &mut clients {
        assert_eq!(c.closed().await.0, 1001);
        assert_eq!(
            store.removals(&c.id),
            1,
            "disconnect ran before the gateway stopped"
        );
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port is closed after shutdown"
    );
}

#[tokio::test]
async fn websocket_pings_are_answered() {
    let gw = Gateway::start().await;
    let mut c = gw.connect("alice", &[], &[]).await;
    c.ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let answer = tokio::time::timeout(common::PATIENCE, futures::StreamExt::next(&mut c.ws))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(answer, Message::Pong(b"are you there".to_vec().into()));
}

#[tokio::test]
async fn a_close_from_the_client_is_echoed_once_after_what_was_queued() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let gw = Gateway::start().await;
    let mut c = gw.connect("alice", &[], &[]).await;
    c.send(json!({"action":"whoami"})).await;
    c.ws.close(Some(CloseFrame {
        code: 4000.into(),
        reason: "done here".into(),
    }))
    .await
    .unwrap();
    // The reply to the request, then the echo of the close, then the end of the stream.
    assert_eq!(c.recv().await["type"], "whoami");
    assert_eq!(c.closed().await, (4000, "done here".to_owned()));
    let after = tokio::time::timeout(common::PATIENCE, c.ws.next())
        .await
        .expect("the socket ended");
    assert!(
        !matches!(after, Some(Ok(_))),
        "nothing after the close: {after:?}"
    );
}

#[tokio::test]
async fn a_close_during_a_long_write_comes_after_every_queued_message_whole() {
    use futures::StreamExt;
    // A queue that holds all ten megabytes (a default one holds 512 KiB, and the posts
    // beyond it would wait for the client to read).
    let mut s = settings();
    s.limits.outbound_queue.bytes = 16 << 20;
    let gw = Gateway::start_with(s).await;
    let api = gw.management();
    let mut c = gw.connect("alice", &[], &[]).await;
    // Ten megabytes queued while the client does not read: more than the socket buffers
    // hold (up to 4 MiB to send here), so the writer is part-way through a frame when
    // the close comes.
    const MESSAGES: usize = 80;
    let big = |i: usize| format!("{i}{}", "x".repeat(120 * 1024));
    for i in 0..MESSAGES {
        api.post_to_connection()
            .connection_id(&c.id)
            .data(Blob::new(json!(big(i)).to_string()))
            .send()
            .await
            .unwrap();
    }
    api.delete_connection()
        .connection_id(&c.id)
        .send()
        .await
        .unwrap();
    // Read as they come, unparsed: the gateway gives a client a second to take the rest.
    for i in 0..MESSAGES {
        let received = tokio::time::timeout(common::PATIENCE, c.ws.next())
            .await
            .expect("a message in time");
        let sent = json!(big(i)).to_string();
        let whole = matches!(&received, Some(Ok(Message::Text(text))) if *text == sent);
        assert!(whole, "message {i} whole and in order");
    }
    assert_eq!(c.closed().await.0, 1000);
}

#[tokio::test]
async fn frames_over_the_rate_are_refused_and_the_socket_stays_open() {
    let gw = Gateway::start().await;
    let mut c = gw.connect("alice", &[], &[]).await;
    // 150 pings at once: the burst of 100 passes (less the `whoami` connecting sent), the
    // rest is over the rate.
    for _ in 0..150 {
        c.ws.feed(Message::text(r#"{"action":"ping"}"#))
            .await
            .unwrap();
    }
    c.ws.flush().await.unwrap();
    let (mut pongs, mut limited) = (0, 0);
    loop {
        let reply = tokio::time::timeout(Duration::from_millis(700), c.recv()).await;
        let Ok(reply) = reply else { break };
        match reply["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if reply["code"] == "rate_limited" => limited += 1,
            _ => panic!("unexpected {reply}"),
        }
    }
    // The burst less the `whoami` that connecting sent, plus what refilled meanwhile.
    assert!((99..150).contains(&pongs), "{pongs} pongs");
    assert!(
        (1..=2).contains(&limited),
        "one refusal answered per second (two if a second turned), not one per frame: {limited}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(c.ask(json!({"action":"ping"})).await["type"], "pong");
}

/// A gateway whose clients may send `per_second` frames in bursts of `burst`, closed after
/// `abuse_period` far over it.
async fn rated(per_second: u32, burst: u32, abuse_period: Duration) -> Gateway {
    let mut s = settings();
    s.limits.frame_rate = Some(herald_local::FrameRate {
        per_second,
        burst,
        abuse_period,
    });
    Gateway::start_with(s).await
}

#[tokio::test]
async fn sending_far_over_the_rate_for_the_abuse_period_closes_with_1008() {
    let gw = rated(2, 2, Duration::from_secs(1)).await;
    let mut c = gw.connect("alice", &[], &[]).await;
    // 100 frames a second, fifty times the rate, for up to three seconds.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        if c.ws
            .send(Message::text(r#"{"action":"ping"}"#))
            .await
            .is_err()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, reason) = c.closed().await;
    assert_eq!((code, reason.as_str()), (1008, "rate limit"));
}

#[tokio::test]
async fn empty_continuation_frames_count_toward_the_rate_and_a_flood_of_them_closes_with_1008() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let gw = rated(2, 2, Duration::from_secs(1)).await;
    let mut c = gw.connect("alice", &[], &[]).await;
    // A message begun and never finished: empty fragments, 100 a second, fifty times the
    // rate, for up to three seconds. None of them is a whole message the reader sees.
    let begin = Frame::message(b"{".to_vec(), OpCode::Data(Data::Text), false);
    c.ws.send(Message::Frame(begin)).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        let empty = Frame::message(Vec::new(), OpCode::Data(Data::Continue), false);
        if c.ws.send(Message::Frame(empty)).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, reason) = c.closed().await;
    assert_eq!((code, reason.as_str()), (1008, "rate limit"));
}

#[tokio::test]
async fn fragments_spend_the_rate_as_they_arrive() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let gw = rated(1, 20, Duration::from_secs(60)).await;
    let mut c = gw.connect("alice", &[], &[]).await;
    // A ping in 32 fragments: its 31 continuation frames spend the burst of 20 (less the
    // `whoami` connecting sent) long before it ends, so the message is over the rate.
    let ping = br#"{"action":"ping","pad":"0123456789abcdef"}"#;
    let last = ping.len() - 1;
    for (i, part) in ping[..last].chunks(1).take(32).enumerate() {
        let data = if i == 0 { Data::Text } else { Data::Continue };
        let frame = Frame::message(part.to_vec(), OpCode::Data(data), false);
        c.ws.feed(Message::Frame(frame)).await.unwrap();
    }
    let rest = ping[..last].len().min(32);
    let end = Frame::message(ping[rest..].to_vec(), OpCode::Data(Data::Continue), true);
    c.ws.feed(Message::Frame(end)).await.unwrap();
    c.ws.flush().await.unwrap();
    assert_eq!(c.recv().await["code"], "rate_limited");
}

#[tokio::test]
async fn without_a_frame_rate_nothing_is_refused() {
    let mut s = settings();
    s.limits.frame_rate = None;
    let gw = Gateway::start_with(s).await;
    let mut c = gw.connect("alice", &[], &[]).await;
    for _ in 0..300 {
        c.ws.feed(Message::text(r#"{"action":"ping"}"#))
            .await
            .unwrap();
    }
    c.ws.flush().await.unwrap();
    for n in 0..300 {
        assert_eq!(c.recv().await["type"], "pong", "reply {n}");
    }
}
