//! Reading large sets page by page with Query, never Scan: a room's members and everyone
//! across their shards (with a cursor the caller passes back), and the small sets (a
//! connection's rooms, a user's connections) read whole.

use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use serde::{Deserialize, Serialize};

use super::DynamoStore;
use super::errors::store_error;
use super::keys::{self, Item, Key, attr, n, s};
use super::schema::TABLE;
use crate::ids::{ConnectionId, now_ms};
use crate::store::{Page, StoreError};

/// The most items one Query is asked for.
const MAX_QUERY_LIMIT: usize = 1000;

/// Where a paged read goes on: a shard, and the last key read in it (none: its start).
#[derive(Serialize, Deserialize)]
struct Cursor {
    shard: u32,
    #[serde(default)]
    after: Option<(String, String)>,
}

impl Cursor {
    fn parse(text: Option<&str>, shards: u32) -> Result<Self, StoreError> {
        let cursor = match text {
            None => Self {
                shard: 0,
                after: None,
            },
            Some(text) => serde_json::from_str(text).map_err(|_| StoreError::InvalidCursor)?,
        };
        if cursor.shard >= shards {
            return Err(StoreError::InvalidCursor);
        }
        Ok(cursor)
    }

    /// The cursor after a page of `shard` that ended at `last` (none: the shard is done).
    fn after_page(shard: u32, shards: u32, last: Option<Key>) -> Option<Self> {
        match last {
            Some(key) => Some(Self {
                shard,
                after: Some(key.into_parts()),
            }),
            None if shard + 1 < shards => Some(Self {
                shard: shard + 1,
                after: None,
            }),
            None => None,
        }
    }

    fn encode(&self) -> String {
        serde_json::to_string(self).expect("cursors serialize")
    }
}

impl DynamoStore {
    /// Pages through the partitions `pk_of(0..shards)` in order, live members only.
    pub(super) async fn sharded_page(
        &self,
        shards: u32,
        pk_of: impl Fn(u32) -> String,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        let mut at = Cursor::parse(cursor, shards)?;
        let limit = i32::try_from(limit.clamp(1, MAX_QUERY_LIMIT)).unwrap_or(i32::MAX);
        loop {
            let out = self
                .live_query(&format!("{} = :pk", TABLE.partition_key))
                .expression_attribute_values(":pk", s(pk_of(at.shard)))
                .set_exclusive_start_key(at.after.take().map(|k| Key::from_parts(k).item()))
                .limit(limit)
                .send()
                .await
                .map_err(store_error)?;
            let items: Vec<ConnectionId> = out
                .items()
                .iter()
                .filter_map(|item| keys::connection_in(item.get(TABLE.sort_key)?.as_s().ok()?))
                .collect();
            let last = out.last_evaluated_key().and_then(Key::from_item);
            match Cursor::after_page(at.shard, shards, last) {
                // Nothing live on this page: go on rather than hand back an empty page.
                Some(next) if items.is_empty() => at = next,
                next => {
                    return Ok(Page {
                        items,
                        next: next.map(|c| c.encode()),
                    });
                }
            }
        }
    }

    /// A Query on the table with `condition`, keeping only live items.
    pub(super) fn live_query(&self, condition: &str) -> QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression(condition)
            .filter_expression(format!("{} > :now", attr::EXPIRES_AT))
            .expression_attribute_values(":now", n(now_ms()))
    }

    /// Every item `query` finds, read to the end, each kept as `keep` makes it.
    pub(super) async fn query_all<T>(
        query: QueryFluentBuilder,
        keep: impl Fn(&Item) -> Option<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let out = query
                .clone()
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(store_error)?;
            found.extend(out.items().iter().filter_map(&keep));
            match out.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => return Ok(found),
            }
        }
    }

    /// The rooms a connection's room items name, read consistently.
    pub(super) async fn room_items_of(
        &self,
        id: &ConnectionId,
    ) -> Result<Vec<crate::protocol::RoomName>, StoreError> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression(format!(
                "{} = :pk AND begins_with({}, :room)",
                TABLE.partition_key, TABLE.sort_key
            ))
            .expression_attribute_values(":pk", s(keys::connection_partition(id)))
            .expression_attribute_values(":room", s(keys::ROOMS_OF_CONNECTION))
            .consistent_read(true);
        Self::query_all(query, |item| {
            keys::room_in(item.get(TABLE.sort_key)?.as_s().ok()?)
        })
        .await
    }

    /// A user's live connections, from the index.
    pub(super) async fn user_query(&self, user: &str) -> Result<Vec<ConnectionId>, StoreError> {
        let query = self
            .live_query(&format!("{} = :user", TABLE.index_partition_key))
            .index_name(TABLE.index)
            .expression_attribute_values(":user", s(keys::user_partition(user)));
        Self::query_all(query, |item| {
            keys::connection_in(item.get(TABLE.partition_key)?.as_s().ok()?)
        })
        .await
    }
}
