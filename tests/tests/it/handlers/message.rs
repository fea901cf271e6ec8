//! The `message` handler: every client action on the recorded `$default` and `subscribe` events.

use super::*;
use herald::store::Connections;

#[tokio::test]
async fn subscribe_fixture_joins_the_room_and_replies_with_the_ref() {
    let w = world();
    w.connect(FIXTURE_ID, "alice").await;
    let event = ws_event(fixture(SUBSCRIBE));
    assert_eq!(
        event.request_context.message_id.as_deref(),
        Some("Qm3xQeTujoECJ8A=")
    );
    let response = handlers::message(&w.services, &w.gateway, &event).await;
    assert_eq!(response.status_code, 200);
    let reply = w.last_reply(FIXTURE_ID);
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(reply["room"], "orders");
    assert_eq!(reply["ref"], "r1");
    assert_eq!(reply["offset"], 0, "nothing published to it yet: {reply}");
    assert!(reply["epoch"].is_string(), "{reply}");
    let rooms = w
        .store
        .rooms_of(&ConnectionId::new(FIXTURE_ID))
        .await
        .unwrap();
    assert_eq!(rooms, vec![RoomName::parse("orders").unwrap()]);
}

#[tokio::test]
async fn default_route_answers_garbage_with_an_error_frame() {
    let w = world();
    w.connect(FIXTURE_ID, "alice").await;
    let response = handlers::message(&w.services, &w.gateway, &ws_event(fixture(DEFAULT))).await;
    assert_eq!(response.status_code, 200);
    let reply = w.last_reply(FIXTURE_ID);
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "bad_request");
    // Still connected and usable.
    assert_eq!(w.send(FIXTURE_ID, json!({"action":"ping"})).await, 200);
    assert_eq!(w.last_reply(FIXTURE_ID), json!({"type":"pong"}));
}

#[tokio::test]
async fn every_kind_of_bad_input_gets_its_error_code() {
    let w = world();
    w.connect("c1", "alice").await;
    let cases = [
        (json!({"action":"dance"}), "unknown_action"),
        (json!({"room":"orders"}), "bad_request"),
        (json!({"action":"subscribe"}), "bad_request"),
        (json!({"action":"subscribe","room":"a b"}), "bad_request"),
        (json!({"action":"subscribe","room":"secret"}), "forbidden"),
        // Input errors come before permission errors.
        (
            json!({"action":"subscribe","room":"secret","bogus":1}),
            "bad_request",
        ),
        (
            json!({"action":"publish","room":"orders","data":1}),
            "forbidden",
        ),
        (json!({"action":"publish","room":"chat:x"}), "bad_request"),
        (
            json!({"action":"publish","room":"chat:x","data":"x".repeat(140 * 1024)}),
            "too_large",
        ),
    ];
    for (body, code) in cases {
        w.send("c1", body.clone()).await;
        let reply = w.last_reply("c1");
        assert_eq!(reply["type"], "error", "{body}");
        assert_eq!(reply["code"], code, "{body}: {reply}");
    }
    w.send("c1", json!({"action":"whoami","ref":9})).await;
    assert_eq!(
        w.last_reply("c1"),
        json!({"type":"whoami","connectionId":"c1","user":"alice","ref":9})
    );
}

#[tokio::test]
async fn subscribe_checks_patterns_and_unsubscribe_leaves() {
    let w = world();
    w.connect("c1", "alice").await;
    w.send("c1", json!({"action":"subscribe","room":"team:blue"}))
        .await;
    let blue = w.last_reply("c1");
    assert_eq!(
        blue,
        json!({"type":"subscribed","room":"team:blue","offset":0,"epoch":blue["epoch"]})
    );
    w.send(
        "c1",
        json!({"action":"subscribe","room":"team:red","since":{"offset":3,"epoch":"gone"}}),
    )
    .await;
    let red = w.last_reply("c1");
    assert_eq!(
        red,
        json!({"type":"subscribed","room":"team:red","recovered":false,"offset":0,"epoch":red["epoch"]})
    );
    assert_ne!(red["epoch"], "gone");
    w.send(
        "c1",
        json!({"action":"unsubscribe","room":"team:blue","ref":"u"}),
    )
    .await;
    assert_eq!(
        w.last_reply("c1"),
        json!({"type":"unsubscribed","room":"team:blue","ref":"u"})
    );
    let rooms = w.store.rooms_of(&ConnectionId::new("c1")).await.unwrap();
    assert_eq!(rooms, vec![RoomName::parse("team:red").unwrap()]);
}

