//! Join and leave events (`HERALD_PRESENCE_EVENTS=1`) through real clients, on memory and
//! on Redis across two instances: a WebSocket member hears each join and leave once, its
//! own join after its `subscribed`; an SSE stream is a member (its opening is a join, its
//! end a leave) and hears the others as `event: join` / `event: leave`; a long poll is a
//! member while it waits, but its answer holds notifications only. Without the variable,
//! nobody hears anything.

use crate::common;
use crate::sse;

use std::time::Duration;

use common::{Client, Gateway, SharedRedis, settings_with};
use serde_json::{Value, json};

/// The next join or leave `client` hears, as `(type, user)`.
async fn heard(client: &mut Client) -> (String, String) {
    let event = client.recv().await;
    presence_event(&event)
}

fn presence_event(event: &Value) -> (String, String) {
    assert!(
        event["type"] == "join" || event["type"] == "leave",
        "expected a presence event, got {event}"
    );
    assert_eq!(event["room"], "lobby", "{event}");
    assert!(event["connectionId"].is_string(), "{event}");
    let text = |k: &str| event[k].as_str().unwrap().to_owned();
    (text("type"), text("user"))
}

fn event(kind: &str, user: &str) -> (String, String) {
    (kind.into(), user.into())
}

/// Ann on `a`, Bob on `b` (which may be the same gateway), an SSE stream and a poll on `a`.
async fn every_member_hears_joins_and_leaves(a: &Gateway, b: &Gateway) {
    let mut ann = a.connect("ann", &["lobby"], &[]).await;
    ann.subscribe("lobby").await;
    assert_eq!(
        heard(&mut ann).await,
        event("join", "ann"),
        "its own, after subscribed"
    );

    let mut bob = b.connect("bob", &["lobby"], &[]).await;
    bob.subscribe("lobby").await;
    assert_eq!(heard(&mut bob).await, event("join", "bob"));
    assert_eq!(heard(&mut ann).await, event("join", "bob"));

    // An SSE stream on the room is a member: its opening is heard, and it hears the rest.
    let token = a.token("cy", &["lobby"], &[]);
    let (status, stream, head) =
        sse::open(a.addr, &format!("rooms=lobby&token={token}"), &[]).await;
    assert_eq!(status, 200, "{head}");
    let mut stream = stream.unwrap();
    let joined = stream.next().await;
    assert_eq!(
        (joined.kind.as_str(), presence_event(&joined.data)),
        ("join", event("join", "cy"))
    );
    assert_eq!(heard(&mut ann).await, event("join", "cy"));
    assert_eq!(heard(&mut bob).await, event("join", "cy"));

    // A long poll is a member while it waits; its answer holds no presence event.
    let token = a.token("dee", &["lobby"], &[]);
    let addr = a.addr;
    let poll = tokio::spawn(async move {
        common::http_get(
            addr,
            &format!("/local/poll?rooms=lobby&wait=1&token={token}"),
        )
        .await
    });
    for member in [&mut ann, &mut bob] {
        assert_eq!(heard(member).await, event("join", "dee"));
        assert_eq!(heard(member).await, event("leave", "dee"));
    }
    let (status, body) = poll.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["notifications"], json!([]), "{answer}");

    let left = bob
        .ask(json!({"action": "unsubscribe", "room": "lobby"}))
        .await;
    assert_eq!(left["type"], "unsubscribed", "{left}");
    assert_eq!(heard(&mut ann).await, event("leave", "bob"));
    let mut seen = Vec::new();
    while seen.last() != Some(&event("leave", "bob")) {
        let next = stream.next().await;
        seen.push(presence_event(&next.data));
    }
    assert_eq!(
        seen,
        [
            event("join", "dee"),
            event("leave", "dee"),
            event("leave", "bob")
        ],
        "the stream hears what the sockets hear"
    );

    // A closed socket leaves every room it was in; the stream's end is a leave too.
    bob.subscribe("lobby").await;
    assert_eq!(heard(&mut ann).await, event("join", "bob"));
    bob.ws.close(None).await.unwrap();
    assert_eq!(heard(&mut ann).await, event("leave", "bob"));
    drop(stream);
    assert_eq!(heard(&mut ann).await, event("leave", "cy"));
    ann.expect_nothing(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn join_and_leave_events_on_memory() {
    let gw = Gateway::start_with(settings_with(&[("HERALD_PRESENCE_EVENTS", "1")])).await;
    every_member_hears_joins_and_leaves(&gw, &gw).await;
}

#[tokio::test]
async fn join_and_leave_events_across_two_instances_on_redis() {
    let redis = SharedRedis::single();
    let redis_vars = redis.vars();
    let mut vars: Vec<(&str, &str)> = redis_vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.push(("HERALD_PRESENCE_EVENTS", "1"));
    let a = Gateway::start_with(settings_with(&vars)).await;
    let b = Gateway::start_with(settings_with(&vars)).await;
    every_member_hears_joins_and_leaves(&a, &b).await;
}

#[tokio::test]
async fn without_the_variable_nobody_hears_of_joins() {
    let gw = Gateway::start().await;
    let mut ann = gw.connect("ann", &["lobby"], &[]).await;
    ann.subscribe("lobby").await;
    let mut bob = gw.connect("bob", &["lobby"], &[]).await;
    bob.subscribe("lobby").await;
    bob.ws.close(None).await.unwrap();
    ann.expect_nothing(Duration::from_millis(300)).await;
}
