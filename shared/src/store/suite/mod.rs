//! The behaviour every [`ConnectionStore`] must show, as reusable test cases.
//!
//! Each case takes a store and uses ids, users and rooms of its own, so all cases can run
//! at once against one shared server. A backend runs the whole suite with
//! [`store_suite!`](crate::store_suite):
//!
//! ```ignore
//! herald::store_suite!(async { Box::new(MemoryStore::new()) });
//! ```
//!
//! The connection, membership, idempotency and event cases are here; the history cases
//! (offsets, retention, epochs, idempotent publishes kept once) are in `history.rs`, the
//! room-counting ones (member counts, first and last members) in `rooms.rs`.

mod history;
mod rooms;

use std::collections::HashSet;
use std::time::Duration;

pub use history::*;
pub use rooms::*;

use futures::future::join_all;

use super::{Connection, ConnectionStore, Removed, StoreError};
use crate::ids::{ConnectionId, now_ms};
use crate::protocol::RoomName;

/// Expands to one `#[tokio::test]` per suite case, each building its store with `$make`
/// (an expression giving a future of a value that dereferences to a `ConnectionStore`,
/// such as a `Box`, or a [`Guarded`](crate::testing::Guarded) that also keeps its server).
#[macro_export]
macro_rules! store_suite {
    ($make:expr) => {
        $crate::store_suite!(@cases $make;
            add_then_get,
            get_unknown_is_none,
            add_replaces_the_record,
            remove_forgets_memberships_and_is_idempotent,
            join_needs_a_live_connection,
            join_and_leave_are_idempotent,
            rooms_answer_their_first_and_last_member_once,
            room_members_page_through_every_member_once,
            user_connections_and_count,
            all_connections_page_through_everyone,
            expired_connections_are_invisible,
            refresh_extends_only_live_connections,
            idempotency_keys_first_claim_wins,
            idempotency_keys_expire_after_their_window,
            concurrent_joins_all_land,
            instances_name_each_holder_in_order,
            events_are_counted_per_key_and_window,
            concurrent_events_pass_exactly_the_limit,
            events_counted_together_pass_only_when_they_all_fit,
            member_counts_are_exact_or_not_given,
            presence_lists_and_counts_live_members,
            history_of_a_new_channel_starts_at_zero,
            history_counter_only_read_lives_only_the_age,
            history_offsets_are_dense_under_concurrent_publishers,
            history_replays_each_notification_as_it_was_sent,
            history_keeps_the_last_size_entries,
            history_drops_entries_older_than_its_age,
            history_starts_again_under_a_new_epoch_when_lost,
            history_keeps_rooms_and_users_apart,
        );
        $crate::store_suite!(@owned $make; idempotent_publish_appends_once);
    };
    (@owned $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let store = $make.await;
                $crate::store::suite::$case($crate::store::suite::shared(store)).await;
            }
        )*
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let store = $make.await;
                $crate::store::suite::$case(&*store).await;
            }
        )*
    };
}

/// Members read per page in the paging cases; small, so that many pages are exercised.
const PAGE: usize = 37;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn room() -> RoomName {
    RoomName::parse(&unique("suite-room")).expect("generated room names are valid")
}

/// A live connection of `user`, expiring in an hour.
pub fn connection(user: &str) -> Connection {
    let now = now_ms();
    Connection {
        id: ConnectionId::generate(),
        user: user.to_owned(),
        source_ip: Some("192.0.2.7".into()),
        connected_at: now,
        expires_at: now + 3_600_000,
        instance: Some("suite-instance".into()),
    }
}

async fn add_user_connections(
    store: &dyn ConnectionStore,
    user: &str,
    n: usize,
) -> Vec<Connection> {
    let mut added = Vec::with_capacity(n);
    for _ in 0..n {
        let c = connection(user);
        store.add(&c).await.expect("add");
        added.push(c);
    }
    added
}

async fn collect_members(store: &dyn ConnectionStore, room: &RoomName) -> Vec<ConnectionId> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .room_members(room, cursor.as_deref(), PAGE)
            .await
            .expect("room_members");
        assert!(page.items.len() <= PAGE, "a page is bounded by its limit");
        all.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

async fn collect_all(store: &dyn ConnectionStore) -> Vec<ConnectionId> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .all_connections(cursor.as_deref(), PAGE * 10)
            .await
            .expect("all_connections");
        all.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

fn assert_no_repeats(ids: &[ConnectionId]) {
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a paged read returned an id twice");
}

/// A stored connection reads back unchanged.
pub async fn add_then_get(store: &dyn ConnectionStore) {
    let c = connection(&unique("user"));
    store.add(&c).await.expect("add");
    assert_eq!(store.get(&c.id).await.expect("get"), Some(c));
}