#[tokio::test]
async fn a_connection_joins_at_most_its_cap_of_rooms_and_stays_open() {
    let w = world_with(&[("HERALD_MAX_ROOMS_PER_CONNECTION", "3")]);
    w.connect("c1", "alice").await;
    for room in ["team:a", "team:b", "team:c"] {
        w.send("c1", json!({"action":"subscribe","room":room}))
            .await;
        assert_eq!(w.last_reply("c1")["type"], "subscribed", "{room}");
    }
    w.send("c1", json!({"action":"subscribe","room":"team:d","ref":4}))
        .await;
    let refused = w.last_reply("c1");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "limit_exceeded", "{refused}");
    assert_eq!(refused["ref"], 4);
    // Joining a room it holds is no new room; leaving one makes space.
    w.send("c1", json!({"action":"subscribe","room":"team:a"}))
        .await;
    assert_eq!(w.last_reply("c1")["type"], "subscribed");
    w.send("c1", json!({"action":"unsubscribe","room":"team:b"}))
        .await;
    w.send("c1", json!({"action":"subscribe","room":"team:d"}))
        .await;
    assert_eq!(w.last_reply("c1")["type"], "subscribed");
    let rooms = w.store.rooms_of(&ConnectionId::new("c1")).await.unwrap();
    assert_eq!(rooms.len(), 3);
}

#[tokio::test]
async fn the_default_cap_is_256_rooms() {
    let w = world();
    w.connect("c1", "alice").await;
    for n in 0..256 {
        w.send(
            "c1",
            json!({"action":"subscribe","room":format!("team:{n}")}),
        )
        .await;
        assert_eq!(w.last_reply("c1")["type"], "subscribed", "room {n}");
    }
    w.send("c1", json!({"action":"subscribe","room":"team:256"}))
        .await;
    assert_eq!(w.last_reply("c1")["code"], "limit_exceeded");
    let off = world_with(&[("HERALD_MAX_ROOMS_PER_CONNECTION", "0")]);
    off.connect("c1", "alice").await;
    for n in 0..300 {
        off.send(
            "c1",
            json!({"action":"subscribe","room":format!("team:{n}")}),
        )
        .await;
    }
    assert_eq!(off.last_reply("c1")["type"], "subscribed", "0 turns it off");
}

#[tokio::test]
async fn socket_publishes_are_limited_per_user_across_connections() {
    let w = world_with(&[
        ("HERALD_SOCKET_PUBLISH_PER_SECOND", "2"),
        ("HERALD_SOCKET_PUBLISH_BURST", "4"),
    ]);
    // Two connections of one user share the limit: 4 in the window, then refusals.
    for id in ["one", "two"] {
        w.connect(id, "alice").await;
    }
    let publish = |n: u32| json!({"action":"publish","room":"chat:lobby","data":n,"ref":n});
    // Begin in the first half of a two-second window, so all six fall in one.
    let into = herald::ids::now_ms().rem_euclid(2_000);
    if into > 1_000 {
        let rest = u64::try_from(2_000 - into + 20).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(rest)).await;
    }
    let mut published = 0;
    for n in 0..6 {
        let id = if n % 2 == 0 { "one" } else { "two" };
        w.send(id, publish(n)).await;
        let reply = w.last_reply(id);
        match reply["type"].as_str() {
            Some("published") => published += 1,
            _ => {
                assert_eq!(reply["code"], "rate_limited", "{reply}");
                assert_eq!(reply["ref"], n);
            }
        }
    }
    assert_eq!(published, 4);
    let off = world_with(&[("HERALD_SOCKET_PUBLISH_PER_SECOND", "0")]);
    off.connect("one", "alice").await;
    for n in 0..30 {
        off.send("one", publish(n)).await;
        assert_eq!(off.last_reply("one")["type"], "published", "publish {n}");
    }
}

