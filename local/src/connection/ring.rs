//! A room's notifications as one queue that the room's local members' writers read.
//!
//! A room publish appends its frame once, whatever the room's size, and wakes the writers
//! that wait; each writer reads the entries past its own position ([`Ring::read`]). The
//! answer's counts are the members at the time of the append, exact: every member then
//! reads the entry, unless it is let go first as a slow consumer, which the same append
//! reports.
//!
//! An entry stays until its last reader has read it (each counts its readers). The ring is
//! bounded as an outbox is, by [`Bounds`] in frames and in bytes: when an append takes it
//! past them, the members that have not read its oldest entry are too slow to keep up. They
//! are detached (what they had not read goes to their own outbox, in order, as a leave
//! does), closed as slow consumers, and counted as gone by the append that found them, so
//! the ring never holds more than its bounds for a reader that stopped. That walk over the
//! members happens only then; a publish to members that keep up never walks them.
//!
//! Before an append, fan-out's pacing applies (`registry.rs`): while most of a few sampled
//! members are more than [`BACKLOG_HIGH_WATER`](super::registry::BACKLOG_HIGH_WATER) behind
//! and catching up, the publisher waits, so a flood slows to the writers' pace instead of
//! dropping clients that keep up.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;

use herald::ids::ConnectionId;

use crate::connection::id_hash::IdHasher;
use crate::connection::outbox::{Bounds, Frame};

/// Slots of writers that left a quiet room tolerated in its list of waiting writers before
/// it is rebuilt.
const WAITING_SLACK: usize = 64;

/// One room's ring, whose members are `S`s (the registry's sockets), held weakly so that
/// the ring keeps none alive and can hand back one it lets go.
pub struct Ring<S> {
    state: Mutex<State<S>>,
}

impl<S> Default for Ring<S> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                entries: VecDeque::new(),
                first: 0,
                bytes: 0,
                appended_bytes: 0,
                members: HashMap::default(),
                waiting: Vec::new(),
                round: 0,
            }),
        }
    }
}

struct State<S> {
    /// Entries some member has yet to read, oldest first.
    entries: VecDeque<Entry>,
    /// The position of `entries[0]`; positions count every append since the ring began.
    first: u64,
    /// Bytes on the wire of `entries`.
    bytes: usize,
    /// Bytes on the wire ever appended: where the next entry starts.
    appended_bytes: u64,
    members: HashMap<ConnectionId, Member<S>, BuildHasherDefault<IdHasher>>,
    /// The writers waiting for the next append, each once per round (see [`Member`]).
    waiting: Vec<Waker>,
    /// Counts the appends that woke `waiting`: a member's registration is current only in
    /// the round it was made in.
    round: u64,
}

struct Entry {
    frame: Frame,
    /// Members that have yet to read it.
    unread: u32,
    /// Bytes on the wire appended before it: a reader's lag in bytes without a walk.
    starts_at: u64,
}

struct Member<S> {
    /// The position of the next entry to read.
    cursor: u64,
    /// The round in which this member's writer was put in `waiting`, and where.
    waiting_in: Option<(u64, usize)>,
    /// The socket, to close it when it falls behind.
    socket: Weak<S>,
}

/// What an append did.
pub struct Appended<S> {
    /// Members that will read the entry.
    pub delivered: u64,
    /// Members too far behind, detached by this append, each with what it had yet to read
    /// before it: the caller closes them as slow consumers.
    pub dropped: Vec<(Arc<S>, Vec<Frame>)>,
    /// How many were detached (a socket already dropped is not in `dropped`).
    pub detached: u64,
}

impl<S> Default for Appended<S> {
    fn default() -> Self {
        Self {
            delivered: 0,
            dropped: Vec::new(),
            detached: 0,
        }
    }
}

/// What a read found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    /// Frames moved into the batch.
    pub taken: usize,
    /// Whether entries stamped after the snapshot wait: the reader must look again at once.
    pub later: bool,
    /// Whether the reader is no longer a member (detached as a slow consumer).
    pub detached: bool,
}

