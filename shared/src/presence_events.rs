//! Join and leave notifications (`HERALD_PRESENCE_EVENTS=1`): when a connection joins a
//! room (a subscribe; on `herald-local`, an SSE stream or long poll opening on it) or
//! leaves it (an unsubscribe, a disconnect), the room's members get
//! `{"type":"join"|"leave","room","user","connectionId"}`, the joiner included.
//!
//! They are rate-limited per room, across every host sharing the store (counted there, as
//! socket publishes are): a room's members get at most the configured rate, and past it an
//! event is dropped, since a room where hundreds come and go each second would otherwise
//! spend its whole post budget on them. A client that must know the exact members asks
//! `presence`, which is always right; the events are not kept in history and carry no
//! offset. The clean-up of a killed instance's members sends none.

use bytes::Bytes;
use tracing::{debug, warn};

use crate::fanout::{FanoutConfig, deliver};
use crate::gateway::Gateway;
use crate::ids::ConnectionId;
use crate::limits::Rate;
use crate::protocol::{Member, RoomName, ServerMessage, Target};
use crate::store::ConnectionStore;

/// What happened to a room's membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A connection joined the room.
    Join,
    /// A connection left it.
    Leave,
}

/// Where presence events go and how many a room may get: built from `limits`'
/// `presence_events` by the handlers, and by a host's readers.
pub struct Announcer<'a> {
    /// The store the room's members and the rate are read from.
    pub store: &'a dyn ConnectionStore,
    /// Where the events are posted.
    pub gateway: &'a dyn Gateway,
    /// Fan-out pacing.
    pub fanout: &'a FanoutConfig,
    /// Events per room.
    pub rate: Rate,
}

impl Announcer<'_> {
    /// Tells `room`'s members that `user`'s connection `id` joined or left it, unless the
    /// room is over its rate. Never fails: a lost event costs a member an update that
    /// `presence` still answers right.
    pub async fn announce(&self, change: Change, room: &RoomName, user: &str, id: &ConnectionId) {
        let key = format!("presence-events:{room}");
        match self
            .store
            .count_events(&key, self.rate.window(), 1, self.rate.burst)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                debug!(room = %room, "presence event dropped: the room is over its rate");
                return;
            }
            Err(e) => {
                warn!(room = %room, error = %e, "presence event dropped: the store failed");
                return;
            }
        }
        let member = Member {
            user: user.to_owned(),
            connection_id: id.clone(),
        };
        let message = match change {
            Change::Join => ServerMessage::Join {
                room: room.clone(),
                member,
            },
            Change::Leave => ServerMessage::Leave {
                room: room.clone(),
                member,
            },
        };
        let payload =
            Bytes::from(serde_json::to_vec(&message).expect("a presence event serializes"));
        let target = Target::Room(room.clone());
        if let Err(e) = deliver(self.store, self.gateway, &target, payload, self.fanout).await {
            warn!(error = %e.error, "presence event not delivered to every member");
        }
    }
}
