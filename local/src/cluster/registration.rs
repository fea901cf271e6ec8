//! Registration: whether every socket of the cluster is in the shared store, so that the
//! store's lists of recipients can be trusted.
//!
//! Redis that restarts comes back empty (and records can go other ways: a flush, expiry
//! during a long partition). Until every instance has put its sockets back, the lists miss
//! recipients, and a publish that read them would answer a silent `delivered: 0`. So from
//! the moment the subscription's connection drops, or this instance's marker is found gone
//! (by the heartbeat, or after any read of recipients: [`Registration::confirm`]), the
//! instance is *restoring*: the reads that list recipients fail as `Unavailable`, as they
//! do while Redis is down ([`Registration::check`]). A flush drops no connection, so the
//! instance that finds its marker gone tells the others (`Envelope::Lost`), and they
//! restore too. The restorer
//! ([`Cluster::restore`]) reconnects at once, re-registers every socket and its rooms, sets
//! this instance's marker, and waits for the marker of each peer it knew of; then the lists
//! are trusted again.
//!
//! A peer that is not subscribed within [`RESUBSCRIBE_GRACE`] is taken for gone (its
//! sockets went with it); none is waited for past one record lifetime, after which its
//! records would have expired anyway.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald::error;
use herald::ids::now_ms;
use herald::store::{Connection, ConnectionStore, StoreError};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::Cluster;
use super::markers::Markers;
use crate::connection::registry::Registry;

/// How often the restorer tries Redis again while it is down.
pub const RECONNECT_POLL: Duration = Duration::from_millis(100);
/// How often the restorer looks for its peers' markers.
pub const PEER_POLL: Duration = Duration::from_millis(50);
/// Sockets renewed or registered at once by a heartbeat or a restore: enough to hide the
/// round trip to Redis, few enough that a heartbeat never floods it.
pub const REGISTRATIONS_IN_FLIGHT: usize = 32;
/// How long a peer has to resubscribe after this instance has, before it is taken for gone.
/// Every instance's subscription reconnects as soon as it notices the drop, and each polls
/// every [`RECONNECT_POLL`]: this is many polls.
pub const RESUBSCRIBE_GRACE: Duration = Duration::from_secs(2);

/// Whether this instance trusts the store's lists of recipients.
#[derive(Default)]
pub struct Registration {
    /// Read on every listing, so a plain flag; written under `generation`.
    restoring: AtomicBool,
    /// Counts losses: a restore ends the restoring state only if no loss came after it began.
    generation: Mutex<u64>,
    wake: Notify,
    /// Whether the latest loss was found here in the store, which the other instances do
    /// not see by themselves: the restorer tells them.
    announce: AtomicBool,
    /// This instance's marker, looked up after every read of recipients.
    marker: OnceLock<Marker>,
}

/// Where this instance's markers are.
struct Marker {
    markers: Arc<Markers>,
    instance: String,
}

impl Registration {
    fn generation(&self) -> std::sync::MutexGuard<'_, u64> {
        self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store may have lost this instance's records: distrust it until restored.
    pub fn lost(&self, why: &str) {
        let mut generation = self.generation();
        *generation += 1;
        self.restoring.store(true, Ordering::Release);
        drop(generation);
        info!(why, "re-registering this instance's connections");
        self.wake.notify_one();
    }

    /// The store has lost this instance's marker, and so (a flush) perhaps every
    /// instance's records: distrust it, and have the restorer tell the others.
    pub fn lost_marker(&self) {
        self.announce.store(true, Ordering::Release);
        self.lost("this instance's marker is gone from Redis");
    }

    /// Whether the restore about to begin must tell the other instances of the loss.
    pub(super) fn take_announcement(&self) -> bool {
        self.announce.swap(false, Ordering::AcqRel)
    }

    /// Looks for `instance`'s markers after each read of recipients from now on.
    pub(super) fn watch(&self, markers: Arc<Markers>, instance: String) {
        // Set once, when the cluster starts; a second call has nothing new to say.
        let _ = self.marker.set(Marker { markers, instance });
    }

    /// After a read of recipients: `Unavailable` if the store may have lost records by the
    /// time it answered. The marker is looked up after the read, so a flush before the read
    /// is always seen; one that comes after it is the next read's.
    pub async fn confirm(&self) -> Result<(), StoreError> {
        self.check()?;
        let Some(marker) = self.marker.get() else {
            return Ok(());
        };
        let marked = marker.markers.marked(&marker.instance).await?;
        if !marked {
            self.lost_marker();
        }
        self.check()
    }

    /// Whether a restore is under way.
    pub fn is_restoring(&self) -> bool {
        self.restoring.load(Ordering::Acquire)
    }

    /// `Unavailable` while restoring: the store's lists of recipients may be short.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.is_restoring() {
            return Err(StoreError::Unavailable {
                backend: "redis",
                source: error::because(
                    "the store came back without every connection; re-registering them",
                ),
            });
        }
        Ok(())
    }

    /// Ends the restoring state begun by loss `generation`; false when a later loss
    /// needs another restore.
    fn restored(&self, generation: u64) -> bool {
        let current = self.generation();
        if *current != generation {
            return false;
        }
        self.restoring.store(false, Ordering::Release);
        true
    }

    /// Waits until a loss asks for a restore.
    pub(super) async fn wanted(&self) {
        self.wake.notified().await;
    }
}

/// What a registration pass writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pass {
    /// Renew each record, and write again only those missing (the heartbeat).
    Renew,
    /// Write every record and membership again (after a loss: on a Redis Cluster, a master
    /// restarted empty takes the room and user sets of its slots while the records in
    /// other slots survive, so a surviving record says nothing of its memberships).
    Whole,
}

