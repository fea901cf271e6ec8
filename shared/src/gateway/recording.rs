//! `RecordingGateway`: a [`Gateway`] double for tests of handler and fan-out logic. It keeps
//! every successful post, answers 410 / 429 / 500 for the connections a test scripts, and
//! measures how many posts were in flight at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;

use super::{ConnectionInfo, Failures, Gateway, PushError};
use crate::ids::ConnectionId;

/// A scripted answer for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scripted {
    /// Always 410.
    Gone,
    /// 429 this many times, then success.
    ThrottledTimes(u32),
    /// Always 429.
    AlwaysThrottled,
    /// Always a 500.
    Fails,
    /// This many posts succeed, then every one answers 500.
    FailsAfter(u32),
}

/// Records posts; answers as scripted.
#[derive(Default)]
pub struct RecordingGateway {
    posts: Mutex<Vec<(ConnectionId, Bytes)>>,
    scripts: Mutex<HashMap<ConnectionId, Scripted>>,
    attempts: Mutex<HashMap<ConnectionId, u32>>,
    deleted: Mutex<Vec<ConnectionId>>,
    delay: Mutex<Option<Duration>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    batching: std::sync::atomic::AtomicBool,
    batches: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RecordingGateway {
    /// A gateway that accepts every post.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers posts to `id` as `script` says.
    pub fn script(&self, id: &ConnectionId, script: Scripted) {
        lock(&self.scripts).insert(id.clone(), script);
    }

    /// Makes every post take `delay` (with `tokio::time::pause`, no real time passes).
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.delay) = Some(delay);
    }

    /// Every successful post, in order.
    pub fn posts(&self) -> Vec<(ConnectionId, Bytes)> {
        lock(&self.posts).clone()
    }

    /// The JSON messages delivered to `id`, in order.
    pub fn messages_to(&self, id: &ConnectionId) -> Vec<Value> {
        lock(&self.posts)
            .iter()
            .filter(|(to, _)| to == id)
            .map(|(_, body)| serde_json::from_slice(body).expect("posts are JSON"))
            .collect()
    }

    /// How many times a post to `id` was attempted.
    pub fn attempts(&self, id: &ConnectionId) -> u32 {
        lock(&self.attempts).get(id).copied().unwrap_or(0)
    }

    /// Connections closed through `delete`.
    pub fn deleted(&self) -> Vec<ConnectionId> {
        lock(&self.deleted).clone()
    }

    /// Makes the gateway prefer `post_many`, as a routing gateway does.
    pub fn set_batching(&self, on: bool) {
        self.batching.store(on, Ordering::SeqCst);
    }

    /// How many `post_many` calls were made.
    pub fn batches(&self) -> usize {
        self.batches.load(Ordering::SeqCst)
    }

    /// The most posts that were ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

/// Decrements the in-flight count however the post ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Gateway for RecordingGateway {
    async fn post(&self, id: &ConnectionId, payload: Bytes) -> Result<(), PushError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _guard = InFlight(&self.in_flight);
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let attempt = {
            let mut attempts = lock(&self.attempts);
            let n = attempts.entry(id.clone()).or_default();
            *n += 1;
            *n
        };
        let delay = *lock(&self.delay);
        match delay {
            Some(delay) => tokio::time::sleep(delay).await,
            None => tokio::task::yield_now().await,
        }
        let script = lock(&self.scripts).get(id).cloned();
        match script {
            Some(Scripted::Gone) => return Err(PushError::Gone),
            Some(Scripted::AlwaysThrottled) => return Err(PushError::Throttled),
            Some(Scripted::ThrottledTimes(n)) if attempt <= n => {
                return Err(PushError::Throttled);
            }
            Some(Scripted::Fails) => return Err(PushError::other("500 from the double")),
            Some(Scripted::FailsAfter(n)) if attempt > n => {
                return Err(PushError::other("500 from the double"));
            }
            _ => {}
        }
        lock(&self.posts).push((id.clone(), payload));
        Ok(())
    }

    async fn get(&self, id: &ConnectionId) -> Result<ConnectionInfo, PushError> {
        match lock(&self.scripts).get(id) {
            Some(Scripted::Gone) => Err(PushError::Gone),
            _ => Ok(ConnectionInfo {
                connected_at: 0,
                last_active_at: 0,
                source_ip: None,
                user_agent: None,
            }),
        }
    }

    async fn delete(&self, id: &ConnectionId) -> Result<(), PushError> {
        lock(&self.deleted).push(id.clone());
        Ok(())
    }

    fn prefers_batches(&self) -> bool {
        self.batching.load(Ordering::SeqCst)
    }

    async fn post_many(&self, ids: &[ConnectionId], payload: Bytes) -> Failures {
        self.batches.fetch_add(1, Ordering::SeqCst);
        super::post_each(self, ids, payload).await
    }
}
