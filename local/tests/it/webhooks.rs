//! Webhooks from `herald-local`, received by a real HTTP receiver that verifies each one
//! with the Standard Webhooks library (Python's `standardwebhooks`, `herald::testing::WebhookReceiver`):
//! `connection.opened` and `connection.closed`, each seen once by `webhook-id` after its
//! first attempt fails; `room.occupied` and `room.vacated` once per transition with two
//! instances on Redis, members joining and leaving at once on both, and for a poll reader;
//! a receiver that never answers does not delay a `$connect`; bad settings refuse the start.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Gateway, PATIENCE, SharedRedis, settings_with};
use herald::testing::{Deliveries, WebhookReceiver, file_delivery};
use serde_json::{Value, json};

/// A `whsec_` secret of 32 bytes.
fn secret() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([42u8; 32])
    )
}

#[tokio::test]
async fn connections_opened_and_closed_arrive_signed_and_once_after_a_failed_attempt() {
    let secret = secret();
    let mut deliveries = WebhookReceiver::start(&secret);
    let port = deliveries.port;
    let url = format!("http://127.0.0.1:{port}/hooks");
    let gw = Gateway::start_with(settings_with(&[
        ("HERALD_WEBHOOK_URL", &url),
        ("HERALD_WEBHOOK_SECRET", &secret),
    ]))
    .await;
    let mut client = gw.connect("ann", &["news"], &[]).await;
    let id = client.id.clone();
    client.ws.close(None).await.unwrap();

    // Each event: a first attempt answered 500, then one more, answered 204.
    let mut by_id: Deliveries = BTreeMap::new();
    while by_id.len() < 2 || by_id.values().any(|d| d.len() < 2) {
        let line = tokio::time::timeout(PATIENCE, deliveries.next_line())
            .await
            .expect("the deliveries in time (a retry waits a second)")
            .unwrap()
            .unwrap();
        file_delivery(&mut by_id, &line, |_| true);
    }
    let mut kinds = Vec::new();
    for attempts in by_id.values() {
        let statuses: Vec<&Value> = attempts.iter().map(|a| &a["status"]).collect();
        assert_eq!(statuses, [500, 204]);
        assert_eq!(attempts[0]["body"], attempts[1]["body"], "the same event");
        let body = &attempts[1]["body"];
        assert_eq!(body["data"]["connectionId"], id.as_str(), "{body}");
        assert_eq!(body["data"]["user"], "ann", "{body}");
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
        kinds.push(body["type"].as_str().unwrap().to_owned());
    }
    kinds.sort();
    assert_eq!(kinds, ["connection.closed", "connection.opened"]);
    // Nothing more: a delivered event is not sent again.
    let more = tokio::time::timeout(Duration::from_millis(2500), deliveries.next_line()).await;
    assert!(more.is_err(), "nothing after the deliveries: {more:?}");
    gw.stop().await;
}

/// Files a delivery the receiver printed under its `webhook-id` when it is a room event,
/// after checking it verified.
fn keep_room_event(by_id: &mut Deliveries, line: &str) {
    file_delivery(by_id, line, |d| {
        d["body"]["type"]
            .as_str()
            .is_some_and(|k| k.starts_with("room."))
    });
}