/// `instances` names each connection's instance, in the order asked, `None` for unknown
/// ids and for records without one.
pub async fn instances_name_each_holder_in_order(store: &dyn ConnectionStore) {
    let held = connection(&unique("user"));
    let mut bare = connection(&unique("user"));
    bare.instance = None;
    store.add(&held).await.expect("add");
    store.add(&bare).await.expect("add");
    let unknown = ConnectionId::generate();
    let ids = [bare.id.clone(), unknown, held.id.clone()];
    assert_eq!(
        store.instances(&ids).await.expect("instances"),
        vec![None, None, held.instance.clone()]
    );
    assert_eq!(store.instances(&[]).await.expect("instances"), vec![]);
}

/// An unknown id is `None`, not an error.
pub async fn get_unknown_is_none(store: &dyn ConnectionStore) {
    let id = ConnectionId::generate();
    assert_eq!(store.get(&id).await.expect("get"), None);
    assert_eq!(store.rooms_of(&id).await.expect("rooms_of"), vec![]);
}

/// Adding an id again replaces its record.
pub async fn add_replaces_the_record(store: &dyn ConnectionStore) {
    let mut c = connection(&unique("user"));
    store.add(&c).await.expect("add");
    c.source_ip = Some("198.51.100.1".into());
    store.add(&c).await.expect("add again");
    assert_eq!(store.get(&c.id).await.expect("get"), Some(c));
}

/// Removing forgets the record and every membership; a second remove is harmless.
pub async fn remove_forgets_memberships_and_is_idempotent(store: &dyn ConnectionStore) {
    let user = unique("user");
    let c = connection(&user);
    let other = connection(&user);
    store.add(&c).await.expect("add");
    store.add(&other).await.expect("add other");
    let (r1, r2) = (room(), room());
    for r in [&r1, &r2] {
        store.join(&c.id, r).await.expect("join");
        store.join(&other.id, r).await.expect("join other");
    }
    let removed = store.remove(&c.id).await.expect("remove");
    assert_eq!(removed.connection, Some(c.clone()));
    assert_eq!(removed.emptied, vec![], "other is still in both rooms");
    assert_eq!(store.get(&c.id).await.expect("get"), None);
    assert_eq!(store.rooms_of(&c.id).await.expect("rooms_of"), vec![]);
    for r in [&r1, &r2] {
        assert_eq!(collect_members(store, r).await, vec![other.id.clone()]);
    }
    assert_eq!(
        store.user_connections(&user).await.expect("user"),
        vec![other.id.clone()]
    );
    assert_eq!(
        store.remove(&c.id).await.expect("remove again"),
        Removed::default()
    );
}

/// Joining needs a live connection.
pub async fn join_needs_a_live_connection(store: &dyn ConnectionStore) {
    let r = room();
    let err = store.join(&ConnectionId::generate(), &r).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err}");
    assert!(collect_members(store, &r).await.is_empty());
}

/// Joining twice is one membership; leaving says whether there was one.
pub async fn join_and_leave_are_idempotent(store: &dyn ConnectionStore) {
    let c = connection(&unique("user"));
    store.add(&c).await.expect("add");
    let (r1, r2) = (room(), room());
    store.join(&c.id, &r1).await.expect("join");
    store.join(&c.id, &r1).await.expect("join again");
    store.join(&c.id, &r2).await.expect("join r2");
    assert_eq!(collect_members(store, &r1).await, vec![c.id.clone()]);
    let mut rooms = store.rooms_of(&c.id).await.expect("rooms_of");
    rooms.sort();
    let mut expected = vec![r1.clone(), r2.clone()];
    expected.sort();
    assert_eq!(rooms, expected);

    assert!(store.leave(&c.id, &r1).await.expect("leave").was_member);
    assert!(
        !store
            .leave(&c.id, &r1)
            .await
            .expect("leave again")
            .was_member
    );
    assert!(
        !store
            .leave(&ConnectionId::generate(), &r1)
            .await
            .expect("leave unknown")
            .was_member
    );
    assert!(collect_members(store, &r1).await.is_empty());
    assert_eq!(store.rooms_of(&c.id).await.expect("rooms_of"), vec![r2]);
}

/// Paging a room returns each member exactly once, whatever the page size.
pub async fn room_members_page_through_every_member_once(store: &dyn ConnectionStore) {
    // Nine pages of 37; backends run their own larger cases.
    room_members_paged(store, 300).await;
}

