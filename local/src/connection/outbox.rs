//! A socket's outbound queue: what the gateway has accepted for a client and its writer has
//! not yet sent.
//!
//! A publish queues into thousands of these one after another, so what one push touches is
//! what a fan-out costs. Everything a push reads or writes (the lock, the open flag, the
//! queue's ends and the writer's waker) shares one cache line, and the writer takes the
//! whole queue at once by swapping it with an empty one: it touches that line once per
//! batch, not once per notification. (tokio's bounded channel spreads a push over four
//! lines: its permit count, its tail, its block and its receiver's waker, each padded apart
//! so that many senders do not contend, which is not this queue's case: one publisher at a
//! time pushes, and one writer takes.)
//!
//! The queue is bounded: a push beyond `capacity` is refused, and the caller closes the
//! client as a slow consumer. It allocates nothing until the first push, so an idle
//! connection costs only the line itself.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use crate::connection::wire::Encoded;

/// A frame as queued: its bytes on the wire (see `wire.rs`), encoded once per publish and
/// shared by every recipient's queue. A pointer rather than the 32-byte `Bytes`, so that one
/// cache line of a queue holds eight notifications: a publish queuing into a socket it
/// queued into a moment ago mostly writes a line it already holds.
pub type Frame = Arc<Encoded>;

/// Slots each of the outbox's two buffers keeps while the connection is idle.
const IDLE_SLOTS: usize = 16;

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The outbox was closed: the socket is going away.
    Closed,
    /// The outbox holds `capacity` notifications already.
    Full,
}

/// A bounded queue of frames for one socket, with one writer taking from it.
///
/// Its lock and everything under it fit one 64-byte line (checked by a test below).
#[repr(align(64))]
pub struct Outbox {
    state: Mutex<State>,
}

struct State {
    frames: VecDeque<Frame>,
    /// The writer, when it waits for frames.
    writer: Option<Waker>,
    /// Kept under the lock, on its line, rather than beside it on the next.
    capacity: u32,
    closed: bool,
}

