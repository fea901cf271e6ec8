//! `MemoryStore`'s history: a ring per channel, under the store's lock.

use async_trait::async_trait;
use bytes::Bytes;

use super::super::history::{
    Channel, Draft, Entry as Kept, HistoryRead, Position, Range, Retention,
};
use super::super::{History, StoreError};
use super::*;
use crate::ids::now_ms;

#[async_trait]
impl History for MemoryStore {
    async fn append(
        &self,
        channel: &Channel,
        draft: &Draft,
        retention: &Retention,
    ) -> Result<Position, StoreError> {
        let now = now_ms();
        let mut inner = self.lock();
        let log = inner.log(channel, now, retention);
        log.position.offset += 1;
        log.expires_at = now.saturating_add(retention.lifetime_ms());
        let bytes: Bytes = draft.assemble(&log.position);
        log.entries.push_back((
            now,
            Kept {
                offset: log.position.offset,
                bytes,
            },
        ));
        log.trim(now, retention);
        Ok(log.position.clone())
    }

    async fn read_history(
        &self,
        channel: &Channel,
        range: Range,
        limit: usize,
        retention: &Retention,
    ) -> Result<HistoryRead, StoreError> {
        let now = now_ms();
        let mut inner = self.lock();
        let log = inner.log(channel, now, retention);
        let kept = log.entries.iter().map(|(_, entry)| entry);
        let entries: Vec<Kept> = match range {
            Range::After(offset) => kept
                .filter(|e| e.offset > offset)
                .take(limit)
                .cloned()
                .collect(),
            Range::Latest => {
                let skip = log.entries.len().saturating_sub(limit);
                kept.skip(skip).cloned().collect()
            }
        };
        Ok(HistoryRead {
            position: log.position.clone(),
            entries,
        })
    }
}