/// Paging through a room of `n` members returns each exactly once (public so a backend can
/// run it at its own, larger, size).
pub async fn room_members_paged(store: &dyn ConnectionStore, n: usize) {
    let r = room();
    let user = unique("user");
    let mut expected = HashSet::new();
    for c in add_user_connections(store, &user, n).await {
        store.join(&c.id, &r).await.expect("join");
        expected.insert(c.id);
    }
    let members = collect_members(store, &r).await;
    assert_no_repeats(&members);
    assert_eq!(members.len(), n);
    assert_eq!(members.into_iter().collect::<HashSet<_>>(), expected);
}

/// A user's connections and their count.
pub async fn user_connections_and_count(store: &dyn ConnectionStore) {
    let user = unique("user");
    assert_eq!(store.count_user(&user).await.expect("count"), 0);
    let added = add_user_connections(store, &user, 3).await;
    add_user_connections(store, &unique("someone-else"), 2).await;
    assert_eq!(store.count_user(&user).await.expect("count"), 3);
    let mut ids = store.user_connections(&user).await.expect("user");
    ids.sort();
    let mut expected: Vec<_> = added.iter().map(|c| c.id.clone()).collect();
    expected.sort();
    assert_eq!(ids, expected);
    store.remove(&added[0].id).await.expect("remove");
    assert_eq!(store.count_user(&user).await.expect("count"), 2);
}

/// Paging everyone returns every connection once (the store may hold others' too).
pub async fn all_connections_page_through_everyone(store: &dyn ConnectionStore) {
    let added = add_user_connections(store, &unique("user"), 250).await;
    let all = collect_all(store).await;
    assert_no_repeats(&all);
    let all: HashSet<_> = all.into_iter().collect();
    for c in &added {
        assert!(all.contains(&c.id), "{} missing from all_connections", c.id);
    }
}

/// A connection past its expiry is gone from every read, though never removed.
pub async fn expired_connections_are_invisible(store: &dyn ConnectionStore) {
    let user = unique("user");
    let live = connection(&user);
    let dead = connection(&user);
    let r = room();
    for c in [&live, &dead] {
        store.add(c).await.expect("add");
        store.join(&c.id, &r).await.expect("join");
    }
    assert!(
        store
            .refresh(&dead.id, now_ms() - 1_000)
            .await
            .expect("refresh")
    );

    assert_eq!(store.get(&dead.id).await.expect("get"), None);
    assert_eq!(collect_members(store, &r).await, vec![live.id.clone()]);
    assert_eq!(
        store.user_connections(&user).await.expect("user"),
        vec![live.id.clone()]
    );
    assert_eq!(store.count_user(&user).await.expect("count"), 1);
    assert!(!collect_all(store).await.contains(&dead.id));
    let err = store.join(&dead.id, &room()).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err}");

    let born_dead = Connection {
        expires_at: now_ms() - 1,
        ..connection(&user)
    };
    store.add(&born_dead).await.expect("add expired");
    assert_eq!(store.get(&born_dead.id).await.expect("get"), None);
    assert_eq!(store.count_user(&user).await.expect("count"), 1);
}

/// Refreshing moves a live record's expiry; an unknown one says `false`.
pub async fn refresh_extends_only_live_connections(store: &dyn ConnectionStore) {
    let c = connection(&unique("user"));
    store.add(&c).await.expect("add");
    let later = c.expires_at + 60_000;
    assert!(store.refresh(&c.id, later).await.expect("refresh"));
    assert_eq!(
        store.get(&c.id).await.expect("get").map(|c| c.expires_at),
        Some(later)
    );
    assert!(
        !store
            .refresh(&ConnectionId::generate(), later)
            .await
            .expect("refresh unknown")
    );
}

/// The first claim of a key wins until released by its holder.
pub async fn idempotency_keys_first_claim_wins(store: &dyn ConnectionStore) {
    let key = unique("key");
    let window = Duration::from_secs(60);
    assert_eq!(
        store
            .claim_idempotency_key(&key, "id-1", window)
            .await
            .expect("claim"),
        None
    );
    assert_eq!(
        store
            .claim_idempotency_key(&key, "id-2", window)
            .await
            .expect("claim again"),
        Some("id-1".to_owned())
    );
    // Only the holder can release it.
    store
        .release_idempotency_key(&key, "id-2")
        .await
        .expect("release by other");
    assert_eq!(
        store
            .claim_idempotency_key(&key, "id-3", window)
            .await
            .expect("claim"),
        Some("id-1".to_owned())
    );
    store
        .release_idempotency_key(&key, "id-1")
        .await
        .expect("release");
    assert_eq!(
        store
            .claim_idempotency_key(&key, "id-4", window)
            .await
            .expect("claim"),
        None
    );
}