/// How far a member is behind: entries, and their bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Entries not yet read.
    pub frames: usize,
    /// Their bytes.
    pub bytes: usize,
}

impl<S> Ring<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<S>> {
        // A panic while holding this lock leaves the ring itself consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `socket` (connection `id`) a member from the next append on; a member
    /// already stays as it is.
    pub fn join(&self, id: &ConnectionId, socket: &Arc<S>) {
        let mut state = self.lock();
        let head = state.head();
        state.members.entry(id.clone()).or_insert_with(|| Member {
            cursor: head,
            waiting_in: None,
            socket: Arc::downgrade(socket),
        });
    }

    /// Ends `id`'s membership and answers, in order, the frames it had yet to read: they
    /// were counted as delivered to it, so they are still its to send.
    pub fn leave(&self, id: &ConnectionId) -> Vec<Frame> {
        let mut state = self.lock();
        let unread = state.detach(id);
        state.free_read();
        unread
    }

    /// How many members the ring has.
    pub fn len(&self) -> usize {
        self.lock().members.len()
    }

    /// Whether the ring has no member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The members' ids.
    pub fn members(&self) -> Vec<ConnectionId> {
        self.lock().members.keys().cloned().collect()
    }

    /// How far behind up to `samples` members are, for fan-out's pacing.
    pub fn lags(&self, samples: usize) -> Vec<Lag> {
        let state = self.lock();
        state
            .members
            .values()
            .take(samples)
            .map(|member| state.lag(member.cursor))
            .collect()
    }

    /// Appends `frame` for every member, within `bounds`: members too far behind to keep
    /// it are detached and closed as slow consumers (see the module header). Wakes the
    /// writers that wait.
    pub fn append(&self, frame: &Frame, bounds: Bounds) -> Appended<S> {
        let (appended, waiting) = {
            let mut state = self.lock();
            let members = state.members.len();
            if members == 0 {
                return Appended::default();
            }
            let starts_at = state.appended_bytes;
            state.entries.push_back(Entry {
                frame: frame.clone(),
                unread: u32::try_from(members).unwrap_or(u32::MAX),
                starts_at,
            });
            state.bytes += frame.len();
            state.appended_bytes += frame.len() as u64;
            let mut appended = Appended::default();
            if state.over(bounds) {
                // The oldest entry is unread by someone, or it would be gone: whoever has
                // not read it is a full ring behind.
                let oldest = state.first;
                let behind: Vec<ConnectionId> = state
                    .members
                    .iter()
                    .filter(|(_, member)| member.cursor <= oldest)
                    .map(|(id, _)| id.clone())
                    .collect();
                appended.detached = behind.len() as u64;
                for id in behind {
                    let socket = state.members.get(&id).and_then(|m| m.socket.upgrade());
                    let mut unread = state.detach(&id);
                    // Not the entry just appended: it was never theirs.
                    unread.pop();
                    if let Some(socket) = socket {
                        appended.dropped.push((socket, unread));
                    }
                }
                state.free_read();
            }
            appended.delivered = members as u64 - appended.detached;
            state.round += 1;
            (appended, std::mem::take(&mut state.waiting))
        };
        // Outside the ring's lock, so that a woken writer does not wait for it.
        for waker in waiting {
            waker.wake();
        }
        appended
    }

