//! A room publish across instances: the instances that claim the room ([`super::hosts`])
//! are asked once each to deliver to their own members and answer their counts; this
//! instance reaches its own members directly. Only a host that no longer answers makes the
//! publish read the room from the store, to count that host's members.

use bytes::Bytes;
use herald::fanout::FanoutConfig;
use herald::gateway::{Counts, PushError, RoomDelivery};
use herald::protocol::RoomName;
use herald::store::StoreError;
use tracing::warn;

use super::envelope::{Answer, Op};
use super::{Cluster, ROOM_REQUEST_TIMEOUT};

impl Cluster {
    /// Delivers `payload` to this instance's members of `room` with one append to its
    /// ring, and counts what became of them; a member found too far behind is closed as a
    /// slow consumer and forgotten by the store, as fan-out forgets one gone.
    pub(super) async fn deliver_here(&self, room: &RoomName, payload: &Bytes) -> Counts {
        let (counts, gone) = self.registry.deliver_here(room, payload).await;
        for id in gone {
            if let Err(e) = self.store.remove(&id).await {
                warn!(connection_id = %id, error = %e, "could not forget a gone connection");
            }
        }
        counts
    }

    /// The instances hosting members of `room`, read only while the store is trusted (as
    /// the store's gate reads a list of recipients).
    async fn trusted_hosts(&self, room: &RoomName) -> Result<Vec<String>, StoreError> {
        self.registration.check()?;
        let mut hosts = self.hosts.of(room).await?;
        self.registration.confirm().await?;
        // Members here are reached even if this instance's claim were missing.
        if !hosts.contains(&self.instance) && self.registry.hosts(room) {
            hosts.push(self.instance.clone());
        }
        Ok(hosts)
    }

    /// Delivers to every host of `room`: this instance's members here, each other host's by
    /// one request; a host nobody answers for counts its members in the store as gone (and
    /// forgets them), one that does not answer in time as failed.
    pub(super) async fn deliver_to_hosts(&self, room: &RoomName, payload: &Bytes) -> RoomDelivery {
        let hosts = match self.trusted_hosts(room).await {
            Ok(hosts) => hosts,
            Err(error) => {
                return RoomDelivery {
                    counts: Counts::default(),
                    error: Some(error),
                };
            }
        };
        let asks = hosts.iter().map(|host| async move {
            if *host == self.instance {
                return Ok(self.deliver_here(room, payload).await);
            }
            let op = Op::room(room.to_string(), payload);
            match self.request_within(host, op, ROOM_REQUEST_TIMEOUT).await {
                Ok(Answer::Counts {
                    delivered,
                    gone,
                    failed,
                }) => Ok(Counts {
                    delivered,
                    gone,
                    failed,
                }),
                Err(PushError::Gone) => {
                    self.hosts.drop_claim(room, host).await;
                    self.settle_host(room, host, true).await
                }
                Ok(_) | Err(_) => {
                    warn!(instance = host, %room, "a host did not deliver a room publish");
                    self.settle_host(room, host, false).await
                }
            }
        });
        let mut delivery = RoomDelivery {
            counts: Counts::default(),
            error: None,
        };
        for answered in futures::future::join_all(asks).await {
            match answered {
                Ok(counts) => delivery.counts += counts,
                Err(error) => delivery.error = Some(error),
            }
        }
        delivery
    }

    /// Counts the members of `room` that the store says `host` holds, read from the store a
    /// page at a time (the one case a room publish lists members): as gone, forgetting them,
    /// when nobody holds them any more; else as failed.
    async fn settle_host(
        &self,
        room: &RoomName,
        host: &str,
        gone: bool,
    ) -> Result<Counts, StoreError> {
        let page_size = FanoutConfig::default().page_size.max(1);
        let mut counts = Counts::default();
        let mut cursor = None;
        loop {
            let page = self
                .store
                .room_members(room, cursor.as_deref(), page_size)
                .await?;
            let holders = self.store.instances(&page.items).await?;
            for (id, holder) in page.items.iter().zip(holders) {
                if holder.as_deref() != Some(host) {
                    continue;
                }
                if gone {
                    counts.gone += 1;
                    if let Err(e) = self.store.remove(id).await {
                        warn!(connection_id = %id, error = %e, "could not forget a gone connection");
                    }
                } else {
                    counts.failed += 1;
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(counts),
            }
        }
    }

    /// Renews this instance's claims on the rooms its sockets are in; after a loss, every
    /// claim is made anew.
    pub(super) async fn renew_claims(&self) -> Result<(), StoreError> {
        self.hosts.renew(&self.registry.hosted_rooms()).await
    }
}
