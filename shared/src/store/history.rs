//! History: the last notifications of each room and each user's inbox, with their positions.
//!
//! Every channel (a room, or a user's inbox) has a counter and an epoch. Each notification
//! appended to a channel takes the next offset (1, 2, 3 … with no gaps: one atomic step in
//! each backend assigns it and stores the entry) and carries the channel's epoch, a short
//! random string chosen when the counter is created. When the counter is lost (the store
//! was flushed or restarted empty, or nothing was published for [`Retention::lifetime`]),
//! it starts again at 1 under a new epoch, so a client holding an old position learns that
//! it cannot recover instead of being replayed the wrong notifications.
//!
//! The store keeps the last [`Retention::size`] entries for [`Retention::age`]. A position
//! outlives its entries: a client that missed nothing during a quiet hour still recovers.
//! A read of a channel nobody published to creates its counter (at 0, so that a client
//! that subscribed before the first publish recovers from there), for `age` only.
//!
//! The store writes each entry's bytes itself, so that the offset and epoch inside are the
//! ones it assigned: a [`Draft`] is the notification without them, and [`Draft::assemble`]
//! is the one place that says where they go (the Redis backend's script does the same in
//! Lua).

use std::time::Duration;

use bytes::Bytes;

use super::StoreError;
pub use crate::protocol::Position;
use crate::protocol::{RoomName, Target};

/// Entries kept per channel unless configured (`HERALD_HISTORY_SIZE`).
pub const DEFAULT_HISTORY_SIZE: usize = 100;
/// How long an entry is kept unless configured (`HERALD_HISTORY_TTL_SECS`).
pub const DEFAULT_HISTORY_AGE: Duration = Duration::from_secs(600);
/// How long a channel's counter and epoch live after its last publish: long enough that a
/// client reconnecting after a quiet day is told "nothing missed" rather than "reload",
/// short enough that channels nobody publishes to any more are forgotten.
pub const DEFAULT_POSITION_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Characters in an epoch.
pub const EPOCH_LEN: usize = 12;
/// The most bytes [`Draft::assemble`] adds: the two fields with the longest offset.
pub const POSITION_BYTES: usize =
    OFFSET_FIELD.len() + U64_DIGITS + EPOCH_FIELD.len() + EPOCH_LEN + EPOCH_END.len();

const OFFSET_FIELD: &str = ",\"offset\":";
const EPOCH_FIELD: &str = ",\"epoch\":\"";
const EPOCH_END: &str = "\"";
/// Digits of the largest `u64`.
const U64_DIGITS: usize = 20;

/// Whose history: a room's, or a user's own inbox.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A room.
    Room(RoomName),
    /// The notifications published to one user.
    User(String),
}

impl Channel {
    /// The channel a publish to `target` is kept in: rooms and users have one; broadcasts
    /// and publishes to given connections have none.
    pub fn of(target: &Target) -> Option<Self> {
        match target {
            Target::Room(room) => Some(Self::Room(room.clone())),
            Target::User(user) => Some(Self::User(user.clone())),
            Target::Connections(_) | Target::Broadcast => None,
        }
    }

    /// The channel's name inside backend keys: `room:NAME` or `user:NAME`.
    pub fn key(&self) -> String {
        match self {
            Self::Room(room) => format!("room:{room}"),
            Self::User(user) => format!("user:{user}"),
        }
    }
}

/// How much history a store keeps per channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Entries kept; older ones are dropped as new ones arrive.
    pub size: usize,
    /// How long an entry is kept.
    pub age: Duration,
    /// How long a counter and its epoch live after the last append. One that a read
    /// created, before any append, lives only `age`: clients reading rooms of ever new
    /// names cannot fill the store with counters for a day.
    pub lifetime: Duration,
}

impl Retention {
    /// `size` entries for `age`, or `None` (no history) when either is zero.
    pub fn new(size: usize, age: Duration) -> Option<Self> {
        (size > 0 && !age.is_zero()).then_some(Self {
            size,
            age,
            lifetime: DEFAULT_POSITION_LIFETIME.max(age),
        })
    }

