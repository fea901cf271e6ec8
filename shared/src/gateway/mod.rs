//! Pushing to connections: the API Gateway Management API (`@connections`) as a trait.
//!
//! [`Gateway`] is what handlers and fan-out post through. [`ApiGatewayManagement`] is the
//! real one over HTTP (on AWS, and against `herald-local`'s own `@connections` endpoint);
//! `herald-local` also has an in-process one that writes straight to its sockets.
//! [`RecordingGateway`] (feature `test-support`) records posts and answers what a test tells it.
//!
//! A gone connection (410) is its own error: it is the one answer after which the store
//! must forget the connection. Throttling (429) is retried by fan-out; other failures are
//! counted and never retried blindly.

mod apigw;
#[cfg(any(test, feature = "test-support"))]
mod recording;

use async_trait::async_trait;
use bytes::Bytes;

pub use apigw::{ApiGatewayManagement, ManagementClients};
#[cfg(any(test, feature = "test-support"))]
pub use recording::{RecordingGateway, Scripted};

use crate::error::Source;
use crate::ids::ConnectionId;
use crate::protocol::RoomName;
use crate::store::StoreError;

/// What happened to the recipients of one publish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Posted successfully.
    pub delivered: u64,
    /// Answered 410; forgotten by the store.
    pub gone: u64,
    /// Throttled past the retries, or failed otherwise.
    pub failed: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.delivered += other.delivered;
        self.gone += other.gone;
        self.failed += other.failed;
    }
}

/// What a gateway's own delivery to a room did ([`Gateway::deliver_room`]): its counts,
/// and the store's error that stopped it before every member was reached, if one did.
#[derive(Debug)]
pub struct RoomDelivery {
    /// What was delivered, gone or failed.
    pub counts: Counts,
    /// Why some members may not have been reached.
    pub error: Option<StoreError>,
}

/// The posts of a [`Gateway::post_many`] that failed, each with the index of its id. Most
/// posts succeed, so a page that all went through is answered without an allocation.
pub type Failures = Vec<(usize, PushError)>;

/// Errors of a push to one connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PushError {
    /// 410 `GoneException`: the connection no longer exists.
    #[error("connection is gone")]
    Gone,
    /// 429 `LimitExceededException`: slow down and retry.
    #[error("throttled")]
    Throttled,
    /// 413 `PayloadTooLargeException`: over API Gateway's 128 KiB.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 403 `ForbiddenException`: the caller may not manage this API's connections.
    #[error("forbidden: {0}")]
    Forbidden(#[source] Source),
    /// Anything else: a 5xx, a timeout, a broken connection.
    #[error("push failed: {0}")]
    Other(#[source] Source),
}

impl PushError {
    /// A failure with nothing below it but a sentence.
    pub fn other(message: impl Into<String>) -> Self {
        Self::Other(crate::error::because(message))
    }
}

/// What `GET @connections/{id}` tells about a connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionInfo {
    /// When it connected, ms since the epoch.
    pub connected_at: i64,
    /// When it last sent or received, ms since the epoch.
    pub last_active_at: i64,
    /// The client's address.
    pub source_ip: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
}

/// The API Gateway Management API: post to, inspect and close connections.
#[async_trait]
pub trait Gateway: Send + Sync + 'static {
    /// Sends one message to a connection.
    async fn post(&self, id: &ConnectionId, payload: Bytes) -> Result<(), PushError>;

    /// Describes a connection.
    async fn get(&self, id: &ConnectionId) -> Result<ConnectionInfo, PushError>;

    /// Closes a connection (its `$disconnect` then runs).
    async fn delete(&self, id: &ConnectionId) -> Result<(), PushError>;

    /// Whether [`Gateway::post_many`] is cheaper than one post per connection (a gateway
    /// that routes posts to other hosts sends one message per host instead of per member).
    fn prefers_batches(&self) -> bool {
        false
    }

    /// Posts one payload to many connections and answers the posts that failed, each with
    /// the index of its id in `ids`, in order; every other id was posted. Fan-out calls it
    /// once per page of recipients when [`Gateway::prefers_batches`] says so.
    async fn post_many(&self, ids: &[ConnectionId], payload: Bytes) -> Failures {
        post_each(self, ids, payload).await
    }

    /// Delivers `payload` to every member of `room` itself, when this gateway can do so
    /// without fan-out listing the members: a host that knows its own sockets' rooms (one
    /// append to the room's ring), or several, asked once each. `None` (the default):
    /// fan-out lists the members and posts.
    async fn deliver_room(&self, _room: &RoomName, _payload: &Bytes) -> Option<RoomDelivery> {
        None
    }
}

/// [`Gateway::post_many`] as one [`Gateway::post`] per id, in order: the default, and what
/// a gateway that only counts or records its batches does with each.
pub(crate) async fn post_each<G: Gateway + ?Sized>(
    gateway: &G,
    ids: &[ConnectionId],
    payload: Bytes,
) -> Failures {
    let mut failures = Failures::new();
    for (i, id) in ids.iter().enumerate() {
        if let Err(error) = gateway.post(id, payload.clone()).await {
            failures.push((i, error));
        }
    }
    failures
}
