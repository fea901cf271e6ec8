//! Several `herald-local` instances on one Redis (or one Redis Cluster): each holds its own
//! sockets, and Redis pub/sub carries posts to whichever instance holds the recipient (on a
//! cluster, sharded pub/sub: each channel lives on the master that owns its slot).
//!
//! Every instance subscribes to its own channel, `{prefix}instance:{ID}`, before its port
//! opens. A post for a socket held elsewhere looks up the instance in the connection's
//! record and publishes one request there; the holder answers on the asker's channel, so
//! the caller gets the true outcome (posted, or 410). Fan-out posts a page at a time, so a
//! room publish costs one request (and one reply) per instance that holds members of the
//! page, not one per member. A room publish does not list the room at all: each instance
//! claims the rooms its sockets join ([`hosts`]), and the publish asks each claiming
//! instance once to deliver to its own members and answer its counts, so it costs a few
//! Redis commands per instance whatever the room's size.
//!
//! A dead instance is noticed without waiting: Redis answers `PUBLISH` with the number of
//! subscribers, and 0 means nobody holds those sockets any more, so they are gone (410)
//! and fan-out forgets them. A live instance that does not answer within
//! [`REQUEST_TIMEOUT`] fails the post instead of hanging the publish.
//!
//! The subscription uses a RESP3 connection manager that reconnects and resubscribes by
//! itself after Redis restarts. The moment it drops, the instance distrusts the store's
//! lists of recipients and re-registers every live socket and its rooms as soon as Redis
//! answers ([`registration`]); the heartbeat ([`heartbeat`]) keeps records alive and
//! catches a loss the connection did not see. Instances learn of each other from the
//! channels Redis lists and from the hello each sends on the shared channel
//! `{prefix}cluster` when it starts.
//!
//! | file | what |
//! |---|---|
//! | `cluster/mod.rs` | [`Cluster`]: the routing `Gateway`, requests and their answers |
//! | `cluster/envelope.rs` | the messages instances exchange, and outcomes per post |
//! | `cluster/bus.rs` | the Redis subscriber and publisher |
//! | `cluster/registration.rs` | re-registration after a loss, and the gate on listings |
//! | `cluster/markers.rs` | the keys that say an instance is registered (one per master on a Redis Cluster) |
//! | `cluster/hosts.rs` | which instances host members of each room |
//! | `cluster/rooms.rs` | a room publish: each host asked once, its own members reached here |
//! | `cluster/heartbeat.rs` | the heartbeat that keeps this instance's records alive |

mod bus;
mod envelope;
mod heartbeat;
mod hosts;
mod markers;
mod registration;
mod rooms;
pub(crate) mod tracking;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald::error;
use herald::gateway::{ConnectionInfo, Counts, Failures, Gateway, PushError, RoomDelivery};
use herald::ids::ConnectionId;
use herald::protocol::RoomName;
use herald::store::{ConnectionStore, RedisSettings, StoreError};
use redis::PushKind;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

pub use heartbeat::heartbeat;
pub use hosts::Hosts;
pub use registration::Registration;

use crate::connection::registry::{self, Frame, Registry};
use bus::Bus;
use envelope::{Answer, Envelope, Op};
use markers::Markers;

/// How long a request to another instance may take before the post counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long another instance may take to deliver a room publish to its members: longer
/// than one post, as it paces itself to its members' writers under a flood.
pub const ROOM_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the cluster meets: the Redis server, whose key prefix its channel names share; and
/// how long this instance's records live between heartbeats.
pub struct ClusterSettings {
    /// The Redis server the store is on.
    pub redis: RedisSettings,
    /// This instance's id.
    pub instance: String,
    /// How often the heartbeat renews this instance's records.
    pub heartbeat: Duration,
    /// How long a record lives unless renewed.
    pub lifetime: Duration,
}

