//! The `stream` handler on recorded Function URL events, with response streaming.

use super::*;

const STREAM: &str = include_str!("../../../fixtures/stream-function-url.json");

/// The recorded Function URL request with `query` as its parameters, alice's token unless
/// `token` is `None`, and `Last-Event-ID` when given.
fn stream_event(
    query: &[(&str, &str)],
    token: Option<&str>,
    last_event_id: Option<&str>,
) -> herald::events::lambda_function_urls::LambdaFunctionUrlRequest {
    let mut event = with_query(fixture(STREAM), query, token);
    if let Some(id) = last_event_id {
        event["headers"]["last-event-id"] = json!(id);
    }
    serde_json::from_value(event).expect("a Function URL event")
}

/// One server-sent event.
#[derive(Debug)]
struct Sse {
    kind: String,
    id: String,
    data: Value,
}

/// The events in a chunk (comment lines and a lone `retry:` carry none).
fn sse_events(chunk: &[u8]) -> Vec<Sse> {
    let text = std::str::from_utf8(chunk).expect("an event stream is UTF-8");
    text.split_terminator("\n\n")
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .map(str::to_owned)
            };
            Some(Sse {
                kind: field("event")?,
                id: field("id").expect("every event has an id"),
                data: serde_json::from_str(&field("data")?).expect("data is JSON"),
            })
        })
        .collect()
}

async fn open_stream(
    w: &World,
    query: &[(&str, &str)],
    token: Option<&str>,
    last_event_id: Option<&str>,
    remaining: Duration,
) -> handlers::Streamed {
    let event = stream_event(query, token, last_event_id);
    handlers::stream(w.services.clone(), &fixture_verifier(), &event, remaining).await
}

async fn next_chunk(streamed: &mut handlers::Streamed) -> Option<Vec<u8>> {
    use futures::StreamExt as _;
    let chunk = streamed.body.next().await?;
    Some(chunk.expect("chunks cannot fail").to_vec())
}

#[tokio::test(start_paused = true)]
async fn stream_fixture_streams_what_follows_and_resumes_after_last_event_id() {
    let w = world();
    let token = alice_token();
    let minute = Duration::from_secs(60);
    let mut stream = open_stream(&w, &[("rooms", "orders")], Some(&token), None, minute).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    let opening = next_chunk(&mut stream).await.unwrap();
    assert_eq!(opening, b"retry: 1000\n\n", "from now: nothing to replay");
    for n in 1..=3 {
        w.publish(json!({"room":"orders","data":n})).await.unwrap();
    }
    w.publish(json!({"user":"alice","data":"mine"}))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let events = sse_events(&next_chunk(&mut stream).await.unwrap());
    assert!(
        started.elapsed() <= handlers::POLL_INTERVAL,
        "read every second"
    );
    let data: Vec<Value> = events.iter().map(|e| e.data["data"].clone()).collect();
    assert_eq!(data, [json!(1), json!(2), json!(3), json!("mine")]);
    assert!(events.iter().all(|e| e.kind == "notification"));
    assert_eq!(events[0].data["offset"], 1);

    // The browser reconnects with the id of the second event: the rest comes first.
    let mut again = open_stream(
        &w,
        &[("rooms", "orders")],
        Some(&token),
        Some(&events[1].id),
        minute,
    )
    .await;
    let replayed = sse_events(&next_chunk(&mut again).await.unwrap());
    let data: Vec<Value> = replayed.iter().map(|e| e.data["data"].clone()).collect();
    assert_eq!(data, [json!(3), json!("mine")], "after the cursor, once");
    assert_eq!(replayed[1].id, events[3].id, "the same cursor either way");
}

