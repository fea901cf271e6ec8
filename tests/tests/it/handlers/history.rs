//! History through the handlers: offsets in publish answers, `since`, `recover` and `history`.

use super::*;
use herald::store::Connections;

#[tokio::test]
async fn a_history_reply_fits_one_frame_and_says_when_it_was_cut() {
    let w = world();
    w.connect("c1", "alice").await;
    let big = "x".repeat(50 * 1024);
    for n in 1..=3 {
        let answer = w
            .publish(json!({"room":"orders","data":{"n":n,"big":big}}))
            .await
            .unwrap();
        assert_eq!(answer["offset"], n);
    }
    w.send("c1", json!({"action":"history","room":"orders","limit":10}))
        .await;
    let posted = w.gateway.posts().pop().expect("a reply").1;
    assert!(posted.len() <= herald::protocol::MAX_NOTIFICATION_BYTES);
    let reply: Value = serde_json::from_slice(&posted).unwrap();
    let offsets = |reply: &Value| -> Vec<u64> {
        reply["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["offset"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(offsets(&reply), [2, 3], "the newest that fit");
    assert_eq!(reply["truncated"], true);
    let epoch = reply["epoch"].clone();
    w.send(
        "c1",
        json!({"action":"history","room":"orders","since":{"offset":0,"epoch":epoch}}),
    )
    .await;
    let reply = w.last_reply("c1");
    assert_eq!(
        offsets(&reply),
        [1, 2],
        "the oldest after since, to page on"
    );
    assert_eq!(reply["truncated"], true);
    w.send("c1", json!({"action":"history","room":"orders","limit":1}))
        .await;
    let reply = w.last_reply("c1");
    assert_eq!(offsets(&reply), [3]);
    assert_eq!(reply.get("truncated"), None, "all that was asked for");
}

#[tokio::test]
async fn a_replay_stops_when_the_connection_is_gone() {
    let w = world();
    w.connect("c1", "alice").await;
    let first = w.publish(json!({"room":"orders","data":0})).await.unwrap();
    for n in 1..=3 {
        w.publish(json!({"room":"orders","data":n})).await.unwrap();
    }
    w.gateway.script(&ConnectionId::new("c1"), Scripted::Gone);
    let since = json!({"offset":1,"epoch":first["epoch"]});
    assert_eq!(
        w.send(
            "c1",
            json!({"action":"subscribe","room":"orders","since":since})
        )
        .await,
        200
    );
    assert_eq!(
        w.gateway.attempts(&ConnectionId::new("c1")),
        1,
        "no post after the 410"
    );
    assert_eq!(w.store.get(&ConnectionId::new("c1")).await.unwrap(), None);
}

#[tokio::test]
async fn a_replay_that_cannot_be_finished_closes_the_connection() {
    let w = world();
    let first = w.publish(json!({"user":"alice","data":0})).await.unwrap();
    for n in 1..=3 {
        w.publish(json!({"user":"alice","data":n})).await.unwrap();
    }
    w.connect("c1", "alice").await;
    let id = ConnectionId::new("c1");
    // The reply and the first replayed notification go through, then every post fails.
    w.gateway.script(&id, Scripted::FailsAfter(2));
    w.send(
        "c1",
        json!({"action":"recover","since":{"offset":1,"epoch":first["epoch"]}}),
    )
    .await;
    let posted = w.replies("c1");
    assert_eq!(posted.len(), 2, "{posted:?}");
    assert_eq!(posted[0]["recovered"], true);
    assert_eq!(
        w.gateway.deleted(),
        vec![id],
        "closed, so the client recovers again rather than believe it has everything"
    );
}

#[tokio::test]
async fn a_throttled_replay_is_retried_and_completes() {
    let w = world();
    let first = w.publish(json!({"user":"alice","data":0})).await.unwrap();
    w.publish(json!({"user":"alice","data":1})).await.unwrap();
    w.connect("c1", "alice").await;
    let id = ConnectionId::new("c1");
    w.gateway.script(&id, Scripted::ThrottledTimes(2));
    w.send(
        "c1",
        json!({"action":"recover","since":{"offset":1,"epoch":first["epoch"]}}),
    )
    .await;
    let posted = w.replies("c1");
    assert_eq!(posted.len(), 2, "the reply and the one missed: {posted:?}");
    assert_eq!(posted[1]["data"], 1);
    assert_eq!(w.gateway.attempts(&id), 4, "two 429s retried");
    assert!(w.gateway.deleted().is_empty());
}

#[tokio::test]
async fn a_recovery_replays_the_user_inbox_through_the_gateway_in_order() {
    let w = world();
    w.connect("c1", "alice").await;
    let first = w.publish(json!({"user":"alice","data":0})).await.unwrap();
    for n in 1..=3 {
        w.publish(json!({"user":"alice","data":n})).await.unwrap();
    }
    let before = w.replies("c1").len();
    w.send(
        "c1",
        json!({"action":"recover","since":{"offset":1,"epoch":first["epoch"]},"ref":"r"}),
    )
    .await;
    let posted = w.replies("c1").split_off(before);
    assert_eq!(
        posted[0],
        json!({"type":"recovered","recovered":true,"offset":4,"epoch":first["epoch"],"ref":"r"})
    );
    let data: Vec<Value> = posted[1..].iter().map(|n| n["data"].clone()).collect();
    assert_eq!(data, [json!(1), json!(2), json!(3)]);
}
