//! `DynamoStore`: connection state in one DynamoDB table, for the Lambda functions.
//!
//! # Table and access patterns
//!
//! One table, keys `pk` / `sk` (strings), one global secondary index `by_user`
//! (`gsi1pk` / `gsi1sk`, projecting `expires_at`), TTL on `ttl` (epoch seconds), on-demand
//! billing. [`TABLE`] describes it (`schema.rs`); `herald-local` creates it from that description and the
//! SAM template must match it.
//!
//! | item | `pk` | `sk` | other attributes | pattern it serves |
//! |---|---|---|---|---|
//! | connection | `conn#ID` | `meta` | `user`, `ip`, `connected_at`, `expires_at`, `instance`, `ttl`, `gsi1pk = user#USER`, `gsi1sk = conn#ID` | get a connection (GetItem); a user's connections (Query `by_user`) |
//! | room of a connection | `conn#ID` | `room#ROOM` | `expires_at`, `ttl` | a connection's rooms (Query `pk`, `sk` begins with `room#`) |
//! | member of a room | `room#ROOM#SHARD` | `conn#ID` | `expires_at`, `ttl` | a room's members (Query per shard, paged) |
//! | member of everyone | `all#SHARD` | `conn#ID` | `expires_at`, `ttl` | broadcast (Query per shard, paged) |
//! | idempotency key | `idem#KEY` | `idem` | `id`, `expires_at`, `ttl` | claim a key (conditional PutItem) |
//! | event counter | `events#KEY#WINDOW` | `events` | `count`, `ttl` | count a socket publish in its window (one conditional UpdateItem) |
//! | history position | `hist#CHANNEL` | `pos` | `offset`, `epoch`, `expires_at`, `ttl` | take the next offset (one conditional UpdateItem); read the position (GetItem) |
//! | history entry | `hist#CHANNEL` | `o#OFFSET` (20 digits) | `body`, `expires_at`, `ttl` | keep a notification (PutItem); replay after an offset (Query `sk` BETWEEN) |
//! | room count (when counted) | `count#ROOM` | `count` | `count` | a room's first and last member (one `ADD` per membership created or deleted; deleted at zero) |
//!
//! Recipients are always read with Query, page by page (`LastEvaluatedKey`), never Scan: a
//! room publish reads exactly its members, however many pages they fill. A cursor names the
//! shard and the last key read.
//!
//! TTL deletion lags (up to days), so every read filters `expires_at > now` itself.
//!
//! No write is a transaction (a transaction costs two write units per item, and
//! `moto_server` copies the table for each, failing concurrent ones): a connection and its
//! broadcast item, a join's two membership items, a leave's, and a removal's many are
//! written with `BatchWriteItem`, retrying `UnprocessedItems` with backoff. What that gives
//! up is harmless: a join checks the connection is live first, and one that races the
//! connection's removal may leave its two items behind; they carry the connection's
//! expiry (reads skip them after it), and the first post to the connection answers 410,
//! whose clean-up removes them. A connect whose second item fails deletes the first.
//!
//! # Broadcast: a sharded "all" partition
//!
//! Broadcast reads `all#0` … `all#15` with Query. A Scan would read every item of the
//! table — with 100,000 connections in three rooms each, about 400,000 items (~80 MB, some
//! 10,000 read units eventually consistent) — to find 100,000 small ones; the sharded
//! items are ~10 MB (~1,250 units). Sixteen shards keep each partition far below its 1,000
//! writes/s when connections churn at up to 16,000/s, at one extra item per connection
//! written in the same batch.
//!
//! # Hot rooms
//!
//! A room's members live under `room#ROOM#SHARD` with `room_shards` shards (default 1,
//! `HERALD_ROOM_SHARDS`). One partition takes about 1,000 writes/s and 3,000 strongly
//! consistent reads/s of 4 KB: joins to one room past ~1,000/s, or publishes to a room of
//! 100,000 members (~10 MB, ~2,500 read units per publish) more than about once a second,
//! call for more shards; the rest of the code does not change, since reads page through
//! every shard. Members are assigned a shard by a hash of their connection id.
//!
//! # Layout
//!
//! | file | what |
//! |---|---|
//! | `dynamo/mod.rs` | [`DynamoStore`], its settings and client, batched writes |
//! | `dynamo/schema.rs` | [`TABLE`], table creation with TTL |
//! | `dynamo/keys.rs` | typed key builders and attribute names, shards |
//! | `dynamo/paging.rs` | Query page by page across shards, cursors |
//! | `dynamo/errors.rs` | SDK errors as `StoreError`s, conditional writes |
//! | `dynamo/connections.rs` | the `ConnectionStore` implementation |
//! | `dynamo/history.rs` | rooms' and users' history: positions and entries |
//! | `dynamo/room_counts.rs` | rooms' member counts, when the store counts rooms |

