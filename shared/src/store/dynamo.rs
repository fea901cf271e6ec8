//! `DynamoStore`: connection state in one DynamoDB table, for the Lambda functions.
//!
//! # Table and access patterns
//!
//! One table, keys `pk` / `sk` (strings), one global secondary index `by_user`
//! (`gsi1pk` / `gsi1sk`, projecting `expires_at`), TTL on `ttl` (epoch seconds), on-demand
//! billing. [`TABLE`] describes it; `herald-local` creates it from that description and the
//! SAM template must match it.
//!
//! | item | `pk` | `sk` | other attributes | pattern it serves |
//! |---|---|---|---|---|
//! | connection | `conn#ID` | `meta` | `user`, `ip`, `connected_at`, `expires_at`, `instance`, `ttl`, `gsi1pk = user#USER`, `gsi1sk = conn#ID` | get a connection (GetItem); a user's connections (Query `by_user`) |
//! | room of a connection | `conn#ID` | `room#ROOM` | `expires_at`, `ttl` | a connection's rooms (Query `pk`, `sk` begins with `room#`) |
//! | member of a room | `room#ROOM#SHARD` | `conn#ID` | `expires_at`, `ttl` | a room's members (Query per shard, paged) |
//! | member of everyone | `all#SHARD` | `conn#ID` | `expires_at`, `ttl` | broadcast (Query per shard, paged) |
//! | idempotency key | `idem#KEY` | `idem` | `id`, `expires_at`, `ttl` | claim a key (conditional PutItem) |
//!
//! Recipients are always read with Query, page by page (`LastEvaluatedKey`), never Scan: a
//! room publish reads exactly its members, however many pages they fill. A cursor names the
//! shard and the last key read.
//!
//! TTL deletion lags (up to days), so every read filters `expires_at > now` itself.
//!
//! Writes that must be all-or-nothing are transactions: a connection with its broadcast
//! item; a join (a condition that the connection is live, plus both membership items); a
//! leave. Removing a connection deletes many items with `BatchWriteItem`, retrying
//! `UnprocessedItems` with backoff.
//!
//! # Broadcast: a sharded "all" partition
//!
//! Broadcast reads `all#0` … `all#15` with Query. A Scan would read every item of the
//! table — with 100,000 connections in three rooms each, about 400,000 items (~80 MB, some
//! 10,000 read units eventually consistent) — to find 100,000 small ones; the sharded
//! items are ~10 MB (~1,250 units). Sixteen shards keep each partition far below its 1,000
//! writes/s when connections churn at up to 16,000/s, at one extra item per connection
//! written in the same transaction.
//!
//! # Hot rooms
//!
//! A room's members live under `room#ROOM#SHARD` with `room_shards` shards (default 1,
//! `HERALD_ROOM_SHARDS`). One partition takes about 1,000 writes/s and 3,000 strongly
//! consistent reads/s of 4 KB: joins to one room past ~1,000/s, or publishes to a room of
//! 100,000 members (~10 MB, ~2,500 read units per publish) more than about once a second,
//! call for more shards; the rest of the code does not change, since reads page through
//! every shard. Members are assigned a shard by a hash of their connection id.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, DeleteRequest,
    GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType, Put,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TransactWriteItem, WriteRequest,
};
use serde::{Deserialize, Serialize};

use super::{Connection, ConnectionStore, Page, StoreError};
use crate::ids::{ConnectionId, now_ms};
use crate::protocol::RoomName;

/// The table's shape, shared by table creation, the SAM template and their comparison.
pub struct TableSchema {
    /// Partition key attribute.
    pub partition_key: &'static str,
    /// Sort key attribute.
    pub sort_key: &'static str,
    /// The one global secondary index.
    pub index: &'static str,
    /// Its partition key attribute.
    pub index_partition_key: &'static str,
    /// Its sort key attribute.
    pub index_sort_key: &'static str,
    /// Non-key attributes the index projects.
    pub index_projects: &'static [&'static str],
    /// The TTL attribute (epoch seconds).
    pub ttl_attribute: &'static str,
}

/// Herald's table.
pub const TABLE: TableSchema = TableSchema {
    partition_key: "pk",
    sort_key: "sk",
    index: "by_user",
    index_partition_key: "gsi1pk",
    index_sort_key: "gsi1sk",
    index_projects: &["expires_at"],
    ttl_attribute: "ttl",
};

/// Shards of the "all" partition.
pub const ALL_SHARDS: u32 = 16;
/// Items per `BatchWriteItem`, DynamoDB's maximum.
const BATCH: usize = 25;

