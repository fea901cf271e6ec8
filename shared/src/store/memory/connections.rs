//! `MemoryStore`'s connections and rooms.

use async_trait::async_trait;

use super::super::{Connection, Connections, Left, Page, Removed, StoreError};
use super::*;
use crate::ids::{ConnectionId, now_ms};
use crate::protocol::RoomName;

#[async_trait]
impl Connections for MemoryStore {
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

    async fn remove(&self, id: &ConnectionId) -> Result<Removed, StoreError> {
        let now = now_ms();
        let (removed, emptied) = self.lock().remove_counted(id);
        Ok(Removed {
            connection: removed.map(|e| e.connection).filter(|c| c.expires_at > now),
            emptied,
        })
    }

    async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut inner = self.lock();
        let Some(expires_at) = inner.live(id, now).map(|e| e.connection.expires_at) else {
            return Err(StoreError::NotFound);
        };
        let members = inner.rooms.entry(room.clone()).or_default();
        let first = members.is_empty();
        members.insert(id.clone(), expires_at);
        if let Some(entry) = inner.connections.get_mut(id) {
            entry.rooms.insert(room.clone());
        }
        Ok(first)
    }

    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> Result<Left, StoreError> {
        let mut inner = self.lock();
        let was_member = inner
            .connections
            .get_mut(id)
            .is_some_and(|e| e.rooms.remove(room));
        let mut emptied = false;
        if let Some(members) = inner.rooms.get_mut(room) {
            emptied = members.remove(id).is_some() && members.is_empty();
            if members.is_empty() {
                inner.rooms.remove(room);
            }
        }
        Ok(Left {
            was_member,
            emptied,
        })
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

    async fn member_count(&self, room: Option<&RoomName>) -> Result<Option<u64>, StoreError> {
        let inner = self.lock();
        let count = match room {
            Some(room) => inner.rooms.get(room).map_or(0, BTreeMap::len),
            None => inner.connections.len(),
        };
        Ok(Some(count as u64))
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

    async fn instances(&self, ids: &[ConnectionId]) -> Result<Vec<Option<String>>, StoreError> {
        super::super::instances_one_by_one(self, ids).await
    }
}
