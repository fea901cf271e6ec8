//! `RedisStore`'s connections and rooms: a hash per connection, a set per room, per user
//! and per connection, and one sorted set of everyone. Each change runs a script on the
//! connection's own keys, then writes the sets of other slots beside it.

use async_trait::async_trait;
use futures::future::try_join_all;
use redis::AsyncCommands;

use super::*;
use crate::ids::{ConnectionId, now_ms};
use crate::protocol::RoomName;
use crate::store::{Connection, Connections, Left, Page, Removed, StoreError};

#[async_trait]
impl Connections for RedisStore {
    async fn add(&self, c: &Connection) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        let replaced: Vec<String> = self
            .scripts
            .add
            .key(self.conn_key(&c.id))
            .key(self.rooms_key(&c.id))
            .arg(&c.user)
            .arg(c.source_ip.as_deref().unwrap_or(""))
            .arg(c.connected_at)
            .arg(c.expires_at)
            .arg(c.instance.as_deref().unwrap_or(""))
            .invoke_async(&mut redis)
            .await?;
        // The record exists before any set lists it (see the key layout).
        let id = c.id.as_str();
        let mut writes = vec![
            command(
                "ZADD",
                &self.user_key(&c.user),
                &[&c.expires_at.to_string(), id],
            ),
            command("ZADD", &self.all_key(), &["0", id]),
        ];
        let mut replaced = replaced.into_iter();
        if let Some(old) = replaced.next().filter(|u| !u.is_empty() && *u != c.user) {
            writes.push(command("ZREM", &self.user_key(&old), &[id]));
        }
        for room in replaced {
            writes.push(command("ZREM", &self.room_key_named(&room), &[id]));
        }
        self.redis.each::<i64>(writes).await?;
        Ok(())
    }

    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let mut redis = self.redis.clone();
        let fields: Vec<(String, String)> = redis.hgetall(self.conn_key(id)).await?;
        Ok(parse_record(id, &fields).filter(|c| c.expires_at > now_ms()))
    }

    async fn refresh(&self, id: &ConnectionId, expires_at: i64) -> Result<bool, StoreError> {
        let mut redis = self.redis.clone();
        let user: Option<String> = self
            .scripts
            .refresh
            .key(self.conn_key(id))
            .key(self.rooms_key(id))
            .arg(expires_at)
            .invoke_async(&mut redis)
            .await?;
        let Some(user) = user else {
            return Ok(false);
        };
        let expires_at = expires_at.to_string();
        let _: i64 = command(
            "ZADD",
            &self.user_key(&user),
            &["XX", &expires_at, id.as_str()],
        )
        .query_async(&mut redis)
        .await?;
        Ok(true)
    }

    async fn remove(&self, id: &ConnectionId) -> Result<Removed, StoreError> {
        let mut redis = self.redis.clone();
        let reply: Vec<String> = self
            .scripts
            .remove
            .key(self.conn_key(id))
            .key(self.rooms_key(id))
            .invoke_async(&mut redis)
            .await?;
        // The fields come in pairs, then '' (which no field name is), then the rooms.
        let split = reply
            .iter()
            .step_by(2)
            .position(String::is_empty)
            .map_or(reply.len(), |pair| pair * 2);
        let mut fields = reply;
        let rooms = fields.split_off(split);
        let fields = pairs(fields);
        let removed = parse_record(id, &fields);
        let mut writes = vec![command("ZREM", &self.all_key(), &[id.as_str()])];
        if let Some(user) = fields.iter().find(|(k, _)| k == "user").map(|(_, v)| v) {
            writes.push(command("ZREM", &self.user_key(user), &[id.as_str()]));
        }
        let rooms = &rooms[rooms.len().min(1)..];
        let vacated = try_join_all(rooms.iter().map(|room| {
            let mut redis = self.redis.clone();
            let mut invocation = self.scripts.vacate.key(self.room_key_named(room));
            invocation.arg(id.as_str());
            async move { invocation.invoke_async::<i64>(&mut redis).await }
        }));
        let (written, vacated) = tokio::join!(self.redis.each::<i64>(writes), vacated);
        written?;
        let emptied = rooms
            .iter()
            .zip(vacated?)
            .filter(|(_, last)| *last == 1)
            .filter_map(|(room, _)| RoomName::parse(room).ok())
            .collect();
        Ok(Removed {
            connection: removed.filter(|c| c.expires_at > now_ms()),
            emptied,
        })
    }

    async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError> {
        let mut redis = self.redis.clone();
        // The connection's record exists already, so the room may list it before the
        // script has run: both are sent at once.
        let mut invocation = self.scripts.join.key(self.conn_key(id));
        invocation.key(self.rooms_key(id)).arg(room.as_str());
        let joined = invocation.invoke_async::<i64>(&mut redis);
        let mut listing = self.redis.clone();
        let mut occupy = self.scripts.occupy.key(self.room_key(room));
        occupy.arg(id.as_str());
        let listed = occupy.invoke_async::<i64>(&mut listing);
        let (joined, listed) = tokio::join!(joined, listed);
        let first = listed? == 1;
        if joined? == 1 {
            Ok(first)
        } else {
            // No record: undo the listing (a read would have swept it anyway).
            let _: i64 = redis
                .zrem(self.room_key(room), id.as_str())
                .await
                .unwrap_or_default();
            Err(StoreError::NotFound)
        }
    }

    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> Result<Left, StoreError> {
        let mut redis = self.redis.clone();
        let mut vacate = self.scripts.vacate.key(self.room_key(room));
        vacate.arg(id.as_str());
        let unlisted = vacate.invoke_async::<i64>(&mut redis);
        let mut forgetting = self.redis.clone();
        let forgot = forgetting.srem::<_, _, i64>(self.rooms_key(id), room.as_str());
        let (unlisted, forgot) = tokio::join!(unlisted, forgot);
        Ok(Left {
            was_member: forgot? == 1,
            emptied: unlisted? == 1,
        })
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

    async fn member_count(&self, room: Option<&RoomName>) -> Result<Option<u64>, StoreError> {
        let key = match room {
            Some(room) => self.room_key(room),
            None => self.all_key(),
        };
        let mut redis = self.redis.clone();
        Ok(Some(redis.zcard(key).await?))
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
        let found: Vec<Option<String>> = self
            .redis
            .each(
                ids.iter()
                    .map(|id| command("HGET", &self.conn_key(id), &["instance"]))
                    .collect(),
            )
            .await?;
        Ok(found
            .into_iter()
            .map(|i| i.filter(|i| !i.is_empty()))
            .collect())
    }
}

/// `verb key args…`, one command on one key.
fn command(verb: &str, key: &str, args: &[&str]) -> redis::Cmd {
    let mut command = redis::cmd(verb);
    command.arg(key);
    for arg in args {
        command.arg(*arg);
    }
    command
}
