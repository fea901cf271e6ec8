//! The `connect` and `disconnect` handlers on the recorded `$connect` and `$disconnect` events.

use super::*;
use herald::store::Connections;

#[tokio::test]
async fn connect_stores_the_connection_with_its_identity() {
    let w = world();
    let response = handlers::connect(&w.services, &ws_event(fixture(CONNECT))).await;
    assert_eq!(response.status_code, 200);
    let stored = w
        .store
        .get(&ConnectionId::new(FIXTURE_ID))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.user, "alice");
    assert_eq!(stored.source_ip.as_deref(), Some("203.0.113.24"));
    assert_eq!(stored.connected_at, 1_795_945_200_000);
    let lifetime = i64::try_from(w.services.limits.connection_lifetime.as_millis()).unwrap();
    let expected = herald::ids::now_ms() + lifetime;
    assert!((expected - 5_000..=expected).contains(&stored.expires_at));
}

#[tokio::test]
async fn connect_refuses_a_user_over_the_limit_with_429() {
    let w = world_with(&[("HERALD_MAX_CONNECTIONS_PER_USER", "2")]);
    assert_eq!(w.connect("c1", "bob").await, 200);
    assert_eq!(w.connect("c2", "bob").await, 200);
    assert_eq!(w.connect("c3", "bob").await, 429);
    assert_eq!(w.connect("c4", "carol").await, 200, "the limit is per user");
    assert_eq!(w.store.count_user("bob").await.unwrap(), 2);
    handlers::disconnect(
        &w.services,
        &w.gateway,
        &route(DISCONNECT, "c1", "bob", None),
    )
    .await;
    assert_eq!(
        w.connect("c3", "bob").await,
        200,
        "a freed slot can be used"
    );
}

#[tokio::test]
async fn connect_without_authorizer_context_is_refused() {
    let w = world();
    let mut event = fixture(CONNECT);
    event["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("authorizer");
    let response = handlers::connect(&w.services, &ws_event(event)).await;
    assert_eq!(response.status_code, 401);
    assert_eq!(
        w.store.get(&ConnectionId::new(FIXTURE_ID)).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn disconnect_forgets_the_connection_and_its_rooms_idempotently() {
    let w = world();
    assert_eq!(w.connect(FIXTURE_ID, "alice").await, 200);
    handlers::message(&w.services, &w.gateway, &ws_event(fixture(SUBSCRIBE))).await;
    let room = RoomName::parse("orders").unwrap();
    assert_eq!(
        w.store
            .room_members(&room, None, 10)
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let event = ws_event(fixture(DISCONNECT));
    assert_eq!(event.request_context.disconnect_status_code, Some(1001));
    assert_eq!(
        handlers::disconnect(&w.services, &w.gateway, &event)
            .await
            .status_code,
        200
    );
    assert_eq!(
        w.store.get(&ConnectionId::new(FIXTURE_ID)).await.unwrap(),
        None
    );
    assert!(
        w.store
            .room_members(&room, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        handlers::disconnect(&w.services, &w.gateway, &event)
            .await
            .status_code,
        200
    );
}
