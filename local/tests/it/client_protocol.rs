//! The client protocol over a real socket: every action, its permission checks, and bad
//! input of every kind answered with an `error` frame on a connection that stays usable.

use crate::common;

use std::time::Duration;

use common::Gateway;
use serde_json::json;

#[tokio::test]
async fn ping_whoami_subscribe_unsubscribe() {
    let gw = Gateway::start().await;
    let mut c = gw.connect("alice", &["orders", "team:*"], &[]).await;
    assert_eq!(
        c.ask(json!({"action":"ping","ref":1})).await,
        json!({"type":"pong","ref":1})
    );
    assert_eq!(
        c.ask(json!({"action":"whoami"})).await,
        json!({"type":"whoami","connectionId": c.id, "user":"alice"})
    );
    let team = c
        .ask(json!({"action":"subscribe","room":"team:a","ref":"s"}))
        .await;
    assert_eq!(
        team,
        json!({"type":"subscribed","room":"team:a","ref":"s","offset":0,"epoch":team["epoch"]})
    );
    let orders = c
        .ask(json!({"action":"subscribe","room":"orders","since":{"offset":5,"epoch":"old"}}))
        .await;
    assert_eq!(
        orders,
        json!({"type":"subscribed","room":"orders","recovered":false,"offset":0,"epoch":orders["epoch"]})
    );
    assert_eq!(
        c.ask(json!({"action":"subscribe","room":"payroll"})).await["code"],
        "forbidden"
    );
    assert_eq!(
        c.ask(json!({"action":"unsubscribe","room":"team:a"})).await,
        json!({"type":"unsubscribed","room":"team:a"})
    );
    // After unsubscribing, room publishes no longer arrive.
    let answer = gw.invoke(json!({"room":"team:a","data":1})).await.unwrap();
    assert_eq!(answer["delivered"], 0);
    c.expect_nothing(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn socket_publish_needs_the_publish_claim() {
    let gw = Gateway::start().await;
    let mut publisher = gw.connect("pub", &[], &["chat:*"]).await;
    let mut member = gw.connect("member", &["chat:*"], &[]).await;
    let mut outsider = gw.connect("outsider", &["*"], &[]).await;
    member.subscribe("chat:1").await;

    let reply = publisher
        .ask(json!({"action":"publish","room":"chat:1","data":{"text":"hi"},"ref":"p1"}))
        .await;
    assert_eq!(reply["type"], "published", "{reply}");
    assert_eq!(reply["ref"], "p1");
    let got = member.recv().await;
    assert_eq!(got["type"], "notification");
    assert_eq!(got["room"], "chat:1");
    assert_eq!(got["data"], json!({"text":"hi"}));
    assert_eq!(got["id"], reply["id"]);
    assert!(got["ts"].as_i64().unwrap() > 0);

    let refused = member
        .ask(json!({"action":"publish","room":"chat:1","data":1}))
        .await;
    assert_eq!(refused["code"], "forbidden");
    let refused = publisher
        .ask(json!({"action":"publish","room":"orders","data":1}))
        .await;
    assert_eq!(refused["code"], "forbidden");
    outsider.expect_nothing(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn bad_input_gets_an_error_frame_and_the_socket_stays_usable() {
    let gw = Gateway::start().await;
    let mut c = gw.connect("alice", &["orders"], &["orders"]).await;
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "bad_request"),
        ("".into(), "bad_request"),
        ("[]".into(), "bad_request"),
        ("42".into(), "bad_request"),
        ("{}".into(), "bad_request"),
        (r#"{"action":"dance"}"#.into(), "unknown_action"),
        (r#"{"action":7}"#.into(), "bad_request"),
        (r#"{"action":"subscribe"}"#.into(), "bad_request"),
        (
            r#"{"action":"subscribe","room":"has space"}"#.into(),
            "bad_request",
        ),
        (
            r#"{"action":"subscribe","room":"x","extra":true}"#.into(),
            "bad_request",
        ),
        (
            r#"{"action":"publish","room":"orders"}"#.into(),
            "bad_request",
        ),
        (r#"{"action":"ping","ref":[1]}"#.into(), "bad_request"),
    ];
    for (text, code) in cases {
        c.send_text(&text).await;
        let reply = c.recv().await;
        assert_eq!(reply["type"], "error", "{text:.60}");
        assert_eq!(reply["code"], code, "{text:.60}: {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A message under 128 KiB whose notification would exceed API Gateway's post limit,
    // sent in frames of 32 KiB as the limits require.
    let envelope = json!({"action":"publish","room":"orders","data":""})
        .to_string()
        .len();
    let fill = 128 * 1024 - envelope;
    let big = json!({"action":"publish","room":"orders","data":"x".repeat(fill)});
    assert_eq!(big.to_string().len(), 128 * 1024);
    c.send_fragmented(&big.to_string(), 32 * 1024).await;
    let reply = c.recv().await;
    assert_eq!(reply["code"], "too_large", "{reply}");
    assert_eq!(c.ask(json!({"action":"ping"})).await["type"], "pong");
}

#[tokio::test]
async fn replies_keep_the_order_of_requests() {
    let gw = Gateway::start().await;
    let mut c = gw.connect("alice", &["*"], &[]).await;
    for i in 0..50 {
        c.send(json!({"action":"ping","ref":i})).await;
    }
    for i in 0..50 {
        assert_eq!(c.recv().await["ref"], i);
    }
}

#[tokio::test]
async fn rooms_past_the_cap_are_refused_and_the_socket_stays_open() {
    let mut settings = common::settings();
    settings.config.limits.max_rooms_per_connection = Some(2);
    let gw = Gateway::start_with(settings).await;
    let mut c = gw.connect("alice", &["*"], &[]).await;
    c.subscribe("one").await;
    c.subscribe("two").await;
    let refused = c
        .ask(json!({"action":"subscribe","room":"three","ref":"r"}))
        .await;
    assert_eq!(refused["code"], "limit_exceeded", "{refused}");
    assert_eq!(refused["ref"], "r");
    assert_eq!(c.ask(json!({"action":"ping"})).await["type"], "pong");
}