/// [`ConnectionStore`] on DynamoDB.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    room_shards: u32,
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Maps an SDK error: throttling, unreachable endpoints and timeouts each have their kind.
fn store_error<E, R>(error: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let text = aws_sdk_dynamodb::error::DisplayErrorContext(&error).to_string();
    match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            StoreError::Unavailable(format!("dynamodb: {text}"))
        }
        _ => match error.code() {
            Some(
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded",
            ) => StoreError::Throttled(format!("dynamodb: {text}")),
            _ => StoreError::Backend(format!("dynamodb: {text}")),
        },
    }
}

fn build_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("dynamodb request: {e}"))
}

/// A stable shard for `id` among `shards` (FNV-1a, so every process agrees).
fn shard_of(id: &ConnectionId, shards: u32) -> u32 {
    let hash = id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    u32::try_from(hash % u64::from(shards.max(1))).unwrap_or(0)
}

/// Where a paged read goes on: a shard, and the last key read in it (none: its start).
#[derive(Serialize, Deserialize)]
struct Cursor {
    shard: u32,
    #[serde(default)]
    after: Option<(String, String)>,
}

impl DynamoStore {
    /// A store on `table`, with clients built from `sdk` (which honours
    /// `AWS_ENDPOINT_URL_DYNAMODB`). Calls time out after a few seconds instead of hanging.
    pub fn new(sdk: &SdkConfig, table: &str, room_shards: u32) -> Self {
        let config = aws_sdk_dynamodb::config::Builder::from(sdk)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(1))
                    .operation_attempt_timeout(Duration::from_secs(3))
                    .operation_timeout(Duration::from_secs(8))
                    .build(),
            )
            .build();
        Self {
            client: Client::from_conf(config),
            table: table.to_owned(),
            room_shards: room_shards.max(1),
        }
    }

    /// Creates the table as [`TABLE`] describes it, unless it exists, and waits until it is
    /// active with TTL on.
    pub async fn create_table_if_missing(&self) -> Result<(), StoreError> {
        let exists = match self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(_) => true,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                false
            }
            Err(e) => return Err(store_error(e)),
        };
        if !exists {
            let key = |name: &str, kind: KeyType| {
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(kind)
                    .build()
                    .map_err(build_error)
            };
            let attribute = |name: &str| {
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(build_error)
            };
            let index = GlobalSecondaryIndex::builder()
                .index_name(TABLE.index)
                .key_schema(key(TABLE.index_partition_key, KeyType::Hash)?)
                .key_schema(key(TABLE.index_sort_key, KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::Include)
                        .set_non_key_attributes(Some(
                            TABLE
                                .index_projects
                                .iter()
                                .map(|a| (*a).to_owned())
                                .collect(),
                        ))
                        .build(),
                )
                .build()
                .map_err(build_error)?;
            let created = self
                .client
                .create_table()
                .table_name(&self.table)
                .billing_mode(BillingMode::PayPerRequest)
                .key_schema(key(TABLE.partition_key, KeyType::Hash)?)
                .key_schema(key(TABLE.sort_key, KeyType::Range)?)
                .attribute_definitions(attribute(TABLE.partition_key)?)
                .attribute_definitions(attribute(TABLE.sort_key)?)
                .attribute_definitions(attribute(TABLE.index_partition_key)?)
                .attribute_definitions(attribute(TABLE.index_sort_key)?)
                .global_secondary_indexes(index)
                .send()
                .await;
            match created {
                Ok(_) => {}
                // Another process created it meanwhile.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_resource_in_use_exception()) => {}
                Err(e) => return Err(store_error(e)),
            }
        }
        for _ in 0..100 {
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(store_error)?;
            if described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ttl = self
            .client
            .describe_time_to_live()
            .table_name(&self.table)
            .send()
            .await
            .map_err(store_error)?;
        let enabled = ttl
            .time_to_live_description()
            .and_then(|d| d.attribute_name())
            == Some(TABLE.ttl_attribute);
        if !enabled {
            self.client
                .update_time_to_live()
                .table_name(&self.table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .enabled(true)
                        .attribute_name(TABLE.ttl_attribute)
                        .build()
                        .map_err(build_error)?,
                )
                .send()
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    /// The client, for tests that inspect the table.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn key(pk: String, sk: String) -> HashMap<String, AttributeValue> {
        HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
    }

    fn conn_pk(id: &ConnectionId) -> String {
        format!("conn#{id}")
    }

    fn room_pk(&self, room: &RoomName, shard: u32) -> String {
        format!("room#{room}#{shard}")
    }

    fn expiry(expires_at: i64) -> [(String, AttributeValue); 2] {
        [
            ("expires_at".to_owned(), n(expires_at)),
            // TTL is in seconds; round up so the item never disappears before it expires.
            ("ttl".to_owned(), n(expires_at.div_euclid(1000) + 1)),
        ]
    }

    fn put(&self, item: HashMap<String, AttributeValue>) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .build()
                    .map_err(build_error)?,
            )
            .build())
    }

    fn delete(
        &self,
        key: HashMap<String, AttributeValue>,
    ) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .delete(
                Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(key))
                    .build()
                    .map_err(build_error)?,
            )
            .build())
    }

    /// Pages through the partitions `pk_of(0..shards)` in order, live items only.
    async fn sharded_page(
        &self,
        shards: u32,
        pk_of: impl Fn(u32) -> String,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        let mut at = match cursor {
            None => Cursor {
                shard: 0,
                after: None,
            },
            Some(text) => serde_json::from_str(text).map_err(|_| StoreError::InvalidCursor)?,
        };
        if at.shard >= shards {
            return Err(StoreError::InvalidCursor);
        }
        let limit = i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000);
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .filter_expression("expires_at > :now")
                .expression_attribute_values(":pk", s(pk_of(at.shard)))
                .expression_attribute_values(":now", n(now_ms()))
                .set_exclusive_start_key(at.after.take().map(|(pk, sk)| Self::key(pk, sk)))
                .limit(limit)
                .send()
                .await
                .map_err(store_error)?;
            let items: Vec<ConnectionId> = out
                .items()
                .iter()
                .filter_map(|item| {
                    let sk = item.get("sk")?.as_s().ok()?;
                    sk.strip_prefix("conn#").map(ConnectionId::new)
                })
                .collect();
            let text = |key: &HashMap<String, AttributeValue>, k: &str| {
                key.get(k)
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default()
            };
            let next = match out.last_evaluated_key() {
                Some(key) => Some(Cursor {
                    shard: at.shard,
                    after: Some((text(key, "pk"), text(key, "sk"))),
                }),
                None if at.shard + 1 < shards => Some(Cursor {
                    shard: at.shard + 1,
                    after: None,
                }),
                None => None,
            };
            match next {
                // Nothing live on this page: go on rather than hand back an empty page.
                Some(next) if items.is_empty() => at = next,
                next => {
                    return Ok(Page {
                        items,
                        next: next.map(|c| serde_json::to_string(&c).expect("cursors serialize")),
                    });
                }
            }
        }
    }

    /// Deletes `keys` with `BatchWriteItem`, retrying unprocessed items with backoff.
    async fn delete_many(
        &self,
        keys: Vec<HashMap<String, AttributeValue>>,
    ) -> Result<(), StoreError> {
        for chunk in keys.chunks(BATCH) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|key| {
                    DeleteRequest::builder()
                        .set_key(Some(key.clone()))
                        .build()
                        .map(|d| WriteRequest::builder().delete_request(d).build())
                        .map_err(build_error)
                })
                .collect::<Result<_, _>>()?;
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
                    if attempt > 8 {
                        return Err(StoreError::Throttled(
                            "dynamodb: items left unprocessed after 8 retries".into(),
                        ));
                    }
                    let ceiling = Duration::from_millis(25 << attempt.min(6));
                    tokio::time::sleep(ceiling.mul_f64(fastrand::f64())).await;
                }
            }
        }
        Ok(())
    }

    /// The keys of every item that carries a copy of the connection's expiry: its
    /// broadcast item, and for each room it joined, both membership items.
    async fn expiry_copies(
        &self,
        id: &ConnectionId,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let pk = Self::conn_pk(id);
        let mut keys = vec![Self::key(
            format!("all#{}", shard_of(id, ALL_SHARDS)),
            pk.clone(),
        )];
        for room in self.room_keys_of(id).await? {
            keys.push(Self::key(pk.clone(), format!("room#{room}")));
            keys.push(Self::key(
                self.room_pk(&room, shard_of(id, self.room_shards)),
                pk.clone(),
            ));
        }
        Ok(keys)
    }

    async fn room_keys_of(&self, id: &ConnectionId) -> Result<Vec<RoomName>, StoreError> {
        let mut rooms = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :room)")
                .expression_attribute_values(":pk", s(Self::conn_pk(id)))
                .expression_attribute_values(":room", s("room#"))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(store_error)?;
            rooms.extend(out.items().iter().filter_map(|item| {
                let sk = item.get("sk")?.as_s().ok()?;
                RoomName::parse(sk.strip_prefix("room#")?).ok()
            }));
            match out.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => return Ok(rooms),
            }
        }
    }

    async fn user_query(&self, user: &str) -> Result<Vec<ConnectionId>, StoreError> {
        let mut ids = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(TABLE.index)
                .key_condition_expression("gsi1pk = :user")
                .filter_expression("expires_at > :now")
                .expression_attribute_values(":user", s(format!("user#{user}")))
                .expression_attribute_values(":now", n(now_ms()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(store_error)?;
            ids.extend(out.items().iter().filter_map(|item| {
                item.get("pk")?
                    .as_s()
                    .ok()?
                    .strip_prefix("conn#")
                    .map(ConnectionId::new)
            }));
            match out.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => return Ok(ids),
            }
        }
    }
}

