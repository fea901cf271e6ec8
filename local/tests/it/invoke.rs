//! Publishing through the Lambda Invoke API with the real `aws-sdk-lambda` client, as
//! another Lambda would call `publish`.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use common::{Client, Gateway, settings, settings_with};
use serde_json::{Value, json};

#[tokio::test]
async fn publish_reaches_rooms_users_connections_and_everyone() {
    let gw = Gateway::start().await;
    let mut a = gw.connect("alice", &["orders"], &[]).await;
    let mut b = gw.connect("bob", &["orders"], &[]).await;
    let mut c = gw.connect("carol", &[], &[]).await;
    a.subscribe("orders").await;
    b.subscribe("orders").await;

    let answer = gw
        .invoke(json!({"room":"orders","data":{"n":1}}))
        .await
        .unwrap();
    assert_eq!(answer["delivered"], 2);
    assert_eq!(
        (answer["gone"].clone(), answer["failed"].clone()),
        (json!(0), json!(0))
    );
    for client in [&mut a, &mut b] {
        let got = client.recv().await;
        assert_eq!(got["room"], "orders");
        assert_eq!(got["id"], answer["id"]);
        assert_eq!(got["data"], json!({"n":1}));
    }
    c.expect_nothing(Duration::from_millis(200)).await;

    let answer = gw
        .invoke(json!({"user":"carol","data":"hi"}))
        .await
        .unwrap();
    assert_eq!(answer["delivered"], 1);
    let got = c.recv().await;
    assert_eq!(
        (got["user"].clone(), got["data"].clone()),
        (json!("carol"), json!("hi"))
    );

    let answer = gw
        .invoke(json!({"connections":[a.id, "AAAAAAAAAAAAAAA="],"data":3}))
        .await
        .unwrap();
    assert_eq!(
        (answer["delivered"].clone(), answer["gone"].clone()),
        (json!(1), json!(1))
    );
    let got = a.recv().await;
    assert!(
        got.get("room").is_none() && got.get("user").is_none(),
        "{got}"
    );

    let answer = gw.invoke(json!({"broadcast":true,"data":4})).await.unwrap();
    assert_eq!(answer["delivered"], 3);
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(client.recv().await["data"], 4);
    }
}

#[tokio::test]
async fn batches_arrive_in_list_order() {
    let gw = Gateway::start().await;
    let mut a = gw.connect("alice", &["orders"], &[]).await;
    a.subscribe("orders").await;
    let answer = gw
        .invoke(json!({"messages":[
            {"room":"orders","data":1},
            {"user":"alice","data":2},
            {"room":"orders","data":3}
        ]}))
        .await
        .unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for expected in 1..=3 {
        assert_eq!(a.recv().await["data"], expected);
    }
}

#[tokio::test]
async fn sqs_events_report_only_bad_records() {
    let gw = Gateway::start().await;
    let mut a = gw.connect("alice", &["orders"], &[]).await;
    a.subscribe("orders").await;
    let record = |id: &str, body: Value| {
        json!({"messageId": id, "body": body.to_string(), "eventSource": "aws:sqs",
               "eventSourceARN": "arn:aws:sqs:local:000000000000:herald", "awsRegion": "local"})
    };
    let event = json!({"Records": [
        record("m1", json!({"room":"orders","data":"one"})),
        record("m2", json!({"room":"orders"})),
        record("m3", json!({"room":"orders","data":"three"})),
    ]});
    let answer = gw.invoke(event).await.unwrap();
    assert_eq!(
        answer,
        json!({"batchItemFailures":[{"itemIdentifier":"m2"}]})
    );
    assert_eq!(a.recv().await["data"], "one");
    assert_eq!(a.recv().await["data"], "three");
}

#[tokio::test]
async fn invalid_publishes_are_function_errors() {
    let gw = Gateway::start().await;
    let error = gw.invoke(json!({"room":"orders"})).await.unwrap_err();
    assert_eq!(error["errorType"], "BadRequest");
    assert!(error["errorMessage"].as_str().unwrap().contains("data"));
    let error = gw
        .invoke(json!({"room":"a","user":"b","data":1}))
        .await
        .unwrap_err();
    assert_eq!(error["errorType"], "BadRequest");
}