/// A key can be claimed again once its window has passed.
pub async fn idempotency_keys_expire_after_their_window(store: &dyn ConnectionStore) {
    let key = unique("key");
    let window = Duration::from_secs(1);
    assert_eq!(
        store
            .claim_idempotency_key(&key, "a", window)
            .await
            .expect("claim"),
        None
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        store
            .claim_idempotency_key(&key, "b", window)
            .await
            .expect("claim"),
        None
    );
}

/// Many connections joining one room at once all end up members.
pub async fn concurrent_joins_all_land(store: &dyn ConnectionStore) {
    let r = room();
    let added = add_user_connections(store, &unique("user"), 50).await;
    let joins = added.iter().map(|c| store.join(&c.id, &r));
    for result in join_all(joins).await {
        result.expect("join");
    }
    let members: HashSet<_> = collect_members(store, &r).await.into_iter().collect();
    assert_eq!(members.len(), 50);
}

/// The window the event cases count in: long enough for a case's calls to fit in one.
const EVENT_WINDOW: Duration = Duration::from_millis(2_000);
/// The window of the concurrent case: forty calls to a slow server take more than a second.
const CONCURRENT_WINDOW: Duration = Duration::from_secs(10);
/// Attempts a case makes before it gives up on finding calls that fit in one window.
const WINDOW_ATTEMPTS: usize = 5;

/// Which window of `window` it is now.
fn window_now(window: Duration) -> i64 {
    crate::store::current_window(crate::ids::now_ms(), window).0
}

/// `limit` events pass in a window and the next is refused; another key counts apart; the
/// next window starts over. Calls that happened to straddle a window's edge are tried again
/// with fresh keys, since there the count rightly starts over.
pub async fn events_are_counted_per_key_and_window(store: &dyn ConnectionStore) {
    for _ in 0..WINDOW_ATTEMPTS {
        let (key, other) = (unique("events"), unique("events"));
        let window = window_now(EVENT_WINDOW);
        let mut verdicts = Vec::new();
        for _ in 0..7 {
            verdicts.push(
                store
                    .count_events(&key, EVENT_WINDOW, 1, 5)
                    .await
                    .expect("count"),
            );
        }
        let apart = store
            .count_events(&other, EVENT_WINDOW, 1, 5)
            .await
            .expect("count");
        if window_now(EVENT_WINDOW) != window {
            continue;
        }
        assert_eq!(verdicts, [true, true, true, true, true, false, false]);
        assert!(apart, "another key counts apart");
        tokio::time::sleep(EVENT_WINDOW).await;
        assert!(
            store
                .count_events(&key, EVENT_WINDOW, 1, 5)
                .await
                .expect("count"),
            "a new window starts over"
        );
        return;
    }
    panic!("every attempt straddled a window's edge");
}

/// Several events counted at once pass only when all of them fit, and events that do not
/// fit are not counted: `@connections` budget grants are taken this way.
pub async fn events_counted_together_pass_only_when_they_all_fit(store: &dyn ConnectionStore) {
    for _ in 0..WINDOW_ATTEMPTS {
        let key = unique("events");
        let window = window_now(EVENT_WINDOW);
        let mut verdicts = Vec::new();
        for events in [3, 3, 2, 1, 6] {
            let counted = store.count_events(&key, EVENT_WINDOW, events, 5);
            verdicts.push(counted.await.expect("count"));
        }
        if window_now(EVENT_WINDOW) != window {
            continue;
        }
        // 3 fits; 3 more would make 6; 2 makes 5, at the limit; 1 more is one past it; 6
        // alone is more than the limit.
        assert_eq!(verdicts, [true, false, true, false, false]);
        return;
    }
    panic!("every attempt straddled a window's edge");
}

/// Eight hosts counting at once: exactly `limit` events pass in a window, never more. (On
/// DynamoDB this needs writes to one item applied in order, which the tests' `moto_server`
/// gets from [`Server::dynamodb`](crate::testing::Server::dynamodb).)
pub async fn concurrent_events_pass_exactly_the_limit(store: &dyn ConnectionStore) {
    for _ in 0..WINDOW_ATTEMPTS {
        let key = unique("events");
        let window = window_now(CONCURRENT_WINDOW);
        let counts = (0..40).map(|_| store.count_events(&key, CONCURRENT_WINDOW, 1, 20));
        let passed = futures::future::join_all(counts)
            .await
            .into_iter()
            .map(|counted| counted.expect("count"))
            .filter(|passed| *passed)
            .count();
        if window_now(CONCURRENT_WINDOW) != window {
            continue;
        }
        assert_eq!(passed, 20);
        return;
    }
    panic!("every attempt straddled a window's edge");
}
