//! Asynchronous invocations (`X-Amz-Invocation-Type: Event`): accepted into a bounded
//! queue and run one after another by one worker, through the same fan-out (and its pacing)
//! as synchronous ones, so a flood of them can neither outrun the clients nor grow memory
//! without bound. A full queue answers 429 `TooManyRequestsException`, as Lambda does when
//! it cannot take an invocation.
//!
//! What waits is the payload's bytes as they arrived, checked to be JSON but parsed only
//! when its turn comes: a parsed payload can be many times its text (each element of
//! `[0,0,…]` is a whole `Value`), so the byte bound holds for what the queue really keeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::app::DEFAULT_QUEUED_INVOCATIONS;
use crate::functions::SharedHandlers;

/// Payload bytes waiting at most: with [`MAX_ASYNC_PAYLOAD_BYTES`] per invocation, what the
/// queue can hold is bounded by this whatever the callers send.
pub(crate) const QUEUED_BYTES: usize = 64 * 1024 * 1024;
/// Lambda's largest asynchronous invocation payload (1 MiB).
pub(crate) const MAX_ASYNC_PAYLOAD_BYTES: usize = 1024 * 1024;

/// An invocation waiting: its payload's JSON text.
struct Queued {
    payload: Bytes,
}

/// The queue's sending side.
pub(crate) struct AsyncInvokes {
    queue: mpsc::Sender<Queued>,
    bytes: Arc<AtomicUsize>,
}

/// Why an invocation was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue is at one of its bounds.
    Full,
    /// The payload is over Lambda's limit for asynchronous invocations.
    TooLarge,
}

impl AsyncInvokes {
    /// A queue of at most `capacity` invocations, and its receiving side for a worker.
    fn new(capacity: usize) -> (Self, mpsc::Receiver<Queued>) {
        let (queue, waiting) = mpsc::channel(capacity.max(1));
        let bytes = Arc::new(AtomicUsize::new(0));
        (Self { queue, bytes }, waiting)
    }

    /// Starts the worker; it stops when `stop` is cancelled, dropping what is still queued
    /// (the sockets it was for are closing).
    pub(crate) fn start(
        capacity: usize,
        handlers: SharedHandlers,
        stop: CancellationToken,
    ) -> Self {
        let (invokes, mut waiting) = Self::new(capacity);
        let held = invokes.bytes.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => break,
                    next = waiting.recv() => next,
                };
                let Some(Queued { payload }) = next else {
                    break;
                };
                held.fetch_sub(payload.len(), Ordering::Relaxed);
                let payload: Value = match serde_json::from_slice(&payload) {
                    Ok(payload) => payload,
                    Err(e) => {
                        // Checked when it was queued; kept for the type's sake.
                        tracing::warn!(error = %e, "asynchronous payload is not JSON");
                        continue;
                    }
                };
                if let Err(e) = handlers.publish(payload).await {
                    tracing::warn!(error = %e, "asynchronous publish failed");
                }
            }
            if !waiting.is_empty() {
                tracing::warn!(
                    dropped = waiting.len(),
                    "shutting down with asynchronous invocations still queued"
                );
            }
        });
        invokes
    }

    /// Queues one invocation whose payload is this JSON text (the caller checked it is).
    pub(crate) fn submit(&self, payload: Bytes) -> Result<(), Refused> {
        let bytes = payload.len();
        if bytes > MAX_ASYNC_PAYLOAD_BYTES {
            return Err(Refused::TooLarge);
        }
        let before = self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > QUEUED_BYTES {
            self.bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Refused::Full);
        }
        self.queue.try_send(Queued { payload }).map_err(|_| {
            self.bytes.fetch_sub(bytes, Ordering::Relaxed);
            Refused::Full
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JSON text of exactly `n` bytes (a number of `n` digits).
    fn json_of(n: usize) -> Bytes {
        Bytes::from("7".repeat(n))
    }

    #[test]
    fn the_queue_is_bounded_by_count_and_by_bytes() {
        let (invokes, mut waiting) = AsyncInvokes::new(DEFAULT_QUEUED_INVOCATIONS);
        assert_eq!(
            invokes.submit(json_of(MAX_ASYNC_PAYLOAD_BYTES + 1)),
            Err(Refused::TooLarge)
        );
        let full = QUEUED_BYTES / MAX_ASYNC_PAYLOAD_BYTES;
        for _ in 0..full {
            assert_eq!(invokes.submit(json_of(MAX_ASYNC_PAYLOAD_BYTES)), Ok(()));
        }
        assert_eq!(invokes.submit(json_of(1)), Err(Refused::Full), "bytes");
        // Taking one out makes room for exactly one more of its size.
        let taken = waiting.try_recv().unwrap();
        invokes
            .bytes
            .fetch_sub(taken.payload.len(), Ordering::Relaxed);
        assert_eq!(invokes.submit(json_of(MAX_ASYNC_PAYLOAD_BYTES)), Ok(()));
        assert_eq!(invokes.submit(json_of(1)), Err(Refused::Full));

        let (invokes, _waiting) = AsyncInvokes::new(DEFAULT_QUEUED_INVOCATIONS);
        for _ in 0..DEFAULT_QUEUED_INVOCATIONS {
            assert_eq!(invokes.submit(json_of(1)), Ok(()));
        }
        assert_eq!(invokes.submit(json_of(1)), Err(Refused::Full), "count");
        assert_eq!(
            invokes.bytes.load(Ordering::Relaxed),
            DEFAULT_QUEUED_INVOCATIONS,
            "a refused invocation holds no bytes"
        );
    }
}
