//! `MemoryStore`: connection state in this process, for `herald-local`'s embedded default
//! and for tests of handler logic.
//!
//! One mutex guards all maps, so every operation is atomic; it is never held across an
//! `.await`. Sets are ordered (`BTreeSet`) so a page cursor is simply the last id returned.
//! Expired records are skipped on read and dropped when met.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use bytes::Bytes;

use super::history::{
    self, Channel, Draft, Entry as Kept, HistoryRead, Position, Range, Retention,
};
use super::{Connection, ConnectionStore, Page, StoreError};
use crate::ids::{ConnectionId, now_ms};
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
                epoch: history::new_epoch(),
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
        let entry = self.connections.remove(id)?;
        for room in &entry.rooms {
            if let Some(members) = self.rooms.get_mut(room) {
                members.remove(id);
                if members.is_empty() {
                    self.rooms.remove(room);
                }
            }
        }
        if let Some(ids) = self.users.get_mut(&entry.connection.user) {
            ids.remove(id);
            if ids.is_empty() {
                self.users.remove(&entry.connection.user);
            }
        }
        Some(entry)
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

#[async_trait]
impl ConnectionStore for MemoryStore {
    async fn add(&self, connection: &Connection) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.remove(&connection.id);
        inner
            .users
            .entry(connection.user.clone())
            .or_default()
            .insert(connection.id.clone());
        inner.connections.insert(
            connection.id.clone(),
            Entry {
                connection: connection.clone(),
                rooms: BTreeSet::new(),
            },
        );
        Ok(())
    }

    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let now = now_ms();
        let mut inner = self.lock();
        match inner.connections.get(id) {
            Some(e) if e.connection.expires_at > now => Ok(Some(e.connection.clone())),
            Some(_) => {
                inner.remove(id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn refresh(&self, id: &ConnectionId, expires_at: i64) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut inner = self.lock();
        let rooms = match inner.connections.get_mut(id) {
            Some(e) if e.connection.expires_at > now => {
                e.connection.expires_at = expires_at;
                e.rooms.iter().cloned().collect::<Vec<_>>()
            }
            _ => return Ok(false),
        };
        for room in rooms {
            if let Some(at) = inner.rooms.get_mut(&room).and_then(|m| m.get_mut(id)) {
                *at = expires_at;
            }
        }
        Ok(true)
    }

    async fn remove(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let now = now_ms();
        let removed = self.lock().remove(id);
        Ok(removed.map(|e| e.connection).filter(|c| c.expires_at > now))
    }

    async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<(), StoreError> {
        let now = now_ms();
        let mut inner = self.lock();
        let Some(expires_at) = inner.live(id, now).map(|e| e.connection.expires_at) else {
            return Err(StoreError::NotFound);
        };
        inner
            .rooms
            .entry(room.clone())
            .or_default()
            .insert(id.clone(), expires_at);
        if let Some(entry) = inner.connections.get_mut(id) {
            entry.rooms.insert(room.clone());
        }
        Ok(())
    }

    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let was_member = inner
            .connections
            .get_mut(id)
            .is_some_and(|e| e.rooms.remove(room));
        if let Some(members) = inner.rooms.get_mut(room) {
            members.remove(id);
            if members.is_empty() {
                inner.rooms.remove(room);
            }
        }
        Ok(was_member)
    }

    async fn rooms_of(&self, id: &ConnectionId) -> Result<Vec<RoomName>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .live(id, now_ms())
            .map(|e| e.rooms.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn room_members(
        &self,
        room: &RoomName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        let inner = self.lock();
        Ok(match inner.rooms.get(room) {
            Some(members) => {
                let entries = members.range(after(cursor)).map(|(id, at)| (id, *at));
                Inner::page(entries, members.len(), limit, now_ms())
            }
            None => Page {
                items: vec![],
                next: None,
            },
        })
    }

    async fn user_connections(&self, user: &str) -> Result<Vec<ConnectionId>, StoreError> {
        let now = now_ms();
        let inner = self.lock();
        Ok(inner
            .users
            .get(user)
            .map(|ids| {
                ids.iter()
                    .filter(|id| inner.live(id, now).is_some())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn count_user(&self, user: &str) -> Result<usize, StoreError> {
        self.user_connections(user).await.map(|ids| ids.len())
    }

    async fn all_connections(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        let inner = self.lock();
        let entries = inner
            .connections
            .range(after(cursor))
            .map(|(id, e)| (id, e.connection.expires_at));
        Ok(Inner::page(
            entries,
            inner.connections.len(),
            limit,
            now_ms(),
        ))
    }

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

    async fn count_event(
        &self,
        key: &str,
        window: Duration,
        limit: u32,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let (index, ends) = super::current_window(now, window);
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
        entry.1 = entry.1.saturating_add(1);
        Ok(entry.1 <= limit)
    }

    async fn release_idempotency_key(&self, key: &str, id: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.keys.get(key).is_some_and(|(holder, _)| holder == id) {
            inner.keys.remove(key);
        }
        Ok(())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    crate::store_suite!(async { Box::new(MemoryStore::new()) });
}
