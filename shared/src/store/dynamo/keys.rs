//! Item keys and attributes, built from the table's attribute names in one place.
//!
//! Every key string of the table (`conn#ID`, `room#ROOM#SHARD`, `meta`, …) is written here
//! and nowhere else; the rest of the backend asks [`Key`] for the item it means.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::schema::TABLE;
use crate::ids::ConnectionId;
use crate::protocol::RoomName;
use crate::store::Channel;

/// One item, as the SDK reads and writes it.
pub(super) type Item = HashMap<String, AttributeValue>;

/// The non-key attributes.
pub(super) mod attr {
    /// A connection's user.
    pub const USER: &str = "user";
    /// A connection's source IP ("" when unknown).
    pub const IP: &str = "ip";
    /// When a connection opened, ms since the epoch.
    pub const CONNECTED_AT: &str = "connected_at";
    /// The instance holding a connection's socket ("" on AWS).
    pub const INSTANCE: &str = "instance";
    /// After this instant (ms since the epoch) an item counts as gone.
    pub const EXPIRES_AT: &str = "expires_at";
    /// The publish id that claimed an idempotency key.
    pub const ID: &str = "id";
    /// Events counted in a window.
    pub const COUNT: &str = "count";
    /// A channel's last offset.
    pub const OFFSET: &str = "offset";
    /// A channel's epoch.
    pub const EPOCH: &str = "epoch";
    /// A history entry's notification bytes.
    pub const BODY: &str = "body";
}

/// Partition key prefix of a connection's items, and sort key prefix of a membership.
const CONNECTION: &str = "conn#";
/// Sort key prefix of a connection's room, and partition key prefix of a room's members.
const ROOM: &str = "room#";
/// Partition key prefix of the "all" shards.
const ALL: &str = "all#";
/// Index partition key prefix of a user's connections.
const USER: &str = "user#";
/// Partition key prefix of an idempotency key.
const IDEMPOTENCY: &str = "idem#";
/// Partition key prefix of an event counter.
const EVENTS: &str = "events#";
/// Sort key of an event counter's item.
const EVENTS_SORT: &str = "events";
/// Partition key prefix of a channel's history.
const HISTORY: &str = "hist#";
/// Sort key of a channel's position (after every entry's: `p` > `o`).
const POSITION_SORT: &str = "pos";
/// Sort key prefix of a history entry.
const ENTRY: &str = "o#";
/// Digits of an entry's offset in its sort key, zero-padded so text order is number order.
const OFFSET_DIGITS: usize = 20;
/// Sort key of a connection's record.
const META: &str = "meta";
/// Sort key of an idempotency key's item.
const IDEMPOTENCY_SORT: &str = "idem";
/// Partition key prefix of a room's member count.
const ROOM_COUNT: &str = "count#";
/// Sort key of a room's member count.
const ROOM_COUNT_SORT: &str = "count";

/// A string attribute.
pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A number attribute.
pub(super) fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// The primary key of one item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Key {
    pk: String,
    sk: String,
}

impl Key {
    /// A connection's record.
    pub fn connection(id: &ConnectionId) -> Self {
        Self {
            pk: connection_partition(id),
            sk: META.to_owned(),
        }
    }

    /// A room of a connection, under the connection's partition.
    pub fn room_of(id: &ConnectionId, room: &RoomName) -> Self {
        Self {
            pk: connection_partition(id),
            sk: format!("{ROOM}{room}"),
        }
    }

    /// A connection as a member of a room, in one of the room's shards.
    pub fn member(room: &RoomName, shard: u32, id: &ConnectionId) -> Self {
        Self {
            pk: room_partition(room, shard),
            sk: connection_partition(id),
        }
    }

    /// A connection as a member of everyone, in one of the "all" shards.
    pub fn everyone(shard: u32, id: &ConnectionId) -> Self {
        Self {
            pk: all_partition(shard),
            sk: connection_partition(id),
        }
    }

    /// A room's member count (kept when the store counts rooms).
    pub fn room_count(room: &RoomName) -> Self {
        Self {
            pk: format!("{ROOM_COUNT}{room}"),
            sk: ROOM_COUNT_SORT.to_owned(),
        }
    }

    /// An idempotency key's item.
    pub fn idempotency(key: &str) -> Self {
        Self {
            pk: format!("{IDEMPOTENCY}{key}"),
            sk: IDEMPOTENCY_SORT.to_owned(),
        }
    }

    /// The counter of `key`'s events in window `index`.
    pub fn events(key: &str, index: i64) -> Self {
        Self {
            pk: format!("{EVENTS}{key}#{index}"),
            sk: EVENTS_SORT.to_owned(),
        }
    }

    /// A channel's position (counter and epoch).
    pub fn history_position(channel: &Channel) -> Self {
        Self {
            pk: history_partition(channel),
            sk: POSITION_SORT.to_owned(),
        }
    }

    /// One entry of a channel's history.
    pub fn history_entry(channel: &Channel, offset: u64) -> Self {
        Self {
            pk: history_partition(channel),
            sk: entry_sort_key(offset),
        }
    }

    /// The key as it appears in a `LastEvaluatedKey`.
    pub fn from_item(item: &Item) -> Option<Self> {
        let text = |name: &str| item.get(name)?.as_s().ok().cloned();
        Some(Self {
            pk: text(TABLE.partition_key)?,
            sk: text(TABLE.sort_key)?,
        })
    }

    /// The key's two attributes, as the SDK takes a key.
    pub fn item(&self) -> Item {
        HashMap::from([
            (TABLE.partition_key.to_owned(), s(&self.pk)),
            (TABLE.sort_key.to_owned(), s(&self.sk)),
        ])
    }