impl Outbox {
    /// An empty, open outbox that holds at most `capacity` frames (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                writer: None,
                capacity: u32::try_from(capacity).unwrap_or(u32::MAX).max(1),
                closed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queue itself consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame` (a reference count) and wakes the writer if it waits.
    pub fn push(&self, frame: &Frame) -> Result<(), Refused> {
        self.enqueue(frame.clone())
    }

    /// Queues a frame the protocol itself sends (a pong), outside the notifications' rules:
    /// never refused as a slow consumer, dropped once closed or full.
    pub fn push_control(&self, frame: Frame) {
        // Refused means dropped here: the caller has no client to close.
        let _ = self.enqueue(frame);
    }

    fn enqueue(&self, frame: Frame) -> Result<(), Refused> {
        let writer = {
            let mut state = self.lock();
            if state.closed {
                return Err(Refused::Closed);
            }
            if state.frames.len() >= state.capacity as usize {
                return Err(Refused::Full);
            }
            state.frames.push_back(frame);
            state.writer.take()
        };
        // Woken outside the lock: the writer's first act is to take it.
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
    }

    /// Refuses every later push and wakes the writer. What is queued stays for the writer
    /// to send or drop.
    pub fn close(&self) {
        let writer = {
            let mut state = self.lock();
            state.closed = true;
            state.writer.take()
        };
        if let Some(writer) = writer {
            writer.wake();
        }
    }

    /// Whether pushes are still taken.
    pub fn is_open(&self) -> bool {
        !self.lock().closed
    }

    /// How many frames wait.
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    /// Whether no frame waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many frames wait and how many it may hold, while it is open.
    pub fn backlog(&self) -> Option<(usize, usize)> {
        let state = self.lock();
        (!state.closed).then(|| (state.frames.len(), state.capacity as usize))
    }

    /// Moves every queued frame into `batch` (which must be empty; its allocation is
    /// reused for the next pushes) and returns how many; waits while none is queued.
    /// Once closed and empty, returns 0 without waiting.
    pub async fn take(&self, batch: &mut VecDeque<Frame>) -> usize {
        debug_assert!(batch.is_empty(), "the previous batch was sent");
        poll_fn(|cx| {
            let mut state = self.lock();
            if !state.frames.is_empty() {
                std::mem::swap(&mut state.frames, batch);
                return Poll::Ready(batch.len());
            }
            if state.closed {
                return Poll::Ready(0);
            }
            // Going idle: give back what a burst grew (both buffers are empty now), so a
            // connection that once took a flood is small again. Not done per batch, which
            // under load would reallocate on every take.
            batch.shrink_to(IDLE_SLOTS);
            state.frames.shrink_to(IDLE_SLOTS);
            match &mut state.writer {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Moves every queued frame into `batch` without waiting; returns how many.
    pub fn take_now(&self, batch: &mut VecDeque<Frame>) -> usize {
        let mut state = self.lock();
        batch.append(&mut state.frames);
        batch.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn text(s: &'static str) -> Frame {
        Arc::new(crate::connection::wire::encode(
            crate::connection::wire::Opcode::Text,
            s.as_bytes(),
        ))
    }

    #[test]
    fn a_push_touches_one_cache_line() {
        assert_eq!(size_of::<Outbox>(), 64);
        assert_eq!(align_of::<Outbox>(), 64);
    }

    #[test]
    fn pushes_are_bounded_and_refused_once_closed() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push(&text("a")), Ok(()));
        assert_eq!(outbox.push(&text("b")), Ok(()));
        assert_eq!(outbox.push(&text("c")), Err(Refused::Full));
        assert_eq!(outbox.len(), 2);
        let mut batch = VecDeque::new();
        assert_eq!(outbox.take_now(&mut batch), 2);
        assert_eq!(batch, [text("a"), text("b")]);
        assert!(outbox.is_empty());
        outbox.close();
        assert!(!outbox.is_open());
        assert_eq!(outbox.push(&text("d")), Err(Refused::Closed));
    }

    #[test]
    fn control_frames_queue_in_order_and_are_dropped_rather_than_refused() {
        let outbox = Outbox::new(2);
        outbox.push(&text("a")).unwrap();
        outbox.push_control(text("pong"));
        assert_eq!(outbox.push(&text("b")), Err(Refused::Full));
        outbox.push_control(text("dropped: full"));
        let mut batch = VecDeque::new();
        outbox.take_now(&mut batch);
        assert_eq!(batch, [text("a"), text("pong")]);
        outbox.close();
        outbox.push_control(text("dropped: closed"));
        assert!(outbox.is_empty());
    }

    #[tokio::test]
    async fn the_writer_waits_for_a_push_and_takes_everything_queued() {
        let outbox = Arc::new(Outbox::new(16));
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                let mut batch = VecDeque::new();
                let n = outbox.take(&mut batch).await;
                (n, batch)
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "nothing was queued yet");
        outbox.push(&text("one")).unwrap();
        let (n, batch) = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the push woke the writer")
            .unwrap();
        assert_eq!(n, batch.len());
        assert_eq!(batch.front(), Some(&text("one")));
    }

    #[tokio::test]
    async fn a_writer_going_idle_gives_back_what_a_burst_grew() {
        let outbox = Outbox::new(1024);
        let mut batch = VecDeque::new();
        for _ in 0..2 {
            for _ in 0..500 {
                outbox.push(&text("x")).unwrap();
            }
            assert_eq!(outbox.take(&mut batch).await, 500);
            batch.clear();
        }
        assert!(batch.capacity() >= 500 && outbox.lock().frames.capacity() >= 500);
        let idle = tokio::time::timeout(Duration::from_millis(10), outbox.take(&mut batch));
        assert!(idle.await.is_err(), "nothing was queued");
        assert!(batch.capacity() <= IDLE_SLOTS);
        assert!(outbox.lock().frames.capacity() <= IDLE_SLOTS);
    }

    #[tokio::test]
    async fn closing_wakes_the_writer_which_still_gets_what_was_queued() {
        let outbox = Outbox::new(16);
        outbox.push(&text("last")).unwrap();
        outbox.close();
        let mut batch = VecDeque::new();
        assert_eq!(outbox.take(&mut batch).await, 1);
        batch.clear();
        assert_eq!(outbox.take(&mut batch).await, 0, "closed and empty");

        let outbox = Arc::new(Outbox::new(16));
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.take(&mut VecDeque::new()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox.close();
        let n = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the close woke the writer")
            .unwrap();
        assert_eq!(n, 0);
    }
}
