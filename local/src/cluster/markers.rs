//! Registration markers: the keys that say an instance's sockets are all in the store.
//!
//! A store that loses records loses the markers beside them, which is how an instance
//! (and its peers) learn that it must re-register ([`super::registration`]). On one server
//! a loss takes every key, so one marker per instance says it all:
//! `{prefix}registered:{INSTANCE}`. On a Redis Cluster a master restarted empty loses the
//! keys of its own slots only, so each instance keeps one marker on every master,
//! `{prefix}registered:{INSTANCE}:{TAG}`, the tag chosen to fall in a slot that master owns;
//! a marker counts as present only when every one of them is. The masters' slots are
//! learned at start and again with every heartbeat, so a resharding moves the markers
//! with it.

use std::sync::Mutex;
use std::time::Duration;

use herald::store::{RedisLink, tag_in_slot};
use redis::RedisResult;

/// Where the markers are.
pub struct Markers {
    redis: RedisLink,
    prefix: String,
    /// One hash tag per master on a cluster; none on one server.
    tags: Mutex<Vec<String>>,
}

impl Markers {
    /// Markers under `prefix` through `redis`, placed on its masters as they are now.
    pub(super) async fn new(redis: RedisLink, prefix: String) -> RedisResult<Self> {
        let markers = Self {
            redis,
            prefix,
            tags: Mutex::default(),
        };
        markers.learn().await?;
        Ok(markers)
    }

    fn tags(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.tags.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Learns which slot each master owns now; answers whether the markers move.
    pub(super) async fn learn(&self) -> RedisResult<bool> {
        let tags: Vec<String> = self
            .redis
            .master_slots()
            .await?
            .into_iter()
            .map(tag_in_slot)
            .collect();
        let mut known = self.tags();
        let moved = *known != tags;
        *known = tags;
        Ok(moved)
    }

    /// The keys of `instance`'s markers.
    fn keys(&self, instance: &str) -> Vec<String> {
        let key = format!("{}registered:{instance}", self.prefix);
        let tags = self.tags();
        if tags.is_empty() {
            return vec![key];
        }
        tags.iter().map(|tag| format!("{key}:{{{tag}}}")).collect()
    }

    /// Sets `instance`'s markers, to expire after `ttl`.
    pub(super) async fn mark(&self, instance: &str, ttl: Duration) -> RedisResult<()> {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let sets = self
            .keys(instance)
            .into_iter()
            .map(|key| {
                let mut set = redis::cmd("SET");
                set.arg(key).arg(1).arg("PX").arg(millis);
                set
            })
            .collect();
        let _: Vec<redis::Value> = self.redis.each(sets).await?;
        Ok(())
    }

    /// Whether every one of `instance`'s markers exists.
    pub(super) async fn marked(&self, instance: &str) -> RedisResult<bool> {
        let lookups = self
            .keys(instance)
            .into_iter()
            .map(|key| {
                let mut exists = redis::cmd("EXISTS");
                exists.arg(key);
                exists
            })
            .collect();
        let found: Vec<bool> = self.redis.each(lookups).await?;
        Ok(found.iter().all(|f| *f))
    }
}

#[cfg(test)]
mod tests {
    use herald::store::slot_of;

    #[test]
    fn a_markers_tag_places_it_in_the_slot_asked_for() {
        for slot in [0, 5_461, 10_923] {
            let tag = herald::store::tag_in_slot(slot);
            assert_eq!(slot_of(&format!("herald:registered:i0:{{{tag}}}")), slot);
        }
    }
}