    /// `age` in ms, for the backends' clocks.
    pub fn age_ms(&self) -> i64 {
        millis(self.age)
    }

    /// `lifetime` in ms.
    pub fn lifetime_ms(&self) -> i64 {
        millis(self.lifetime)
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY_SIZE, DEFAULT_HISTORY_AGE).expect("the defaults are not zero")
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A notification without its position: the JSON object's text up to where the offset
/// goes (`head`, no closing brace) and from there on (`tail`, starting with a comma).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    /// `{"type":"notification","id":…,"room":…`
    pub head: Bytes,
    /// `,"data":…,"ts":…}`
    pub tail: Bytes,
}

impl Draft {
    /// The notification's bytes at `position`: `head`, `"offset"`, `"epoch"`, `tail`.
    pub fn assemble(&self, position: &Position) -> Bytes {
        let offset = position.offset.to_string();
        let mut bytes = Vec::with_capacity(self.head.len() + POSITION_BYTES + self.tail.len());
        bytes.extend_from_slice(&self.head);
        bytes.extend_from_slice(OFFSET_FIELD.as_bytes());
        bytes.extend_from_slice(offset.as_bytes());
        bytes.extend_from_slice(EPOCH_FIELD.as_bytes());
        bytes.extend_from_slice(position.epoch.as_bytes());
        bytes.extend_from_slice(EPOCH_END.as_bytes());
        bytes.extend_from_slice(&self.tail);
        bytes.into()
    }

    /// The notification without a position, for a publish that is not kept.
    pub fn bare(&self) -> Bytes {
        let mut bytes = Vec::with_capacity(self.head.len() + self.tail.len());
        bytes.extend_from_slice(&self.head);
        bytes.extend_from_slice(&self.tail);
        bytes.into()
    }

    /// The size of the assembled notification with the longest offset and epoch.
    pub fn max_len(&self) -> usize {
        self.head.len() + POSITION_BYTES + self.tail.len()
    }
}

/// One kept notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its offset in the channel.
    pub offset: u64,
    /// Its bytes, exactly as they were first sent.
    pub bytes: Bytes,
}

/// Which kept entries to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// The oldest ones after this offset.
    After(u64),
    /// The newest ones.
    Latest,
}

/// What a history read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRead {
    /// The channel's position when it was read.
    pub position: Position,
    /// Kept entries in the range, oldest first, at most the limit asked for.
    pub entries: Vec<Entry>,
}

impl HistoryRead {
    /// The entries a client at `since` missed, when they can all be replayed: the epoch is
    /// the same, the client is not ahead, and the entry right after its offset is still
    /// kept (the read must be `Range::After(since.offset)` for at least the retention's
    /// size). `None` when anything in between is gone: never a partial replay.
    pub fn replay_after(self, since: &Position) -> Option<Vec<Entry>> {
        if since.epoch != self.position.epoch || since.offset > self.position.offset {
            return None;
        }
        if since.offset == self.position.offset {
            return Some(Vec::new());
        }
        let next = since.offset.checked_add(1)?;
        (self.entries.first().map(|e| e.offset) == Some(next)).then_some(self.entries)
    }
}

/// A backend's answer about history that Herald cannot use (or a write it could not get
/// in), as a [`StoreError::Backend`].
pub(crate) fn malformed(backend: &'static str, what: &str) -> StoreError {
    StoreError::Backend {
        backend,
        source: crate::error::because(format!("history: {what}")),
    }
}

