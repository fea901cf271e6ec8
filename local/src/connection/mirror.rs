//! `MirroringStore`: a store whose joins and leaves of the sockets held here are mirrored
//! into the registry's rings, so that one instance delivers a room publish from the room's
//! ring instead of listing its members (`registry.rs`). Several instances use the cluster's
//! `TrackingStore`, which mirrors the same way.

use std::sync::Arc;

use async_trait::async_trait;
use herald::ids::ConnectionId;
use herald::protocol::RoomName;
use herald::store::{ConnectionStore, ForwardingStore, Left, StoreError};

use crate::connection::registry::Registry;

/// Forwards to `inner`; mirrors memberships of sockets held by `registry`.
pub struct MirroringStore {
    inner: Arc<dyn ConnectionStore>,
    registry: Arc<Registry>,
}

impl MirroringStore {
    /// Wraps `inner`, and tells `registry` that it knows every room's members here.
    pub fn new(inner: Arc<dyn ConnectionStore>, registry: Arc<Registry>) -> Self {
        registry.deliver_rooms();
        Self { inner, registry }
    }
}

#[async_trait]
impl ForwardingStore for MirroringStore {
    fn inner(&self) -> &dyn ConnectionStore {
        &*self.inner
    }

    async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError> {
        let first = self.inner.join(id, room).await?;
        // Before the member is told it joined: the next room publish reaches it.
        self.registry.mirror(id, room, true);
        Ok(first)
    }

    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> Result<Left, StoreError> {
        self.registry.mirror(id, room, false);
        self.inner.leave(id, room).await
    }
}
