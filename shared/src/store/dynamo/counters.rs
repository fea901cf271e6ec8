//! Idempotency keys and event counters on DynamoDB: one conditional write each.

use std::time::Duration;

use async_trait::async_trait;

use super::DynamoStore;
use super::errors::{store_error, unless_condition_failed};
use super::keys::{self, Key, attr, n, s};
use super::schema::TABLE;
use crate::ids::now_ms;
use crate::store::{Counters, StoreError};

#[async_trait]
impl Counters for DynamoStore {
    async fn claim_idempotency_key(
        &self,
        key: &str,
        id: &str,
        window: Duration,
    ) -> Result<Option<String>, StoreError> {
        let now = now_ms();
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let item_key = Key::idempotency(key);
        let mut item = item_key.with_expiry(now.saturating_add(window_ms));
        item.insert(attr::ID.to_owned(), s(id));
        if self.put_unless_live(item, now).await? {
            return Ok(None);
        }
        let held = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(item_key.item()))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        Ok(held
            .item()
            .and_then(|i| i.get(attr::ID))
            .and_then(|v| v.as_s().ok())
            .cloned())
    }

    async fn release_idempotency_key(&self, key: &str, id: &str) -> Result<(), StoreError> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Key::idempotency(key).item()))
            .condition_expression(format!("{} = :id", attr::ID))
            .expression_attribute_values(":id", s(id))
            .send()
            .await;
        // Held by another publish: not ours to give back.
        unless_condition_failed(deleted).map(drop)
    }

    async fn count_events(
        &self,
        key: &str,
        window: Duration,
        events: u32,
        limit: u32,
    ) -> Result<bool, StoreError> {
        let Some(room) = limit.checked_sub(events) else {
            return Ok(false);
        };
        let (index, ends) = crate::store::current_window(now_ms(), window);
        let [_, (_, ttl)] = keys::expiry(ends);
        // One conditional update: counted only while under the limit, so a refused event
        // costs no write and the count never passes the limit.
        let counted = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Key::events(key, index).item()))
            .update_expression("ADD #count :events SET #ttl = :ttl")
            .condition_expression("attribute_not_exists(#count) OR #count <= :room")
            .expression_attribute_names("#count", attr::COUNT)
            .expression_attribute_names("#ttl", TABLE.ttl_attribute)
            .expression_attribute_values(":events", n(i64::from(events)))
            .expression_attribute_values(":room", n(i64::from(room)))
            .expression_attribute_values(":ttl", ttl)
            .send()
            .await;
        Ok(unless_condition_failed(counted)?.is_some())
    }
}
