//! Fan-out: deliver one serialized notification to every recipient of a target.
//!
//! Recipients are read from the store a page at a time, just ahead of the posts, so a room
//! of a million members never sits in memory at once. At most `concurrency` posts are in
//! flight. Each answer is counted: delivered; gone (410: the store forgets that recipient,
//! and only that one); throttled (429: retried with full-jitter exponential backoff, then
//! counted failed); any other failure is counted failed. One recipient's failure never
//! stops the others. The payload is a `Bytes` shared by every post, serialized once.
//!
//! A gateway that knows its own hosts' members ([`Gateway::deliver_room`]: `herald-local`,
//! whose sockets read a room from one ring per instance, and several instances on one
//! Redis, asked once each) delivers a room publish itself, and fan-out takes its counts
//! instead of listing the room.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tracing::{debug, warn};

pub use crate::gateway::Counts;
use crate::gateway::{Gateway, PushError};
use crate::ids::ConnectionId;
use crate::protocol::Target;
use crate::store::{ConnectionStore, StoreError};

/// How fan-out paces itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FanoutConfig {
    /// Posts in flight at once.
    pub concurrency: usize,
    /// Recipients read from the store per page.
    pub page_size: usize,
    /// Retries of a throttled post before it counts as failed.
    pub max_retries: u32,
    /// The first retry waits up to this long; each later one up to twice as long.
    pub base_backoff: Duration,
    /// No retry waits longer than this.
    pub max_backoff: Duration,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        // 64 posts in flight keeps a Lambda's single HTTP/1 pool busy without tripping API
        // Gateway's account-wide 10,000 requests/s on its own.
        Self {
            concurrency: 64,
            page_size: 500,
            max_retries: 4,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Fan-out stopped because the store could not list the recipients; `counts` says what
/// was already done.
#[derive(Debug, Clone, thiserror::Error)]
#[error("fan-out interrupted after {counts:?}: {error}")]
pub struct FanoutError {
    /// Deliveries made before the store failed.
    pub counts: Counts,
    /// The store's error.
    #[source]
    pub error: StoreError,
}

enum Outcome {
    Delivered,
    Gone,
    Failed,
    /// A gone recipient, already counted, has been removed from the store.
    Forgotten,
}

/// Where the next recipients come from: a target's, read a page at a time.
pub(crate) enum Recipients<'a> {
    Fixed(std::vec::IntoIter<ConnectionId>),
    Paged {
        store: &'a dyn ConnectionStore,
        room: Option<&'a crate::protocol::RoomName>,
        buffer: std::vec::IntoIter<ConnectionId>,
        cursor: Option<String>,
        exhausted: bool,
    },
}

impl<'a> Recipients<'a> {
    pub(crate) async fn new(
        store: &'a dyn ConnectionStore,
        target: &'a Target,
    ) -> Result<Self, StoreError> {
        Ok(match target {
            Target::Connections(ids) => Self::Fixed(ids.clone().into_iter()),
            Target::User(user) => Self::Fixed(store.user_connections(user).await?.into_iter()),
            Target::Room(room) => Self::paged(store, Some(room)),
            Target::Broadcast => Self::paged(store, None),
        })
    }

    fn paged(store: &'a dyn ConnectionStore, room: Option<&'a crate::protocol::RoomName>) -> Self {
        Self::Paged {
            store,
            room,
            buffer: Vec::new().into_iter(),
            cursor: None,
            exhausted: false,
        }
    }

    /// Up to `page_size` recipients at once; empty when there are no more.
    pub(crate) async fn next_page(
        &mut self,
        page_size: usize,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        let mut page = Vec::with_capacity(page_size);
        while page.len() < page_size {
            match self.next(page_size).await? {
                Some(id) => page.push(id),
                None => break,
            }
        }
        Ok(page)
    }

    /// The next recipient to post to: readers on AWS are members with no socket, skipped
    /// (`reader/membership.rs`).
    async fn next(&mut self, page_size: usize) -> Result<Option<ConnectionId>, StoreError> {
        loop {
            match self.next_member(page_size).await? {
                Some(id) if id.is_reader() => continue,
                next => return Ok(next),
            }
        }
    }

    async fn next_member(&mut self, page_size: usize) -> Result<Option<ConnectionId>, StoreError> {
        match self {
            Self::Fixed(ids) => Ok(ids.next()),
            Self::Paged {
                store,
                room,
                buffer,
                cursor,
                exhausted,
            } => loop {
                if let Some(id) = buffer.next() {
                    return Ok(Some(id));
                }
                if *exhausted {
                    return Ok(None);
                }
                let page = match room {
                    Some(room) => {
                        store
                            .room_members(room, cursor.as_deref(), page_size)
                            .await?
                    }
                    None => store.all_connections(cursor.as_deref(), page_size).await?,
                };
                *buffer = page.items.into_iter();
                *exhausted = page.next.is_none();
                *cursor = page.next;
            },
        }
    }
}