#[tokio::test]
async fn a_room_limit_also_refuses_socket_publishes_as_rate_limited() {
    let w = world_with(&[
        ("HERALD_ROOM_PUBLISH_PER_SECOND", "1"),
        ("HERALD_ROOM_PUBLISH_BURST", "2"),
        ("HERALD_SOCKET_PUBLISH_PER_SECOND", "0"),
    ]);
    w.connect("one", "alice").await;
    // Begin in the first half of a two-second window, so all three fall in one.
    let into = herald::ids::now_ms().rem_euclid(2_000);
    if into > 1_000 {
        let rest = u64::try_from(2_000 - into + 20).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(rest)).await;
    }
    let mut kinds = Vec::new();
    for n in 0..3 {
        w.send(
            "one",
            json!({"action":"publish","room":"chat:lobby","data":n,"ref":n}),
        )
        .await;
        let reply = w.last_reply("one");
        kinds.push(reply["code"].as_str().unwrap_or("published").to_owned());
    }
    assert_eq!(kinds, ["published", "published", "rate_limited"]);
}

#[tokio::test]
async fn publish_rights_are_not_subscribe_rights() {
    let w = world();
    for id in ["pub", "other"] {
        w.connect(id, "alice").await;
    }
    // The fixture's alice may publish to chat:* but not subscribe to it.
    w.send("other", json!({"action":"subscribe","room":"chat:lobby"}))
        .await;
    assert_eq!(w.last_reply("other")["code"], "forbidden");
    w.send(
        "pub",
        json!({"action":"publish","room":"chat:lobby","data":{"hi":1},"ref":"p"}),
    )
    .await;
    let reply = w.last_reply("pub");
    assert_eq!(reply["type"], "published");
    assert_eq!(reply["room"], "chat:lobby");
    assert_eq!(reply["ref"], "p");
    assert_eq!(reply["id"].as_str().unwrap().len(), 32);
    assert_eq!(
        w.replies("other").len(),
        1,
        "a non-subscriber receives nothing"
    );
}

#[tokio::test]
async fn socket_publish_delivers_to_members_including_the_sender() {
    let w = world();
    for id in ["a", "b", "c"] {
        w.connect(id, "alice").await;
    }
    let event = |id: &str, body: Value| {
        let mut event = route(SUBSCRIBE, id, "alice", Some(body));
        event
            .request_context
            .authorizer
            .fields
            .insert("rooms".into(), json!("chat:*"));
        event
    };
    for id in ["a", "b"] {
        handlers::message(
            &w.services,
            &w.gateway,
            &event(id, json!({"action":"subscribe","room":"chat:1"})),
        )
        .await;
    }
    handlers::message(
        &w.services,
        &w.gateway,
        &event(
            "a",
            json!({"action":"publish","room":"chat:1","data":{"n":1}}),
        ),
    )
    .await;
    let to_a = w.replies("a");
    let notification = &to_a[1];
    assert_eq!(notification["type"], "notification");
    assert_eq!(notification["room"], "chat:1");
    assert_eq!(notification["data"], json!({"n":1}));
    assert_eq!(to_a[2]["type"], "published");
    assert_eq!(to_a[2]["id"], notification["id"]);
    assert_eq!(w.replies("b")[1], *notification);
    assert!(w.replies("c").is_empty());
}

#[tokio::test]
async fn a_sender_that_has_gone_is_forgotten() {
    let w = world();
    w.connect("c1", "alice").await;
    w.gateway.script(&ConnectionId::new("c1"), Scripted::Gone);
    assert_eq!(w.send("c1", json!({"action":"ping"})).await, 200);
    assert_eq!(w.store.get(&ConnectionId::new("c1")).await.unwrap(), None);
}

#[tokio::test]
async fn a_message_from_an_expired_connection_is_told_to_reconnect() {
    let w = world();
    w.connect("c1", "alice").await;
    w.store.remove(&ConnectionId::new("c1")).await.unwrap();
    w.send("c1", json!({"action":"subscribe","room":"orders"}))
        .await;
    let reply = w.last_reply("c1");
    assert_eq!(reply["code"], "internal");
    assert!(reply["message"].as_str().unwrap().contains("reconnect"));
}
