//! Several `herald-local` instances on one Redis: each holds its own sockets, and Redis
//! pub/sub carries posts to whichever instance holds the recipient.
//!
//! Every instance subscribes to its own channel, `{prefix}instance:{ID}`, before its port
//! opens. A post for a socket held elsewhere looks up the instance in the connection's
//! record and publishes one request there; the holder answers on the asker's channel, so
//! the caller gets the true outcome (posted, or 410). Fan-out posts a page at a time, so a
//! room publish costs one request (and one reply) per instance that holds members of the
//! page, not one per member.
//!
//! A dead instance is noticed without waiting: Redis answers `PUBLISH` with the number of
//! subscribers, and 0 means nobody holds those sockets any more, so they are gone (410)
//! and fan-out forgets them. A live instance that does not answer within
//! [`REQUEST_TIMEOUT`] fails the post instead of hanging the publish.
//!
//! The subscription uses a RESP3 connection manager that reconnects and resubscribes by
//! itself after Redis restarts; the heartbeat ([`heartbeat`]) then re-registers every live
//! socket and its rooms, so an emptied Redis is refilled within one heartbeat.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use herald::gateway::{ConnectionInfo, Failures, Gateway, PushError};
use herald::ids::{ConnectionId, now_ms};
use herald::store::{Connection, ConnectionStore, RedisStore, StoreError, redis_error};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, ProtocolVersion, PushKind};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::registry::Registry;

/// How long a request to another instance may take before the post counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The routing [`Gateway`] of one instance.
pub struct Cluster {
    instance: String,
    prefix: String,
    registry: Arc<Registry>,
    store: RedisStore,
    publisher: ConnectionManager,
    /// The subscription's connection, kept alive by [`Cluster::keepalive`].
    subscriber: ConnectionManager,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_request: AtomicU64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Envelope {
    Request { req: u64, from: String, op: Op },
    Reply { req: u64, answer: Answer },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    Post {
        ids: Vec<String>,
        /// The payload as text, or base64 when it is not UTF-8.
        text: Option<String>,
        b64: Option<String>,
    },
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Results(Vec<Outcome>),
    Info(Option<Info>),
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Ok,
    Gone,
    TooLarge,
    Throttled,
    Failed,
}

#[derive(Serialize, Deserialize)]
struct Info {
    connected_at: i64,
    last_active_at: i64,
    source_ip: Option<String>,
    user_agent: Option<String>,
}

impl From<&PushError> for Outcome {
    fn from(error: &PushError) -> Self {
        match error {
            PushError::Gone => Self::Gone,
            PushError::PayloadTooLarge => Self::TooLarge,
            PushError::Throttled => Self::Throttled,
            _ => Self::Failed,
        }
    }
}

impl From<&Result<(), PushError>> for Outcome {
    fn from(result: &Result<(), PushError>) -> Self {
        result.as_ref().err().map_or(Self::Ok, Self::from)
    }
}

impl From<Outcome> for Result<(), PushError> {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Ok => Ok(()),
            Outcome::Gone => Err(PushError::Gone),
            Outcome::TooLarge => Err(PushError::PayloadTooLarge),
            Outcome::Throttled => Err(PushError::Throttled),
            Outcome::Failed => Err(PushError::Other("the holding instance failed".into())),
        }
    }
}

fn channel(prefix: &str, instance: &str) -> String {
    format!("{prefix}instance:{instance}")
}

fn client(url: &str, protocol: ProtocolVersion) -> Result<redis::Client, StoreError> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(|e| StoreError::Backend(format!("{url:?} is not a Redis URL: {e}")))?;
    let settings = info.redis_settings().clone().set_protocol(protocol);
    redis::Client::open(info.set_redis_settings(settings)).map_err(redis_error)
}

