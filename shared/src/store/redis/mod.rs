//! `RedisStore`: connection state in Redis, shared by several `herald-local` instances (or
//! by Lambda functions reaching ElastiCache).
//!
//! # Key layout
//!
//! Every key starts with a prefix (default `herald:`); the part in braces is the Redis
//! Cluster hash tag, so the keys of one connection, one room or one user share a slot.
//!
//! | key | type | what |
//! |---|---|---|
//! | `conn:{ID}` | hash | `user`, `ip`, `connected_at`, `expires_at`, `instance`; expires at `expires_at` (`PEXPIREAT`) |
//! | `conn:{ID}:rooms` | set | the rooms the connection joined; expires with the connection |
//! | `room:{ROOM}` | sorted set, all scores 0 | the room's members, ordered by id for paging (`ZRANGE … BYLEX`) |
//! | `user:{USER}` | sorted set, score `expires_at` | the user's connections; expired ones are skipped by score |
//! | `all` | sorted set, all scores 0 | every connection, ordered by id for paged broadcast |
//! | `idem:{KEY}` | string | the publish id that claimed an idempotency key; expires with its window |
//! | `events:{KEY}:WINDOW` | string (counter) | events counted in one window (socket publishes per user); expires with the window |
//! | `hist:{CHANNEL}`, `hist:{CHANNEL}:pos` | stream, hash | a room's or user's history and its position (`history.rs`) |
//! | `hosts:{ROOM}` | sorted set, score: when the claim lapses (ms) | the `herald-local` instances with members in the room (written by `local/src/cluster/hosts.rs`, not by this store) |
//! | `registered:INSTANCE`, on a cluster `registered:INSTANCE:{TAG}` (one per master) | string | an instance's sockets are all in the store (`local/src/cluster/markers.rs`) |
//!
//! Connection records expire by themselves (Redis TTL), so a crashed instance leaves no
//! permanent zombie: hosts that keep sockets refresh the TTL of theirs with a heartbeat.
//! Memberships in `room:` and `all` do not expire on their own; every paged read checks that
//! the members' `conn:` records still exist, returns only live ones and removes the dead.
//!
//! Every script and pipeline touches the keys of one slot, as Redis Cluster requires
//! ([`link`]): a change to one connection runs as one Lua script on its own keys (`conn:`),
//! then its memberships in the room, user and `all` sets are written beside it. The record
//! is written before its memberships and removed before them, so a listing that meets a
//! member whose record is gone skips it (and sweeps it). A change whose second half
//! fails answers an error (the connect or subscribe is refused, and the client retries),
//! so no caller is told of a membership the sets do not hold.
//!
//! Large sets are read in pages: `ZRANGE … BYLEX LIMIT` from the last id returned, which,
//! unlike `SSCAN`, never returns a member twice and costs O(log n + page) per page.

use std::time::Duration;

use redis::{AsyncCommands, ProtocolVersion, RedisError, Script};

use super::{Connection, Page, StoreError};
use crate::error;
use crate::ids::ConnectionId;
use crate::protocol::RoomName;

/// How long one Redis command may take before it counts as failed: long enough for a
/// loaded server, short enough that a dead one is reported within seconds.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// [`ConnectionStore`] on Redis.
#[derive(Clone)]
pub struct RedisStore {
    redis: RedisLink,
    prefix: String,
    scripts: &'static Scripts,
}

struct Scripts {
    add: Script,
    remove: Script,
    join: Script,
    refresh: Script,
    release: Script,
    count: Script,
    occupy: Script,
    vacate: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        // KEYS: conn, conn rooms. ARGV: user, ip, connected_at, expires_at, instance.
        // Returns the replaced record's user ('' if none) and rooms, whose memberships the
        // caller undoes.
        add: Script::new(
            r"
            local old = redis.call('HGET', KEYS[1], 'user') or ''
            local rooms = redis.call('SMEMBERS', KEYS[2])
            redis.call('DEL', KEYS[1], KEYS[2])
            redis.call('HSET', KEYS[1], 'user', ARGV[1], 'ip', ARGV[2], 'connected_at', ARGV[3],
              'expires_at', ARGV[4], 'instance', ARGV[5])
            redis.call('PEXPIREAT', KEYS[1], ARGV[4])
            table.insert(rooms, 1, old)
            return rooms
            ",
        ),
        // KEYS: conn, conn rooms. Returns the record's fields, then '' and its rooms.
        remove: Script::new(
            r"
            local out = redis.call('HGETALL', KEYS[1])
            out[#out + 1] = ''
            for _, room in ipairs(redis.call('SMEMBERS', KEYS[2])) do
              out[#out + 1] = room
            end
            redis.call('DEL', KEYS[1], KEYS[2])
            return out
            ",
        ),
        // KEYS: conn, conn rooms. ARGV: room name.
        join: Script::new(
            r"
            local expires_at = redis.call('HGET', KEYS[1], 'expires_at')
            if not expires_at then return 0 end
            redis.call('SADD', KEYS[2], ARGV[1])
            redis.call('PEXPIREAT', KEYS[2], expires_at)
            return 1
            ",
        ),
        // KEYS: conn, conn rooms. ARGV: expires_at. Returns the record's user, or nil.
        refresh: Script::new(
            r"
            local user = redis.call('HGET', KEYS[1], 'user')
            if not user then return nil end
            redis.call('HSET', KEYS[1], 'expires_at', ARGV[1])
            redis.call('PEXPIREAT', KEYS[1], ARGV[1])
            redis.call('PEXPIREAT', KEYS[2], ARGV[1])
            return user
            ",
        ),
        // KEYS: idem key. ARGV: id. Deletes the key only if this id holds it.
        release: Script::new(
            r"
            if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
            return 1
            ",
        ),
        // KEYS: a room's members. ARGV: id. Lists the member; 1 when it is the room's
        // first (one key, so one answer of 1 per transition however many hosts join).
        occupy: Script::new(
            r"
            if redis.call('ZADD', KEYS[1], 0, ARGV[1]) == 1
              and redis.call('ZCARD', KEYS[1]) == 1 then return 1 end
            return 0
            ",
        ),
        // KEYS: a room's members. ARGV: id. Unlists the member; 1 when it was the last.
        vacate: Script::new(
            r"
            if redis.call('ZREM', KEYS[1], ARGV[1]) == 1
              and redis.call('ZCARD', KEYS[1]) == 0 then return 1 end
            return 0
            ",
        ),
        // KEYS: the window's counter. ARGV: when the window ends (ms), events, limit.
        // Counts the events when they fit (1), else counts nothing (0); the counter
        // expires with its window.
        count: Script::new(
            r"
            local n = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[2])
            if n > tonumber(ARGV[3]) then return 0 end
            redis.call('SET', KEYS[1], n, 'PXAT', ARGV[1])
            return 1
            ",
        ),
    })
}

