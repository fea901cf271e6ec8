//! Rooms' member counts on DynamoDB, kept when the store is asked to count rooms (the
//! configuration does when a room webhook is wanted, which needs each room's first and
//! last member; presence then reads the count too): one counter item per room,
//! `count#ROOM`, moved by an atomic `ADD` only by the write that created or deleted a
//! connection's membership, so concurrent joins and leaves on any function or instance
//! each count once, and each transition (0 → 1, 1 → 0) is answered to exactly one of them.
//!
//! What it costs: a join and a leave one more write unit each (the counter), and a
//! removal one per room; a count back at zero is deleted (one more unit) so rooms that
//! emptied leave nothing behind. What it gives up: memberships TTL deletes without a
//! removal (a connection that never had its `$disconnect`) are never subtracted, so such a
//! room's count stays above its members until they are removed.

use aws_sdk_dynamodb::types::ReturnValue;

use super::DynamoStore;
use super::errors::{store_error, unless_condition_failed};
use super::keys::{Item, Key, attr, n};
use crate::protocol::RoomName;
use crate::store::StoreError;

impl DynamoStore {
    /// Puts `item`, answering whether no item had its key before (one write unit).
    pub(super) async fn put_new(&self, item: Item) -> Result<bool, StoreError> {
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(store_error)?;
        Ok(out.attributes().is_none_or(|old| old.is_empty()))
    }

    /// Deletes `key`'s item, answering whether there was one (one write unit).
    pub(super) async fn delete_existing(&self, key: &Key) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key.item()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(store_error)?;
        Ok(out.attributes().is_some_and(|old| !old.is_empty()))
    }

    /// Counts a new member of `room`; `true` when it is the room's first.
    pub(super) async fn count_join(&self, room: &RoomName) -> Result<bool, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Key::room_count(room).item()))
            .update_expression("ADD #count :one")
            .expression_attribute_names("#count", attr::COUNT)
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(store_error)?;
        Ok(count_in(out.attributes()) == Some(1))
    }

    /// Counts a member gone from `room`; `true` when it was the room's last. A count that is
    /// missing or at zero (counting began after the member joined) is left alone and
    /// answers `false`: no transition is claimed that was not counted.
    pub(super) async fn count_leave(&self, room: &RoomName) -> Result<bool, StoreError> {
        let key = Key::room_count(room);
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key.item()))
            .update_expression("ADD #count :minus_one")
            .condition_expression("#count > :zero")
            .expression_attribute_names("#count", attr::COUNT)
            .expression_attribute_values(":minus_one", n(-1))
            .expression_attribute_values(":zero", n(0))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        let Some(out) = unless_condition_failed(updated)? else {
            return Ok(false);
        };
        let emptied = count_in(out.attributes()) == Some(0);
        if emptied {
            // Only while still zero: a join meanwhile has counted itself as the first.
            let deleted = self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key.item()))
                .condition_expression("#count = :zero")
                .expression_attribute_names("#count", attr::COUNT)
                .expression_attribute_values(":zero", n(0))
                .send()
                .await;
            unless_condition_failed(deleted)?;
        }
        Ok(emptied)
    }

    /// `room`'s counted members (zero without a counter).
    pub(super) async fn room_count(&self, room: &RoomName) -> Result<u64, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Key::room_count(room).item()))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        Ok(count_in(out.item()).map_or(0, |count| count.max(0).unsigned_abs()))
    }
}

/// The `count` attribute of an answer's item.
fn count_in(item: Option<&Item>) -> Option<i64> {
    item?.get(attr::COUNT)?.as_n().ok()?.parse().ok()
}