mod connections;
mod counters;
mod errors;
mod history;
mod keys;
mod paging;
mod room_counts;
mod schema;
#[cfg(test)]
mod tests;

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::types::{DeleteRequest, PutRequest, WriteRequest};

pub use schema::{TABLE, TableSchema};

use errors::{BACKEND, build_error, store_error};
use keys::{Item, Key};

use super::StoreError;
use crate::error;
use crate::ids::ConnectionId;

/// Shards of the "all" partition.
pub const ALL_SHARDS: u32 = 16;
/// Items per `BatchWriteItem`, DynamoDB's maximum.
const BATCH: usize = 25;
/// Retries of a batch's unprocessed items before the write counts as throttled.
const BATCH_RETRIES: u32 = 8;
/// The first retry of unprocessed items waits up to this long, each later one twice as long.
const BATCH_BACKOFF: Duration = Duration::from_millis(25);
/// How long connecting to DynamoDB may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one attempt of a call may take, unless configured
/// (`HERALD_DYNAMODB_ATTEMPT_TIMEOUT_MS`).
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a call may take with its retries, unless configured
/// (`HERALD_DYNAMODB_TIMEOUT_MS`).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(8);
/// Attempts per call, the first included.
const ATTEMPTS: u32 = 3;

/// How long the DynamoDB store waits for an answer before it counts the store unavailable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DynamoTimeouts {
    /// One attempt of a call.
    pub attempt: Duration,
    /// A call with its retries.
    pub call: Duration,
}

impl Default for DynamoTimeouts {
    fn default() -> Self {
        Self {
            attempt: DEFAULT_ATTEMPT_TIMEOUT,
            call: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// Where the DynamoDB store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamoSettings {
    /// The table.
    pub table: String,
    /// Another endpoint than AWS's (DynamoDB Local, a test server); on loopback it gets
    /// fixed dummy credentials.
    pub endpoint: Option<String>,
    /// Partitions each room's members are spread over.
    pub room_shards: u32,
    /// Create the table when it is missing (`herald-local`); on AWS the template does.
    pub create_table: bool,
    /// How long calls may take.
    pub timeouts: DynamoTimeouts,
    /// Count each room's members (`room_counts.rs`), so joins, leaves and removals answer
    /// rooms' first and last members (the room webhooks) and presence reads a room's count
    /// instead of its items: one more write unit per join and leave, so the configuration
    /// asks for it only when a room event is wanted.
    pub count_rooms: bool,
}

/// [`ConnectionStore`](super::ConnectionStore) on DynamoDB.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    room_shards: u32,
    count_rooms: bool,
}

impl DynamoStore {
    /// A store on `table`, with clients built from `sdk` (which honours
    /// `AWS_ENDPOINT_URL_DYNAMODB`). Calls time out after a few seconds instead of hanging.
    pub fn new(sdk: &SdkConfig, table: &str, room_shards: u32) -> Self {
        Self::with_timeouts(sdk, table, room_shards, DynamoTimeouts::default())
    }

    /// [`DynamoStore::new`] whose calls time out after `timeouts`.
    pub fn with_timeouts(
        sdk: &SdkConfig,
        table: &str,
        room_shards: u32,
        timeouts: DynamoTimeouts,
    ) -> Self {
        let config = aws_sdk_dynamodb::config::Builder::from(sdk)
            .retry_config(RetryConfig::standard().with_max_attempts(ATTEMPTS))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(timeouts.attempt)
                    .operation_timeout(timeouts.call)
                    .build(),
            )
            .build();
        Self {
            client: Client::from_conf(config),
            table: table.to_owned(),
            room_shards: room_shards.max(1),
            count_rooms: false,
        }
    }

