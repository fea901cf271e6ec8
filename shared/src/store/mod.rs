//! Connection state: who is connected, which rooms they joined, idempotency keys, and the
//! history of every room and user inbox ([`history`]).
//!
//! [`ConnectionStore`] is what the handlers hold: three traits, one per concern —
//! [`Connections`] (connections and their rooms), [`History`] (rooms' and users' history),
//! [`Counters`] (idempotency keys and rate counters). [`MemoryStore`] implements them
//! in-process, and the Redis and DynamoDB stores implement the same traits for the hosts
//! that share state between processes, each concern in a file of its own. The traits are
//! shaped for those backends:
//! - large sets (a room's members, everyone) are read in pages with an opaque cursor, since
//!   DynamoDB answers at most 1 MB per query and Redis must never send one giant reply;
//! - every record carries an expiry, because a crashed host never sends `$disconnect` and
//!   DynamoDB's TTL deletion lags: reads must skip expired records themselves;
//! - operations that touch several records are all-or-nothing in each backend.
//!
//! [`presence`] reads who is in a room through the traits (`presence.rs`).
//!
//! [`suite`] (feature `test-support`) is the behaviour every implementation must show, as
//! one test suite each backend runs against a real server.

#[macro_use]
mod forwarding;
mod dynamo;
pub mod history;
mod memory;
mod presence;
mod redis;
#[cfg(any(test, feature = "test-support"))]
pub mod suite;

use std::sync::Arc;
use std::time::Duration;

pub use dynamo::{ALL_SHARDS, DynamoSettings, DynamoStore, DynamoTimeouts, TABLE, TableSchema};
pub use history::{Channel, Draft, Entry, HistoryRead, Position, Range, Retention};
pub use memory::MemoryStore;
pub use presence::presence;
pub use redis::{
    DEFAULT_PREFIX as REDIS_DEFAULT_PREFIX, RedisLink, RedisNodes, RedisSettings, RedisStore,
    slot_of, tag_in_slot,
};

use crate::error::Source;
use crate::ids::ConnectionId;
use crate::protocol::RoomName;

/// One live connection as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// API Gateway's connection id.
    pub id: ConnectionId,
    /// The token's `sub`.
    pub user: String,
    /// The client's address, when known.
    pub source_ip: Option<String>,
    /// When the socket opened, ms since the epoch.
    pub connected_at: i64,
    /// After this instant (ms since the epoch) the record counts as gone.
    pub expires_at: i64,
    /// The `herald-local` instance holding the socket, when several share a store (on
    /// AWS, API Gateway holds every socket and this is `None`).
    pub instance: Option<String>,
}

/// What a removal did: the record it forgot (live ones only) and the rooms it left
/// without members.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// The record, when it was live.
    pub connection: Option<Connection>,
    /// The rooms whose last member this connection was (on stores that count members;
    /// DynamoDB does not, and names none).
    pub emptied: Vec<RoomName>,
}

/// What a leave did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Left {
    /// The connection was a member.
    pub was_member: bool,
    /// It was the room's last member (on stores that count members).
    pub emptied: bool,
}

/// One page of a large set, with the cursor for the next page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// This page's items; may be fewer than asked for, even empty, while `next` is set.
    pub items: Vec<T>,
    /// Pass this back to read the next page; `None` when the set is exhausted.
    pub next: Option<String>,
}

/// Errors of the storage layer. A backend's failure keeps the backend's own error as its
/// source; the variant says what a caller can do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The connection does not exist (or has expired).
    #[error("connection not found")]
    NotFound,
    /// The backend could not be reached or did not answer in time.
    #[error("{backend} unavailable: {source}")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// Its error.
        #[source]
        source: Source,
    },
    /// The backend throttled the request past its retries.
    #[error("{backend} throttled: {source}")]
    Throttled {
        /// Which backend.
        backend: &'static str,
        /// Its error.
        #[source]
        source: Source,
    },
    /// A cursor that this store did not hand out.
    #[error("invalid cursor")]
    InvalidCursor,
    /// Any other backend failure, or settings the backend cannot use.
    #[error("{backend} failed: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// Its error.
        #[source]
        source: Source,
    },
}