/// Delivers `payload` to every recipient of `target`.
pub async fn deliver(
    store: &dyn ConnectionStore,
    gateway: &dyn Gateway,
    target: &Target,
    payload: Bytes,
    config: &FanoutConfig,
) -> Result<Counts, FanoutError> {
    if let Target::Room(room) = target
        && let Some(done) = gateway.deliver_room(room, &payload).await
    {
        return match done.error {
            None => Ok(done.counts),
            Some(error) => Err(FanoutError {
                counts: done.counts,
                error,
            }),
        };
    }
    if gateway.prefers_batches() {
        return deliver_in_batches(store, gateway, target, payload, config).await;
    }
    let mut counts = Counts::default();
    let mut recipients = Recipients::new(store, target)
        .await
        .map_err(|error| FanoutError { counts, error })?;
    let mut in_flight = FuturesUnordered::new();
    let concurrency = config.concurrency.max(1);
    let mut more = true;
    loop {
        while more && in_flight.len() < concurrency {
            match recipients.next(config.page_size.max(1)).await {
                Ok(Some(id)) => {
                    in_flight.push(post_one(store, gateway, id, payload.clone(), config))
                }
                Ok(None) => more = false,
                Err(error) => {
                    // Let the posts already started finish, so the counts are exact.
                    while let Some(outcome) = in_flight.next().await {
                        count(&mut counts, outcome);
                    }
                    return Err(FanoutError { counts, error });
                }
            }
        }
        match in_flight.next().await {
            Some(outcome) => count(&mut counts, outcome),
            None => return Ok(counts),
        }
    }
}

/// Fan-out through a gateway that prefers batches: one `post_many` per page of
/// recipients; gone ones are forgotten, throttled ones retried one by one.
async fn deliver_in_batches(
    store: &dyn ConnectionStore,
    gateway: &dyn Gateway,
    target: &Target,
    payload: Bytes,
    config: &FanoutConfig,
) -> Result<Counts, FanoutError> {
    let mut counts = Counts::default();
    let mut recipients = Recipients::new(store, target)
        .await
        .map_err(|error| FanoutError { counts, error })?;
    let page_size = config.page_size.max(1);
    loop {
        let page = match recipients.next_page(page_size).await {
            Ok(page) if page.is_empty() => return Ok(counts),
            Ok(page) => page,
            Err(error) => return Err(FanoutError { counts, error }),
        };
        let failures = gateway.post_many(&page, payload.clone()).await;
        counts.delivered += page.len().saturating_sub(failures.len()) as u64;
        let mut follow_ups: FuturesUnordered<BoxFuture<'_, Outcome>> = FuturesUnordered::new();
        for (i, error) in failures {
            let Some(id) = page.get(i).cloned() else {
                warn!(
                    index = i,
                    "a gateway answered for a recipient it was not given"
                );
                continue;
            };
            match error {
                PushError::Throttled => {
                    let retry = post_one(store, gateway, id, payload.clone(), config);
                    follow_ups.push(Box::pin(retry));
                }
                PushError::Gone => {
                    counts.gone += 1;
                    follow_ups.push(Box::pin(async move {
                        forget(store, &id).await;
                        Outcome::Forgotten
                    }));
                }
                error => {
                    warn!(connection_id = %id, %error, "post failed");
                    counts.failed += 1;
                }
            }
        }
        while let Some(outcome) = follow_ups.next().await {
            count(&mut counts, outcome);
        }
    }
}

async fn forget(store: &dyn ConnectionStore, id: &ConnectionId) {
    debug!(connection_id = %id, "recipient gone; forgetting it");
    if let Err(error) = store.remove(id).await {
        warn!(connection_id = %id, %error, "could not forget a gone connection");
    }
}

fn count(counts: &mut Counts, outcome: Outcome) {
    match outcome {
        Outcome::Delivered => counts.delivered += 1,
        Outcome::Gone => counts.gone += 1,
        Outcome::Failed => counts.failed += 1,
        Outcome::Forgotten => {}
    }
}