/// The routing [`Gateway`] of one instance.
pub struct Cluster {
    instance: String,
    prefix: String,
    heartbeat: Duration,
    lifetime: Duration,
    registry: Arc<Registry>,
    /// The shared store, which names the instance holding each connection.
    store: Arc<dyn ConnectionStore>,
    /// Whether the store's lists can be trusted, shared with the store's gate.
    registration: Arc<Registration>,
    /// Which instances host members of each room.
    hosts: Arc<Hosts>,
    /// The other instances this one knows of, waited for after a loss.
    peers: Mutex<HashSet<String>>,
    bus: Bus,
    /// Where this instance and its peers say they are registered.
    markers: Arc<Markers>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_request: AtomicU64,
}

fn channel(prefix: &str, instance: &str) -> String {
    format!("{prefix}instance:{instance}")
}

/// The channel every instance subscribes, for hellos.
fn shared_channel(prefix: &str) -> String {
    format!("{prefix}cluster")
}

impl Cluster {
    /// Subscribes this instance's channel, marks it registered, says hello to the others,
    /// and returns its routing gateway. `store` is the shared store behind the gate that
    /// `registration` keeps.
    pub async fn start(
        settings: &ClusterSettings,
        registry: Arc<Registry>,
        store: Arc<dyn ConnectionStore>,
        registration: Arc<Registration>,
        hosts: Arc<Hosts>,
    ) -> Result<Arc<Self>, StoreError> {
        let (pushes, mut incoming) = mpsc::unbounded_channel();
        let prefix = settings.redis.prefix.clone();
        let own = channel(&prefix, &settings.instance);
        let shared = shared_channel(&prefix);
        let bus = Bus::connect(&settings.redis, &[&own, &shared], pushes).await?;
        let markers = Arc::new(Markers::new(bus.publisher(), prefix.clone()).await?);
        let cluster = Arc::new(Self {
            instance: settings.instance.clone(),
            prefix,
            heartbeat: settings.heartbeat,
            lifetime: settings.lifetime,
            registry,
            store,
            registration,
            hosts,
            peers: Mutex::new(HashSet::new()),
            bus,
            markers,
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&cluster);
        tokio::spawn(async move {
            while let Some(push) = incoming.recv().await {
                let Some(cluster) = weak.upgrade() else { break };
                if push.kind == PushKind::Disconnection {
                    cluster.registration.lost("the connection to Redis dropped");
                    continue;
                }
                // A shard channel's message (on a Redis Cluster) reads as a plain one.
                if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
                    continue;
                }
                let Some(redis::Value::BulkString(body)) = push.data.get(1) else {
                    continue;
                };
                match serde_json::from_slice::<Envelope>(body) {
                    Ok(envelope) => cluster.receive(envelope),
                    Err(e) => warn!(error = %e, "unreadable cluster message"),
                }
            }
        });
        let weak = Arc::downgrade(&cluster);
        let registration = cluster.registration.clone();
        tokio::spawn(async move {
            loop {
                registration.wanted().await;
                let Some(cluster) = weak.upgrade() else { break };
                cluster.restore().await;
            }
        });
        cluster.mark_registered().await?;
        cluster
            .registration
            .watch(cluster.markers.clone(), cluster.instance.clone());
        cluster.refresh_peers().await;
        let hello = Envelope::Hello {
            from: cluster.instance.clone(),
        };
        let body = serde_json::to_vec(&hello).expect("hellos serialize");
        cluster.bus.publish(&shared, &body).await?;
        info!(instance = settings.instance, "joined the cluster");
        Ok(cluster)
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Learns the instances subscribed now, forgetting those that no longer are.
    async fn refresh_peers(&self) {
        let prefix = channel(&self.prefix, "");
        match self.bus.channels(&prefix).await {
            Ok(channels) => {
                let live = channels
                    .iter()
                    .filter_map(|c| c.strip_prefix(&prefix))
                    .filter(|peer| *peer != self.instance)
                    .map(str::to_owned)
                    .collect();
                *self.peers() = live;
            }
            Err(e) => debug!(error = %e, "cannot list the cluster's instances"),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Answer>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn receive(self: Arc<Self>, envelope: Envelope) {
        match envelope {
            Envelope::Hello { from } => {
                if from != self.instance {
                    self.peers().insert(from);
                }
            }
            Envelope::Lost { from } => {
                if from != self.instance {
                    self.registration
                        .lost("another instance found the store had lost records");
                }
            }
            Envelope::Reply { req, answer } => {
                let waiter = self.pending().remove(&req);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(answer);
                }
            }
            Envelope::Request { req, from, op } => {
                tokio::spawn(async move {
                    let answer = self.serve(op).await;
                    let reply = Envelope::Reply { req, answer };
                    let body = serde_json::to_vec(&reply).expect("replies serialize");
                    if let Err(e) = self.bus.publish(&channel(&self.prefix, &from), &body).await {
                        warn!(error = %e, to = from, "could not answer a cluster request");
                    }
                });
            }
        }
    }

    /// Carries out another instance's request on this instance's own sockets.
    async fn serve(&self, op: Op) -> Answer {
        let registry = &*self.registry;
        match op {
            Op::Post { ids, text, b64 } => {
                let ids = envelope::ids(ids);
                let failures = registry.post_many(&ids, envelope::payload(text, b64)).await;
                envelope::results(ids.len(), failures)
            }
            Op::Get { id } => {
                Answer::Info(Gateway::get(registry, &ConnectionId::new(id)).await.ok())
            }
            Op::Delete { id } => {
                let result = registry.delete(&ConnectionId::new(id)).await;
                envelope::results(1, result.err().map(|e| (0, e)).into_iter().collect())
            }
            Op::Room { room, text, b64 } => {
                let counts = match RoomName::parse(&room) {
                    Ok(room) => {
                        let payload = envelope::payload(text, b64);
                        self.deliver_here(&room, &payload).await
                    }
                    Err(_) => Counts::default(),
                };
                Answer::Counts {
                    delivered: counts.delivered,
                    gone: counts.gone,
                    failed: counts.failed,
                }
            }
        }
    }

    /// Sends `op` to `instance` and waits for its answer.
    async fn request(&self, instance: &str, op: Op) -> Result<Answer, PushError> {
        self.request_within(instance, op, REQUEST_TIMEOUT).await
    }

    /// Sends `op` to `instance` and waits for its answer at most `patience`.
    async fn request_within(
        &self,
        instance: &str,
        op: Op,
        patience: Duration,
    ) -> Result<Answer, PushError> {
        let req = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending().insert(req, tx);
        let envelope = Envelope::Request {
            req,
            from: self.instance.clone(),
            op,
        };
        let body = serde_json::to_vec(&envelope).expect("requests serialize");
        let sent = self
            .bus
            .publish(&channel(&self.prefix, instance), &body)
            .await;
        let answer = match sent {
            Err(e) => Err(PushError::Other(error::source(e))),
            Ok(0) => {
                // Nobody listens on that instance's channel: it is gone, and its sockets too.
                debug!(
                    instance,
                    "instance is not subscribed; its connections are gone"
                );
                Err(PushError::Gone)
            }
            Ok(_) => match tokio::time::timeout(patience, rx).await {
                Ok(Ok(answer)) => return Ok(answer),
                _ => Err(PushError::other(format!(
                    "instance {instance} did not answer within {patience:?}"
                ))),
            },
        };
        self.pending().remove(&req);
        answer
    }

    /// The instance holding `id`, when it is another one; `Err(Gone)` when none holds it.
    async fn holder(&self, id: &ConnectionId) -> Result<String, PushError> {
        let found = self
            .store
            .instances(std::slice::from_ref(id))
            .await
            .map_err(|e| PushError::Other(error::source(e)))?;
        match found.into_iter().next().flatten() {
            Some(instance) if instance != self.instance => Ok(instance),
            _ => Err(PushError::Gone),
        }
    }

    /// Queues `frame` (a payload encoded once, or why it cannot be sent) into the sockets
    /// of `ids` held here, recording their failures; answers the indexes of the ids held
    /// elsewhere.
    fn post_here(
        &self,
        ids: &[ConnectionId],
        frame: &Result<Frame, PushError>,
        failures: &mut Failures,
    ) -> Vec<usize> {
        let mut elsewhere = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            // Held here: queue into the socket just looked up, without a second lookup.
            let Some(socket) = self.registry.socket(id) else {
                elsewhere.push(i);
                continue;
            };
            let posted = match frame {
                Ok(message) => self.registry.post_to(&socket, message),
                Err(e) => Err(e.clone()),
            };
            if let Err(error) = posted {
                failures.push((i, error));
            }
        }
        elsewhere
    }

    /// Sends the posts to `ids[elsewhere]` to their holders, one request per instance,
    /// recording their failures. An id no other instance holds is gone.
    async fn post_elsewhere(
        &self,
        ids: &[ConnectionId],
        elsewhere: Vec<usize>,
        payload: &Bytes,
        failures: &mut Failures,
    ) {
        let wanted: Vec<ConnectionId> = elsewhere.iter().map(|&i| ids[i].clone()).collect();
        let holders = match self.store.instances(&wanted).await {
            Ok(holders) => holders,
            Err(e) => {
                let source = error::source(e);
                failures.extend(
                    elsewhere
                        .iter()
                        .map(|&i| (i, PushError::Other(source.clone()))),
                );
                return;
            }
        };
        let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, holder) in elsewhere.into_iter().zip(holders) {
            match holder {
                Some(instance) if instance != self.instance => {
                    groups.entry(instance).or_default().push(i);
                }
                _ => failures.push((i, PushError::Gone)),
            }
        }
        let requests = groups.into_iter().map(|(instance, indexes)| async move {
            let named = indexes
                .iter()
                .map(|&i| ids[i].as_str().to_owned())
                .collect();
            let answer = self.request(&instance, Op::post(named, payload)).await;
            envelope::failures_of(&indexes, &answer)
        });
        for answered in futures::future::join_all(requests).await {
            failures.extend(answered);
        }
    }
}

