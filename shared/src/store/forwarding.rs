//! `ForwardingStore`: a store that wraps another and changes only some of its operations.
//!
//! A decorator (`herald-local`'s `TrackingStore`, a test's counting store) implements
//! [`ForwardingStore`], names its inner store, and overrides only the operations it changes;
//! every other operation reaches the inner store unchanged. Each implementation is a
//! [`ConnectionStore`] through the blanket implementation below, so the list of operations
//! is forwarded in this one place.

use std::time::Duration;

use async_trait::async_trait;

use super::{
    Channel, Connection, ConnectionStore, Draft, HistoryRead, Page, Position, Range, Retention,
    StoreError,
};
use crate::ids::ConnectionId;
use crate::protocol::RoomName;

/// A store that forwards to [`ForwardingStore::inner`] what it does not override. Each
/// method has the meaning of the [`ConnectionStore`] method of the same name.
#[async_trait]
#[allow(missing_docs)]
pub trait ForwardingStore: Send + Sync + 'static {
    /// The store every operation not overridden goes to.
    fn inner(&self) -> &dyn ConnectionStore;

    async fn add(&self, connection: &Connection) -> Result<(), StoreError> {
        self.inner().add(connection).await
    }

    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        self.inner().get(id).await
    }

    async fn refresh(&self, id: &ConnectionId, expires_at: i64) -> Result<bool, StoreError> {
        self.inner().refresh(id, expires_at).await
    }

    async fn remove(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        self.inner().remove(id).await
    }

    async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<(), StoreError> {
        self.inner().join(id, room).await
    }

    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError> {
        self.inner().leave(id, room).await
    }

    async fn rooms_of(&self, id: &ConnectionId) -> Result<Vec<RoomName>, StoreError> {
        self.inner().rooms_of(id).await
    }

    async fn room_members(
        &self,
        room: &RoomName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        self.inner().room_members(room, cursor, limit).await
    }

    async fn user_connections(&self, user: &str) -> Result<Vec<ConnectionId>, StoreError> {
        self.inner().user_connections(user).await
    }

    async fn count_user(&self, user: &str) -> Result<usize, StoreError> {
        self.inner().count_user(user).await
    }

    async fn all_connections(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        self.inner().all_connections(cursor, limit).await
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        id: &str,
        window: Duration,
    ) -> Result<Option<String>, StoreError> {
        self.inner().claim_idempotency_key(key, id, window).await
    }

    async fn release_idempotency_key(&self, key: &str, id: &str) -> Result<(), StoreError> {
        self.inner().release_idempotency_key(key, id).await
    }

    async fn instances(&self, ids: &[ConnectionId]) -> Result<Vec<Option<String>>, StoreError> {
        self.inner().instances(ids).await
    }

    async fn count_event(
        &self,
        key: &str,
        window: Duration,
        limit: u32,
    ) -> Result<bool, StoreError> {
        self.inner().count_event(key, window, limit).await
    }

    async fn append(
        &self,
        channel: &Channel,
        draft: &Draft,
        retention: &Retention,
    ) -> Result<Position, StoreError> {
        self.inner().append(channel, draft, retention).await
    }

    async fn read_history(
        &self,
        channel: &Channel,
        range: Range,
        limit: usize,
        retention: &Retention,
    ) -> Result<HistoryRead, StoreError> {
        self.inner()
            .read_history(channel, range, limit, retention)
            .await
    }
}

#[async_trait]
impl<T: ForwardingStore> ConnectionStore for T {
    async fn add(&self, connection: &Connection) -> Result<(), StoreError> {
        ForwardingStore::add(self, connection).await
    }

    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        ForwardingStore::get(self, id).await
    }

    async fn refresh(&self, id: &ConnectionId, expires_at: i64) -> Result<bool, StoreError> {
        ForwardingStore::refresh(self, id, expires_at).await
    }

    async fn remove(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        ForwardingStore::remove(self, id).await
    }

    async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<(), StoreError> {
        ForwardingStore::join(self, id, room).await
    }

    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError> {
        ForwardingStore::leave(self, id, room).await
    }

    async fn rooms_of(&self, id: &ConnectionId) -> Result<Vec<RoomName>, StoreError> {
        ForwardingStore::rooms_of(self, id).await
    }

    async fn room_members(
        &self,
        room: &RoomName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        ForwardingStore::room_members(self, room, cursor, limit).await
    }

    async fn user_connections(&self, user: &str) -> Result<Vec<ConnectionId>, StoreError> {
        ForwardingStore::user_connections(self, user).await
    }

    async fn count_user(&self, user: &str) -> Result<usize, StoreError> {
        ForwardingStore::count_user(self, user).await
    }

    async fn all_connections(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConnectionId>, StoreError> {
        ForwardingStore::all_connections(self, cursor, limit).await
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        id: &str,
        window: Duration,
    ) -> Result<Option<String>, StoreError> {
        ForwardingStore::claim_idempotency_key(self, key, id, window).await
    }

    async fn release_idempotency_key(&self, key: &str, id: &str) -> Result<(), StoreError> {
        ForwardingStore::release_idempotency_key(self, key, id).await
    }

    async fn instances(&self, ids: &[ConnectionId]) -> Result<Vec<Option<String>>, StoreError> {
        ForwardingStore::instances(self, ids).await
    }

    async fn count_event(
        &self,
        key: &str,
        window: Duration,
        limit: u32,
    ) -> Result<bool, StoreError> {
        ForwardingStore::count_event(self, key, window, limit).await
    }

    async fn append(
        &self,
        channel: &Channel,
        draft: &Draft,
        retention: &Retention,
    ) -> Result<Position, StoreError> {
        ForwardingStore::append(self, channel, draft, retention).await
    }

    async fn read_history(
        &self,
        channel: &Channel,
        range: Range,
        limit: usize,
        retention: &Retention,
    ) -> Result<HistoryRead, StoreError> {
        ForwardingStore::read_history(self, channel, range, limit, retention).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::MemoryStore;
    use crate::store::suite::connection;

    /// Counts joins and changes nothing else.
    struct CountingJoins {
        inner: MemoryStore,
        joins: AtomicUsize,
    }

    #[async_trait]
    impl ForwardingStore for CountingJoins {
        fn inner(&self) -> &dyn ConnectionStore {
            &self.inner
        }

        async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<(), StoreError> {
            self.joins.fetch_add(1, Ordering::Relaxed);
            self.inner.join(id, room).await
        }
    }

    #[tokio::test]
    async fn an_override_runs_and_everything_else_reaches_the_inner_store() {
        let counting = CountingJoins {
            inner: MemoryStore::new(),
            joins: AtomicUsize::new(0),
        };
        let store: &dyn ConnectionStore = &counting;
        let c = connection("ann");
        store.add(&c).await.unwrap();
        let room = RoomName::parse("r").unwrap();
        store.join(&c.id, &room).await.unwrap();
        assert_eq!(store.rooms_of(&c.id).await.unwrap(), vec![room.clone()]);
        assert_eq!(store.count_user("ann").await.unwrap(), 1);
        assert_eq!(
            store.instances(std::slice::from_ref(&c.id)).await.unwrap(),
            vec![c.instance.clone()]
        );
        assert!(store.leave(&c.id, &room).await.unwrap());
        assert_eq!(
            store.remove(&c.id).await.unwrap().map(|c| c.user),
            Some("ann".into())
        );
        assert_eq!(counting.joins.load(Ordering::Relaxed), 1);
    }
}