/// Puts every live socket of `registry` into `store`, with its rooms, to expire `lifetime`
/// from now: on a [`Pass::Renew`] only where its record is missing, refreshing the others.
/// Answers how many were put back; stops at the first store failure.
pub(super) async fn register_all(
    registry: &Registry,
    store: &dyn ConnectionStore,
    instance: &str,
    lifetime: Duration,
    pass: Pass,
) -> Result<usize, StoreError> {
    let lifetime_ms = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
    let sockets = registry.all();
    // Several sockets at once: one after another, a round over 15,000 sockets on a loaded
    // machine outlasted a record's lifetime, and records expired under a live instance.
    let mut rounds = futures::stream::iter(sockets)
        .map(|socket| async move {
            if socket.closing.is_cancelled() {
                return Ok(false);
            }
            let meta = &socket.meta;
            let expires_at = now_ms() + lifetime_ms;
            if pass == Pass::Renew && store.refresh(&meta.id, expires_at).await? {
                return Ok(false);
            }
            let Some(user) = meta.context.text("sub") else {
                return Ok(false);
            };
            let record = Connection {
                id: meta.id.clone(),
                user: user.to_owned(),
                source_ip: Some(meta.source_ip.clone()),
                connected_at: meta.connected_at,
                expires_at,
                instance: Some(instance.to_owned()),
            };
            store.add(&record).await?;
            for room in socket.rooms() {
                store.join(&meta.id, &room).await?;
            }
            Ok::<bool, StoreError>(true)
        })
        .buffer_unordered(REGISTRATIONS_IN_FLIGHT);
    let mut restored = 0;
    while let Some(done) = rounds.next().await {
        if done? {
            restored += 1;
        }
    }
    Ok(restored)
}

impl Cluster {
    /// Re-registers this instance after a loss, then waits for its peers; see the module.
    pub(super) async fn restore(&self) {
        let generation = *self.registration.generation();
        if self.registration.take_announcement() {
            self.announce_loss().await;
        }
        // The claims are made again with the records, whatever this instance remembers.
        self.hosts.forget_claims();
        let restored = loop {
            if self.bus.ping().await.is_ok() {
                let registered = register_all(
                    &self.registry,
                    &*self.store,
                    &self.instance,
                    self.lifetime,
                    Pass::Whole,
                )
                .await;
                let claimed = match registered {
                    Ok(restored) => self.renew_claims().await.map(|()| restored),
                    Err(e) => Err(e),
                };
                match claimed {
                    Ok(restored) => match self.mark_registered().await {
                        Ok(()) => break restored,
                        Err(e) => debug!(error = %e, "cannot set the marker yet"),
                    },
                    Err(e) => debug!(error = %e, "cannot re-register yet"),
                }
            }
            tokio::time::sleep(RECONNECT_POLL).await;
        };
        info!(restored, "this instance's connections are registered");
        self.await_peers(generation).await;
        if self.registration.restored(generation) {
            info!("every known instance is registered; publishing trusts the store again");
        }
    }

    /// Tells every other instance that the store lost records, until Redis takes it.
    async fn announce_loss(&self) {
        let lost = super::Envelope::Lost {
            from: self.instance.clone(),
        };
        let body = serde_json::to_vec(&lost).expect("envelopes serialize");
        let shared = super::shared_channel(&self.prefix);
        while let Err(e) = self.bus.publish(&shared, &body).await {
            debug!(error = %e, "cannot tell the other instances of the loss yet");
            tokio::time::sleep(RECONNECT_POLL).await;
        }
    }

    /// Sets this instance's markers, for one record lifetime (the heartbeat renews them).
    pub(super) async fn mark_registered(&self) -> redis::RedisResult<()> {
        self.markers.mark(&self.instance, self.lifetime).await
    }

    /// Whether this instance's markers are all still in the store.
    pub(super) async fn is_marked(&self) -> redis::RedisResult<bool> {
        self.markers.marked(&self.instance).await
    }

    /// Waits until each peer known before the loss is registered again or gone, or one
    /// record lifetime has passed, or another loss came.
    async fn await_peers(&self, generation: u64) {
        let started = Instant::now();
        let prefix = &self.prefix;
        // The peers never include this instance (see `refresh_peers` and the hello).
        let mut waiting: Vec<String> = self.peers().iter().cloned().collect();
        while !waiting.is_empty() {
            if *self.registration.generation() != generation {
                return;
            }
            if started.elapsed() > self.lifetime {
                warn!(
                    ?waiting,
                    "peers did not re-register within a record lifetime"
                );
                return;
            }
            let mut still = Vec::new();
            for peer in waiting {
                match self.markers.marked(&peer).await {
                    Ok(true) => continue,
                    Ok(false) => {
                        let channel = super::channel(prefix, &peer);
                        let gone = matches!(self.bus.subscribers(&channel).await, Ok(0));
                        if gone && started.elapsed() > RESUBSCRIBE_GRACE {
                            debug!(peer, "peer did not come back; taken for gone");
                            self.peers().remove(&peer);
                            continue;
                        }
                        still.push(peer);
                    }
                    Err(_) => still.push(peer),
                }
            }
            waiting = still;
            if !waiting.is_empty() {
                tokio::time::sleep(PEER_POLL).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_ends_restoring_only_for_the_latest_loss() {
        let registration = Registration::default();
        assert!(registration.check().is_ok());
        registration.lost("test");
        let first = *registration.generation();
        assert!(registration.check().unwrap_err().is_unavailable());
        registration.lost("again");
        assert!(!registration.restored(first));
        assert!(registration.is_restoring());
        assert!(registration.restored(first + 1));
        assert!(registration.check().is_ok());
    }
}
