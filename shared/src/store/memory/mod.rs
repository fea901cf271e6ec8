//! `MemoryStore`: connection state in this process, for `herald-local`'s embedded default
//! and for tests of handler logic.
//!
//! One mutex guards all maps, so every operation is atomic; it is never held across an
//! `.await`. Sets are ordered (`BTreeSet`) so a page cursor is simply the last id returned.
//! Expired records are skipped on read and dropped when met.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

mod connections;
mod counters;
mod history;

use super::history::{Channel, Entry as Kept, Position, Retention, new_epoch};
use super::{Connection, Page};
use crate::ids::ConnectionId;
use crate::protocol::RoomName;

/// In-process [`ConnectionStore`].
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    connections: BTreeMap<ConnectionId, Entry>,
    /// Each room's members with their expiry, so a page is read without a lookup per member.
    rooms: HashMap<RoomName, BTreeMap<ConnectionId, i64>>,
    users: HashMap<String, BTreeSet<ConnectionId>>,
    /// Idempotency key -> (publish id, expiry in ms).
    keys: HashMap<String, (String, i64)>,
    /// Event key -> (window index, events counted in it, when it ends in ms).
    events: HashMap<String, (i64, u32, i64)>,
    /// Each channel's history.
    histories: HashMap<Channel, Log>,
    /// When histories were last swept of expired channels, in ms.
    histories_swept: i64,
}

/// One channel's counter, epoch and kept entries.
struct Log {
    position: Position,
    /// After this instant (ms) the counter is forgotten and a new epoch begins.
    expires_at: i64,
    /// Kept entries with the instant (ms) each was appended, oldest first.
    entries: VecDeque<(i64, Kept)>,
}

impl Log {
    /// A counter at 0, as a read creates it: it lives `age` unless an append extends it.
    fn new(now: i64, retention: &Retention) -> Self {
        Self {
            position: Position {
                offset: 0,
                epoch: new_epoch(),
            },
            expires_at: now.saturating_add(retention.age_ms()),
            entries: VecDeque::new(),
        }
    }

    /// Drops the entries `retention` no longer keeps.
    fn trim(&mut self, now: i64, retention: &Retention) {
        let oldest = now.saturating_sub(retention.age_ms());
        while self.entries.len() > retention.size
            || self.entries.front().is_some_and(|(at, _)| *at <= oldest)
        {
            self.entries.pop_front();
        }
    }
}

/// How often expired channels are swept from memory, so histories of rooms nobody uses any
/// more do not accumulate.
const HISTORY_SWEEP_MS: i64 = 60_000;
/// Channels past which a new one first makes room: expired ones go, then counters nothing
/// was ever appended to (created by clients reading rooms of many names).
const MAX_HISTORY_CHANNELS: usize = 100_000;

struct Entry {
    connection: Connection,
    rooms: BTreeSet<RoomName>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the whole store, so keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    fn live(&self, id: &ConnectionId, now: i64) -> Option<&Entry> {
        self.connections
            .get(id)
            .filter(|e| e.connection.expires_at > now)
    }

    /// `channel`'s log, trimmed, started afresh when its counter expired.
    fn log(&mut self, channel: &Channel, now: i64, retention: &Retention) -> &mut Log {
        if now.saturating_sub(self.histories_swept) >= HISTORY_SWEEP_MS {
            self.histories_swept = now;
            self.histories.retain(|_, log| log.expires_at > now);
            for log in self.histories.values_mut() {
                log.trim(now, retention);
            }
        }
        if self.histories.len() >= MAX_HISTORY_CHANNELS && !self.histories.contains_key(channel) {
            self.histories.retain(|_, log| log.expires_at > now);
            if self.histories.len() >= MAX_HISTORY_CHANNELS {
                self.histories.retain(|_, log| log.position.offset > 0);
            }
        }
        let log = self
            .histories
            .entry(channel.clone())
            .or_insert_with(|| Log::new(now, retention));
        if log.expires_at <= now {
            *log = Log::new(now, retention);
        }
        log.trim(now, retention);
        log
    }

    fn remove(&mut self, id: &ConnectionId) -> Option<Entry> {
        self.remove_counted(id).0
    }

    /// Forgets a connection: its entry, and the rooms it left without members.
    fn remove_counted(&mut self, id: &ConnectionId) -> (Option<Entry>, Vec<RoomName>) {
        let Some(entry) = self.connections.remove(id) else {
            return (None, Vec::new());
        };
        let mut emptied = Vec::new();
        for room in &entry.rooms {
            if let Some(members) = self.rooms.get_mut(room) {
                members.remove(id);
                if members.is_empty() {
                    self.rooms.remove(room);
                    emptied.push(room.clone());
                }
            }
        }
        if let Some(ids) = self.users.get_mut(&entry.connection.user) {
            ids.remove(id);
            if ids.is_empty() {
                self.users.remove(&entry.connection.user);
            }
        }
        (Some(entry), emptied)
    }

    /// The live ids among `entries` (id, expiry; already positioned after the cursor, at
    /// most `total` of them), at most `limit` of them read.
    fn page<'a>(
        mut entries: impl Iterator<Item = (&'a ConnectionId, i64)>,
        total: usize,
        limit: usize,
        now: i64,
    ) -> Page<ConnectionId> {
        // Sized once: a fan-out reads a room page after page, and growing each page's list
        // from empty reallocated it eight times per page.
        let mut items = Vec::with_capacity(total.min(limit.max(1)));
        let mut last = None;
        for (id, expires_at) in entries.by_ref().take(limit.max(1)) {
            last = Some(id);
            if expires_at > now {
                items.push(id.clone());
            }
        }
        let next = match (last, entries.next()) {
            (Some(last), Some(_)) => Some(last.as_str().to_owned()),
            _ => None,
        };
        Page { items, next }
    }
}

/// The range bound that starts a page after `cursor`.
fn after(cursor: Option<&str>) -> (Bound<ConnectionId>, Bound<ConnectionId>) {
    let start = match cursor {
        Some(c) => Bound::Excluded(ConnectionId::new(c)),
        None => Bound::Unbounded,
    };
    (start, Bound::Unbounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::store_suite!(async { Box::new(MemoryStore::new()) });
}
