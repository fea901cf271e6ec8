//! Presence through the message handler (the recorded `subscribe` event re-addressed to
//! the `presence` action) and through the Invoke API's `{"presence":ROOM}`; join and leave
//! events with `HERALD_PRESENCE_EVENTS`, once each, within the room's rate.

use super::*;

/// `user`'s connection `id` in `rooms` (the fixture's token allows `orders` and `team:*`).
async fn member(w: &World, id: &str, user: &str, rooms: &[&str]) {
    assert_eq!(w.connect(id, user).await, 200);
    for room in rooms {
        let event = route(
            SUBSCRIBE,
            id,
            user,
            Some(json!({"action": "subscribe", "room": room})),
        );
        handlers::message(&w.services, &w.gateway, &event).await;
    }
}

#[tokio::test]
async fn a_socket_asks_who_is_in_a_room_it_may_join() {
    let w = world();
    member(&w, "p1", "alice", &["orders"]).await;
    member(&w, "p2", "bob", &["orders", "team:x"]).await;
    member(&w, "p3", "carol", &["team:x"]).await;
    assert_eq!(
        w.send(
            "p1",
            json!({"action": "presence", "room": "orders", "ref": 7})
        )
        .await,
        200
    );
    let mut reply = w.last_reply("p1");
    let mut members = reply["members"].as_array().unwrap().clone();
    members.sort_by_key(|m| m["user"].as_str().unwrap().to_owned());
    reply["members"] = json!(members);
    assert_eq!(
        reply,
        json!({"type": "presence", "room": "orders", "count": 2, "ref": 7, "members": [
            {"user": "alice", "connectionId": "p1"},
            {"user": "bob", "connectionId": "p2"},
        ]})
    );

    handlers::disconnect(
        &w.services,
        &w.gateway,
        &route(DISCONNECT, "p2", "bob", None),
    )
    .await;
    w.send("p1", json!({"action": "presence", "room": "orders"}))
        .await;
    assert_eq!(
        w.last_reply("p1")["count"],
        1,
        "bob left with his connection"
    );

    w.send("p1", json!({"action": "presence", "room": "secret"}))
        .await;
    let refused = w.last_reply("p1");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "forbidden", "{refused}");
}

#[tokio::test]
async fn a_room_of_more_than_a_hundred_lists_a_hundred_and_counts_them_all() {
    let w = world_with(&[("HERALD_MAX_CONNECTIONS_PER_USER", "0")]);
    for i in 0..105 {
        member(&w, &format!("c{i}"), "alice", &["team:big"]).await;
    }
    w.send("c0", json!({"action": "presence", "room": "team:big"}))
        .await;
    let reply = w.last_reply("c0");
    assert_eq!(reply["count"], 105);
    assert_eq!(reply["members"].as_array().unwrap().len(), 100);
}

#[tokio::test]
async fn the_invoke_api_answers_presence_without_a_type() {
    let w = world();
    member(&w, "i1", "alice", &["orders"]).await;
    let answer = w.publish(json!({"presence": "orders"})).await.unwrap();
    assert_eq!(
        answer,
        json!({"room": "orders", "count": 1, "members": [{"user": "alice", "connectionId": "i1"}]})
    );
    let empty = w.publish(json!({"presence": "nobody-here"})).await.unwrap();
    assert_eq!(empty["count"], 0);
    let err = w.publish(json!({"presence": 42})).await.unwrap_err();
    assert!(matches!(err, PublishError::BadRequest(_)), "{err}");
}

/// The join and leave events `id` received, as `(type, user, connectionId)`.
fn events_to(w: &World, id: &str) -> Vec<(String, String, String)> {
    w.replies(id)
        .into_iter()
        .filter(|m| m["type"] == "join" || m["type"] == "leave")
        .map(|m| {
            assert_eq!(m["room"], "orders", "{m}");
            let text = |k: &str| m[k].as_str().unwrap().to_owned();
            (text("type"), text("user"), text("connectionId"))
        })
        .collect()
}

fn event(kind: &str, user: &str, id: &str) -> (String, String, String) {
    (kind.into(), user.into(), id.into())
}

#[tokio::test]
async fn with_presence_events_a_room_hears_each_join_and_leave_once() {
    let w = world_with(&[("HERALD_PRESENCE_EVENTS", "1")]);
    member(&w, "e1", "alice", &["orders"]).await;
    member(&w, "e2", "bob", &["orders"]).await;
    // A second subscribe to a room it is in is no join.
    let subscribe = route(
        SUBSCRIBE,
        "e2",
        "bob",
        Some(json!({"action": "subscribe", "room": "orders"})),
    );
    handlers::message(&w.services, &w.gateway, &subscribe).await;
    let unsubscribe = route(
        SUBSCRIBE,
        "e2",
        "bob",
        Some(json!({"action": "unsubscribe", "room": "orders"})),
    );
    handlers::message(&w.services, &w.gateway, &unsubscribe).await;
    // Nor is an unsubscribe from a room it is not in a leave.
    handlers::message(&w.services, &w.gateway, &unsubscribe).await;
    handlers::message(&w.services, &w.gateway, &subscribe).await;
    handlers::disconnect(
        &w.services,
        &w.gateway,
        &route(DISCONNECT, "e2", "bob", None),
    )
    .await;
    // A repeated $disconnect finds nothing to leave.
    handlers::disconnect(
        &w.services,
        &w.gateway,
        &route(DISCONNECT, "e2", "bob", None),
    )
    .await;

    assert_eq!(
        events_to(&w, "e1"),
        vec![
            event("join", "alice", "e1"),
            event("join", "bob", "e2"),
            event("leave", "bob", "e2"),
            event("join", "bob", "e2"),
            event("leave", "bob", "e2"),
        ]
    );
    // The joiner hears its own join; a leaver is no longer in the room.
    assert_eq!(
        events_to(&w, "e2"),
        vec![event("join", "bob", "e2"), event("join", "bob", "e2")]
    );
}

#[tokio::test]
async fn without_presence_events_nobody_hears_of_joins() {
    let w = world();
    member(&w, "q1", "alice", &["orders"]).await;
    member(&w, "q2", "bob", &["orders"]).await;
    handlers::disconnect(
        &w.services,
        &w.gateway,
        &route(DISCONNECT, "q2", "bob", None),
    )
    .await;
    assert_eq!(events_to(&w, "q1"), vec![]);
}

#[tokio::test]
async fn a_room_hears_at_most_its_rate_of_presence_events() {
    // One a second, bursts of two: alice's own join and bob's; carol's and dave's are
    // dropped (the window is two seconds, far longer than this test's joins).
    let w = world_with(&[
        ("HERALD_PRESENCE_EVENTS", "true"),
        ("HERALD_PRESENCE_EVENTS_PER_SECOND", "1"),
    ]);
    member(&w, "r1", "alice", &["orders"]).await;
    member(&w, "r2", "bob", &["orders"]).await;
    member(&w, "r3", "carol", &["orders"]).await;
    member(&w, "r4", "dave", &["orders"]).await;
    assert_eq!(
        events_to(&w, "r1"),
        vec![event("join", "alice", "r1"), event("join", "bob", "r2")]
    );
    // The dropped events cost nothing else: presence still counts everyone.
    w.send("r1", json!({"action": "presence", "room": "orders"}))
        .await;
    assert_eq!(w.last_reply("r1")["count"], 4);
}