#[async_trait]
impl Gateway for Cluster {
    async fn post(&self, id: &ConnectionId, payload: Bytes) -> Result<(), PushError> {
        if self.registry.socket(id).is_some() {
            // Held here (a reply always is): it waits for room as a reply does.
            return Gateway::post(&*self.registry, id, payload).await;
        }
        self.post_many(std::slice::from_ref(id), payload)
            .await
            .pop()
            .map_or(Ok(()), |(_, error)| Err(error))
    }

    async fn get(&self, id: &ConnectionId) -> Result<ConnectionInfo, PushError> {
        if self.registry.socket(id).is_some() {
            return Gateway::get(&*self.registry, id).await;
        }
        let instance = self.holder(id).await?;
        let op = Op::Get {
            id: id.as_str().to_owned(),
        };
        match self.request(&instance, op).await? {
            Answer::Info(Some(info)) => Ok(info),
            _ => Err(PushError::Gone),
        }
    }

    async fn delete(&self, id: &ConnectionId) -> Result<(), PushError> {
        if self.registry.socket(id).is_some() {
            return self.registry.delete(id).await;
        }
        let instance = self.holder(id).await?;
        let op = Op::Delete {
            id: id.as_str().to_owned(),
        };
        let answer = self.request(&instance, op).await;
        envelope::failures_of(&[0], &answer)
            .pop()
            .map_or(Ok(()), |(_, error)| Err(error))
    }

    fn prefers_batches(&self) -> bool {
        true
    }

    async fn deliver_room(&self, room: &RoomName, payload: &Bytes) -> Option<RoomDelivery> {
        Some(self.deliver_to_hosts(room, payload).await)
    }

    async fn post_many(&self, ids: &[ConnectionId], payload: Bytes) -> Failures {
        // Remote sockets are skipped by the sampling; their instances pace themselves.
        self.registry.pace(ids).await;
        let mut failures = Failures::new();
        let frame = registry::frame(payload.clone());
        let elsewhere = self.post_here(ids, &frame, &mut failures);
        if !elsewhere.is_empty() {
            self.post_elsewhere(ids, elsewhere, &payload, &mut failures)
                .await;
            failures.sort_unstable_by_key(|(i, _)| *i);
        }
        failures
    }
}
