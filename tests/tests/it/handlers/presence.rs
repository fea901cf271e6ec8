//! Presence through the message handler (the recorded `subscribe` event re-addressed to
//! the `presence` action) and through the Invoke API's `{"presence":ROOM}`.

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

    handlers::disconnect(&w.services, &route(DISCONNECT, "p2", "bob", None)).await;
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
