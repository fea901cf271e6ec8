//! `TrackingStore`: the shared store, with each local socket's joins and leaves mirrored
//! onto the socket itself, so they can be put back after Redis restarts empty; and with the
//! lists of recipients (room members, a user's connections, everyone, who holds which
//! socket) refused as `Unavailable` while the instance re-registers, or when the store is
//! found to have lost this instance's records by the time it answered (a flush), so a
//! publish never reads a short list and answers a silent `delivered: 0`. A local socket's
//! join also claims its room for this instance ([`Hosts`]).

use std::sync::Arc;

use async_trait::async_trait;
use herald::ids::ConnectionId;
use herald::protocol::RoomName;
use herald::store::{ConnectionStore, ForwardingStore, Left, Page, StoreError};

use crate::cluster::{Hosts, Registration};
use crate::connection::registry::Registry;

/// Forwards to `inner`; mirrors memberships of sockets held by `registry`; lists recipients
/// only while `registration` trusts the store.
pub struct TrackingStore {
    inner: Arc<dyn ConnectionStore>,
    registry: Arc<Registry>,
    registration: Arc<Registration>,
    /// Where this instance claims the rooms its sockets join.
    hosts: Arc<Hosts>,
}

impl TrackingStore {
    /// Wraps `inner`.
    pub fn new(
        inner: Arc<dyn ConnectionStore>,
        registry: Arc<Registry>,
        registration: Arc<Registration>,
        hosts: Arc<Hosts>,
    ) -> Self {
        Self {
            inner,
            registry,
            registration,
            hosts,
        }
    }

    /// What `read` lists, unless the store is distrusted before it or is found to have lost
    /// this instance's records by the time it answered (the read, a future, runs only
    /// once the first check has passed).
    async fn trusted<T>(
        &self,
        read: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.registration.check()?;
        let listed = read.await?;
        self.registration.confirm().await?;
        Ok(listed)
    }

    fn mirror(&self, id: &ConnectionId, room: &RoomName, joined: bool) {
        self.registry.mirror(id, room, joined);
    }
}

#[async_trait]
impl ForwardingStore for TrackingStore {
    fn inner(&self) -> &dyn ConnectionStore {
        &*self.inner
    }

    async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError> {
        let first = self.inner.join(id, room).await?;
        if self.registry.socket(id).is_some() {
            // Before the member is told it joined: the next room publish must ask here.
            self.hosts.claim(room).await?;
        }
        self.mirror(id, room, true);
        Ok(first)
    }

    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> Result<Left, StoreError> {
        // Mirror first: a leave that fails in the store must not come back after a restart.
        self.mirror(id, room, false);
        self.inner.leave(id, room).await
    }

    async fn room_members(
        &self,
        room: &RoomName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        self.trusted(self.inner.room_members(room, cursor, limit))
            .await
    }

    async fn user_connections(&self, user: &str) -> Result<Vec<ConnectionId>, StoreError> {
        self.trusted(self.inner.user_connections(user)).await
    }

    async fn all_connections(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        self.trusted(self.inner.all_connections(cursor, limit))
            .await
    }

    async fn instances(&self, ids: &[ConnectionId]) -> Result<Vec<Option<String>>, StoreError> {
        self.trusted(self.inner.instances(ids)).await
    }
}
