//! `RedisStore`'s idempotency keys and event counters, each one script.

use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::ids::now_ms;
use crate::store::{Counters, StoreError};

#[async_trait]
impl Counters for RedisStore {
    async fn claim_idempotency_key(
        &self,
        key: &str,
        id: &str,
        window: Duration,
    ) -> Result<Option<String>, StoreError> {
        let mut redis = self.redis.clone();
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        // SET NX GET (Redis 7): one round trip that either claims the key or tells who has it.
        redis::cmd("SET")
            .arg(format!("{}idem:{{{key}}}", self.prefix))
            .arg(id)
            .arg("NX")
            .arg("PX")
            .arg(window_ms)
            .arg("GET")
            .query_async(&mut redis)
            .await
            .map_err(StoreError::from)
    }

    async fn release_idempotency_key(&self, key: &str, id: &str) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        self.scripts
            .release
            .key(format!("{}idem:{{{key}}}", self.prefix))
            .arg(id)
            .invoke_async::<i64>(&mut redis)
            .await
            .map(drop)
            .map_err(StoreError::from)
    }

    async fn count_events(
        &self,
        key: &str,
        window: Duration,
        events: u32,
        limit: u32,
    ) -> Result<bool, StoreError> {
        let (index, ends) = crate::store::current_window(now_ms(), window);
        let mut redis = self.redis.clone();
        let counted: i64 = self
            .scripts
            .count
            .key(format!("{}events:{{{key}}}:{index}", self.prefix))
            .arg(ends)
            .arg(events)
            .arg(limit)
            .invoke_async(&mut redis)
            .await?;
        Ok(counted == 1)
    }
}
