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
//! The queue is bounded twice, by [`Bounds`]: in frames, and in bytes, so that a client
//! asking for large replies and never reading cannot hold more than its byte budget here.
//! A push past either bound is refused, and the caller decides: fan-out closes the client
//! as a slow consumer, a reply waits for room (`registry.rs`). The bounds are the
//! gateway's, passed with each push, so the line holds only what changes. The count of
//! bytes covers what waits here; a batch the writer has taken and not yet written is its
//! own, so a connection holds at most twice its byte budget. It allocates nothing until the
//! first push, so an idle connection costs only the line itself.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::connection::wire::Encoded;

/// A frame as queued: its bytes on the wire (see `wire.rs`), encoded once per publish and
/// shared by every recipient's queue. A pointer rather than the 32-byte `Bytes`, so that one
/// cache line of a queue holds eight notifications: a publish queuing into a socket it
/// queued into a moment ago mostly writes a line it already holds.
pub type Frame = Arc<Encoded>;

/// Slots each of the outbox's two buffers keeps while the connection is idle.
const IDLE_SLOTS: usize = 16;

/// How much an outbox may hold. Held by the gateway, one for every socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Frames queued at most (at least one).
    pub frames: usize,
    /// Bytes on the wire queued at most; a single frame larger than this is still taken
    /// into an empty queue, so that no frame the gateway accepts is undeliverable.
    pub bytes: usize,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The outbox was closed: the socket is going away.
    Closed,
    /// The outbox holds as many frames as its bounds allow, or this one would take it past
    /// its byte budget.
    Full,
}

/// What [`Outbox::take_upto`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Frames moved into the batch.
    pub frames: usize,
    /// Whether frames stamped after the snapshot wait: the reader must look again at once.
    pub later: bool,
    /// Whether the outbox is closed and now empty.
    pub closed: bool,
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
    /// Bytes of `frames` on the wire: kept under the lock, on its line (32 bits, so that
    /// the line still holds it; the budget is checked in full width).
    bytes: u32,
    closed: bool,
}

