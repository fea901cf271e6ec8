//! Connections and memberships on DynamoDB, each operation in as few requests as its
//! guarantees allow.

use super::errors::{store_error, unless_condition_failed};
use super::keys::{self, Item, Key, attr, n, s};
use super::schema::TABLE;
use super::{ALL_SHARDS, DynamoStore};
use crate::ids::{ConnectionId, now_ms};
use crate::protocol::RoomName;
use crate::store::{Connection, Connections, Left, Page, Removed, StoreError};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt, stream};

/// Rooms whose membership a removal deletes and subtracts at once, when rooms are counted.
const ROOMS_AT_ONCE: usize = 16;

/// The condition that a connection's record exists and has not expired.
fn live_condition() -> String {
    format!(
        "attribute_exists({}) AND {} > :now",
        TABLE.partition_key,
        attr::EXPIRES_AT
    )
}

/// The update that moves an item's expiry (`:at` in ms, `:ttl` in seconds).
fn expiry_update() -> String {
    format!("SET {} = :at, #ttl = :ttl", attr::EXPIRES_AT)
}

fn parse_connection(id: &ConnectionId, item: &Item) -> Option<Connection> {
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let number = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
    };
    Some(Connection {
        id: id.clone(),
        user: text(attr::USER)?,
        source_ip: text(attr::IP).filter(|v| !v.is_empty()),
        connected_at: number(attr::CONNECTED_AT)?,
        expires_at: number(attr::EXPIRES_AT)?,
        instance: text(attr::INSTANCE).filter(|v| !v.is_empty()),
    })
}

impl DynamoStore {
    /// A connection's record, expired or not, read consistently.
    async fn record(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Key::connection(id).item()))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        Ok(out.item().and_then(|item| parse_connection(id, item)))
    }

    /// Moves the expiry of one item that carries a copy of it, if the item still exists.
    async fn move_expiry(&self, key: &Key, expires_at: i64) -> Result<(), StoreError> {
        let [(_, at), (_, ttl)] = keys::expiry(expires_at);
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key.item()))
            .update_expression(expiry_update())
            .condition_expression(format!("attribute_exists({})", TABLE.partition_key))
            .expression_attribute_names("#ttl", TABLE.ttl_attribute)
            .expression_attribute_values(":at", at)
            .expression_attribute_values(":ttl", ttl)
            .send()
            .await;
        // A copy deleted meanwhile (a leave) needs no new expiry.
        unless_condition_failed(updated).map(drop)
    }
}