/// The backend's name in errors.
const BACKEND: &str = "redis";

/// Unreachable or slow servers (and a cluster in flux) are `Unavailable`, the rest `Backend`; either keeps the
/// Redis error as its source.
impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        let unreachable = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            // A cluster with a master down, or its slots moving, answers
            // CLUSTERDOWN / TRYAGAIN / MASTERDOWN / MOVED: unavailable for now, not wrong.
            || e.is_cluster_error()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown);
        let source = error::source(e);
        if unreachable {
            StoreError::Unavailable {
                backend: BACKEND,
                source,
            }
        } else {
            StoreError::Backend {
                backend: BACKEND,
                source,
            }
        }
    }
}

/// How long a connection attempt may take before Redis counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest pause between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// The key prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "herald:";

/// Where the Redis store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// The server, or the cluster's seed nodes.
    pub nodes: RedisNodes,
    /// Put before every key (to share one Redis between deployments).
    pub prefix: String,
}

impl RedisSettings {
    /// The server at `url`, keys under [`DEFAULT_PREFIX`].
    pub fn new(url: impl Into<String>) -> Self {
        Self::on(RedisNodes::Single(url.into()))
    }

    /// `nodes`, keys under [`DEFAULT_PREFIX`].
    pub fn on(nodes: RedisNodes) -> Self {
        Self {
            nodes,
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl RedisStore {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`) with the default prefix.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(&RedisSettings::new(url)).await
    }

    /// Connects as `settings` say.
    pub async fn open(settings: &RedisSettings) -> Result<Self, StoreError> {
        let redis = RedisLink::open(&settings.nodes, ProtocolVersion::RESP2, None).await?;
        Ok(Self {
            redis,
            prefix: settings.prefix.clone(),
            scripts: scripts(),
        })
    }

    fn conn_key(&self, id: &ConnectionId) -> String {
        format!("{}conn:{{{id}}}", self.prefix)
    }

    fn rooms_key(&self, id: &ConnectionId) -> String {
        format!("{}conn:{{{id}}}:rooms", self.prefix)
    }

    fn room_key(&self, room: &RoomName) -> String {
        self.room_key_named(room.as_str())
    }

    /// The key of the room named `room`, as a connection's set of rooms holds it.
    fn room_key_named(&self, room: &str) -> String {
        format!("{}room:{{{room}}}", self.prefix)
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}user:{{{user}}}", self.prefix)
    }

    fn all_key(&self) -> String {
        format!("{}all", self.prefix)
    }

    /// A page of `key`'s members after `cursor`, keeping those whose record still exists
    /// and removing the others.
    async fn live_page(
        &self,
        key: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        let mut redis = self.redis.clone();
        let start = match cursor {
            Some(c) => format!("({c}"),
            None => "-".to_owned(),
        };
        let limit = limit.max(1);
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(key)
            .arg(&start)
            .arg("+")
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut redis)
            .await?;
        let next = (ids.len() == limit).then(|| ids[ids.len() - 1].clone());
        if ids.is_empty() {
            return Ok(Page {
                items: vec![],
                next,
            });
        }
        let exists = ids
            .iter()
            .map(|id| {
                let mut exists = redis::cmd("EXISTS");
                exists.arg(self.conn_key(&ConnectionId::new(id.as_str())));
                exists
            })
            .collect();
        let alive: Vec<bool> = self.redis.each(exists).await?;
        let (mut items, mut dead) = (Vec::with_capacity(ids.len()), Vec::new());
        for (id, alive) in ids.into_iter().zip(alive) {
            if alive {
                items.push(ConnectionId::new(id));
            } else {
                dead.push(id);
            }
        }
        if !dead.is_empty() {
            // Sweeping is an optimisation; a failure here does not fail the read.
            let swept: Result<(), _> = redis.zrem(key, &dead).await;
            if let Err(e) = swept {
                tracing::debug!(error = %e, "could not sweep expired members");
            }
        }
        Ok(Page { items, next })
    }
}

fn parse_record(id: &ConnectionId, fields: &[(String, String)]) -> Option<Connection> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let optional = |name: &str| field(name).filter(|v| !v.is_empty()).map(str::to_owned);
    Some(Connection {
        id: id.clone(),
        user: field("user")?.to_owned(),
        source_ip: optional("ip"),
        connected_at: field("connected_at")?.parse().ok()?,
        expires_at: field("expires_at")?.parse().ok()?,
        instance: optional("instance"),
    })
}

fn pairs(flat: Vec<String>) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

mod connections;
mod counters;
mod history;
mod link;

pub use link::{RedisLink, RedisNodes, slot_of, tag_in_slot};
#[cfg(test)]
mod tests;