/// A fresh epoch: random, short, and safe inside a JSON string without escaping.
pub fn new_epoch() -> String {
    let mut epoch = uuid::Uuid::new_v4().simple().to_string();
    epoch.truncate(EPOCH_LEN);
    epoch
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn position(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }

    fn entries(offsets: &[u64]) -> Vec<Entry> {
        offsets
            .iter()
            .map(|&offset| Entry {
                offset,
                bytes: Bytes::new(),
            })
            .collect()
    }

    #[test]
    fn a_draft_assembles_into_the_notification_with_its_position() {
        let draft = Draft {
            head: Bytes::from_static(br#"{"type":"notification","id":"i","room":"r""#),
            tail: Bytes::from_static(br#","data":{"n":1},"ts":5}"#),
        };
        let bytes = draft.assemble(&position(17, "abc"));
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            json!({"type":"notification","id":"i","room":"r","offset":17,"epoch":"abc","data":{"n":1},"ts":5})
        );
        let longest = draft.assemble(&position(u64::MAX, &new_epoch()));
        assert_eq!(longest.len(), draft.max_len());
    }

    #[test]
    fn a_draft_without_a_position_is_its_two_halves() {
        let draft = Draft {
            head: Bytes::from_static(br#"{"type":"notification","id":"i""#),
            tail: Bytes::from_static(br#","data":1,"ts":5}"#),
        };
        assert_eq!(
            serde_json::from_slice::<Value>(&draft.bare()).unwrap(),
            json!({"type":"notification","id":"i","data":1,"ts":5})
        );
    }

    #[test]
    fn channels_name_their_kind_in_keys() {
        let room = Channel::Room(RoomName::parse("orders").unwrap());
        assert_eq!(room.key(), "room:orders");
        assert_eq!(Channel::User("orders".into()).key(), "user:orders");
        assert_eq!(
            Channel::of(&Target::Room(RoomName::parse("orders").unwrap())),
            Some(room)
        );
        assert_eq!(Channel::of(&Target::Broadcast), None);
        assert_eq!(Channel::of(&Target::Connections(vec![])), None);
    }

    #[test]
    fn a_position_lives_a_day_after_its_last_publish_unless_the_age_is_longer() {
        assert_eq!(DEFAULT_POSITION_LIFETIME, Duration::from_secs(86_400));
        let long = Retention::new(1, Duration::from_secs(2 * 86_400)).unwrap();
        assert_eq!(long.lifetime, long.age);
        assert_eq!(Retention::default().lifetime, DEFAULT_POSITION_LIFETIME);
        assert_eq!(Retention::default().lifetime_ms(), 86_400_000);
    }

    #[test]
    fn epochs_are_short_plain_and_fresh() {
        let (a, b) = (new_epoch(), new_epoch());
        assert_eq!(a.len(), EPOCH_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn retention_zero_is_off() {
        assert_eq!(Retention::new(0, DEFAULT_HISTORY_AGE), None);
        assert_eq!(Retention::new(DEFAULT_HISTORY_SIZE, Duration::ZERO), None);
        let kept = Retention::new(1, Duration::from_secs(1)).unwrap();
        assert_eq!((kept.size, kept.age_ms()), (1, 1000));
        assert!(kept.lifetime >= kept.age);
    }

    #[test]
    fn a_replay_is_whole_or_nothing() {
        let read = |last, kept: &[u64]| HistoryRead {
            position: position(last, "e"),
            entries: entries(kept),
        };
        // Everything after 3 is kept.
        assert_eq!(
            read(6, &[4, 5, 6]).replay_after(&position(3, "e")),
            Some(entries(&[4, 5, 6]))
        );
        // Nothing missed.
        assert_eq!(read(6, &[]).replay_after(&position(6, "e")), Some(vec![]));
        // 4 is gone: not a partial replay.
        assert_eq!(read(6, &[5, 6]).replay_after(&position(3, "e")), None);
        // Another epoch, or a client ahead of the channel.
        assert_eq!(read(6, &[4, 5, 6]).replay_after(&position(3, "f")), None);
        assert_eq!(read(6, &[]).replay_after(&position(7, "e")), None);
        // From the very start.
        assert_eq!(
            read(2, &[1, 2]).replay_after(&position(0, "e")),
            Some(entries(&[1, 2]))
        );
    }
}
