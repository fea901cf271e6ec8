//! A reader on AWS as a member of its rooms. The `stream` and `poll` functions hold no
//! socket, yet a reader reading a room is one of its members (presence counts it, as
//! `herald-local` counts its readers): while it reads, it is written to the store as a
//! connection record whose id says it is a reader ([`ConnectionId::reader`]), joined to its
//! rooms, and removed when it stops. Fan-out skips such ids, since nothing could be posted
//! to them (a post would find them gone and forget them).
//!
//! A reader that stops without its removal (the client went away mid-stream, the function
//! was stopped) expires with its record, which lives as long as the reader may plus
//! [`READER_MARGIN`]: the stream's remaining time, a poll's wait.

use std::time::Duration;

use tracing::warn;

use crate::ids::{ConnectionId, now_ms};
use crate::store::{Channel, Connection, ConnectionStore, StoreError};

/// How much longer than the reader may read its record lives: time for its removal to run.
pub const READER_MARGIN: Duration = Duration::from_secs(30);

/// A reader registered as a member of its rooms; [`Membership::end`] removes it.
#[must_use = "a membership is ended with `end`, or expires with its record"]
pub struct Membership {
    id: ConnectionId,
}

impl Membership {
    /// Registers the reader of `channels` (its rooms and its user's inbox, as admission
    /// answers them), for at most `lives` (plus the margin).
    pub async fn begin(
        store: &dyn ConnectionStore,
        channels: &[Channel],
        source_ip: Option<String>,
        lives: Duration,
    ) -> Result<Self, StoreError> {
        let user = channels.iter().find_map(|channel| match channel {
            Channel::User(user) => Some(user.as_str()),
            Channel::Room(_) => None,
        });
        let id = ConnectionId::reader();
        let now = now_ms();
        let lifetime = i64::try_from((lives + READER_MARGIN).as_millis()).unwrap_or(i64::MAX);
        let record = Connection {
            id: id.clone(),
            user: user.unwrap_or_default().to_owned(),
            source_ip,
            connected_at: now,
            expires_at: now.saturating_add(lifetime),
            instance: None,
        };
        store.add(&record).await?;
        let membership = Self { id };
        for channel in channels {
            let Channel::Room(room) = channel else {
                continue;
            };
            if let Err(e) = store.join(&membership.id, room).await {
                membership.end(store).await;
                return Err(e);
            }
        }
        Ok(membership)
    }

    /// The reader's id, as presence lists it.
    pub fn id(&self) -> &ConnectionId {
        &self.id
    }

    /// Removes the reader from its rooms and the store. A failure is logged: the record
    /// expires anyway.
    pub async fn end(self, store: &dyn ConnectionStore) {
        if let Err(e) = store.remove(&self.id).await {
            warn!(connection_id = %self.id, error = %e, "a reader's membership outlives it until its record expires");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RoomName;
    use crate::store::{MemoryStore, presence};

    #[tokio::test]
    async fn a_reader_is_a_member_while_it_reads() {
        let store = MemoryStore::new();
        let room = RoomName::parse("orders").unwrap();
        let channels = [Channel::Room(room.clone()), Channel::User("ann".into())];
        let reader = Membership::begin(&store, &channels, None, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(reader.id().is_reader());
        let now = presence(&store, &room).await.unwrap();
        assert_eq!(now.count, 1);
        assert_eq!(now.members[0].user, "ann");
        assert_eq!(&now.members[0].connection_id, reader.id());
        reader.end(&store).await;
        assert_eq!(presence(&store, &room).await.unwrap().count, 0);
    }
}
