//! Connection state: who is connected, which rooms they joined, and idempotency keys.
//!
//! [`ConnectionStore`] is the one interface the handlers use; [`MemoryStore`] implements it
//! in-process, and the Redis and DynamoDB stores implement the same trait for the hosts
//! that share state between processes. The trait is shaped for those backends:
//! - large sets (a room's members, everyone) are read in pages with an opaque cursor, since
//!   DynamoDB answers at most 1 MB per query and Redis must never send one giant reply;
//! - every record carries an expiry, because a crashed host never sends `$disconnect` and
//!   DynamoDB's TTL deletion lags: reads must skip expired records themselves;
//! - operations that touch several records are all-or-nothing in each backend.
//!
//! [`suite`] (feature `test-support`) is the behaviour every implementation must show, as
//! one test suite each backend runs against a real server.

mod dynamo;
mod memory;
mod redis;
#[cfg(any(test, feature = "test-support"))]
pub mod suite;

use std::time::Duration;

use async_trait::async_trait;

pub use dynamo::{ALL_SHARDS, DynamoStore, TABLE, TableSchema};
pub use memory::MemoryStore;
pub use redis::{RedisStore, manager_config as redis_manager_config, store_error as redis_error};

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

/// One page of a large set, with the cursor for the next page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// This page's items; may be fewer than asked for, even empty, while `next` is set.
    pub items: Vec<T>,
    /// Pass this back to read the next page; `None` when the set is exhausted.
    pub next: Option<String>,
}

/// Errors of the storage layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The connection does not exist (or has expired).
    #[error("connection not found")]
    NotFound,
    /// The backend could not be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend throttled the request past its retries.
    #[error("store throttled: {0}")]
    Throttled(String),
    /// A cursor that this store did not hand out.
    #[error("invalid cursor")]
    InvalidCursor,
    /// Any other backend failure.
    #[error("store error: {0}")]
    Backend(String),
}

/// The state Herald keeps about connections, rooms and publishes.
#[async_trait]
pub trait ConnectionStore: Send + Sync + 'static {
    /// Records a connection, replacing any record with the same id.
    async fn add(&self, connection: &Connection) -> Result<(), StoreError>;

    /// The live record of a connection, or `None` if it is unknown or expired.
    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError>;

    /// Moves a live connection's expiry to `expires_at`; `false` if it is unknown or expired.
    async fn refresh(&self, id: &ConnectionId, expires_at: i64) -> Result<bool, StoreError>;

    /// Forgets a connection and all its room memberships, returning the record it had.
    /// Removing an unknown connection is not an error: `$disconnect` may run twice.
    async fn remove(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError>;

    /// Adds a live connection to a room (idempotent); [`StoreError::NotFound`] if the
    /// connection is unknown or expired.
    async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<(), StoreError>;

    /// Removes a connection from a room; `true` if it was a member.
    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError>;

    /// The rooms a connection has joined.
    async fn rooms_of(&self, id: &ConnectionId) -> Result<Vec<RoomName>, StoreError>;

    /// A page of a room's live members, starting after `cursor`.
    async fn room_members(
        &self,
        room: &RoomName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError>;

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

    /// Claims a publish idempotency key for `window`. Returns `None` when this call claimed
    /// it (the publish goes ahead with `id`), or the id of the publish that claimed it first.
    async fn claim_idempotency_key(
        &self,
        key: &str,
        id: &str,
        window: Duration,
    ) -> Result<Option<String>, StoreError>;

    /// Gives back a key this publish claimed but could not complete, so a retry can run.
    /// Does nothing when the key is held by another id.
    async fn release_idempotency_key(&self, key: &str, id: &str) -> Result<(), StoreError>;
}

/// Opens a store that several processes share, as every Lambda function needs: the memory
/// store is refused, since each function instance would see only its own connections. The
/// DynamoDB table must exist (the SAM template creates it).
pub async fn open_shared(
    config: &crate::config::Config,
) -> Result<std::sync::Arc<dyn ConnectionStore>, crate::config::ConfigError> {
    if config.store == crate::config::StoreKind::Memory {
        return Err(crate::config::ConfigError::Invalid {
            var: "HERALD_STORE",
            reason: "the Lambda functions need a shared store: set it to dynamodb or redis".into(),
        });
    }
    open_with(config, false).await
}

/// Opens the store `config` names, creating the DynamoDB table if it is missing (what
/// `herald-local` does against DynamoDB Local).
pub async fn open(
    config: &crate::config::Config,
) -> Result<std::sync::Arc<dyn ConnectionStore>, crate::config::ConfigError> {
    open_with(config, true).await
}

async fn open_with(
    config: &crate::config::Config,
    create_table: bool,
) -> Result<std::sync::Arc<dyn ConnectionStore>, crate::config::ConfigError> {
    use crate::config::{ConfigError, StoreKind};
    match config.store {
        StoreKind::Memory => Ok(std::sync::Arc::new(MemoryStore::new())),
        StoreKind::Redis => {
            let url = config
                .redis_url
                .as_deref()
                .ok_or(ConfigError::Missing("HERALD_REDIS_URL"))?;
            let store = RedisStore::connect(url)
                .await
                .map_err(|e| ConfigError::Invalid {
                    var: "HERALD_REDIS_URL",
                    reason: format!("cannot reach Redis at {url}: {e}"),
                })?;
            Ok(std::sync::Arc::new(store))
        }
        StoreKind::DynamoDb => {
            let table = config
                .table
                .as_deref()
                .ok_or(ConfigError::Missing("HERALD_TABLE"))?;
            let sdk = dynamo_sdk_config(config.dynamodb_endpoint.as_deref()).await;
            let store = DynamoStore::new(&sdk, table, config.room_shards);
            if create_table {
                store
                    .create_table_if_missing()
                    .await
                    .map_err(|e| ConfigError::Invalid {
                        var: "HERALD_TABLE",
                        reason: format!("cannot create or reach table {table}: {e}"),
                    })?;
            }
            Ok(std::sync::Arc::new(store))
        }
    }
}

/// SDK settings for DynamoDB: the default chain on AWS; against a loopback endpoint
/// (DynamoDB Local, a test server), fixed dummy credentials, since those accept any.
async fn dynamo_sdk_config(endpoint: Option<&str>) -> aws_config::SdkConfig {
    let local = endpoint.is_some_and(|e| {
        e.starts_with("http://127.")
            || e.starts_with("http://localhost")
            || e.starts_with("http://[::1]")
    });
    match endpoint {
        Some(endpoint) if local => local_sdk_config(endpoint),
        _ => aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await,
    }
}

/// SDK settings for a local DynamoDB-compatible server at `endpoint`: fixed dummy
/// credentials and region, nothing read from the environment.
pub fn local_sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    let credentials =
        aws_sdk_dynamodb::config::Credentials::new("local", "local", None, None, "herald-local");
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            credentials,
        ))
        .build()
}