#[tokio::test]
async fn rooms_are_occupied_and_vacated_once_per_transition_across_two_instances() {
    let redis = SharedRedis::single();
    let secret = secret();
    let mut deliveries = WebhookReceiver::start(&secret);
    let port = deliveries.port;
    let url = format!("http://127.0.0.1:{port}/hooks");
    let redis_vars = redis.vars();
    let mut vars: Vec<(&str, &str)> = redis_vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend([
        ("HERALD_WEBHOOK_URL", url.as_str()),
        ("HERALD_WEBHOOK_SECRET", secret.as_str()),
    ]);
    let a = Gateway::start_with(settings_with(&vars)).await;
    let b = Gateway::start_with(settings_with(&vars)).await;

    // One member on each instance, one after the other.
    let mut ann = a.connect("ann", &["orders"], &[]).await;
    let mut bob = b.connect("bob", &["orders"], &[]).await;
    ann.subscribe("orders").await;
    bob.subscribe("orders").await;
    let left = ann
        .ask(json!({"action":"unsubscribe","room":"orders"}))
        .await;
    assert_eq!(left["type"], "unsubscribed", "{left}");
    let bob_id = bob.id.clone();
    bob.ws.close(None).await.unwrap();

    // Twenty members, ten on each instance, joining at once and leaving at once.
    let mut crowd = Vec::new();
    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        crowd.push(gw.connect(&format!("c{i}"), &["crowd"], &[]).await);
    }
    let joins = crowd.iter_mut().map(|c| c.subscribe("crowd"));
    futures::future::join_all(joins).await;
    let leaves = crowd
        .iter_mut()
        .map(|c| c.ask(json!({"action":"unsubscribe","room":"crowd"})));
    for left in futures::future::join_all(leaves).await {
        assert_eq!(left["type"], "unsubscribed", "{left}");
    }

    // Each room event: a first attempt answered 500, a second 204; then nothing more.
    let mut by_id: Deliveries = BTreeMap::new();
    let delivered = |by_id: &Deliveries| by_id.values().filter(|d| d.len() >= 2).count();
    while delivered(&by_id) < 4 {
        let line = tokio::time::timeout(PATIENCE, deliveries.next_line())
            .await
            .expect("the room events in time")
            .unwrap()
            .unwrap();
        keep_room_event(&mut by_id, &line);
    }
    let settle = tokio::time::Instant::now() + Duration::from_millis(2500);
    while let Ok(line) = tokio::time::timeout_at(settle, deliveries.next_line()).await {
        keep_room_event(&mut by_id, &line.unwrap().unwrap());
    }
    let mut events: Vec<(String, String, Value, Value)> = by_id
        .values()
        .map(|attempts| {
            let data = &attempts[0]["body"]["data"];
            (
                attempts[0]["body"]["type"].as_str().unwrap().to_owned(),
                data["room"].as_str().unwrap().to_owned(),
                data["user"].clone(),
                data.get("reason").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    events.sort_by(|x, y| (&x.1, &x.0).cmp(&(&y.1, &y.0)));
    assert_eq!(by_id.len(), 4, "one event per transition: {events:?}");
    let (crowd_occupied, crowd_vacated) = (&events[0], &events[1]);
    assert_eq!(
        (crowd_occupied.0.as_str(), crowd_vacated.0.as_str()),
        ("room.occupied", "room.vacated"),
        "{events:?}"
    );
    assert_eq!(crowd_vacated.3, "unsubscribed");
    assert_eq!(
        events[2..],
        [
            (
                "room.occupied".to_owned(),
                "orders".to_owned(),
                json!("ann"),
                Value::Null
            ),
            (
                "room.vacated".to_owned(),
                "orders".to_owned(),
                json!("bob"),
                json!("disconnected")
            ),
        ]
    );
    let vacated_by = by_id
        .values()
        .find(|d| d[0]["body"]["data"]["user"] == "bob")
        .map(|d| d[0]["body"]["data"]["connectionId"].clone());
    assert_eq!(vacated_by, Some(json!(bob_id)));
    for attempts in by_id.values() {
        let statuses: Vec<&Value> = attempts.iter().map(|a| &a["status"]).collect();
        assert_eq!(statuses, [500, 204], "each once after its failed attempt");
    }
    drop(crowd);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_poll_reader_occupies_its_rooms_while_it_waits() {
    let secret = secret();
    let mut deliveries = WebhookReceiver::start(&secret);
    let port = deliveries.port;
    let url = format!("http://127.0.0.1:{port}/hooks");
    let gw = Gateway::start_with(settings_with(&[
        ("HERALD_WEBHOOK_URL", &url),
        ("HERALD_WEBHOOK_SECRET", &secret),
    ]))
    .await;
    let token = gw.token("dee", &["feed"], &[]);
    let (status, body) = common::http_get(
        gw.addr,
        &format!("/local/poll?rooms=feed&wait=1&token={token}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let mut by_id: Deliveries = BTreeMap::new();
    while by_id.values().filter(|d| d.len() >= 2).count() < 2 {
        let line = tokio::time::timeout(PATIENCE, deliveries.next_line())
            .await
            .expect("the room events in time")
            .unwrap()
            .unwrap();
        keep_room_event(&mut by_id, &line);
    }
    let mut events: Vec<(String, Value, Value)> = by_id
        .values()
        .map(|attempts| {
            let body = &attempts[0]["body"];
            (
                body["type"].as_str().unwrap().to_owned(),
                body["data"]["room"].clone(),
                body["data"]["user"].clone(),
            )
        })
        .collect();
    events.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        events,
        [
            ("room.occupied".to_owned(), json!("feed"), json!("dee")),
            ("room.vacated".to_owned(), json!("feed"), json!("dee")),
        ]
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_delay_a_connect() {
    // Accepts connections and reads nothing: every attempt waits for its timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let secret = secret();
    let gw = Gateway::start_with(settings_with(&[
        ("HERALD_WEBHOOK_URL", &url),
        ("HERALD_WEBHOOK_SECRET", &secret),
    ]))
    .await;
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(gw.connect(&format!("u{i}"), &["news"], &[]).await);
    }
    // Twenty handshakes, each of which queued a webhook the receiver holds for 10 s.
    assert!(
        started.elapsed() < herald::sinks::webhook::ATTEMPT_TIMEOUT / 2,
        "{:?}",
        started.elapsed()
    );
    drop(clients);
    held.abort();
}

#[tokio::test]
async fn webhook_settings_are_checked_at_start() {
    let cases = [
        (
            vec![("HERALD_WEBHOOK_URL", "http://127.0.0.1:9/hooks".to_owned())],
            "HERALD_WEBHOOK_SECRET",
        ),
        (
            vec![
                ("HERALD_WEBHOOK_URL", "ftp://example.com".to_owned()),
                ("HERALD_WEBHOOK_SECRET", secret()),
            ],
            "not an http:// or https:// URL",
        ),
        (
            vec![
                ("HERALD_WEBHOOK_URL", "http://127.0.0.1:9/hooks".to_owned()),
                ("HERALD_WEBHOOK_SECRET", "s3cret".to_owned()),
            ],
            "whsec_",
        ),
        (
            vec![
                ("HERALD_WEBHOOK_URL", "http://127.0.0.1:9/hooks".to_owned()),
                ("HERALD_WEBHOOK_SECRET", secret()),
                (
                    "HERALD_WEBHOOK_EVENTS",
                    "connection.opened,room.full".to_owned(),
                ),
            ],
            "unknown event \"room.full\"",
        ),
        (
            vec![
                ("HERALD_WEBHOOK_URL", "http://127.0.0.1:9/hooks".to_owned()),
                (
                    "HERALD_WEBHOOK_SECRET_ARN",
                    "arn:aws:secretsmanager:us-east-1:123456789012:secret:w".to_owned(),
                ),
            ],
            "HERALD_WEBHOOK_SECRET_ARN: it is for the Lambda functions",
        ),
        (
            vec![(
                "HERALD_WEBHOOK_QUEUE_URL",
                "http://127.0.0.1:9/000000000000/webhooks".to_owned(),
            )],
            "HERALD_WEBHOOK_QUEUE_URL: it is for the Lambda functions",
        ),
    ];
    for (vars, expected) in cases {
        let mut command = common::binary();
        command.args(["--port", "0"]).env_clear().envs(vars.clone());
        let said = common::refused_start(command).await;
        assert!(said.contains(expected), "{vars:?}: {said}");
    }
}
