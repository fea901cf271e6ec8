//! The behaviour every [`ConnectionStore`] must show, as reusable test cases.
//!
//! Each case takes a store and uses ids, users and rooms of its own, so all cases can run
//! at once against one shared server. A backend runs the whole suite with
//! [`store_suite!`](crate::store_suite):
//!
//! ```ignore
//! herald::store_suite!(async { Box::new(MemoryStore::new()) });
//! ```

use std::collections::HashSet;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{
    Channel, Connection, ConnectionStore, Draft, ForwardingStore, Position, Range, Retention,
    StoreError,
};
use crate::gateway::RecordingGateway;
use crate::handlers::{Services, publish_one};
use crate::ids::{ConnectionId, now_ms};
use crate::limits::Limits;
use crate::protocol::RoomName;
use crate::protocol::{PublishRequest, Target};

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
    assert_eq!(store.remove(&c.id).await.expect("remove"), Some(c.clone()));
    assert_eq!(store.get(&c.id).await.expect("get"), None);
    assert_eq!(store.rooms_of(&c.id).await.expect("rooms_of"), vec![]);
    for r in [&r1, &r2] {
        assert_eq!(collect_members(store, r).await, vec![other.id.clone()]);
    }
    assert_eq!(
        store.user_connections(&user).await.expect("user"),
        vec![other.id.clone()]
    );
    assert_eq!(store.remove(&c.id).await.expect("remove again"), None);
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

    assert!(store.leave(&c.id, &r1).await.expect("leave"));
    assert!(!store.leave(&c.id, &r1).await.expect("leave again"));
    assert!(
        !store
            .leave(&ConnectionId::generate(), &r1)
            .await
            .expect("leave unknown")
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
    for result in futures::future::join_all(joins).await {
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
                    .count_event(&key, EVENT_WINDOW, 5)
                    .await
                    .expect("count"),
            );
        }
        let apart = store
            .count_event(&other, EVENT_WINDOW, 5)
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
                .count_event(&key, EVENT_WINDOW, 5)
                .await
                .expect("count"),
            "a new window starts over"
        );
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
        let counts = (0..40).map(|_| store.count_event(&key, CONCURRENT_WINDOW, 20));
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

/// A store a test case owns, as the handlers hold one.
struct Owned<S>(S);

impl<S> ForwardingStore for Owned<S>
where
    S: Deref + Send + Sync + 'static,
    S::Target: ConnectionStore + Sized,
{
    fn inner(&self) -> &dyn ConnectionStore {
        &*self.0
    }
}

/// The store a case's `$make` built, shared as the handlers take it.
pub fn shared<S>(store: S) -> Arc<dyn ConnectionStore>
where
    S: Deref + Send + Sync + 'static,
    S::Target: ConnectionStore + Sized,
{
    Arc::new(Owned(store))
}

/// Retention for the history cases: the default lifetime, `size` entries for `age`.
fn kept(size: usize, age: Duration) -> Retention {
    Retention::new(size, age).expect("cases keep something")
}

/// A room channel of its own.
fn channel() -> Channel {
    Channel::Room(room())
}