impl State {
    /// Keeps `waker` for the next push or close (unless it is the one kept already).
    fn wait(&mut self, waker: &Waker) {
        match &mut self.writer {
            Some(kept) if kept.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Outbox {
    /// An empty, open outbox.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                writer: None,
                bytes: 0,
                closed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queue itself consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame` (a reference count) within `bounds` and wakes the writer if it waits.
    pub fn push(&self, frame: &Frame, bounds: Bounds) -> Result<(), Refused> {
        self.enqueue(frame.clone(), bounds)
    }

    /// Queues a frame the protocol itself sends (a pong), outside the notifications' rules:
    /// never refused as a slow consumer, dropped once closed or full.
    pub fn push_control(&self, frame: Frame, bounds: Bounds) {
        // Refused means dropped here: the caller has no client to close.
        let _ = self.enqueue(frame, bounds);
    }

    fn enqueue(&self, frame: Frame, bounds: Bounds) -> Result<(), Refused> {
        let writer = {
            let mut state = self.lock();
            if state.closed {
                return Err(Refused::Closed);
            }
            let bytes = state.bytes as usize + frame.len();
            let over_budget = bytes > bounds.bytes && !state.frames.is_empty();
            if state.frames.len() >= bounds.frames.max(1) || over_budget {
                return Err(Refused::Full);
            }
            state.bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
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

    /// How many frames wait, and their bytes, while it is open.
    pub fn backlog(&self) -> Option<(usize, usize)> {
        let state = self.lock();
        (!state.closed).then_some((state.frames.len(), state.bytes as usize))
    }

    /// Moves every queued frame into `batch` (which must be empty; its allocation is
    /// reused for the next pushes) and returns how many; waits while none is queued.
    /// Once closed and empty, returns 0 without waiting.
    pub async fn take(&self, batch: &mut VecDeque<Frame>) -> usize {
        poll_fn(|cx| self.poll_take(batch, cx)).await
    }

    /// [`Outbox::take`] as a poll: ready with what was moved into `batch`, or pending with
    /// the task's waker kept for the next push or close.
    pub fn poll_take(&self, batch: &mut VecDeque<Frame>, cx: &mut Context<'_>) -> Poll<usize> {
        debug_assert!(batch.is_empty(), "the previous batch was sent");
        let mut state = self.lock();
        if !state.frames.is_empty() {
            std::mem::swap(&mut state.frames, batch);
            state.bytes = 0;
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
        state.wait(cx.waker());
        Poll::Pending
    }

    /// Moves into `batch` (after what it holds) the queued frames stamped up to `upto`, a
    /// snapshot of the frames' sequence, for a reader that merges this outbox with rings
    /// (`registry.rs`); later ones stay. With nothing to take, `waker` (if any) is kept for
    /// the next push or close.
    pub fn take_upto(
        &self,
        batch: &mut VecDeque<Frame>,
        upto: u64,
        waker: Option<&Waker>,
    ) -> Taken {
        let mut state = self.lock();
        let mut taken = Taken::default();
        if state.frames.iter().all(|f| f.sequence() <= upto) {
            taken.frames = state.frames.len();
            batch.append(&mut state.frames);
            state.bytes = 0;
        } else {
            // Pushed out of order by publishers racing: keep the later ones, in order.
            let frames = std::mem::take(&mut state.frames);
            for frame in frames {
                if frame.sequence() <= upto {
                    batch.push_back(frame);
                    taken.frames += 1;
                } else {
                    state.frames.push_back(frame);
                    taken.later = true;
                }
            }
            let kept: usize = state.frames.iter().map(|f| f.len()).sum();
            state.bytes = u32::try_from(kept).unwrap_or(u32::MAX);
        }
        taken.closed = state.closed && state.frames.is_empty();
        if taken.frames == 0
            && !taken.later
            && !state.closed
            && let Some(waker) = waker
        {
            state.wait(waker);
        }
        taken
    }

    /// Puts `frames` (in sequence order: what a ring owed this socket) among the queued
    /// ones in sequence order, beyond the bounds: they were accepted for this socket
    /// already, and a ring's bounds bound them.
    pub fn merge(&self, frames: Vec<Frame>) {
        if frames.is_empty() {
            return;
        }
        let writer = {
            let mut state = self.lock();
            let added: usize = frames.iter().map(|f| f.len()).sum();
            state.bytes = u32::try_from(state.bytes as usize + added).unwrap_or(u32::MAX);
            state.frames.extend(frames);
            state
                .frames
                .make_contiguous()
                .sort_by_key(|frame| frame.sequence());
            state.writer.take()
        };
        if let Some(writer) = writer {
            writer.wake();
        }
    }

    /// Wakes the writer if it waits, to look again at where it reads from.
    pub fn wake(&self) {
        let writer = self.lock().writer.take();
        if let Some(writer) = writer {
            writer.wake();
        }
    }

    /// Moves every queued frame into `batch` without waiting; returns how many.
    pub fn take_now(&self, batch: &mut VecDeque<Frame>) -> usize {
        let mut state = self.lock();
        batch.append(&mut state.frames);
        state.bytes = 0;
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

    /// Bounds of `n` frames and no byte budget to speak of.
    fn frames(n: usize) -> Bounds {
        Bounds {
            frames: n,
            bytes: usize::MAX,
        }
    }

    #[test]
    fn bytes_are_bounded_at_the_budget_and_counted_until_taken() {
        // "abc" is a 5-byte frame: a 2-byte header and its payload.
        let bounds = Bounds {
            frames: 16,
            bytes: 10,
        };
        let outbox = Outbox::new();
        assert_eq!(outbox.push(&text("abc"), bounds), Ok(()));
        assert_eq!(
            outbox.push(&text("abc"), bounds),
            Ok(()),
            "10 bytes: at the budget"
        );
        assert_eq!(
            outbox.push(&text("a"), bounds),
            Err(Refused::Full),
            "13: past it"
        );
        assert_eq!(outbox.backlog(), Some((2, 10)));
        let mut batch = VecDeque::new();
        outbox.take_now(&mut batch);
        assert_eq!(
            outbox.backlog(),
            Some((0, 0)),
            "taken bytes are the writer's"
        );
        let bounds = Bounds {
            frames: 16,
            bytes: 4,
        };
        assert_eq!(
            outbox.push(&text("abc"), bounds),
            Ok(()),
            "a frame larger than the budget still goes into an empty queue"
        );
        assert_eq!(outbox.push(&text(""), bounds), Err(Refused::Full));
    }

    #[test]
    fn a_push_touches_one_cache_line() {
        assert_eq!(size_of::<Outbox>(), 64);
        assert_eq!(align_of::<Outbox>(), 64);
    }

    #[test]
    fn pushes_are_bounded_and_refused_once_closed() {
        let outbox = Outbox::new();
        let bounds = frames(2);
        assert!(outbox.is_open() && outbox.is_empty());
        assert_eq!(outbox.push(&text("a"), bounds), Ok(()));
        assert_eq!(outbox.push(&text("b"), bounds), Ok(()));
        assert_eq!(outbox.push(&text("c"), bounds), Err(Refused::Full));
        assert_eq!(outbox.len(), 2);
        assert!(!outbox.is_empty());
        let mut batch = VecDeque::new();
        assert_eq!(outbox.take_now(&mut batch), 2);
        assert_eq!(batch, [text("a"), text("b")]);
        assert!(outbox.is_empty());
        outbox.close();
        assert!(!outbox.is_open());
        assert_eq!(outbox.push(&text("d"), bounds), Err(Refused::Closed));
    }

    #[test]
    fn control_frames_queue_in_order_and_are_dropped_rather_than_refused() {
        let outbox = Outbox::new();
        let bounds = frames(2);
        outbox.push(&text("a"), bounds).unwrap();
        outbox.push_control(text("pong"), bounds);
        assert_eq!(outbox.push(&text("b"), bounds), Err(Refused::Full));
        outbox.push_control(text("dropped: full"), bounds);
        let mut batch = VecDeque::new();
        outbox.take_now(&mut batch);
        assert_eq!(batch, [text("a"), text("pong")]);
        outbox.close();
        outbox.push_control(text("dropped: closed"), bounds);
        assert!(outbox.is_empty());
    }

    #[tokio::test]
    async fn the_writer_waits_for_a_push_and_takes_everything_queued() {
        let outbox = Arc::new(Outbox::new());
        let bounds = frames(16);
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
        outbox.push(&text("one"), bounds).unwrap();
        let (n, batch) = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the push woke the writer")
            .unwrap();
        assert_eq!(n, batch.len());
        assert_eq!(batch.front(), Some(&text("one")));
    }

    #[tokio::test]
    async fn the_writer_that_waits_last_is_the_one_woken() {
        let outbox = Arc::new(Outbox::new());
        // A wait given up (its task's waker stays registered), then one in another task.
        let mut batch = VecDeque::new();
        let given_up = tokio::time::timeout(Duration::from_millis(10), outbox.take(&mut batch));
        assert!(given_up.await.is_err(), "nothing was queued");
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.take(&mut VecDeque::new()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox.push(&text("one"), frames(16)).unwrap();
        let taken = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the push woke the writer waiting now, not the one that gave up")
            .unwrap();
        assert_eq!(taken, 1);
    }

    #[tokio::test]
    async fn a_writer_going_idle_gives_back_what_a_burst_grew() {
        let outbox = Outbox::new();
        let bounds = frames(1024);
        let mut batch = VecDeque::new();
        for _ in 0..2 {
            for _ in 0..500 {
                outbox.push(&text("x"), bounds).unwrap();
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
        let outbox = Outbox::new();
        let bounds = frames(16);
        outbox.push(&text("last"), bounds).unwrap();
        outbox.close();
        let mut batch = VecDeque::new();
        assert_eq!(outbox.take(&mut batch).await, 1);
        batch.clear();
        assert_eq!(outbox.take(&mut batch).await, 0, "closed and empty");

        let outbox = Arc::new(Outbox::new());
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