    /// The key with a copy of the connection's expiry, as every item but the idempotency
    /// key's carries it.
    pub fn with_expiry(&self, expires_at: i64) -> Item {
        let mut item = self.item();
        item.extend(expiry(expires_at));
        item
    }

    /// The partition and sort key, for a cursor.
    pub fn into_parts(self) -> (String, String) {
        (self.pk, self.sk)
    }

    /// The key back from a cursor's parts.
    pub fn from_parts((pk, sk): (String, String)) -> Self {
        Self { pk, sk }
    }
}

/// The partition of a connection's items.
pub(super) fn connection_partition(id: &ConnectionId) -> String {
    format!("{CONNECTION}{id}")
}

/// One shard of a room's members.
pub(super) fn room_partition(room: &RoomName, shard: u32) -> String {
    format!("{ROOM}{room}#{shard}")
}

/// One shard of everyone.
pub(super) fn all_partition(shard: u32) -> String {
    format!("{ALL}{shard}")
}

/// A user's connections, in the index.
pub(super) fn user_partition(user: &str) -> String {
    format!("{USER}{user}")
}

/// The partition of a channel's history.
pub(super) fn history_partition(channel: &Channel) -> String {
    format!("{HISTORY}{}", channel.key())
}

/// The sort key of the entry at `offset`.
pub(super) fn entry_sort_key(offset: u64) -> String {
    format!("{ENTRY}{offset:0width$}", width = OFFSET_DIGITS)
}

/// The offset an entry's sort key names.
pub(super) fn offset_in(sort_key: &str) -> Option<u64> {
    sort_key.strip_prefix(ENTRY)?.parse().ok()
}

/// What every sort key of a connection's rooms begins with.
pub(super) const ROOMS_OF_CONNECTION: &str = ROOM;

/// The connection a membership item (sort key) or a record (partition key) names.
pub(super) fn connection_in(key: &str) -> Option<ConnectionId> {
    key.strip_prefix(CONNECTION).map(ConnectionId::new)
}

/// The room a connection's room item (sort key) names.
pub(super) fn room_in(sort_key: &str) -> Option<RoomName> {
    RoomName::parse(sort_key.strip_prefix(ROOM)?).ok()
}

/// The expiry attributes: `expires_at` in ms, and the TTL attribute in seconds.
pub(super) fn expiry(expires_at: i64) -> [(String, AttributeValue); 2] {
    [
        (attr::EXPIRES_AT.to_owned(), n(expires_at)),
        // TTL is in seconds; round up so the item never disappears before it expires.
        (
            TABLE.ttl_attribute.to_owned(),
            n(expires_at.div_euclid(1000) + 1),
        ),
    ]
}

/// A stable shard for `id` among `shards` (FNV-1a, so every process agrees).
pub(super) fn shard_of(id: &ConnectionId, shards: u32) -> u32 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0100_0000_01b3;
    let hash = id.as_str().bytes().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    u32::try_from(hash % u64::from(shards.max(1))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shapes() {
        let id = ConnectionId::new("abc=");
        let room = RoomName::parse("orders").unwrap();
        let parts = |k: Key| k.into_parts();
        assert_eq!(
            parts(Key::connection(&id)),
            ("conn#abc=".into(), "meta".into())
        );
        assert_eq!(
            parts(Key::room_of(&id, &room)),
            ("conn#abc=".into(), "room#orders".into())
        );
        assert_eq!(
            parts(Key::member(&room, 3, &id)),
            ("room#orders#3".into(), "conn#abc=".into())
        );
        assert_eq!(
            parts(Key::everyone(15, &id)),
            ("all#15".into(), "conn#abc=".into())
        );
        assert_eq!(
            parts(Key::idempotency("k")),
            ("idem#k".into(), "idem".into())
        );
        assert_eq!(user_partition("ann"), "user#ann");
        assert_eq!(connection_in("conn#abc="), Some(id));
        assert_eq!(connection_in("room#x"), None);
        assert_eq!(room_in("room#orders"), Some(room));
    }

    #[test]
    fn history_keys_sort_entries_by_offset_before_the_position() {
        let channel = Channel::Room(RoomName::parse("orders").unwrap());
        let (pk, position) = Key::history_position(&channel).into_parts();
        assert_eq!(
            (pk.as_str(), position.as_str()),
            ("hist#room:orders", "pos")
        );
        let (_, nine) = Key::history_entry(&channel, 9).into_parts();
        let (_, ten) = Key::history_entry(&channel, 10).into_parts();
        let (_, last) = Key::history_entry(&channel, u64::MAX).into_parts();
        assert_eq!(nine, "o#00000000000000000009");
        assert!(nine < ten && ten < last && last < position);
        assert_eq!(offset_in(&last), Some(u64::MAX));
        assert_eq!(offset_in(&position), None);
        let user = Channel::User("alice".into());
        assert_eq!(history_partition(&user), "hist#user:alice");
    }

    #[test]
    fn a_key_reads_back_from_its_item() {
        let key = Key::member(&RoomName::parse("r").unwrap(), 0, &ConnectionId::new("x"));
        assert_eq!(Key::from_item(&key.item()), Some(key.clone()));
        let with = key.with_expiry(1_500);
        assert_eq!(with.get("expires_at"), Some(&n(1_500)));
        assert_eq!(
            with.get("ttl"),
            Some(&n(2)),
            "TTL rounds up to whole seconds"
        );
    }

    #[test]
    fn shards_are_stable_and_spread() {
        let ids: Vec<_> = (0..1_600).map(|_| ConnectionId::generate()).collect();
        let mut counts = [0usize; 16];
        for id in &ids {
            let shard = shard_of(id, 16);
            assert_eq!(shard, shard_of(id, 16));
            counts[shard as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 40), "{counts:?}");
    }
}