fn parse_connection(
    id: &ConnectionId,
    item: &HashMap<String, AttributeValue>,
) -> Option<Connection> {
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let number = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
    };
    Some(Connection {
        id: id.clone(),
        user: text("user")?,
        source_ip: text("ip").filter(|v| !v.is_empty()),
        connected_at: number("connected_at")?,
        expires_at: number("expires_at")?,
        instance: text("instance").filter(|v| !v.is_empty()),
    })
}

#[async_trait]
impl ConnectionStore for DynamoStore {
    async fn add(&self, c: &Connection) -> Result<(), StoreError> {
        let pk = Self::conn_pk(&c.id);
        let mut meta = Self::key(pk.clone(), "meta".into());
        meta.extend([
            ("user".to_owned(), s(&c.user)),
            ("ip".to_owned(), s(c.source_ip.clone().unwrap_or_default())),
            ("connected_at".to_owned(), n(c.connected_at)),
            (
                "instance".to_owned(),
                s(c.instance.clone().unwrap_or_default()),
            ),
            ("gsi1pk".to_owned(), s(format!("user#{}", c.user))),
            ("gsi1sk".to_owned(), s(pk.clone())),
        ]);
        meta.extend(Self::expiry(c.expires_at));
        let mut everyone = Self::key(format!("all#{}", shard_of(&c.id, ALL_SHARDS)), pk);
        everyone.extend(Self::expiry(c.expires_at));
        self.client
            .transact_write_items()
            .transact_items(self.put(meta)?)
            .transact_items(self.put(everyone)?)
            .send()
            .await
            .map(drop)
            .map_err(store_error)
    }

    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(Self::conn_pk(id), "meta".into())))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        Ok(out
            .item()
            .and_then(|item| parse_connection(id, item))
            .filter(|c| c.expires_at > now_ms()))
    }

    async fn refresh(&self, id: &ConnectionId, expires_at: i64) -> Result<bool, StoreError> {
        let [(_, at), (_, ttl)] = Self::expiry(expires_at);
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(Self::conn_pk(id), "meta".into())))
            .update_expression("SET expires_at = :at, #ttl = :ttl")
            .condition_expression("attribute_exists(pk) AND expires_at > :now")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":at", at.clone())
            .expression_attribute_values(":ttl", ttl.clone())
            .expression_attribute_values(":now", n(now_ms()))
            .send()
            .await;
        match updated {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(store_error(e)),
        }
        // The copies of the expiry on membership items follow; reads filter by them.
        let keys = self.expiry_copies(id).await?;
        for key in keys {
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key))
                .update_expression("SET expires_at = :at, #ttl = :ttl")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_names("#ttl", "ttl")
                .expression_attribute_values(":at", at.clone())
                .expression_attribute_values(":ttl", ttl.clone())
                .send()
                .await
                .map(drop)
                .or_else(|e| {
                    if e.as_service_error()
                        .is_some_and(|e| e.is_conditional_check_failed_exception())
                    {
                        Ok(())
                    } else {
                        Err(store_error(e))
                    }
                })?;
        }
        Ok(true)
    }

    async fn remove(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let pk = Self::conn_pk(id);
        let existing = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(pk.clone(), "meta".into())))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?
            .item()
            .and_then(|item| parse_connection(id, item));
        let mut keys = self.expiry_copies(id).await?;
        keys.push(Self::key(pk, "meta".into()));
        self.delete_many(keys).await?;
        Ok(existing.filter(|c| c.expires_at > now_ms()))
    }

    async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<(), StoreError> {
        let connection = self.get(id).await?.ok_or(StoreError::NotFound)?;
        let pk = Self::conn_pk(id);
        let live = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key(pk.clone(), "meta".into())))
            .condition_expression("attribute_exists(pk) AND expires_at > :now")
            .expression_attribute_values(":now", n(now_ms()))
            .build()
            .map_err(build_error)?;
        let mut reverse = Self::key(pk.clone(), format!("room#{room}"));
        reverse.extend(Self::expiry(connection.expires_at));
        let mut member = Self::key(self.room_pk(room, shard_of(id, self.room_shards)), pk);
        member.extend(Self::expiry(connection.expires_at));
        let written = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().condition_check(live).build())
            .transact_items(self.put(reverse)?)
            .transact_items(self.put(member)?)
            .send()
            .await;
        match written {
            Ok(_) => Ok(()),
            // The only condition is the connection's liveness.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_transaction_canceled_exception()) =>
            {
                let reasons: Vec<String> = match e.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(t)) => t
                        .cancellation_reasons()
                        .iter()
                        .filter_map(|r| r.code().map(str::to_owned))
                        .collect(),
                    _ => vec![],
                };
                if reasons.iter().any(|r| r == "ConditionalCheckFailed") {
                    Err(StoreError::NotFound)
                } else {
                    Err(store_error(e))
                }
            }
            Err(e) => Err(store_error(e)),
        }
    }

    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError> {
        let pk = Self::conn_pk(id);
        let reverse = Self::key(pk.clone(), format!("room#{room}"));
        let was_member = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(reverse.clone()))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?
            .item()
            .is_some();
        let member = Self::key(self.room_pk(room, shard_of(id, self.room_shards)), pk);
        self.client
            .transact_write_items()
            .transact_items(self.delete(reverse)?)
            .transact_items(self.delete(member)?)
            .send()
            .await
            .map_err(store_error)?;
        Ok(was_member)
    }

    async fn rooms_of(&self, id: &ConnectionId) -> Result<Vec<RoomName>, StoreError> {
        if self.get(id).await?.is_none() {
            return Ok(vec![]);
        }
        self.room_keys_of(id).await
    }

    async fn room_members(
        &self,
        room: &RoomName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        self.sharded_page(
            self.room_shards,
            |shard| self.room_pk(room, shard),
            cursor,
            limit,
        )
        .await
    }

    async fn user_connections(&self, user: &str) -> Result<Vec<ConnectionId>, StoreError> {
        self.user_query(user).await
    }

    async fn count_user(&self, user: &str) -> Result<usize, StoreError> {
        self.user_query(user).await.map(|ids| ids.len())
    }

    async fn all_connections(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        self.sharded_page(ALL_SHARDS, |shard| format!("all#{shard}"), cursor, limit)
            .await
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        id: &str,
        window: Duration,
    ) -> Result<Option<String>, StoreError> {
        let now = now_ms();
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let item_key = Self::key(format!("idem#{key}"), "idem".into());
        let mut item = item_key.clone();
        item.insert("id".to_owned(), s(id));
        item.extend(Self::expiry(now.saturating_add(window_ms)));
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR expires_at <= :now")
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        match put {
            Ok(_) => Ok(None),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                let held = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .set_key(Some(item_key))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(store_error)?;
                Ok(held
                    .item()
                    .and_then(|i| i.get("id"))
                    .and_then(|v| v.as_s().ok())
                    .cloned())
            }
            Err(e) => Err(store_error(e)),
        }
    }

    async fn release_idempotency_key(&self, key: &str, id: &str) -> Result<(), StoreError> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(format!("idem#{key}"), "idem".into())))
            .condition_expression("id = :id")
            .expression_attribute_values(":id", s(id))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(store_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local_sdk_config;
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
                    let mut item =
                        DynamoStore::key(store.room_pk(&room, 0), DynamoStore::conn_pk(id));
                    item.extend(DynamoStore::expiry(expires_at));
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
            .set_key(Some(DynamoStore::key(
                DynamoStore::conn_pk(&c.id),
                "meta".into(),
            )))
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
        let port = crate::testing::free_port();
        let store = DynamoStore::new(
            &local_sdk_config(&format!("http://127.0.0.1:{port}")),
            "herald",
            1,
        );
        let started = std::time::Instant::now();
        let err = store.get(&ConnectionId::generate()).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let err = store
            .add(&crate::store::suite::connection("x"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
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

    #[test]
    fn shards_are_stable_and_spread() {
        let ids: Vec<_> = (0..1_600).map(|_| ConnectionId::generate()).collect();
        let mut counts = [0usize; 16];
        for id in &ids {
            let shard = shard_of(id, 16);
            assert_eq!(shard, shard_of(id, 16));
            counts[shard as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 40), "{counts:?}");
    }
}