impl StoreError {
    /// Whether the backend could not be reached: the one failure a caller may wait out.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

store_trait! {
    overridable
    /// Connections and the rooms they joined: who is where, read in pages.
    pub trait Connections {
        /// Records a connection, replacing any record with the same id.
        async fn add(&self, connection: &Connection) -> Result<(), StoreError>;

        /// The live record of a connection, or `None` if it is unknown or expired.
        async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError>;

        /// Moves a live connection's expiry to `expires_at`; `false` if it is unknown or
        /// expired.
        async fn refresh(&self, id: &ConnectionId, expires_at: i64) -> Result<bool, StoreError>;

        /// Forgets a connection and all its room memberships: the record it had, and the
        /// rooms left empty. Removing an unknown connection is not an error: `$disconnect`
        /// may run twice.
        async fn remove(&self, id: &ConnectionId) -> Result<Removed, StoreError>;

        /// Adds a live connection to a room (idempotent); `true` when the room had no
        /// member before (each transition answered `true` once, across every host, on
        /// the stores that count members; DynamoDB does not, and answers `false`).
        /// [`StoreError::NotFound`] if the connection is unknown or expired.
        async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError>;

        /// Removes a connection from a room: whether it was a member, and whether the room
        /// is left without members.
        async fn leave(&self, id: &ConnectionId, room: &RoomName) -> Result<Left, StoreError>;

        /// The rooms a connection has joined.
        async fn rooms_of(&self, id: &ConnectionId) -> Result<Vec<RoomName>, StoreError>;

        /// A page of a room's live members, starting after `cursor`.
        async fn room_members(
            &self,
            room: &RoomName,
            cursor: Option<&str>,
            limit: usize,
        ) -> Result<Page<ConnectionId>, StoreError>;

        /// How many members `room` has (everyone in the store for `None`), expired ones
        /// possibly included, when the backend can count them in one cheap step; `None`
        /// when it would have to read them all (DynamoDB), so the caller reads a page.
        async fn member_count(&self, room: Option<&RoomName>) -> Result<Option<u64>, StoreError>;

        /// A user's live connections (bounded by the per-user limit, so never paged).
        async fn user_connections(&self, user: &str) -> Result<Vec<ConnectionId>, StoreError>;

        /// How many live connections a user has.
        async fn count_user(&self, user: &str) -> Result<usize, StoreError>;

        /// A page of every live connection, starting after `cursor`.
        async fn all_connections(
            &self,
            cursor: Option<&str>,
            limit: usize,
        ) -> Result<Page<ConnectionId>, StoreError>;

        /// The instance named by each connection's record (`None` for unknown ones and for
        /// records without one), in order. Backends that can, answer in one round trip.
        async fn instances(
            &self,
            ids: &[ConnectionId],
        ) -> Result<Vec<Option<String>>, StoreError>;
    }
}

store_trait! {
    forwarded
    /// Every room's and user's history: offsets, epochs, kept notifications.
    pub trait History {
        /// Appends a notification to `channel`'s history: takes the channel's next offset,
        /// keeps `draft` assembled at that position, drops what `retention` no longer
        /// keeps, and answers the position. One atomic step in each backend, so concurrent
        /// appends take distinct offsets with no gaps.
        async fn append(
            &self,
            channel: &Channel,
            draft: &Draft,
            retention: &Retention,
        ) -> Result<Position, StoreError>;

        /// Up to `limit` kept entries of `channel` in `range`, oldest first, with the
        /// channel's position. A channel never published to is given a counter at 0 and an
        /// epoch here, so a client that subscribed before the first publish can recover
        /// from that position.
        async fn read_history(
            &self,
            channel: &Channel,
            range: Range,
            limit: usize,
            retention: &Retention,
        ) -> Result<HistoryRead, StoreError>;
    }
}

store_trait! {
    forwarded
    /// Publish idempotency keys and event counters: what every host sharing the store must
    /// agree on in one atomic step.
    pub trait Counters {
        /// Claims a publish idempotency key for `window`. Returns `None` when this call
        /// claimed it (the publish goes ahead with `id`), or the id of the publish that
        /// claimed it first.
        async fn claim_idempotency_key(
            &self,
            key: &str,
            id: &str,
            window: Duration,
        ) -> Result<Option<String>, StoreError>;

        /// Gives back a key this publish claimed but could not complete, so a retry can
        /// run. Does nothing when the key is held by another id.
        async fn release_idempotency_key(&self, key: &str, id: &str) -> Result<(), StoreError>;

        /// Counts `events` events under `key` in the current window of `window` (windows
        /// are aligned to the epoch, so every host agrees where one ends) when they fit
        /// within `limit`, and answers whether they did; events that do not fit are not
        /// counted. One atomic step in each backend, shared by every host on the store: the
        /// per-user rate of socket publishes, a room's publish rate, the deployment's
        /// `@connections` budget.
        async fn count_events(
            &self,
            key: &str,
            window: Duration,
            events: u32,
            limit: u32,
        ) -> Result<bool, StoreError>;
    }
}

/// Everything Herald keeps, as the handlers hold it: one backend's three concerns.
pub trait ConnectionStore: Connections + History + Counters {}

impl<T: Connections + History + Counters + ?Sized> ConnectionStore for T {}

/// [`Connections::instances`] for a backend that reads them one record at a time.
pub(crate) async fn instances_one_by_one(
    store: &(impl Connections + ?Sized),
    ids: &[ConnectionId],
) -> Result<Vec<Option<String>>, StoreError> {
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        found.push(store.get(id).await?.and_then(|c| c.instance));
    }
    Ok(found)
}

/// Which store to open, with that backend's own settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSettings {
    /// In this process only.
    Memory,
    /// A Redis server.
    Redis(RedisSettings),
    /// A DynamoDB table.
    Dynamo(DynamoSettings),
}

/// Opens the store `settings` name.
pub async fn open(settings: &StoreSettings) -> Result<Arc<dyn ConnectionStore>, StoreError> {
    Ok(match settings {
        StoreSettings::Memory => Arc::new(MemoryStore::new()),
        StoreSettings::Redis(redis) => Arc::new(RedisStore::open(redis).await?),
        StoreSettings::Dynamo(dynamo) => Arc::new(DynamoStore::open(dynamo).await?),
    })
}

/// The current window of `window` at `now_ms`, and the instant (ms) it ends.
pub(crate) fn current_window(now_ms: i64, window: Duration) -> (i64, i64) {
    let width = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
    let index = now_ms.div_euclid(width);
    (index, index.saturating_add(1).saturating_mul(width))
}