/// A notification numbered `n`, as publish drafts it.
fn draft(channel: &Channel, n: u64) -> Draft {
    let target = match channel {
        Channel::Room(room) => format!(r#""room":"{room}""#),
        Channel::User(user) => format!(r#""user":"{user}""#),
    };
    Draft {
        head: Bytes::from(format!(r#"{{"type":"notification","id":"n{n}",{target}"#)),
        tail: Bytes::from(format!(r#","data":{{"n":{n}}},"ts":0}}"#)),
    }
}

async fn append(
    store: &dyn ConnectionStore,
    channel: &Channel,
    n: u64,
    keep: &Retention,
) -> Position {
    store
        .append(channel, &draft(channel, n), keep)
        .await
        .expect("append")
}

/// The offsets of the entries `range` reads.
async fn offsets(
    store: &dyn ConnectionStore,
    channel: &Channel,
    range: Range,
    limit: usize,
    keep: &Retention,
) -> Vec<u64> {
    store
        .read_history(channel, range, limit, keep)
        .await
        .expect("read")
        .entries
        .iter()
        .map(|e| e.offset)
        .collect()
}

/// A channel nobody published to is at offset 0 under an epoch that stays put, and its
/// first notification takes offset 1 under that epoch.
pub async fn history_of_a_new_channel_starts_at_zero(store: &dyn ConnectionStore) {
    let (c, keep) = (channel(), Retention::default());
    let first = store
        .read_history(&c, Range::Latest, 10, &keep)
        .await
        .expect("read");
    assert_eq!(first.position.offset, 0);
    assert!(first.entries.is_empty());
    let again = store
        .read_history(&c, Range::After(0), 10, &keep)
        .await
        .expect("read");
    assert_eq!(again.position, first.position, "reading does not move it");
    let appended = append(store, &c, 1, &keep).await;
    assert_eq!(appended.offset, 1);
    assert_eq!(appended.epoch, first.position.epoch);
}

/// A counter that reads created and nothing was appended to lives only the retention's
/// age (so clients reading rooms of ever new names cannot fill the store for a day); once
/// appended to, it lives its lifetime.
pub async fn history_counter_only_read_lives_only_the_age(store: &dyn ConnectionStore) {
    let age = Duration::from_millis(1_000);
    let (c, keep) = (channel(), kept(100, age));
    let read = |c| async move {
        store
            .read_history(c, Range::Latest, 10, &keep)
            .await
            .expect("read")
            .position
    };
    let first = read(&c).await;
    tokio::time::sleep(age + Duration::from_millis(300)).await;
    let later = read(&c).await;
    assert_eq!(later.offset, 0);
    assert_ne!(later.epoch, first.epoch, "the unused counter expired");
    let appended = append(store, &c, 1, &keep).await;
    assert_eq!(appended.epoch, later.epoch);
    tokio::time::sleep(age + Duration::from_millis(300)).await;
    assert_eq!(
        read(&c).await,
        appended,
        "appended to: it lives its lifetime"
    );
}

/// Eight publishers appending at once take every offset from 1 to 80 exactly once, and
/// the history holds them in offset order.
pub async fn history_offsets_are_dense_under_concurrent_publishers(store: &dyn ConnectionStore) {
    const PUBLISHERS: u64 = 8;
    const EACH: u64 = 10;
    let (c, keep) = (channel(), kept(100, Duration::from_secs(600)));
    let publishers = (0..PUBLISHERS).map(|p| {
        let c = &c;
        async move {
            let mut taken = Vec::new();
            for i in 0..EACH {
                taken.push(append(store, c, p * EACH + i, &keep).await);
            }
            taken
        }
    });
    let taken: Vec<Position> = futures::future::join_all(publishers)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut offsets_taken: Vec<u64> = taken.iter().map(|p| p.offset).collect();
    offsets_taken.sort_unstable();
    assert_eq!(offsets_taken, (1..=PUBLISHERS * EACH).collect::<Vec<_>>());
    assert!(taken.iter().all(|p| p.epoch == taken[0].epoch), "one epoch");
    assert_eq!(
        offsets(store, &c, Range::After(0), 100, &keep).await,
        (1..=PUBLISHERS * EACH).collect::<Vec<_>>()
    );
}

/// Each kept notification is the draft with the offset and epoch it was given, and reads
/// take the oldest after an offset or the newest, up to the limit.
pub async fn history_replays_each_notification_as_it_was_sent(store: &dyn ConnectionStore) {
    let (c, keep) = (channel(), Retention::default());
    let mut positions = Vec::new();
    for n in 1..=5 {
        positions.push(append(store, &c, n, &keep).await);
    }
    let read = store
        .read_history(&c, Range::After(2), 100, &keep)
        .await
        .expect("read");
    assert_eq!(read.position, positions[4]);
    for (entry, position) in read.entries.iter().zip(&positions[2..]) {
        assert_eq!(entry.bytes, draft(&c, position.offset).assemble(position));
        let json: Value = serde_json::from_slice(&entry.bytes).expect("kept JSON");
        assert_eq!(json["offset"], json!(position.offset));
        assert_eq!(json["epoch"], json!(position.epoch));
        assert_eq!(json["data"], json!({"n": position.offset}));
    }
    assert_eq!(read.entries.len(), 3);
    assert_eq!(offsets(store, &c, Range::After(1), 2, &keep).await, [2, 3]);
    assert_eq!(offsets(store, &c, Range::Latest, 2, &keep).await, [4, 5]);
    assert_eq!(
        offsets(store, &c, Range::After(5), 10, &keep).await,
        Vec::<u64>::new()
    );
    let since = |offset| Position {
        offset,
        epoch: positions[0].epoch.clone(),
    };
    let whole = store
        .read_history(&c, Range::After(2), keep.size, &keep)
        .await
        .expect("read");
    assert_eq!(
        whole.replay_after(&since(2)).map(|e| e.len()),
        Some(3),
        "recovers from 2"
    );
}

/// Only the last `size` entries are kept: a client just before them recovers, one further
/// back does not.
pub async fn history_keeps_the_last_size_entries(store: &dyn ConnectionStore) {
    let (c, keep) = (channel(), kept(5, Duration::from_secs(600)));
    let mut last = None;
    for n in 1..=8 {
        last = Some(append(store, &c, n, &keep).await);
    }
    let epoch = last.expect("appended").epoch;
    assert_eq!(
        offsets(store, &c, Range::Latest, 100, &keep).await,
        [4, 5, 6, 7, 8]
    );
    let (c, keep) = (&c, &keep);
    let replay = |offset| {
        let since = Position {
            offset,
            epoch: epoch.clone(),
        };
        async move {
            store
                .read_history(c, Range::After(offset), keep.size, keep)
                .await
                .expect("read")
                .replay_after(&since)
                .map(|entries| entries.iter().map(|e| e.offset).collect::<Vec<_>>())
        }
    };
    assert_eq!(replay(3).await, Some(vec![4, 5, 6, 7, 8]), "at the edge");
    assert_eq!(replay(2).await, None, "one past it");
    assert_eq!(replay(0).await, None);
}

/// Entries older than the retention's age are dropped; newer ones and the position stay.
pub async fn history_drops_entries_older_than_its_age(store: &dyn ConnectionStore) {
    let age = Duration::from_millis(1_500);
    let (c, keep) = (channel(), kept(100, age));
    for n in 1..=3 {
        append(store, &c, n, &keep).await;
    }
    tokio::time::sleep(age + Duration::from_millis(200)).await;
    let fourth = append(store, &c, 4, &keep).await;
    assert_eq!(fourth.offset, 4, "the counter outlives its entries");
    assert_eq!(offsets(store, &c, Range::Latest, 100, &keep).await, [4]);
    let read = store
        .read_history(&c, Range::After(2), keep.size, &keep)
        .await
        .expect("read");
    let since = |offset| Position {
        offset,
        epoch: fourth.epoch.clone(),
    };
    assert_eq!(read.clone().replay_after(&since(2)), None, "3 is gone");
    let read = store
        .read_history(&c, Range::After(3), keep.size, &keep)
        .await
        .expect("read");
    assert_eq!(read.replay_after(&since(3)).map(|e| e.len()), Some(1));
}

/// When the counter is lost (here: it expired), the channel starts again at 0 under
/// another epoch, and a client at an old position cannot recover.
pub async fn history_starts_again_under_a_new_epoch_when_lost(store: &dyn ConnectionStore) {
    let lifetime = Duration::from_millis(1_500);
    let keep = Retention {
        lifetime,
        ..kept(100, lifetime)
    };
    let c = channel();
    append(store, &c, 1, &keep).await;
    let before = append(store, &c, 2, &keep).await;
    tokio::time::sleep(lifetime + Duration::from_millis(200)).await;
    let read = store
        .read_history(&c, Range::After(1), keep.size, &keep)
        .await
        .expect("read");
    assert_eq!(read.position.offset, 0);
    assert_ne!(read.position.epoch, before.epoch);
    assert_eq!(
        read.clone().replay_after(&Position {
            offset: 1,
            ..before.clone()
        }),
        None
    );
    let after = append(store, &c, 3, &keep).await;
    assert_eq!(after.offset, 1);
    assert_eq!(after.epoch, read.position.epoch);
    // An append finding the expired counter starts it again too.
    let c = channel();
    let old = append(store, &c, 1, &keep).await;
    tokio::time::sleep(lifetime + Duration::from_millis(200)).await;
    let new = append(store, &c, 2, &keep).await;
    assert_eq!(new.offset, 1);
    assert_ne!(new.epoch, old.epoch);
}

/// A room and a user of the same name have separate histories.
pub async fn history_keeps_rooms_and_users_apart(store: &dyn ConnectionStore) {
    let keep = Retention::default();
    let name = unique("same");
    let room = Channel::Room(crate::protocol::RoomName::parse(&name).expect("valid"));
    let user = Channel::User(name);
    append(store, &room, 1, &keep).await;
    append(store, &room, 2, &keep).await;
    assert_eq!(append(store, &user, 1, &keep).await.offset, 1);
    assert_eq!(offsets(store, &user, Range::Latest, 10, &keep).await, [1]);
    assert_eq!(
        offsets(store, &room, Range::Latest, 10, &keep).await,
        [1, 2]
    );
}

/// A publish repeated with the same idempotency key is kept once, and answers its first id.
pub async fn idempotent_publish_appends_once(store: Arc<dyn ConnectionStore>) {
    let services = Services::new(store.clone(), Limits::default(), Default::default());
    let gateway = RecordingGateway::new();
    let r = room();
    let request = PublishRequest::new(Target::Room(r.clone()), json!({"n": 1}))
        .with_idempotency_key(unique("key"));
    let first = publish_one(&services, &gateway, &request)
        .await
        .expect("publish");
    assert_eq!(first.offset, Some(1));
    let repeat = publish_one(&services, &gateway, &request)
        .await
        .expect("publish");
    assert_eq!(repeat.id, first.id);
    assert_eq!(repeat.offset, None, "not appended");
    let keep = Retention::default();
    assert_eq!(
        offsets(&*store, &Channel::Room(r), Range::Latest, 10, &keep).await,
        [1]
    );
}