    /// Moves into `batch` the entries `id` has yet to read that were stamped up to `upto`
    /// (a snapshot of the frames' sequence), in the order appended. When there is nothing
    /// for it, `waker` (if any) is woken by the next append.
    pub fn read(
        &self,
        id: &ConnectionId,
        upto: u64,
        batch: &mut VecDeque<Frame>,
        waker: Option<&Waker>,
    ) -> Read {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(member) = state.members.get_mut(id) else {
            return Read {
                detached: true,
                ..Read::default()
            };
        };
        let mut read = Read::default();
        let from = usize::try_from(member.cursor - state.first).expect("a cursor within the ring");
        for entry in state.entries.iter_mut().skip(from) {
            if entry.frame.sequence() > upto {
                read.later = true;
                break;
            }
            batch.push_back(entry.frame.clone());
            entry.unread -= 1;
            read.taken += 1;
        }
        member.cursor += read.taken as u64;
        if read.taken == 0
            && !read.later
            && let Some(waker) = waker
        {
            match member.waiting_in {
                Some((round, slot)) if round == state.round => {
                    if !state.waiting[slot].will_wake(waker) {
                        state.waiting[slot] = waker.clone();
                    }
                }
                _ => {
                    member.waiting_in = Some((state.round, state.waiting.len()));
                    state.waiting.push(waker.clone());
                    state.compact_waiting();
                }
            }
        }
        if from == 0 && read.taken > 0 {
            state.free_read();
        }
        read
    }
}

