//! `MemoryStore`'s idempotency keys and event counters.

use std::time::Duration;

use async_trait::async_trait;

use super::super::{Counters, StoreError};
use super::*;
use crate::ids::now_ms;

#[async_trait]
impl Counters for MemoryStore {
    async fn claim_idempotency_key(
        &self,
        key: &str,
        id: &str,
        window: Duration,
    ) -> Result<Option<String>, StoreError> {
        let now = now_ms();
        let mut inner = self.lock();
        if let Some((first, expires_at)) = inner.keys.get(key)
            && *expires_at > now
        {
            return Ok(Some(first.clone()));
        }
        // Forget expired keys now and then so a long-running gateway does not grow forever.
        if inner.keys.len() >= 1024 && inner.keys.len().is_power_of_two() {
            inner.keys.retain(|_, (_, expires_at)| *expires_at > now);
        }
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        inner.keys.insert(
            key.to_owned(),
            (id.to_owned(), now.saturating_add(window_ms)),
        );
        Ok(None)
    }

    async fn release_idempotency_key(&self, key: &str, id: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.keys.get(key).is_some_and(|(holder, _)| holder == id) {
            inner.keys.remove(key);
        }
        Ok(())
    }

    async fn count_events(
        &self,
        key: &str,
        window: Duration,
        events: u32,
        limit: u32,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let (index, ends) = crate::store::current_window(now, window);
        let mut inner = self.lock();
        // Forget past windows now and then, as with idempotency keys.
        if inner.events.len() >= 1024 && inner.events.len().is_power_of_two() {
            inner.events.retain(|_, (_, _, until)| *until > now);
        }
        let entry = inner
            .events
            .entry(key.to_owned())
            .or_insert((index, 0, ends));
        if entry.0 != index {
            *entry = (index, 0, ends);
        }
        let counted = entry.1.saturating_add(events);
        if counted > limit {
            return Ok(false);
        }
        entry.1 = counted;
        Ok(true)
    }
}
