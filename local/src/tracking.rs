//! `TrackingStore`: the shared store, with each local socket's joins and leaves mirrored
//! onto the socket itself, so the heartbeat can put them back after Redis restarts empty.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald::ids::ConnectionId;
use herald::protocol::RoomName;
use herald::store::{Connection, ConnectionStore, Page, StoreError};

use crate::registry::Registry;

/// Delegates to `inner`; mirrors memberships of sockets held by `registry`.
pub struct TrackingStore {
    inner: Arc<dyn ConnectionStore>,
    registry: Arc<Registry>,
}

impl TrackingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ConnectionStore>, registry: Arc<Registry>) -> Self {
        Self { inner, registry }
    }

    fn mirror(&self, id: &ConnectionId, room: &RoomName, joined: bool) {
        if let Some(socket) = self.registry.socket(id) {
            socket.mirror(room, joined);
        }
    }
}

#[async_trait]
impl ConnectionStore for TrackingStore {
    async fn add(&self, connection: &Connection) -> Result<(), StoreError> {
        self.inner.add(connection).await
    }

    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        self.inner.get(id).await
    }

    async fn refresh(&self, id: &ConnectionId, expires_at: i64) -> Result<bool, StoreError> {
        self.inner.refresh(id, expires_at).await
    }

    async fn remove(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        self.inner.remove(id).await
    }

    async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<(), StoreError> {
        self.inner.join(id, room).await?;
        self.mirror(id, room, true);
        Ok(())
    }

    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError> {
        // Mirror first: a leave that fails in the store must not come back after a restart.
        self.mirror(id, room, false);
        self.inner.leave(id, room).await
    }

    async fn rooms_of(&self, id: &ConnectionId) -> Result<Vec<RoomName>, StoreError> {
        self.inner.rooms_of(id).await
    }

    async fn room_members(
        &self,
        room: &RoomName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        self.inner.room_members(room, cursor, limit).await
    }

    async fn user_connections(&self, user: &str) -> Result<Vec<ConnectionId>, StoreError> {
        self.inner.user_connections(user).await
    }

    async fn count_user(&self, user: &str) -> Result<usize, StoreError> {
        self.inner.count_user(user).await
    }

    async fn all_connections(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        self.inner.all_connections(cursor, limit).await
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        id: &str,
        window: Duration,
    ) -> Result<Option<String>, StoreError> {
        self.inner.claim_idempotency_key(key, id, window).await
    }

    async fn release_idempotency_key(&self, key: &str, id: &str) -> Result<(), StoreError> {
        self.inner.release_idempotency_key(key, id).await
    }
}
