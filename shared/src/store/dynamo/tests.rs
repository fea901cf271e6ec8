//! The DynamoDB store against a real DynamoDB-compatible server (`moto_server`).

use std::time::Duration;

use super::keys::{Key, s};
use super::*;
use crate::aws::local_sdk_config;
use crate::ids::now_ms;
use crate::protocol::RoomName;
use crate::store::Connections;
use crate::testing::{Guarded, Server};

async fn store_with_shards(room_shards: u32) -> Guarded<DynamoStore> {
    let server = Server::dynamodb();
    let store = DynamoStore::new(&local_sdk_config(&server.url()), "herald", room_shards);
    store
        .create_table_if_missing()
        .await
        .expect("create the table");
    Guarded::new(store, server)
}

async fn store() -> Guarded<DynamoStore> {
    store_with_shards(1).await
}

crate::store_suite!(store());

mod sharded_rooms {
    use super::*;
    crate::store_suite!(store_with_shards(4));
}

/// The store counting rooms, as it does when room webhooks are wanted: the cases that
/// change memberships, each room's transitions now answered.
mod counted_rooms {
    use super::*;

    async fn counting_store() -> Guarded<DynamoStore> {
        store_with_shards(2)
            .await
            .map(|store| store.counting_rooms(true))
    }

    crate::store_suite!(@cases counting_store();
        remove_forgets_memberships_and_is_idempotent,
        join_needs_a_live_connection,
        join_and_leave_are_idempotent,
        rooms_answer_their_first_and_last_member_once,
        room_members_page_through_every_member_once,
        concurrent_joins_all_land,
        member_counts_are_exact_or_not_given,
        presence_lists_and_counts_live_members,
        refresh_extends_only_live_connections,
    );

    #[tokio::test]
    async fn rooms_are_counted_and_a_count_back_at_zero_is_deleted() {
        let store = counting_store().await;
        let room = RoomName::parse("counted").unwrap();
        assert_eq!(store.member_count(Some(&room)).await.unwrap(), Some(0));
        let a = crate::store::suite::connection("ann");
        let b = crate::store::suite::connection("bob");
        for c in [&a, &b] {
            store.add(c).await.unwrap();
        }
        assert!(store.join(&a.id, &room).await.unwrap(), "the first member");
        assert!(!store.join(&b.id, &room).await.unwrap());
        assert!(!store.join(&b.id, &room).await.unwrap(), "joined again");
        assert_eq!(store.member_count(Some(&room)).await.unwrap(), Some(2));
        assert!(!store.leave(&a.id, &room).await.unwrap().emptied);
        let removed = store.remove(&b.id).await.unwrap();
        assert_eq!(removed.emptied, vec![room.clone()]);
        let counter = store
            .client()
            .get_item()
            .table_name("herald")
            .set_key(Some(Key::room_count(&room).item()))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        assert!(counter.item().is_none(), "{counter:?}");
        assert!(store.member_count(None).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_member_who_joined_before_counting_began_claims_no_transition() {
        let server_store = store().await;
        let room = RoomName::parse("older").unwrap();
        let a = crate::store::suite::connection("ann");
        server_store.add(&a).await.unwrap();
        assert!(!server_store.join(&a.id, &room).await.unwrap());
        let store = server_store.map(|store| store.counting_rooms(true));
        let left = store.leave(&a.id, &room).await.unwrap();
        assert_eq!((left.was_member, left.emptied), (true, false));
        assert_eq!(store.member_count(Some(&room)).await.unwrap(), Some(0));
    }
}

#[tokio::test]
async fn a_room_over_one_megabyte_is_read_across_pages() {
    let store = store().await;
    // 3,000 membership items of ~600 bytes: about 1.8 MB in one partition. They are
    // written directly (the reader is under test, and the server's transactions are slow
    // on big tables); each carries padding to pass 1 MB with fewer items.
    let room = RoomName::parse("big-room").unwrap();
    let expires_at = now_ms() + 3_600_000;
    let ids: Vec<ConnectionId> = (0..3_000).map(|_| ConnectionId::generate()).collect();
    for chunk in ids.chunks(BATCH) {
        let requests = chunk
            .iter()
            .map(|id| {
                let mut item = Key::member(&room, 0, id).with_expiry(expires_at);
                item.insert("pad".into(), s("p".repeat(512)));
                let put = aws_sdk_dynamodb::types::PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .unwrap();
                WriteRequest::builder().put_request(put).build()
            })
            .collect();
        let out = store
            .client()
            .batch_write_item()
            .request_items("herald", requests)
            .send()
            .await
            .unwrap();
        assert!(out.unprocessed_items().is_none_or(|u| u.is_empty()));
    }
    let (mut seen, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let page = store
            .room_members(&room, cursor.as_deref(), 1_000)
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(seen.len(), 3_000, "no member twice, none missing");
    let expected: std::collections::HashSet<_> = ids.into_iter().collect();
    assert_eq!(
        seen.into_iter().collect::<std::collections::HashSet<_>>(),
        expected
    );
}

#[tokio::test]
async fn expired_items_are_filtered_even_before_ttl_deletes_them() {
    let store = store().await;
    let mut c = crate::store::suite::connection("late");
    c.expires_at = now_ms() + 400;
    store.add(&c).await.unwrap();
    let room = RoomName::parse("soon-gone").unwrap();
    store.join(&c.id, &room).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The items are still in the table (TTL deletion lags)…
    let raw = store
        .client()
        .get_item()
        .table_name("herald")
        .set_key(Some(Key::connection(&c.id).item()))
        .send()
        .await
        .unwrap();
    assert!(raw.item().is_some());
    // …but no read returns them.
    assert_eq!(store.get(&c.id).await.unwrap(), None);
    assert!(
        store
            .room_members(&room, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(store.count_user("late").await.unwrap(), 0);
    let everyone = store.all_connections(None, 1000).await.unwrap();
    assert!(!everyone.items.contains(&c.id));
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_cleanly_and_quickly() {
    let (_refused, port) = crate::testing::refused_port();
    let store = DynamoStore::new(
        &local_sdk_config(&format!("http://127.0.0.1:{port}")),
        "herald",
        1,
    );
    let started = std::time::Instant::now();
    let err = store.get(&ConnectionId::generate()).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let err = store
        .add(&crate::store::suite::connection("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
}

#[tokio::test]
async fn a_silent_endpoint_is_unavailable_within_the_configured_timeouts() {
    // A listener that accepts and never answers: every attempt runs to its timeout.
    let (_silent, port) = crate::testing::silent_port();
    let timeouts = super::DynamoTimeouts {
        attempt: Duration::from_millis(200),
        call: Duration::from_millis(700),
    };
    let store = DynamoStore::with_timeouts(
        &local_sdk_config(&format!("http://127.0.0.1:{port}")),
        "herald",
        1,
        timeouts,
    );
    let started = std::time::Instant::now();
    let err = store.get(&ConnectionId::generate()).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    let took = started.elapsed();
    assert!(took >= timeouts.attempt, "{took:?}");
    assert!(
        took < super::DEFAULT_ATTEMPT_TIMEOUT,
        "the configured timeouts, not the defaults: {took:?}"
    );
}

#[tokio::test]
async fn creating_the_table_twice_is_harmless_and_turns_ttl_on() {
    let store = store().await;
    store.create_table_if_missing().await.unwrap();
    let ttl = store
        .client()
        .describe_time_to_live()
        .table_name("herald")
        .send()
        .await
        .unwrap();
    let description = ttl.time_to_live_description().unwrap();
    assert_eq!(description.attribute_name(), Some("ttl"));
}
