//! `RedisStore`'s connections and rooms: a hash per connection, a set per room, per user
//! and per connection, and one sorted set of everyone by expiry.

use async_trait::async_trait;
use redis::AsyncCommands;

use super::*;
use crate::ids::{ConnectionId, now_ms};
use crate::protocol::RoomName;
use crate::store::{Connection, Connections, Page, StoreError};

#[async_trait]
impl Connections for RedisStore {
    async fn add(&self, c: &Connection) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        self.scripts
            .add
            .key(self.conn_key(&c.id))
            .key(self.rooms_key(&c.id))
            .key(self.user_key(&c.user))
            .key(self.all_key())
            .arg(c.id.as_str())
            .arg(&c.user)
            .arg(c.source_ip.as_deref().unwrap_or(""))
            .arg(c.connected_at)
            .arg(c.expires_at)
            .arg(c.instance.as_deref().unwrap_or(""))
            .arg(&self.prefix)
            .invoke_async::<i64>(&mut redis)
            .await
            .map(drop)
            .map_err(StoreError::from)
    }

    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let mut redis = self.redis.clone();
        let fields: Vec<(String, String)> = redis.hgetall(self.conn_key(id)).await?;
        Ok(parse_record(id, &fields).filter(|c| c.expires_at > now_ms()))
    }

    async fn refresh(&self, id: &ConnectionId, expires_at: i64) -> Result<bool, StoreError> {
        let mut redis = self.redis.clone();
        self.scripts
            .refresh
            .key(self.conn_key(id))
            .key(self.rooms_key(id))
            .arg(expires_at)
            .arg(id.as_str())
            .arg(&self.prefix)
            .invoke_async::<i64>(&mut redis)
            .await
            .map(|n| n == 1)
            .map_err(StoreError::from)
    }

    async fn remove(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let mut redis = self.redis.clone();
        let fields: Vec<String> = self
            .scripts
            .remove
            .key(self.conn_key(id))
            .key(self.rooms_key(id))
            .key(self.all_key())
            .arg(id.as_str())
            .arg(&self.prefix)
            .invoke_async(&mut redis)
            .await?;
        Ok(parse_record(id, &pairs(fields)).filter(|c| c.expires_at > now_ms()))
    }

    async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        let joined: i64 = self
            .scripts
            .join
            .key(self.conn_key(id))
            .key(self.rooms_key(id))
            .key(self.room_key(room))
            .arg(id.as_str())
            .arg(room.as_str())
            .invoke_async(&mut redis)
            .await?;
        if joined == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }

    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError> {
        let mut redis = self.redis.clone();
        self.scripts
            .leave
            .key(self.rooms_key(id))
            .key(self.room_key(room))
            .arg(id.as_str())
            .arg(room.as_str())
            .invoke_async::<i64>(&mut redis)
            .await
            .map(|n| n == 1)
            .map_err(StoreError::from)
    }

    async fn rooms_of(&self, id: &ConnectionId) -> Result<Vec<RoomName>, StoreError> {
        let mut redis = self.redis.clone();
        let names: Vec<String> = redis.smembers(self.rooms_key(id)).await?;
        Ok(names
            .iter()
            .filter_map(|n| RoomName::parse(n).ok())
            .collect())
    }

    async fn room_members(
        &self,
        room: &RoomName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        self.live_page(&self.room_key(room), cursor, limit).await
    }

    async fn user_connections(&self, user: &str) -> Result<Vec<ConnectionId>, StoreError> {
        let mut redis = self.redis.clone();
        let ids: Vec<String> = redis
            .zrangebyscore(self.user_key(user), format!("({}", now_ms()), "+inf")
            .await?;
        Ok(ids.into_iter().map(ConnectionId::new).collect())
    }

    async fn count_user(&self, user: &str) -> Result<usize, StoreError> {
        let mut redis = self.redis.clone();
        let key = self.user_key(user);
        let now = now_ms();
        let (_, count): (i64, usize) = redis::pipe()
            .zrembyscore(&key, "-inf", now)
            .zcount(&key, format!("({now}"), "+inf")
            .query_async(&mut redis)
            .await?;
        Ok(count)
    }

    async fn all_connections(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        self.live_page(&self.all_key(), cursor, limit).await
    }

    async fn instances(&self, ids: &[ConnectionId]) -> Result<Vec<Option<String>>, StoreError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hget(self.conn_key(id), "instance");
        }
        let found: Vec<Option<String>> = pipe.query_async(&mut redis).await?;
        Ok(found
            .into_iter()
            .map(|i| i.filter(|i| !i.is_empty()))
            .collect())
    }
}
