//! Webhooks from the Lambda functions: a function is frozen once it answers, so it cannot
//! deliver off its path as `herald-local` does. [`SqsWebhooks`] keeps the events an
//! invocation emits (at most [`PENDING_EVENTS`]; one more is dropped and counted) and puts
//! them on an SQS queue when the function flushes them, before it answers; the `webhook`
//! function delivers them from there (`handlers/webhook.rs`), with SQS's redelivery as its
//! retries and a dead-letter queue for what never arrives. The message body is exactly what
//! the receiver gets; the SQS message id becomes the `webhook-id`, the same on every
//! redelivery.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use tracing::warn;

use super::{Event, EventKind, WebhookQueueSettings, Webhooks};
use crate::shard::SqsQueue;

/// Events one invocation may emit before it flushes, at most: a `$disconnect` emits one
/// per room it empties (at most 256) and one for the connection; a publish one per room a
/// gone member emptied.
pub const PENDING_EVENTS: usize = 10_000;
/// Messages per `SendMessageBatch`, SQS's maximum.
const BATCH: usize = 10;

/// Webhook events put on an SQS queue.
pub struct SqsWebhooks {
    queue: SqsQueue,
    events: BTreeSet<EventKind>,
    pending: Mutex<Vec<Event>>,
    /// Events not put on the queue (over [`PENDING_EVENTS`], or SQS failed).
    pub dropped: AtomicU64,
}

impl SqsWebhooks {
    /// Events of the kinds `settings` name, for the queue it names, through a client built
    /// from `sdk`.
    pub fn new(sdk: &aws_config::SdkConfig, settings: &WebhookQueueSettings) -> Self {
        Self {
            queue: SqsQueue::new(sdk, &settings.url),
            events: settings.events.clone(),
            pending: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
        }
    }

    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Webhooks for SqsWebhooks {
    fn emit(&self, event: Event) {
        if !self.events.contains(&event.kind) {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= PENDING_EVENTS {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            warn!(
                pending = PENDING_EVENTS,
                kind = event.kind.as_str(),
                "webhook dropped: too many events in one invocation"
            );
            return;
        }
        pending.push(event);
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let events = self.take();
            for batch in events.chunks(BATCH) {
                let bodies = batch.iter().map(Event::body).collect();
                if let Err(e) = self.queue.send(bodies).await {
                    // Some may have been queued: they are delivered, and the rest counted.
                    self.dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    let kinds: Vec<&str> = batch.iter().map(|e| e.kind.as_str()).collect();
                    warn!(error = %e, ?kinds, "webhooks not queued: dropped");
                }
            }
        })
    }
}
