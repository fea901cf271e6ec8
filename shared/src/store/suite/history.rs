//! The history cases of the store suite: offsets, retention by size and age, epochs after
//! a loss, rooms apart from users, and a publish kept once per idempotency key.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{room, unique};
use crate::gateway::RecordingGateway;
use crate::handlers::{Services, publish_one};
use crate::limits::Limits;
use crate::protocol::{PublishRequest, Target};
use crate::store::{Channel, ConnectionStore, Draft, ForwardingStore, Position, Range, Retention};

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
