//! `room.occupied` and `room.vacated`, as the store counts members: [`RoomEvents`] wraps
//! the store every host's handlers, fan-out and clean-ups use, and reports each
//! transition the store answers (a join that found the room empty, a leave or a removal
//! that emptied it). The store answers each transition once, across every instance sharing
//! it, so each is reported once, whoever caused it: an unsubscribe, a `$disconnect`, a
//! delivery that found the member gone, or the clean-up of an instance that went away.
//!
//! The user is read back only on a transition (a join or leave has only the id), so the
//! common join costs nothing more. A store that does not count members (DynamoDB unless a
//! room event is wanted: `store/dynamo/room_counts.rs`) answers no transitions, and
//! nothing is reported.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Event, SharedWebhooks, VacatedBy};
use crate::ids::ConnectionId;
use crate::protocol::RoomName;
use crate::store::{ConnectionStore, ForwardingStore, Left, Removed, StoreError};

/// A store that reports its rooms' transitions to the webhooks.
pub struct RoomEvents {
    inner: Arc<dyn ConnectionStore>,
    webhooks: SharedWebhooks,
}

impl RoomEvents {
    /// Reports `inner`'s transitions to `webhooks`.
    pub fn new(inner: Arc<dyn ConnectionStore>, webhooks: SharedWebhooks) -> Self {
        Self { inner, webhooks }
    }

    /// The user of a live connection, for an event; `None` when it cannot be read.
    async fn user(&self, id: &ConnectionId) -> Option<String> {
        self.inner.get(id).await.ok().flatten().map(|c| c.user)
    }
}

#[async_trait]
impl ForwardingStore for RoomEvents {
    fn inner(&self) -> &dyn ConnectionStore {
        &*self.inner
    }

    async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError> {
        let first = self.inner.join(id, room).await?;
        if first {
            let user = self.user(id).await.unwrap_or_default();
            self.webhooks.emit(Event::room_occupied(room, id, &user));
        }
        Ok(first)
    }

    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> Result<Left, StoreError> {
        let left = self.inner.leave(id, room).await?;
        if left.emptied {
            let user = self.user(id).await;
            self.webhooks.emit(Event::room_vacated(
                room,
                id,
                user.as_deref(),
                VacatedBy::Unsubscribed,
            ));
        }
        Ok(left)
    }

    async fn remove(&self, id: &ConnectionId) -> Result<Removed, StoreError> {
        let removed = self.inner.remove(id).await?;
        let user = removed.connection.as_ref().map(|c| c.user.as_str());
        for room in &removed.emptied {
            self.webhooks
                .emit(Event::room_vacated(room, id, user, VacatedBy::Disconnected));
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::sinks::webhook::{EventKind, Webhooks};
    use crate::store::{Connection, MemoryStore};

    #[derive(Default)]
    struct Recorded(Mutex<Vec<Event>>);

    impl Webhooks for Recorded {
        fn emit(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    fn connection(user: &str) -> Connection {
        Connection {
            id: ConnectionId::generate(),
            user: user.into(),
            source_ip: None,
            connected_at: 0,
            expires_at: i64::MAX,
            instance: None,
        }
    }

    #[tokio::test]
    async fn each_transition_is_reported_once_with_its_room_and_member() {
        let recorded = Arc::new(Recorded::default());
        let store = RoomEvents::new(Arc::new(MemoryStore::new()), recorded.clone());
        let store: &dyn ConnectionStore = &store;
        let (ann, bob) = (connection("ann"), connection("bob"));
        store.add(&ann).await.unwrap();
        store.add(&bob).await.unwrap();
        let room = RoomName::parse("orders").unwrap();
        assert!(store.join(&ann.id, &room).await.unwrap());
        assert!(!store.join(&bob.id, &room).await.unwrap());
        assert!(!store.join(&ann.id, &room).await.unwrap(), "again");
        assert!(!store.leave(&ann.id, &room).await.unwrap().emptied);
        assert!(store.leave(&bob.id, &room).await.unwrap().emptied);
        assert!(store.join(&ann.id, &room).await.unwrap());
        assert_eq!(store.remove(&ann.id).await.unwrap().emptied, vec![room]);
        let seen: Vec<(EventKind, String, String)> = recorded
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e.kind,
                    e.data
                        .get("user")
                        .and_then(|u| u.as_str())
                        .unwrap_or("")
                        .to_owned(),
                    e.data
                        .get("reason")
                        .and_then(|r| r.as_str())
                        .unwrap_or("")
                        .to_owned(),
                )
            })
            .collect();
        let event = |kind, user: &str, reason: &str| (kind, user.to_owned(), reason.to_owned());
        assert_eq!(
            seen,
            [
                event(EventKind::RoomOccupied, "ann", ""),
                event(EventKind::RoomVacated, "bob", "unsubscribed"),
                event(EventKind::RoomOccupied, "ann", ""),
                event(EventKind::RoomVacated, "ann", "disconnected"),
            ]
        );
    }
}