impl Cluster {
    /// Subscribes this instance's channel and returns its routing gateway.
    pub async fn start(
        url: &str,
        instance: &str,
        registry: Arc<Registry>,
        store: RedisStore,
    ) -> Result<Arc<Self>, StoreError> {
        let (pushes, mut incoming) = mpsc::unbounded_channel();
        let config = herald::store::redis_manager_config()
            .set_push_sender(pushes)
            .set_automatic_resubscription();
        let mut subscriber =
            ConnectionManager::new_with_config(client(url, ProtocolVersion::RESP3)?, config)
                .await
                .map_err(redis_error)?;
        let prefix = store.prefix().to_owned();
        subscriber
            .subscribe(channel(&prefix, instance))
            .await
            .map_err(redis_error)?;
        let publisher = ConnectionManager::new_with_config(
            client(url, ProtocolVersion::RESP2)?,
            herald::store::redis_manager_config(),
        )
        .await
        .map_err(redis_error)?;
        let cluster = Arc::new(Self {
            instance: instance.to_owned(),
            prefix,
            registry,
            store,
            publisher,
            subscriber,
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&cluster);
        tokio::spawn(async move {
            while let Some(push) = incoming.recv().await {
                let Some(cluster) = weak.upgrade() else { break };
                if push.kind != PushKind::Message {
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
        info!(instance, "joined the cluster");
        Ok(cluster)
    }

    fn receive(self: Arc<Self>, envelope: Envelope) {
        match envelope {
            Envelope::Reply { req, answer } => {
                let waiter = self
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&req);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(answer);
                }
            }
            Envelope::Request { req, from, op } => {
                tokio::spawn(async move {
                    let answer = self.serve(op).await;
                    let reply = Envelope::Reply { req, answer };
                    let body = serde_json::to_vec(&reply).expect("replies serialize");
                    if let Err(e) = self.publish(&channel(&self.prefix, &from), body).await {
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
                let payload = match (text, b64) {
                    (Some(text), _) => Bytes::from(text),
                    (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map(Bytes::from)
                        .unwrap_or_default(),
                    (None, None) => Bytes::new(),
                };
                let ids: Vec<ConnectionId> = ids.into_iter().map(ConnectionId::new).collect();
                let mut outcomes = vec![Outcome::Ok; ids.len()];
                for (i, error) in registry.post_many(&ids, payload).await {
                    if let Some(outcome) = outcomes.get_mut(i) {
                        *outcome = Outcome::from(&error);
                    }
                }
                Answer::Results(outcomes)
            }
            Op::Get { id } => Answer::Info(
                Gateway::get(registry, &ConnectionId::new(id))
                    .await
                    .ok()
                    .map(|info| Info {
                        connected_at: info.connected_at,
                        last_active_at: info.last_active_at,
                        source_ip: info.source_ip,
                        user_agent: info.user_agent,
                    }),
            ),
            Op::Delete { id } => {
                let result = registry.delete(&ConnectionId::new(id)).await;
                Answer::Results(vec![Outcome::from(&result)])
            }
        }
    }

    /// Sends `op` to `instance` and waits for its answer.
    async fn request(&self, instance: &str, op: Op) -> Result<Answer, PushError> {
        let req = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(req, tx);
        let forget = || {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&req);
        };
        let envelope = Envelope::Request {
            req,
            from: self.instance.clone(),
            op,
        };
        let body = serde_json::to_vec(&envelope).expect("requests serialize");
        let receivers = match self.publish(&channel(&self.prefix, instance), body).await {
            Ok(n) => n,
            Err(e) => {
                forget();
                return Err(PushError::Other(format!("redis: {e}")));
            }
        };
        if receivers == 0 {
            // Nobody listens on that instance's channel: it is gone, and its sockets too.
            forget();
            debug!(
                instance,
                "instance is not subscribed; its connections are gone"
            );
            return Err(PushError::Gone);
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => {
                forget();
                Err(PushError::Other(format!(
                    "instance {instance} did not answer within {REQUEST_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Publishes `body`, once more if the first attempt found the connection broken (the
    /// manager reconnects on that error, so the second attempt usually goes through).
    async fn publish(&self, channel: &str, body: Vec<u8>) -> redis::RedisResult<i64> {
        let mut publisher = self.publisher.clone();
        match publisher.publish(channel, &body).await {
            Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                publisher.publish(channel, &body).await
            }
            result => result,
        }
    }

    /// Pings the subscription's connection: a dropped connection is only noticed (and
    /// re-established, with its subscription) when it is used, and it is otherwise idle.
    pub async fn keepalive(&self) {
        let mut subscriber = self.subscriber.clone();
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut subscriber).await;
        if let Err(e) = pong {
            debug!(error = %e, "cluster subscription is down; reconnecting");
        }
    }

    /// The instance holding `id`, when it is another one; `Err(Gone)` when none holds it.
    async fn holder(&self, id: &ConnectionId) -> Result<String, PushError> {
        let found = self
            .store
            .instances(std::slice::from_ref(id))
            .await
            .map_err(|e| PushError::Other(e.to_string()))?;
        match found.into_iter().next().flatten() {
            Some(instance) if instance != self.instance => Ok(instance),
            _ => Err(PushError::Gone),
        }
    }
}

fn post_op(ids: Vec<String>, payload: &Bytes) -> Op {
    match std::str::from_utf8(payload) {
        Ok(text) => Op::Post {
            ids,
            text: Some(text.to_owned()),
            b64: None,
        },
        Err(_) => Op::Post {
            ids,
            text: None,
            b64: Some(base64::engine::general_purpose::STANDARD.encode(payload)),
        },
    }
}

#[async_trait]
impl Gateway for Cluster {
    async fn post(&self, id: &ConnectionId, payload: Bytes) -> Result<(), PushError> {
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
        match self
            .request(
                &instance,
                Op::Get {
                    id: id.as_str().to_owned(),
                },
            )
            .await?
        {
            Answer::Info(Some(info)) => Ok(ConnectionInfo {
                connected_at: info.connected_at,
                last_active_at: info.last_active_at,
                source_ip: info.source_ip,
                user_agent: info.user_agent,
            }),
            _ => Err(PushError::Gone),
        }
    }

    async fn delete(&self, id: &ConnectionId) -> Result<(), PushError> {
        if self.registry.socket(id).is_some() {
            return self.registry.delete(id).await;
        }
        let instance = self.holder(id).await?;
        match self
            .request(
                &instance,
                Op::Delete {
                    id: id.as_str().to_owned(),
                },
            )
            .await?
        {
            Answer::Results(outcomes) => outcomes
                .first()
                .copied()
                .map_or(Err(PushError::Gone), Into::into),
            Answer::Info(_) => Err(PushError::Other("unexpected answer".into())),
        }
    }

    fn prefers_batches(&self) -> bool {
        true
    }

    async fn post_many(&self, ids: &[ConnectionId], payload: Bytes) -> Failures {
        // Remote sockets are skipped by the sampling; their instances pace themselves.
        self.registry.pace(ids).await;
        let mut results: Vec<Option<Result<(), PushError>>> = vec![None; ids.len()];
        let mut remote = Vec::new();
        let local = crate::registry::frame(payload.clone());
        for (i, id) in ids.iter().enumerate() {
            // Held here: queue into the socket just looked up, without a second lookup.
            match self.registry.socket(id) {
                Some(socket) => {
                    results[i] = Some(match &local {
                        Ok(message) => self.registry.post_to(&socket, message),
                        Err(e) => Err(e.clone()),
                    });
                }
                None => remote.push(i),
            }
        }
        if !remote.is_empty() {
            let remote_ids: Vec<ConnectionId> = remote.iter().map(|&i| ids[i].clone()).collect();
            match self.store.instances(&remote_ids).await {
                Err(e) => {
                    for &i in &remote {
                        results[i] = Some(Err(PushError::Other(e.to_string())));
                    }
                }
                Ok(holders) => {
                    let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
                    for (&i, holder) in remote.iter().zip(holders) {
                        match holder {
                            Some(instance) if instance != self.instance => {
                                groups.entry(instance).or_default().push(i);
                            }
                            _ => results[i] = Some(Err(PushError::Gone)),
                        }
                    }
                    let requests = groups.into_iter().map(|(instance, indexes)| {
                        let op = post_op(
                            indexes
                                .iter()
                                .map(|&i| ids[i].as_str().to_owned())
                                .collect(),
                            &payload,
                        );
                        async move { (indexes, self.request(&instance, op).await) }
                    });
                    for (indexes, answer) in futures::future::join_all(requests).await {
                        for (n, &i) in indexes.iter().enumerate() {
                            results[i] = Some(match &answer {
                                Ok(Answer::Results(outcomes)) => outcomes
                                    .get(n)
                                    .copied()
                                    .map_or(Err(PushError::Gone), Into::into),
                                Ok(Answer::Info(_)) => {
                                    Err(PushError::Other("unexpected answer".into()))
                                }
                                Err(e) => Err(e.clone()),
                            });
                        }
                    }
                }
            }
        }
        results
            .into_iter()
            .enumerate()
            .filter_map(|(i, result)| match result {
                Some(Ok(())) => None,
                Some(Err(error)) => Some((i, error)),
                None => Some((i, PushError::Gone)),
            })
            .collect()
    }
}

/// Keeps this instance's connections registered: every `interval`, refreshes each live
/// socket's record to expire `ttl` from now, and re-creates the record and its rooms when
/// it is missing (Redis restarted empty, or the record expired during an outage). A
/// crashed instance stops refreshing, so its records vanish within `ttl`.
pub async fn heartbeat(
    cluster: Arc<Cluster>,
    store: Arc<dyn ConnectionStore>,
    interval: Duration,
    ttl: Duration,
    stop: CancellationToken,
) {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let (registry, instance) = (cluster.registry.clone(), cluster.instance.clone());
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        cluster.keepalive().await;
        let mut restored = 0usize;
        for socket in registry.all() {
            if socket.closing.is_cancelled() {
                continue;
            }
            let meta = &socket.meta;
            let expires_at = now_ms() + ttl_ms;
            match store.refresh(&meta.id, expires_at).await {
                Ok(true) => {}
                Ok(false) => {
                    let Some(user) = meta.context.get("sub").and_then(|v| v.as_str()) else {
                        continue;
                    };
                    let record = Connection {
                        id: meta.id.clone(),
                        user: user.to_owned(),
                        source_ip: Some(meta.source_ip.clone()),
                        connected_at: meta.connected_at,
                        expires_at,
                        instance: Some(instance.clone()),
                    };
                    if let Err(e) = store.add(&record).await {
                        debug!(error = %e, "cannot re-register yet");
                        break;
                    }
                    for room in socket.rooms() {
                        if let Err(e) = store.join(&meta.id, &room).await {
                            debug!(error = %e, "cannot re-join yet");
                        }
                    }
                    restored += 1;
                }
                Err(e) => {
                    debug!(error = %e, "heartbeat cannot reach the store");
                    break;
                }
            }
        }
        if restored > 0 {
            info!(restored, "re-registered connections missing from the store");
        }
    }
}