    /// The store counting each room's members (or not).
    pub fn counting_rooms(mut self, count: bool) -> Self {
        self.count_rooms = count;
        self
    }

    /// The store `settings` describe, its table created first when they ask for it.
    pub async fn open(settings: &DynamoSettings) -> Result<Self, StoreError> {
        let sdk = crate::aws::sdk_config(settings.endpoint.as_deref()).await;
        let store = Self::with_timeouts(
            &sdk,
            &settings.table,
            settings.room_shards,
            settings.timeouts,
        )
        .counting_rooms(settings.count_rooms);
        if settings.create_table {
            store.create_table_if_missing().await?;
        }
        Ok(store)
    }

    /// The client, for tests that inspect the table.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Puts `item` unless an item with its key is still live (its `expires_at` after
    /// `now`); `false` when one was. The one write that both claims an idempotency key and
    /// starts a history position again.
    async fn put_unless_live(&self, item: Item, now: i64) -> Result<bool, StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(format!(
                "attribute_not_exists({}) OR {} <= :now",
                TABLE.partition_key,
                keys::attr::EXPIRES_AT
            ))
            .expression_attribute_values(":now", keys::n(now))
            .send()
            .await;
        Ok(errors::unless_condition_failed(put)?.is_some())
    }

    /// Puts `items` with `BatchWriteItem` (one write unit per item, where a transaction
    /// costs two), retrying unprocessed items with backoff.
    async fn put_many(&self, items: Vec<Item>) -> Result<(), StoreError> {
        let requests = items
            .into_iter()
            .map(|item| {
                PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map(|p| WriteRequest::builder().put_request(p).build())
                    .map_err(build_error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.write_many(requests).await
    }

    /// Deletes `keys` with `BatchWriteItem`, retrying unprocessed items with backoff.
    async fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        let requests = keys
            .iter()
            .map(|key| {
                DeleteRequest::builder()
                    .set_key(Some(key.item()))
                    .build()
                    .map(|d| WriteRequest::builder().delete_request(d).build())
                    .map_err(build_error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.write_many(requests).await
    }

    /// Runs `requests` in batches of [`BATCH`], retrying unprocessed items with backoff.
    async fn write_many(&self, requests: Vec<WriteRequest>) -> Result<(), StoreError> {
        for chunk in requests.chunks(BATCH) {
            let mut requests = chunk.to_vec();
            let mut attempt = 0u32;
            while !requests.is_empty() {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .send()
                    .await
                    .map_err(store_error)?;
                requests = out
                    .unprocessed_items()
                    .and_then(|u| u.get(&self.table))
                    .cloned()
                    .unwrap_or_default();
                if !requests.is_empty() {
                    attempt += 1;
                    if attempt > BATCH_RETRIES {
                        return Err(StoreError::Throttled {
                            backend: BACKEND,
                            source: error::because(format!(
                                "items left unprocessed after {BATCH_RETRIES} retries"
                            )),
                        });
                    }
                    let ceiling = BATCH_BACKOFF * (1 << attempt.min(6));
                    tokio::time::sleep(ceiling.mul_f64(fastrand::f64())).await;
                }
            }
        }
        Ok(())
    }

    /// The keys of every item that carries a copy of the connection's expiry: its
    /// broadcast item, and for each room it joined, both membership items.
    async fn expiry_copies(&self, id: &ConnectionId) -> Result<Vec<Key>, StoreError> {
        let mut keys = vec![Key::everyone(keys::shard_of(id, ALL_SHARDS), id)];
        let shard = keys::shard_of(id, self.room_shards);
        for room in self.room_items_of(id).await? {
            keys.push(Key::room_of(id, &room));
            keys.push(Key::member(&room, shard, id));
        }
        Ok(keys)
    }
}
