//! Which instances host members of a room, so that a room publish asks each of them once
//! instead of reading every member from Redis.
//!
//! `{prefix}hosts:{ROOM}` is a sorted set of instance ids, each scored with the time (ms)
//! its claim lapses; the braces are the room's hash tag, so the key shares the slot of
//! `room:{ROOM}`. An instance claims a room before it tells a local socket that it joined
//! (at most once a third of a record lifetime per room, so a busy room's joins cost no
//! write each), and the heartbeat renews the claims of every room it hosts, as it renews
//! its connections' records. A room publish reads the claims that have not lapsed: one
//! command, whatever the room's size. An instance that left a room, or died, stays listed
//! until its claim lapses (three heartbeats); asked meanwhile, it answers that it has no
//! members there, or nobody answers on its channel at all and its members in the store are
//! counted gone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald::ids::now_ms;
use herald::protocol::RoomName;
use herald::store::{RedisLink, StoreError};

/// The claims of one instance, and the reads of everyone's.
pub struct Hosts {
    redis: RedisLink,
    prefix: String,
    instance: String,
    lifetime: Duration,
    /// When this instance last claimed each room it hosts.
    claimed: Mutex<HashMap<RoomName, Instant>>,
}

/// How many of a claim's lifetimes pass before a join claims its room again.
const RECLAIM_FRACTION: u32 = 3;

fn key(prefix: &str, room: &RoomName) -> String {
    format!("{prefix}hosts:{{{room}}}")
}

impl Hosts {
    /// Claims for the instance `settings` names, on its Redis, each lasting its record
    /// lifetime unless renewed.
    pub async fn connect(settings: &super::ClusterSettings) -> Result<Self, StoreError> {
        let redis =
            RedisLink::open(&settings.redis.nodes, redis::ProtocolVersion::RESP2, None).await?;
        Ok(Self {
            redis,
            prefix: settings.redis.prefix.clone(),
            instance: settings.instance.clone(),
            lifetime: settings.lifetime,
            claimed: Mutex::default(),
        })
    }

    fn claimed(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, Instant>> {
        self.claimed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `room` for this instance, unless it did a moment ago; returns once Redis has
    /// it, so a member told it joined is reached by the next publish.
    pub(crate) async fn claim(&self, room: &RoomName) -> Result<(), StoreError> {
        let fresh = self.lifetime / RECLAIM_FRACTION;
        if self
            .claimed()
            .get(room)
            .is_some_and(|at| at.elapsed() < fresh)
        {
            return Ok(());
        }
        self.claim_all(std::slice::from_ref(room)).await
    }

    /// Claims (or renews the claims of) every room in `rooms`, in one round trip (on a
    /// cluster, one per node).
    pub(crate) async fn claim_all(&self, rooms: &[RoomName]) -> Result<(), StoreError> {
        if rooms.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let lifetime_ms = u64::try_from(self.lifetime.as_millis()).unwrap_or(u64::MAX);
        let until = now_ms().saturating_add(i64::try_from(lifetime_ms).unwrap_or(i64::MAX));
        let mut writes = Vec::with_capacity(rooms.len() * 2);
        for room in rooms {
            let key = key(&self.prefix, room);
            let mut claim = redis::cmd("ZADD");
            claim.arg(&key).arg(until).arg(&self.instance);
            let mut lapse = redis::cmd("PEXPIRE");
            lapse.arg(&key).arg(lifetime_ms);
            writes.extend([claim, lapse]);
        }
        let _: Vec<i64> = self.redis.each(writes).await?;
        let mut claimed = self.claimed();
        for room in rooms {
            claimed.insert(room.clone(), now);
        }
        Ok(())
    }

    /// Renews the claims of exactly `rooms` (the rooms this instance hosts now), forgetting
    /// when it claimed any other: a room it joins again is claimed at once.
    pub(crate) async fn renew(&self, rooms: &[RoomName]) -> Result<(), StoreError> {
        self.claimed().retain(|room, _| rooms.contains(room));
        self.claim_all(rooms).await
    }

    /// Forgets every claim this instance made, so each is made again (after the store lost
    /// them).
    pub(crate) fn forget_claims(&self) {
        self.claimed().clear();
    }

    /// The instances whose claim on `room` has not lapsed.
    pub(crate) async fn of(&self, room: &RoomName) -> Result<Vec<String>, StoreError> {
        let hosts: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(key(&self.prefix, room))
            .arg(now_ms())
            .arg("+inf")
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(hosts)
    }

    /// Drops `instance`'s claim on `room` (it no longer answers).
    pub(crate) async fn drop_claim(&self, room: &RoomName, instance: &str) {
        let dropped: redis::RedisResult<i64> = redis::cmd("ZREM")
            .arg(key(&self.prefix, room))
            .arg(instance)
            .query_async(&mut self.redis.clone())
            .await;
        if let Err(e) = dropped {
            tracing::debug!(error = %e, instance, "could not drop a lapsed claim");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rooms_claims_share_its_slot() {
        let room = RoomName::parse("orders").unwrap();
        assert_eq!(key("herald:", &room), "herald:hosts:{orders}");
    }
}