impl<S> State<S> {
    /// The position the next append takes.
    fn head(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Whether the entries are past `bounds` (one entry, however large, is always kept).
    fn over(&self, bounds: Bounds) -> bool {
        self.entries.len() > 1
            && (self.entries.len() > bounds.frames.max(1) || self.bytes > bounds.bytes)
    }

    /// How far behind a reader at `cursor` is.
    fn lag(&self, cursor: u64) -> Lag {
        let from = usize::try_from(cursor - self.first).unwrap_or(usize::MAX);
        let starts_at = self
            .entries
            .get(from)
            .map_or(self.appended_bytes, |e| e.starts_at);
        Lag {
            frames: self.entries.len().saturating_sub(from),
            bytes: usize::try_from(self.appended_bytes - starts_at).unwrap_or(usize::MAX),
        }
    }

    /// Removes member `id` and answers what it had yet to read, uncounting it there.
    fn detach(&mut self, id: &ConnectionId) -> Vec<Frame> {
        let Some(member) = self.members.remove(id) else {
            return Vec::new();
        };
        if let Some((round, slot)) = member.waiting_in
            && round == self.round
        {
            self.waiting[slot] = Waker::noop().clone();
        }
        let from = usize::try_from(member.cursor - self.first).expect("a cursor within the ring");
        self.entries
            .iter_mut()
            .skip(from)
            .map(|entry| {
                entry.unread -= 1;
                entry.frame.clone()
            })
            .collect()
    }

    /// Rebuilds `waiting` from the members that wait, once members that left in this
    /// round have left more of it behind than there are members: members joining and
    /// leaving a quiet room must not grow it.
    fn compact_waiting(&mut self) {
        if self.waiting.len() <= 2 * self.members.len() + WAITING_SLACK {
            return;
        }
        let mut kept = Vec::with_capacity(self.members.len());
        for member in self.members.values_mut() {
            if let Some((round, slot)) = member.waiting_in
                && round == self.round
            {
                member.waiting_in = Some((round, kept.len()));
                kept.push(std::mem::replace(
                    &mut self.waiting[slot],
                    Waker::noop().clone(),
                ));
            }
        }
        self.waiting = kept;
    }

    /// Drops the oldest entries every member has read.
    fn free_read(&mut self) {
        while let Some(entry) = self.entries.front() {
            if entry.unread > 0 {
                break;
            }
            self.bytes -= entry.frame.len();
            self.entries.pop_front();
            self.first += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;
    use crate::connection::wire;

    /// A member as the tests see one: its id.
    struct Reader {
        id: ConnectionId,
    }

    type TestRing = Ring<Reader>;

    fn reader() -> Arc<Reader> {
        Arc::new(Reader {
            id: ConnectionId::generate(),
        })
    }

    fn join(ring: &TestRing, reader: &Arc<Reader>) {
        ring.join(&reader.id, reader);
    }

    fn text(s: &str) -> Frame {
        Arc::new(wire::encode(wire::Opcode::Text, s.as_bytes()))
    }

    const ROOMY: Bounds = Bounds {
        frames: 1024,
        bytes: usize::MAX,
    };

    /// Everything `socket` can read from `ring` now.
    fn read_all(ring: &TestRing, reader: &Reader) -> Vec<Frame> {
        let mut batch = VecDeque::new();
        ring.read(&reader.id, wire::sequence_now(), &mut batch, None);
        batch.into()
    }

    /// Counts its wakes.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn an_append_reaches_each_member_once_and_is_freed_once_all_have_read_it() {
        let ring = TestRing::default();
        let members: Vec<_> = (0..3).map(|_| reader()).collect();
        for socket in &members {
            join(&ring, socket);
        }
        join(&ring, &members[0]);
        assert_eq!(ring.len(), 3, "joining twice is one membership");
        let appended = ring.append(&text("one"), ROOMY);
        assert_eq!(appended.delivered, 3);
        assert_eq!(appended.detached, 0);
        for socket in &members[..2] {
            assert_eq!(read_all(&ring, socket), [text("one")]);
            assert!(read_all(&ring, socket).is_empty(), "read once");
        }
        assert_eq!(ring.lock().entries.len(), 1, "the third has yet to read it");
        assert_eq!(read_all(&ring, &members[2]), [text("one")]);
        assert!(ring.lock().entries.is_empty());
        assert_eq!(ring.lock().bytes, 0);
    }

    #[test]
    fn a_member_reads_what_was_appended_after_it_joined_and_an_empty_ring_keeps_nothing() {
        let ring = TestRing::default();
        assert_eq!(ring.append(&text("to nobody"), ROOMY).delivered, 0);
        assert!(ring.lock().entries.is_empty());
        let early = reader();
        join(&ring, &early);
        ring.append(&text("before"), ROOMY);
        let late = reader();
        join(&ring, &late);
        assert_eq!(ring.append(&text("after"), ROOMY).delivered, 2);
        assert_eq!(read_all(&ring, &late), [text("after")]);
        assert_eq!(read_all(&ring, &early), [text("before"), text("after")]);
    }

    #[test]
    fn leaving_hands_back_in_order_what_was_not_yet_read() {
        let ring = TestRing::default();
        let (stays, leaves) = (reader(), reader());
        join(&ring, &stays);
        join(&ring, &leaves);
        ring.append(&text("a"), ROOMY);
        assert_eq!(read_all(&ring, &leaves), [text("a")]);
        ring.append(&text("b"), ROOMY);
        ring.append(&text("c"), ROOMY);
        assert_eq!(ring.leave(&leaves.id), [text("b"), text("c")]);
        assert!(ring.leave(&leaves.id).is_empty(), "leaving twice");
        assert_eq!(ring.append(&text("d"), ROOMY).delivered, 1);
        let mut batch = VecDeque::new();
        let read = ring.read(&leaves.id, wire::sequence_now(), &mut batch, None);
        assert!(read.detached && batch.is_empty());
        assert_eq!(
            read_all(&ring, &stays),
            [text("a"), text("b"), text("c"), text("d")]
        );
        assert!(ring.lock().entries.is_empty());
    }

    #[test]
    fn a_member_a_full_ring_behind_is_detached_with_what_it_was_owed() {
        let bounds = Bounds {
            frames: 2,
            bytes: usize::MAX,
        };
        let ring = TestRing::default();
        let (reads, stalls) = (reader(), reader());
        join(&ring, &reads);
        join(&ring, &stalls);
        for (i, body) in ["1", "2"].into_iter().enumerate() {
            let appended = ring.append(&text(body), bounds);
            assert_eq!(
                (appended.delivered, appended.detached),
                (2, 0),
                "{i}: at the bound"
            );
            assert_eq!(read_all(&ring, &reads), [text(body)]);
        }
        let appended = ring.append(&text("3"), bounds);
        assert_eq!(
            (appended.delivered, appended.detached),
            (1, 1),
            "one past it"
        );
        let [(socket, owed)] = &appended.dropped[..] else {
            panic!("one dropped");
        };
        assert_eq!(socket.id, stalls.id);
        assert_eq!(*owed, [text("1"), text("2")], "not the entry that found it");
        assert_eq!(ring.len(), 1);
        assert_eq!(
            ring.lock().entries.len(),
            1,
            "only what the other has yet to read"
        );
        assert_eq!(read_all(&ring, &reads), [text("3")]);
    }

    #[test]
    fn the_ring_is_bounded_in_bytes_too() {
        let bounds = Bounds {
            frames: 1024,
            bytes: 10,
        };
        let ring = TestRing::default();
        let stalls = reader();
        join(&ring, &stalls);
        // Five-byte frames: a two-byte header and "abc".
        assert_eq!(ring.append(&text("abc"), bounds).detached, 0);
        assert_eq!(
            ring.append(&text("abc"), bounds).detached,
            0,
            "10 bytes: at it"
        );
        assert_eq!(ring.append(&text("a"), bounds).detached, 1, "13: past it");
        assert!(ring.is_empty());
        assert!(ring.lock().entries.is_empty());
    }

    #[test]
    fn a_read_stops_at_the_snapshot_and_says_more_waits() {
        let ring = TestRing::default();
        let socket = reader();
        join(&ring, &socket);
        ring.append(&text("seen"), ROOMY);
        let upto = wire::sequence_now();
        ring.append(&text("later"), ROOMY);
        let mut batch = VecDeque::new();
        let read = ring.read(&socket.id, upto, &mut batch, None);
        assert_eq!((read.taken, read.later), (1, true));
        assert_eq!(batch, [text("seen")]);
        assert_eq!(read_all(&ring, &socket), [text("later")]);
    }

    #[test]
    fn lags_say_how_far_behind_members_are() {
        let ring = TestRing::default();
        let (reads, stalls) = (reader(), reader());
        join(&ring, &reads);
        join(&ring, &stalls);
        ring.append(&text("abc"), ROOMY);
        ring.append(&text("abc"), ROOMY);
        read_all(&ring, &reads);
        let mut lags = ring.lags(8);
        lags.sort_by_key(|lag| lag.frames);
        assert_eq!(
            lags,
            [
                Lag {
                    frames: 0,
                    bytes: 0
                },
                Lag {
                    frames: 2,
                    bytes: 10
                }
            ]
        );
    }

    #[test]
    fn a_waiting_reader_is_woken_once_by_the_next_append() {
        let ring = TestRing::default();
        let socket = reader();
        join(&ring, &socket);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut batch = VecDeque::new();
        for _ in 0..3 {
            // Looking again while waiting keeps one registration.
            ring.read(&socket.id, wire::sequence_now(), &mut batch, Some(&waker));
        }
        assert_eq!(ring.lock().waiting.len(), 1);
        ring.append(&text("x"), ROOMY);
        ring.append(&text("y"), ROOMY);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn members_joining_and_leaving_a_quiet_room_do_not_grow_its_waiting_list() {
        let ring = TestRing::default();
        let stays = reader();
        join(&ring, &stays);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut batch = VecDeque::new();
        ring.read(&stays.id, wire::sequence_now(), &mut batch, Some(&waker));
        for _ in 0..1_000 {
            let passing = reader();
            join(&ring, &passing);
            ring.read(&passing.id, wire::sequence_now(), &mut batch, Some(&waker));
            ring.leave(&passing.id);
        }
        assert!(ring.lock().waiting.len() <= 2 + WAITING_SLACK + 1);
        ring.append(&text("x"), ROOMY);
        assert!(
            wakes.0.load(Ordering::SeqCst) >= 1,
            "the member that stayed is still woken"
        );
    }
}
