//! History on DynamoDB: under each channel's partition `hist#CHANNEL`, one position item
//! (`sk = pos`: `offset`, `epoch`) and one item per entry (`sk = o#OFFSET`, zero-padded,
//! `body`), every item with `expires_at` and TTL.
//!
//! An append is one conditional `UpdateItem` of the position (`ADD offset 1`, the epoch set
//! if absent, the expiry moved; the condition refuses a position that has expired but not
//! yet been deleted by TTL, which is then started again at 1 under a new epoch) and one
//! `PutItem` of the entry. A read is one consistent `GetItem` of the position and one
//! consistent `Query` of the offsets the retention still keeps; nothing is ever scanned.
//!
//! The size cap is applied on read: offsets older than the last `size` are not returned
//! and their items expire by TTL. Two publishers' puts may land out of order, so a reader
//! may briefly see offset 8 without 7: a replay never starts past a missing entry (that
//! answers "not recovered"), and an entry still being written reaches a subscriber live,
//! since its fan-out starts after its put and the subscriber joined before reading.

use async_trait::async_trait;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use bytes::Bytes;

use super::DynamoStore;
use super::errors::{BACKEND, store_error, unless_condition_failed};
use super::keys::{self, Item, Key, attr, n, s};
use super::schema::TABLE;
use crate::ids::now_ms;
use crate::store::history::{self, Channel, Draft, Entry, HistoryRead, Position, Range, Retention};
use crate::store::{History, StoreError};

/// Attempts at moving a position when other publishers keep restarting it at once.
const POSITION_ATTEMPTS: u32 = 4;

fn position_in(item: &Item) -> Option<Position> {
    Some(Position {
        offset: item.get(attr::OFFSET)?.as_n().ok()?.parse().ok()?,
        epoch: item.get(attr::EPOCH)?.as_s().ok()?.clone(),
    })
}

fn contended() -> StoreError {
    history::malformed(BACKEND, "the position kept changing; try again")
}

impl DynamoStore {
    /// A new position item at `offset`, replacing one that is missing or has expired, to
    /// live `lifetime_ms`. `Ok(None)` when another writer got there first.
    async fn restart_position(
        &self,
        channel: &Channel,
        offset: u64,
        lifetime_ms: i64,
    ) -> Result<Option<Position>, StoreError> {
        let now = now_ms();
        let position = Position {
            offset,
            epoch: history::new_epoch(),
        };
        let mut item = Key::history_position(channel).with_expiry(now.saturating_add(lifetime_ms));
        item.insert(attr::OFFSET.to_owned(), n(offset_number(offset)));
        item.insert(attr::EPOCH.to_owned(), s(&position.epoch));
        Ok(self.put_unless_live(item, now).await?.then_some(position))
    }

    /// Takes the channel's next offset.
    async fn next_position(
        &self,
        channel: &Channel,
        retention: &Retention,
    ) -> Result<Position, StoreError> {
        for _ in 0..POSITION_ATTEMPTS {
            let now = now_ms();
            let [(_, at), (_, ttl)] = keys::expiry(now.saturating_add(retention.lifetime_ms()));
            let updated = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(Key::history_position(channel).item()))
                .update_expression(
                    "ADD #offset :one SET #epoch = if_not_exists(#epoch, :epoch), \
                     #at = :at, #ttl = :ttl",
                )
                .condition_expression("attribute_not_exists(#offset) OR #at > :now")
                .expression_attribute_names("#offset", attr::OFFSET)
                .expression_attribute_names("#epoch", attr::EPOCH)
                .expression_attribute_names("#at", attr::EXPIRES_AT)
                .expression_attribute_names("#ttl", TABLE.ttl_attribute)
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":epoch", s(history::new_epoch()))
                .expression_attribute_values(":at", at)
                .expression_attribute_values(":ttl", ttl)
                .expression_attribute_values(":now", n(now))
                .return_values(ReturnValue::AllNew)
                .send()
                .await;
            if let Some(out) = unless_condition_failed(updated)? {
                return out
                    .attributes()
                    .and_then(position_in)
                    .ok_or_else(|| malformed("a position without offset or epoch"));
            }
            // Expired but not yet deleted by TTL: the history is gone, start again.
            if let Some(position) = self
                .restart_position(channel, 1, retention.lifetime_ms())
                .await?
            {
                return Ok(position);
            }
        }
        Err(contended())
    }

    /// The channel's position, created at 0 when it has none (or an expired one).
    async fn current_position(
        &self,
        channel: &Channel,
        retention: &Retention,
    ) -> Result<Position, StoreError> {
        for _ in 0..POSITION_ATTEMPTS {
            let out = self
                .client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(Key::history_position(channel).item()))
                .consistent_read(true)
                .send()
                .await
                .map_err(store_error)?;
            let live = out.item().filter(|item| {
                item.get(attr::EXPIRES_AT)
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|at| at > now_ms())
            });
            if let Some(item) = live {
                return position_in(item)
                    .ok_or_else(|| malformed("a position without offset or epoch"));
            }
            // Created by a read: it lives `age` unless an append follows.
            if let Some(position) = self
                .restart_position(channel, 0, retention.age_ms())
                .await?
            {
                return Ok(position);
            }
        }
        Err(contended())
    }
}

#[async_trait]
impl History for DynamoStore {
    async fn append(
        &self,
        channel: &Channel,
        draft: &Draft,
        retention: &Retention,
    ) -> Result<Position, StoreError> {
        let position = self.next_position(channel, retention).await?;
        let expires_at = now_ms().saturating_add(retention.age_ms());
        let mut item = Key::history_entry(channel, position.offset).with_expiry(expires_at);
        item.insert(
            attr::BODY.to_owned(),
            AttributeValue::B(Blob::new(draft.assemble(&position).to_vec())),
        );
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(store_error)?;
        Ok(position)
    }

    async fn read_history(
        &self,
        channel: &Channel,
        range: Range,
        limit: usize,
        retention: &Retention,
    ) -> Result<HistoryRead, StoreError> {
        let position = self.current_position(channel, retention).await?;
        let last = position.offset;
        let size = u64::try_from(retention.size).unwrap_or(u64::MAX);
        let kept_from = last.saturating_sub(size).saturating_add(1);
        let from = match range {
            Range::After(after) => after.saturating_add(1),
            Range::Latest => 1,
        }
        .max(kept_from);
        if from > last || limit == 0 {
            return Ok(HistoryRead {
                position,
                entries: Vec::new(),
            });
        }
        let query = self
            .live_query(&format!(
                "{} = :pk AND {} BETWEEN :from AND :to",
                TABLE.partition_key, TABLE.sort_key
            ))
            .expression_attribute_values(":pk", s(keys::history_partition(channel)))
            .expression_attribute_values(":from", s(keys::entry_sort_key(from)))
            .expression_attribute_values(":to", s(keys::entry_sort_key(last)))
            .consistent_read(true);
        let mut entries = Self::query_all(query, |item| {
            Some(Entry {
                offset: keys::offset_in(item.get(TABLE.sort_key)?.as_s().ok()?)?,
                bytes: Bytes::from(item.get(attr::BODY)?.as_b().ok()?.clone().into_inner()),
            })
        })
        .await?;
        match range {
            Range::After(_) => entries.truncate(limit),
            Range::Latest => {
                let newest = entries.len().saturating_sub(limit);
                entries.drain(..newest);
            }
        }
        Ok(HistoryRead { position, entries })
    }
}

/// An offset as DynamoDB's number: offsets never come near `i64::MAX`.
fn offset_number(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

fn malformed(what: &str) -> StoreError {
    history::malformed(BACKEND, what)
}
