//! `TrackingStore`: the shared store, with each local socket's joins and leaves mirrored
//! onto the socket itself, so the heartbeat can put them back after Redis restarts empty.

use std::sync::Arc;

use async_trait::async_trait;
use herald::ids::ConnectionId;
use herald::protocol::RoomName;
use herald::store::{ConnectionStore, ForwardingStore, StoreError};

use crate::registry::Registry;

/// Forwards to `inner`; mirrors memberships of sockets held by `registry`.
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
impl ForwardingStore for TrackingStore {
    fn inner(&self) -> &dyn ConnectionStore {
        &*self.inner
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
}