#[tokio::test(start_paused = true)]
async fn a_stream_keeps_alive_and_ends_before_the_timeout_with_retry() {
    let w = world();
    let token = alice_token();
    let remaining = Duration::from_secs(60);
    let started = tokio::time::Instant::now();
    let mut stream = open_stream(&w, &[("rooms", "orders")], Some(&token), None, remaining).await;
    let mut chunks = Vec::new();
    while let Some(chunk) = next_chunk(&mut stream).await {
        chunks.push((
            started.elapsed().as_secs(),
            String::from_utf8(chunk).unwrap(),
        ));
    }
    let end = (remaining - handlers::STREAM_END_MARGIN).as_secs();
    let expected = [
        (0, "retry: 1000\n\n"),
        (25, ": keep-alive\n\n"),
        (50, ": keep-alive\n\n"),
        (end, "retry: 1000\n\n"),
    ];
    let chunks: Vec<(u64, &str)> = chunks.iter().map(|(t, c)| (*t, c.as_str())).collect();
    assert_eq!(chunks, expected);
}

#[tokio::test]
async fn stream_refusals_say_why() {
    let w = world();
    let token = alice_token();
    let forever = Duration::from_secs(900);
    let refused = |q: &'static [(&'static str, &'static str)], t: Option<String>, id| {
        let w = &w;
        async move {
            let mut s = open_stream(w, q, t.as_deref(), id, forever).await;
            assert_eq!(s.headers["content-type"], "application/json");
            let body: Value = serde_json::from_slice(&next_chunk(&mut s).await.unwrap()).unwrap();
            assert!(next_chunk(&mut s).await.is_none(), "one chunk");
            (s.status.as_u16(), body)
        }
    };
    assert_eq!(refused(&[("rooms", "orders")], None, None).await.0, 401);
    let bad_token = Some("not-a-token".to_owned());
    assert_eq!(
        refused(&[("rooms", "orders")], bad_token, None).await.0,
        401
    );
    let (status, body) = refused(&[("rooms", "orders,payroll")], Some(token.clone()), None).await;
    assert_eq!((status, body["room"].clone()), (403, json!("payroll")));
    let bad_id = Some("!!");
    assert_eq!(
        refused(&[("rooms", "orders")], Some(token.clone()), bad_id)
            .await
            .0,
        400
    );
    assert_eq!(refused(&[("rooms", "a b")], Some(token), None).await.0, 400);
}

#[tokio::test]
async fn a_stream_without_history_is_refused_rather_than_silent() {
    let w = world_with(&[("HERALD_HISTORY_TTL_SECS", "0")]);
    let token = alice_token();
    let forever = Duration::from_secs(900);
    let mut s = open_stream(&w, &[("rooms", "orders")], Some(&token), None, forever).await;
    assert_eq!(s.status, 503);
    let body: Value = serde_json::from_slice(&next_chunk(&mut s).await.unwrap()).unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("history"),
        "{body}"
    );
}

#[tokio::test]
async fn a_stream_at_a_cursor_history_no_longer_covers_opens_with_a_reset() {
    let (w, token, cursor) = a_cursor_history_outran().await;
    let forever = Duration::from_secs(900);
    let query = [("rooms", "orders"), ("cursor", cursor.as_str())];
    let mut s = open_stream(&w, &query, Some(&token), None, forever).await;
    let events = sse_events(&next_chunk(&mut s).await.unwrap());
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, "reset");
    assert_eq!(events[0].data["cursor"], events[0].id.as_str());
}

#[tokio::test(start_paused = true)]
async fn an_open_stream_is_a_member_of_its_rooms_until_it_ends() {
    let w = world();
    let token = alice_token();
    let remaining = Duration::from_secs(30);
    let mut stream = open_stream(&w, &[("rooms", "orders")], Some(&token), None, remaining).await;
    assert_eq!(stream.status, 200);
    alice_reads_orders_unposted(&w).await;
    while next_chunk(&mut stream).await.is_some() {}
    let after = w.publish(json!({"presence": "orders"})).await.unwrap();
    assert_eq!(after["count"], 0, "the stream left when it ended: {after}");
}