#[tokio::test]
async fn unknown_functions_and_unparsable_payloads_are_refused_as_lambda_does() {
    let gw = Gateway::start().await;
    let lambda = gw.lambda();
    let err = lambda
        .invoke()
        .function_name("no-such-function")
        .payload(Blob::new("{}"))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_resource_not_found_exception());
    let err = lambda
        .invoke()
        .function_name("publish")
        .payload(Blob::new("{not json"))
        .send()
        .await
        .unwrap_err();
    assert!(
        err.into_service_error()
            .is_invalid_request_content_exception()
    );
    // A function ARN works as a name.
    let out = lambda
        .invoke()
        .function_name("arn:aws:lambda:us-east-1:000000000000:function:herald-publish")
        .payload(Blob::new(r#"{"broadcast":true,"data":1}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status_code(), 200);
    assert_eq!(out.executed_version(), Some("$LATEST"));
}

#[tokio::test]
async fn payloads_over_lambdas_limit_are_refused_in_lambdas_error_shape() {
    let gw = Gateway::start().await;
    let lambda = gw.lambda();
    // Lambda's synchronous limit is 6 MB: a string just over it, as valid JSON.
    let limit = 6 * 1024 * 1024;
    let payload = format!(r#"{{"broadcast":true,"data":"{}"}}"#, "x".repeat(limit));
    let err = lambda
        .invoke()
        .function_name("publish")
        .payload(Blob::new(payload))
        .send()
        .await
        .unwrap_err();
    let err = err.into_service_error();
    assert!(err.is_request_too_large_exception(), "{err:?}");
    // At the limit exactly it is read (and refused only for what it says).
    let at_limit = "x".repeat(limit);
    let out = lambda
        .invoke()
        .function_name("publish")
        .payload(Blob::new(at_limit))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(out.is_invalid_request_content_exception(), "{out:?}");
}

#[tokio::test]
async fn event_invocations_are_accepted_and_delivered() {
    let gw = Gateway::start().await;
    let mut a = gw.connect("alice", &["orders"], &[]).await;
    a.subscribe("orders").await;
    let out = gw
        .lambda()
        .invoke()
        .function_name("publish")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(r#"{"room":"orders","data":"later"}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status_code(), 202);
    assert_eq!(a.recv().await["data"], "later");
}

/// 200 clients in one room, 20 publishes: every client gets all 20, once each, in order.
async fn many_clients_receive_everything_in_order(gw: &Gateway) {
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..200 {
        let mut c = gw.connect(&format!("user{i}"), &["stress"], &[]).await;
        c.subscribe("stress").await;
        clients.push(c);
    }
    for n in 0..20 {
        let answer = gw.invoke(json!({"room":"stress","data":n})).await.unwrap();
        assert_eq!(answer["delivered"], 200, "publish {n}: {answer}");
    }
    for c in &mut clients {
        let mut ids = HashSet::new();
        for n in 0..20 {
            let got = c.recv().await;
            assert_eq!(got["data"], n, "client {} out of order", c.id);
            assert!(
                ids.insert(got["id"].as_str().unwrap().to_owned()),
                "duplicate"
            );
        }
        c.expect_nothing(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn two_hundred_clients_twenty_messages_in_process() {
    let gw = Gateway::start().await;
    many_clients_receive_everything_in_order(&gw).await;
}

#[tokio::test]
async fn two_hundred_clients_twenty_messages_through_the_http_push_path() {
    let mut s = settings();
    s.push_via_http = true;
    s.config.limits.max_connections_per_user = None;
    let gw = Gateway::start_with(s).await;
    many_clients_receive_everything_in_order(&gw).await;
}

/// The memory store, slow to list a user's connections.
struct SlowUsers(herald::store::MemoryStore);

#[async_trait::async_trait]
impl herald::store::ForwardingStore for SlowUsers {
    fn inner(&self) -> &dyn herald::store::ConnectionStore {
        &self.0
    }

    async fn user_connections(
        &self,
        user: &str,
    ) -> Result<Vec<herald::ids::ConnectionId>, herald::store::StoreError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        herald::store::Connections::user_connections(&self.0, user).await
    }
}

/// The memory store, counting how often a room's members are listed.
struct CountingRooms {
    inner: herald::store::MemoryStore,
    listed: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl herald::store::ForwardingStore for CountingRooms {
    fn inner(&self) -> &dyn herald::store::ConnectionStore {
        &self.inner
    }

    async fn room_members(
        &self,
        room: &herald::protocol::RoomName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<herald::store::Page<herald::ids::ConnectionId>, herald::store::StoreError> {
        self.listed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        herald::store::Connections::room_members(&self.inner, room, cursor, limit).await
    }
}

#[tokio::test]
async fn a_room_publish_reaches_every_member_without_listing_the_room() {
    let store = std::sync::Arc::new(CountingRooms {
        inner: herald::store::MemoryStore::new(),
        listed: std::sync::atomic::AtomicUsize::new(0),
    });
    let mut settings = settings();
    settings.store = Some(store.clone());
    let gw = Gateway::start_with(settings).await;
    let mut clients = gw.members(50, "big").await;
    for n in 0..3 {
        let answer = gw.invoke(json!({"room":"big","data":n})).await.unwrap();
        assert_eq!(answer["delivered"], 50);
    }
    for client in &mut clients {
        for n in 0..3 {
            assert_eq!(client.recv().await["data"], n, "each once, in order");
        }
    }
    // A member that leaves gets nothing after, and is not counted.
    let reply = clients[0]
        .ask(json!({"action":"unsubscribe","room":"big"}))
        .await;
    assert_eq!(reply["type"], "unsubscribed", "{reply}");
    let answer = gw
        .invoke(json!({"room":"big","data":"after"}))
        .await
        .unwrap();
    assert_eq!(answer["delivered"], 49);
    assert_eq!(clients[1].recv().await["data"], "after");
    clients[0].expect_nothing(Duration::from_millis(200)).await;
    assert_eq!(
        store.listed.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "one instance delivers a room from its ring"
    );
}

/// Reads `client` as fast as it can until the notification `"last"`; how many arrived
/// (that one included), or the close code if the gateway closed it first.
async fn drain(mut client: Client) -> Result<u64, u16> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut received = 0;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), client.ws.next())
            .await
            .expect("notifications keep coming");
        match message {
            Some(Ok(Message::Text(text))) => {
                received += 1;
                let value: Value = serde_json::from_str(&text).unwrap();
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

#[tokio::test]
async fn an_asynchronous_flood_is_queued_paced_and_bounded() {
    use futures::StreamExt;
    // A short queue, and a store that takes 20 ms to list a user's connections, so that
    // the flood certainly outruns what the worker can run. (A room's members here are not
    // listed: its publish is one append to the room's ring.)
    let mut settings = settings();
    settings.async_queue = 8;
    settings.store = Some(std::sync::Arc::new(SlowUsers(
        herald::store::MemoryStore::new(),
    )));
    let gw = Gateway::start_with(settings).await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(gw.connect("reader", &[], &[]).await);
    }
    // The readers run on a thread of their own, as clients elsewhere would, so that the
    // invocations sent from this one never starve them.
    let readers = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(futures::future::join_all(clients.into_iter().map(drain)))
    });
    let lambda = gw.lambda();
    let pad = "x".repeat(1024);
    let invoke = |data: Value| {
        let payload = json!({"user": "reader", "data": data}).to_string();
        lambda
            .invoke()
            .function_name("publish")
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload))
            .send()
    };
    // 2,000 invocations, 32 in flight at a time.
    let answers: Vec<_> = futures::stream::iter(0..2_000)
        .map(|n| invoke(json!({"n": n, "pad": pad})))
        .buffer_unordered(32)
        .collect()
        .await;
    let (mut accepted, mut throttled) = (0u64, 0u64);
    for answer in answers {
        match answer {
            Ok(out) => {
                assert_eq!(out.status_code(), 202);
                accepted += 1;
            }
            Err(e) => {
                let e = e.into_service_error();
                assert!(e.is_too_many_requests_exception(), "{e:?}");
                throttled += 1;
            }
        }
    }
    assert_eq!(accepted + throttled, 2_000);
    assert!(throttled > 0, "a full queue answers 429 instead of growing");
    assert!(accepted >= 8, "what fits is taken");
    // The last one queues behind every accepted one (retrying while the queue is full).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while invoke(json!("last")).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the queue drains");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = tokio::task::spawn_blocking(move || readers.join().unwrap())
        .await
        .unwrap();
    for received in received {
        assert_eq!(
            received,
            Ok(accepted + 1),
            "a reader that keeps up gets every accepted publish and is never closed"
        );
    }
}

#[tokio::test]
async fn an_optional_room_limit_refuses_publishes_past_it_without_using_their_key() {
    let gw = Gateway::start_with(settings_with(&[
        ("HERALD_ROOM_PUBLISH_PER_SECOND", "2"),
        ("HERALD_ROOM_PUBLISH_BURST", "4"),
    ]))
    .await;
    let mut reader = gw.connect("reader", &["news"], &[]).await;
    reader.subscribe("news").await;
    // Begin in the first half of a two-second window (4 at 2 a second), so all fall in one.
    let into = herald::ids::now_ms().rem_euclid(2_000);
    if into > 1_000 {
        let rest = u64::try_from(2_000 - into + 20).unwrap();
        tokio::time::sleep(Duration::from_millis(rest)).await;
    }
    let mut delivered = 0;
    let mut first_id = Value::Null;
    for n in 0..4 {
        let answer = gw
            .invoke(json!({"room":"news","data":n,"id":format!("k-{n}")}))
            .await
            .unwrap();
        delivered += answer["delivered"].as_u64().unwrap();
        if n == 0 {
            first_id = answer["id"].clone();
        }
    }
    assert_eq!(delivered, 4, "the burst is published");
    // A repeat of a published key is answered with its first id, never "not published".
    let repeat = gw
        .invoke(json!({"room":"news","data":0,"id":"k-0"}))
        .await
        .unwrap();
    assert_eq!(
        (repeat["id"].clone(), repeat["delivered"].clone()),
        (first_id, json!(0))
    );
    let refused = gw
        .invoke(json!({"room":"news","data":"fifth","id":"k-5"}))
        .await
        .unwrap_err();
    assert_eq!(refused["errorType"], "RateLimited", "{refused}");
    // Other rooms and other targets have limits of their own, or none.
    let other = gw.invoke(json!({"room":"sports","data":1})).await.unwrap();
    assert_eq!(other["delivered"], 0);
    let user = gw
        .invoke(json!({"user":"reader","data":"u"}))
        .await
        .unwrap();
    assert_eq!(user["delivered"], 1);
    for n in 0..4 {
        assert_eq!(reader.recv().await["data"], n);
    }
    assert_eq!(reader.recv().await["data"], "u");
    // In the next window the refused publish goes through: its key was not used up.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let again = gw
        .invoke(json!({"room":"news","data":"fifth","id":"k-5"}))
        .await
        .unwrap();
    assert_eq!(again["delivered"], 1, "{again}");
    assert_eq!(reader.recv().await["data"], "fifth");
}

#[tokio::test]
async fn without_a_room_limit_the_invoke_api_is_not_rate_limited() {
    let gw = Gateway::start().await;
    for n in 0..100 {
        let answer = gw.invoke(json!({"room":"news","data":n})).await;
        assert!(answer.is_ok(), "publish {n}: {answer:?}");
    }
}