async fn post_one(
    store: &dyn ConnectionStore,
    gateway: &dyn Gateway,
    id: ConnectionId,
    payload: Bytes,
    config: &FanoutConfig,
) -> Outcome {
    let mut attempt = 0;
    loop {
        match gateway.post(&id, payload.clone()).await {
            Ok(()) => return Outcome::Delivered,
            Err(PushError::Gone) => {
                forget(store, &id).await;
                return Outcome::Gone;
            }
            Err(PushError::Throttled) if attempt < config.max_retries => {
                tokio::time::sleep(backoff(config, attempt)).await;
                attempt += 1;
            }
            Err(error) => {
                warn!(connection_id = %id, %error, attempts = attempt + 1, "post failed");
                return Outcome::Failed;
            }
        }
    }
}

/// Posts `payload` to one connection as fan-out posts to each recipient (a 429 retried
/// with backoff, a 410 forgets the connection); `true` when it was delivered.
pub async fn post_retrying(
    store: &dyn ConnectionStore,
    gateway: &dyn Gateway,
    id: &ConnectionId,
    payload: Bytes,
    config: &FanoutConfig,
) -> bool {
    matches!(
        post_one(store, gateway, id.clone(), payload, config).await,
        Outcome::Delivered
    )
}

/// Full jitter: a uniform wait in `[0, min(max, base * 2^attempt)]`, which spreads the
/// retries of many throttled posts instead of bunching them into a new burst.
pub fn backoff(config: &FanoutConfig, attempt: u32) -> Duration {
    let ceiling = config
        .base_backoff
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(config.max_backoff);
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::{RecordingGateway, Scripted};
    use crate::protocol::RoomName;
    use crate::store::Connections;
    use crate::store::MemoryStore;
    use crate::store::suite::connection;

    async fn room_of(store: &MemoryStore, room: &RoomName, n: usize) -> Vec<ConnectionId> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let c = connection("u");
            store.add(&c).await.unwrap();
            store.join(&c.id, room).await.unwrap();
            ids.push(c.id);
        }
        ids
    }

    fn room() -> RoomName {
        RoomName::parse("orders").unwrap()
    }

    /// Delivers `{}` to the room's members.
    async fn to_room(
        store: &MemoryStore,
        gateway: &RecordingGateway,
        config: &FanoutConfig,
    ) -> Counts {
        let payload = Bytes::from_static(b"{}");
        deliver(store, gateway, &Target::Room(room()), payload, config)
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn one_post_is_retried_as_fan_out_retries_and_says_whether_it_arrived() {
        let store = MemoryStore::new();
        let gateway = RecordingGateway::new();
        let ids = room_of(&store, &room(), 3).await;
        gateway.script(&ids[1], Scripted::ThrottledTimes(1));
        gateway.script(&ids[2], Scripted::Gone);
        let config = FanoutConfig::default();
        let payload = Bytes::from_static(b"{}");
        assert!(post_retrying(&store, &gateway, &ids[0], payload.clone(), &config).await);
        assert!(post_retrying(&store, &gateway, &ids[1], payload.clone(), &config).await);
        assert_eq!(gateway.attempts(&ids[1]), 2, "a 429, then delivered");
        assert!(!post_retrying(&store, &gateway, &ids[2], payload, &config).await);
        assert!(
            store.get(&ids[2]).await.unwrap().is_none(),
            "a 410 forgets it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gone_recipients_are_forgotten_throttled_ones_retried() {
        let store = MemoryStore::new();
        let gateway = RecordingGateway::new();
        let ids = room_of(&store, &room(), 10).await;
        gateway.script(&ids[0], Scripted::Gone);
        gateway.script(&ids[1], Scripted::Gone);
        gateway.script(&ids[2], Scripted::ThrottledTimes(2));
        gateway.script(&ids[3], Scripted::AlwaysThrottled);
        gateway.script(&ids[4], Scripted::Fails);
        let config = FanoutConfig::default();

        let counts = to_room(&store, &gateway, &config).await;

        assert_eq!(
            counts,
            Counts {
                delivered: 6,
                gone: 2,
                failed: 2
            }
        );
        // Exactly the gone ones were removed.
        for (i, id) in ids.iter().enumerate() {
            let present = store.get(id).await.unwrap().is_some();
            assert_eq!(present, i > 1, "connection {i}");
        }
        assert_eq!(gateway.attempts(&ids[2]), 3, "two 429s, then success");
        assert_eq!(gateway.attempts(&ids[3]), config.max_retries + 1);
        assert_eq!(gateway.attempts(&ids[4]), 1, "a 500 is not retried");
        assert_eq!(gateway.attempts(&ids[0]), 1, "a 410 is not retried");
        let delivered: Vec<_> = gateway.posts().into_iter().map(|(id, _)| id).collect();
        assert_eq!(delivered.len(), 6);
        assert!(delivered.contains(&ids[2]));
    }

    #[tokio::test(start_paused = true)]
    async fn batching_gateways_get_one_call_per_page_with_the_same_outcomes() {
        let store = MemoryStore::new();
        let gateway = RecordingGateway::new();
        gateway.set_batching(true);
        // 21, not a multiple of the page: pages of 11 would take two calls, not three.
        let ids = room_of(&store, &room(), 21).await;
        gateway.script(&ids[0], Scripted::Gone);
        gateway.script(&ids[1], Scripted::ThrottledTimes(1));
        gateway.script(&ids[2], Scripted::Fails);
        let config = FanoutConfig {
            page_size: 10,
            ..FanoutConfig::default()
        };
        let counts = to_room(&store, &gateway, &config).await;
        assert_eq!(
            counts,
            Counts {
                delivered: 19,
                gone: 1,
                failed: 1
            }
        );
        assert_eq!(gateway.batches(), 3, "21 recipients in pages of 10");
        assert_eq!(
            store.get(&ids[0]).await.unwrap(),
            None,
            "the gone one is forgotten"
        );
        assert!(store.get(&ids[1]).await.unwrap().is_some());
        assert_eq!(gateway.attempts(&ids[1]), 2, "the throttled one is retried");
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_recipients_never_exceed_the_bound() {
        let store = MemoryStore::new();
        let gateway = RecordingGateway::new();
        gateway.set_delay(Duration::from_millis(5));
        room_of(&store, &room(), 10_000).await;
        let config = FanoutConfig {
            concurrency: 48,
            page_size: 333,
            ..FanoutConfig::default()
        };
        let counts = deliver(
            &store,
            &gateway,
            &Target::Room(room()),
            Bytes::from_static(b"x"),
            &config,
        )
        .await
        .unwrap();
        assert_eq!(counts.delivered, 10_000);
        assert_eq!(
            gateway.max_in_flight(),
            48,
            "the bound is used, and never exceeded"
        );
        let unique: std::collections::HashSet<_> =
            gateway.posts().into_iter().map(|(id, _)| id).collect();
        assert_eq!(unique.len(), 10_000, "each recipient gets exactly one post");
    }

    #[tokio::test(start_paused = true)]
    async fn every_target_kind_resolves_its_recipients() {
        let store = MemoryStore::new();
        let gateway = RecordingGateway::new();
        let members = room_of(&store, &room(), 3).await;
        let alice = connection("alice");
        store.add(&alice).await.unwrap();
        let config = FanoutConfig::default();
        let payload = Bytes::from_static(b"{}");

        let user = deliver(
            &store,
            &gateway,
            &Target::User("alice".into()),
            payload.clone(),
            &config,
        )
        .await
        .unwrap();
        assert_eq!(user.delivered, 1);
        let everyone = deliver(
            &store,
            &gateway,
            &Target::Broadcast,
            payload.clone(),
            &config,
        )
        .await
        .unwrap();
        assert_eq!(everyone.delivered, 4);
        let listed = Target::Connections(vec![members[0].clone(), ConnectionId::new("nope")]);
        gateway.script(&ConnectionId::new("nope"), Scripted::Gone);
        let some = deliver(&store, &gateway, &listed, payload, &config)
            .await
            .unwrap();
        assert_eq!(
            some,
            Counts {
                delivered: 1,
                gone: 1,
                failed: 0
            }
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let config = FanoutConfig::default();
        for attempt in 0..20 {
            let ceiling = config
                .base_backoff
                .saturating_mul(2u32.saturating_pow(attempt))
                .min(config.max_backoff);
            let waits: Vec<Duration> = (0..200).map(|_| backoff(&config, attempt)).collect();
            assert!(waits.iter().all(|wait| *wait <= ceiling));
            // Uniform in [0, ceiling]: 200 draws all in the lower half happen with
            // probability 2^-200, so this fails only when the waits do not spread.
            assert!(
                waits.iter().any(|wait| *wait > ceiling / 2),
                "attempt {attempt}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_post_waits_before_each_retry() {
        let store = MemoryStore::new();
        let gateway = RecordingGateway::new();
        let ids = room_of(&store, &room(), 1).await;
        gateway.script(&ids[0], Scripted::AlwaysThrottled);
        let config = FanoutConfig::default();
        let started = tokio::time::Instant::now();
        let counts = to_room(&store, &gateway, &config).await;
        assert_eq!(counts.failed, 1);
        // Four waits, each uniform up to 50, 100, 200, 400 ms: all four near zero has a
        // vanishing chance; none at all means the retries did not wait.
        assert!(started.elapsed() > Duration::from_millis(1));
        assert!(started.elapsed() <= Duration::from_millis(750));
    }
}