#[async_trait]
impl Connections for DynamoStore {
    async fn add(&self, c: &Connection) -> Result<(), StoreError> {
        let partition = keys::connection_partition(&c.id);
        let mut record = Key::connection(&c.id).with_expiry(c.expires_at);
        record.extend([
            (attr::USER.to_owned(), s(&c.user)),
            (
                attr::IP.to_owned(),
                s(c.source_ip.clone().unwrap_or_default()),
            ),
            (attr::CONNECTED_AT.to_owned(), n(c.connected_at)),
            (
                attr::INSTANCE.to_owned(),
                s(c.instance.clone().unwrap_or_default()),
            ),
            (
                TABLE.index_partition_key.to_owned(),
                s(keys::user_partition(&c.user)),
            ),
            (TABLE.index_sort_key.to_owned(), s(partition)),
        ]);
        let shard = keys::shard_of(&c.id, ALL_SHARDS);
        let everyone = Key::everyone(shard, &c.id).with_expiry(c.expires_at);
        let written = self.put_many(vec![record, everyone]).await;
        if written.is_err() {
            // Half a connection would count against its user's limit until it expired.
            let both = [Key::connection(&c.id), Key::everyone(shard, &c.id)];
            if let Err(e) = self.delete_many(&both).await {
                tracing::warn!(connection_id = %c.id, error = %e, "a failed add left items");
            }
        }
        written
    }

    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        Ok(self.record(id).await?.filter(|c| c.expires_at > now_ms()))
    }

    async fn refresh(&self, id: &ConnectionId, expires_at: i64) -> Result<bool, StoreError> {
        let [(_, at), (_, ttl)] = keys::expiry(expires_at);
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Key::connection(id).item()))
            .update_expression(expiry_update())
            .condition_expression(live_condition())
            .expression_attribute_names("#ttl", TABLE.ttl_attribute)
            .expression_attribute_values(":at", at)
            .expression_attribute_values(":ttl", ttl)
            .expression_attribute_values(":now", n(now_ms()))
            .send()
            .await;
        if unless_condition_failed(updated)?.is_none() {
            return Ok(false);
        }
        // The copies of the expiry on membership items follow; reads filter by them.
        for key in self.expiry_copies(id).await? {
            self.move_expiry(&key, expires_at).await?;
        }
        Ok(true)
    }

    async fn remove(&self, id: &ConnectionId) -> Result<Removed, StoreError> {
        let existing = self.record(id).await?;
        let connection = existing.filter(|c| c.expires_at > now_ms());
        if !self.count_rooms {
            let mut keys = self.expiry_copies(id).await?;
            keys.push(Key::connection(id));
            self.delete_many(&keys).await?;
            return Ok(Removed {
                connection,
                emptied: Vec::new(),
            });
        }
        // Counted: each room is subtracted by the delete that found its membership, so a
        // leave racing this removal subtracts it once, not twice.
        let rooms = self.room_items_of(id).await?;
        let shard = keys::shard_of(id, self.room_shards);
        let mut keys: Vec<Key> = rooms.iter().map(|r| Key::member(r, shard, id)).collect();
        keys.push(Key::everyone(keys::shard_of(id, ALL_SHARDS), id));
        keys.push(Key::connection(id));
        self.delete_many(&keys).await?;
        let emptied = stream::iter(rooms)
            .map(|room| async move {
                let counted = self.delete_existing(&Key::room_of(id, &room)).await?
                    && self.count_leave(&room).await?;
                Ok::<_, StoreError>(counted.then_some(room))
            })
            .buffer_unordered(ROOMS_AT_ONCE)
            .try_filter_map(|room| async move { Ok(room) })
            .try_collect()
            .await?;
        Ok(Removed {
            connection,
            emptied,
        })
    }

    async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError> {
        // Live first; a removal racing the write leaves items that expire with the
        // connection and are cleaned up by the first post to it (see the module).
        let connection = self.get(id).await?.ok_or(StoreError::NotFound)?;
        let shard = keys::shard_of(id, self.room_shards);
        let reverse = Key::room_of(id, room).with_expiry(connection.expires_at);
        let member = Key::member(room, shard, id).with_expiry(connection.expires_at);
        if !self.count_rooms {
            self.put_many(vec![reverse, member]).await?;
            return Ok(false);
        }
        // The write that created the membership counts it: a second join does not.
        let (new, member) = futures::join!(self.put_new(reverse), self.put_new(member));
        member?;
        Ok(new? && self.count_join(room).await?)
    }

    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> Result<Left, StoreError> {
        let reverse = Key::room_of(id, room);
        let member = Key::member(room, keys::shard_of(id, self.room_shards), id);
        let (was_member, deleted) = futures::join!(
            self.delete_existing(&reverse),
            self.delete_existing(&member)
        );
        deleted?;
        let was_member = was_member?;
        Ok(Left {
            was_member,
            emptied: was_member && self.count_rooms && self.count_leave(room).await?,
        })
    }

    async fn rooms_of(&self, id: &ConnectionId) -> Result<Vec<RoomName>, StoreError> {
        if self.get(id).await?.is_none() {
            return Ok(vec![]);
        }
        self.room_items_of(id).await
    }

    async fn room_members(
        &self,
        room: &RoomName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        self.sharded_page(
            self.room_shards,
            |shard| keys::room_partition(room, shard),
            cursor,
            limit,
        )
        .await
    }

    async fn member_count(&self, room: Option<&RoomName>) -> Result<Option<u64>, StoreError> {
        // Without a counter DynamoDB counts by reading every item (a Query's COUNT still
        // pays for them all); everyone is never counted.
        match room {
            Some(room) if self.count_rooms => self.room_count(room).await.map(Some),
            _ => Ok(None),
        }
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
        self.sharded_page(ALL_SHARDS, keys::all_partition, cursor, limit)
            .await
    }

    async fn instances(&self, ids: &[ConnectionId]) -> Result<Vec<Option<String>>, StoreError> {
        crate::store::instances_one_by_one(self, ids).await
    }
}
