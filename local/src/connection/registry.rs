//! The sockets this gateway holds, and the in-process [`Gateway`] that writes to them.
//!
//! Each connection has a bounded outbound queue ([`Outbox`]) drained by its writer task. A
//! post only enqueues, so one slow client never slows a fan-out to the others. When a client's queue
//! is full the client is too slow to keep up: it is closed with 1008 (policy violation,
//! reason `slow consumer`) and counted, and the post answers 410 so the publisher's
//! `delivered` count stays exact and the store forgets it.
//!
//! A room's members here read its notifications from one ring (`ring.rs`): a room publish
//! appends once, whatever the room's size ([`Registry::deliver_here`]), and each socket's
//! writer merges its outbox and its rooms' rings in the order the frames were stamped
//! ([`Socket::take`]). Publishes to users and to connection ids go through the outboxes.
//!
//! The writers run at a lower priority than the HTTP side (see `upgrade.rs`), so a flood of
//! publishes can queue faster than they write. Fan-out therefore paces itself: before it
//! queues a page (or appends to a ring), it looks at a few of the recipients' queues, and
//! while most of them hold more than [`BACKLOG_HIGH_WATER`] notifications and are
//! draining, it waits. Clients that keep up are never closed as slow consumers by a flood:
//! the publisher is slowed to the rate the writers deliver at instead.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald::gateway::{ConnectionInfo, Counts, Failures, Gateway, PushError, RoomDelivery};
use herald::ids::{ConnectionId, now_ms};
use herald::protocol::{MAX_NOTIFICATION_BYTES, RoomName};
use tokio_util::sync::CancellationToken;

use crate::connection::events::ConnectionMeta;
use crate::connection::id_hash::IdHasher;
pub use crate::connection::outbox::Bounds;
pub use crate::connection::outbox::Frame;
use crate::connection::outbox::{Outbox, Refused};
use crate::connection::ring::Ring;
use crate::connection::wire::{self, Opcode};

/// Close code for a client whose outbound queue overflowed.
pub const SLOW_CONSUMER_CODE: u16 = crate::connection::close_code::POLICY_VIOLATION;
/// Close reason for a client whose outbound queue overflowed.
pub const SLOW_CONSUMER_REASON: &str = "slow consumer: outbound queue full";

/// How many rooms' rings one socket reads at most; its notifications from further rooms
/// are queued into its outbox. A member that stops reading holds each of its rings at up to
/// the outbox's bounds, so this bounds what one connection can hold: its outbox, and this
/// many rings' worth.
pub const MAX_RINGS_PER_SOCKET: usize = 4;

/// Frames queued for one client before it counts as a slow consumer.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 1024;
/// Bytes queued for one client before it counts as a slow consumer (or, for a reply, before
/// the reply waits for room): four of the largest notifications, so that a user's hundred
/// connections hold tens of megabytes, not gigabytes (the README adds it up).
pub const DEFAULT_OUTBOUND_QUEUE_BYTES: usize = 512 * 1024;
/// The largest byte budget that may be set: the outbox counts its bytes in 32 bits, with
/// room for one frame past the budget.
pub const MAX_OUTBOUND_QUEUE_BYTES: u64 = 1 << 30;

/// Notifications queued for a socket beyond which fan-out waits for its writer (capped at
/// half the queue). Deep enough that a writer sends many notifications per write under
/// load, shallow enough that they wait a fraction of a second.
pub const BACKLOG_HIGH_WATER: usize = 64;
/// How many of a page's queues fan-out looks at before queuing it.
const PACE_SAMPLES: usize = 8;
/// How long the sampled queues may stay as deep as they were before fan-out stops waiting:
/// a client that stopped reading does not drain, and is left to overflow its queue and be
/// closed as a slow consumer rather than hold up every publish.
const PACE_STALL: Duration = Duration::from_millis(5);
/// How often fan-out looks again while it waits.
const PACE_TICK: Duration = Duration::from_millis(1);

/// How long a reply (a post to one connection) waits for room in a full queue before its
/// client counts as a slow consumer: long enough for a slow link to drain a few of the
/// largest notifications, short enough that a client that stopped reading is let go.
pub const REPLY_PATIENCE: Duration = Duration::from_secs(10);
/// How often a waiting reply looks again at first; it backs off to [`REPLY_TICK_MAX`].
const REPLY_TICK: Duration = Duration::from_millis(1);
/// How often a waiting reply looks again at most.
const REPLY_TICK_MAX: Duration = Duration::from_millis(50);

/// How a socket reaches its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A WebSocket: once upgraded, its connection has left the HTTP side.
    WebSocket,
    /// An SSE stream or a long poll: its HTTP connection stays open, and is counted there.
    Reader,
}

/// One live socket as the rest of the gateway sees it.
pub struct Socket {
    /// What the writer sends; first, on a cache line of its own, as a post touches nothing
    /// else of the socket.
    pub outbox: Outbox,
    /// What the handshake established.
    pub meta: ConnectionMeta,
    /// Cancelled when the gateway decides to close the socket.
    pub closing: CancellationToken,
    close_reason: Mutex<Option<(u16, String)>>,
    /// Written by the writer after every batch; on a cache line of its own, so a publish
    /// pushing into the outbox on another core does not miss on it.
    last_active: CacheLine<AtomicI64>,
    disconnected: AtomicBool,
    /// The rooms this socket joined, each with its ring here when the socket reads it
    /// (its first [`MAX_RINGS_PER_SOCKET`] rooms): what the writer reads besides the
    /// outbox, and what a restarted store is refilled with.
    rooms: Mutex<BTreeMap<RoomName, Option<Arc<Ring<Socket>>>>>,
    /// How it reaches its client.
    pub transport: Transport,
}

impl Socket {
    /// A WebSocket.
    pub fn new(meta: ConnectionMeta) -> Arc<Self> {
        Self::with_transport(meta, Transport::WebSocket)
    }

    /// A socket of `transport`.
    pub fn with_transport(meta: ConnectionMeta, transport: Transport) -> Arc<Self> {
        Arc::new(Self {
            outbox: Outbox::new(),
            last_active: CacheLine(AtomicI64::new(meta.connected_at)),
            meta,
            closing: CancellationToken::new(),
            close_reason: Mutex::new(None),
            disconnected: AtomicBool::new(false),
            rooms: Mutex::new(BTreeMap::new()),
            transport,
        })
    }

    /// Asks the socket to close with `code` and `reason`; the first request wins.
    pub fn close(&self, code: u16, reason: &str) {
        {
            let mut current = self.close_reason.lock().unwrap_or_else(|p| p.into_inner());
            if current.is_none() {
                *current = Some((code, reason.to_owned()));
            }
        }
        self.outbox.close();
        self.closing.cancel();
    }

    /// The close requested by the gateway, if any.
    pub fn close_reason(&self) -> Option<(u16, String)> {
        self.close_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records activity for the Management API's `lastActiveAt`.
    pub fn touch(&self) {
        self.last_active.0.store(now_ms(), Ordering::Relaxed);
    }

    /// The rooms this socket has joined.
    pub fn rooms(&self) -> Vec<RoomName> {
        self.joined().keys().cloned().collect()
    }

    fn joined(&self) -> std::sync::MutexGuard<'_, BTreeMap<RoomName, Option<Arc<Ring<Socket>>>>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves what waits for this socket into `batch` (which must be empty) and returns how
    /// many; waits while nothing does. Once closed and empty, returns 0 without waiting.
    /// A socket in no room reads its outbox alone; one in rooms merges the outbox and its
    /// rooms' rings in the order the frames were stamped (see `wire.rs`).
    pub async fn take(&self, batch: &mut VecDeque<Frame>) -> usize {
        poll_fn(|cx| self.poll_take(batch, Some(cx))).await
    }

    /// What [`Socket::take`] would take now, without waiting.
    pub fn take_now(&self, batch: &mut VecDeque<Frame>) -> usize {
        match self.poll_take(batch, None) {
            Poll::Ready(n) => n,
            Poll::Pending => batch.len(),
        }
    }

    fn poll_take(&self, batch: &mut VecDeque<Frame>, cx: Option<&mut Context<'_>>) -> Poll<usize> {
        let mut rooms = self.joined();
        if rooms.values().all(Option::is_none) {
            drop(rooms);
            return match cx {
                Some(cx) => self.outbox.poll_take(batch, cx),
                None => Poll::Ready(self.outbox.take_now(batch)),
            };
        }
        let waker = cx.map(|cx| cx.waker());
        loop {
            // Every frame stamped up to here that will ever be in one of these queues
            // ahead of a later one is in it by the time the queue is locked below.
            let upto = wire::sequence_now();
            let own = self.outbox.take_upto(batch, upto, waker);
            let mut later = own.later;
            let mut detached = Vec::new();
            let rings = rooms
                .iter()
                .filter_map(|(room, ring)| Some((room, ring.as_ref()?)));
            for (room, ring) in rings {
                let read = ring.read(&self.meta.id, upto, batch, waker);
                later |= read.later;
                if read.detached {
                    detached.push(room.clone());
                }
            }
            for room in detached {
                rooms.remove(&room);
            }
            if !batch.is_empty() {
                let frames = batch.make_contiguous();
                if !frames.is_sorted_by_key(|frame| frame.sequence()) {
                    frames.sort_by_key(|frame| frame.sequence());
                }
                return Poll::Ready(batch.len());
            }
            if own.closed {
                return Poll::Ready(0);
            }
            if !later {
                return if waker.is_some() {
                    Poll::Pending
                } else {
                    Poll::Ready(0)
                };
            }
        }
    }

    /// Whether the socket still takes posts (no close has been asked for).
    fn is_open(&self) -> bool {
        self.outbox.is_open()
    }

    /// True exactly once: whoever gets `true` runs `$disconnect`.
    pub fn claim_disconnect(&self) -> bool {
        !self.disconnected.swap(true, Ordering::SeqCst)
    }
}

#[cfg(test)]
impl Socket {
    /// A new WebSocket from loopback, for tests.
    pub(crate) fn for_test() -> Arc<Self> {
        Self::new(ConnectionMeta {
            id: ConnectionId::generate(),
            connected_at: 0,
            source_ip: "127.0.0.1".into(),
            user_agent: None,
            domain_name: "localhost".into(),
            context: crate::connection::events::Context::default(),
        })
    }
}

/// A value alone on its cache line.
#[repr(align(64))]
struct CacheLine<T>(T);

/// Live sockets by connection id.
pub struct Registry {
    sockets: RwLock<Table>,
    /// Each room among these sockets' rooms: its members here, for a room publish that
    /// reaches them without the store listing them.
    rooms: Mutex<HashMap<RoomName, Room>>,
    /// Whether every join and leave of the sockets here is mirrored (the host's store
    /// does it), so that a room's ring holds all its members here.
    delivers_rooms: AtomicBool,
    slow_consumers: AtomicU64,
    /// What each socket's outbox may hold.
    bounds: Bounds,
}

impl Default for Registry {
    /// A registry whose outboxes hold [`DEFAULT_OUTBOUND_QUEUE`] frames and
    /// [`DEFAULT_OUTBOUND_QUEUE_BYTES`].
    fn default() -> Self {
        Self::new(Bounds {
            frames: DEFAULT_OUTBOUND_QUEUE,
            bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
        })
    }
}

impl Registry {
    /// An empty registry whose sockets' outboxes hold at most `bounds`.
    pub fn new(bounds: Bounds) -> Self {
        Self {
            sockets: RwLock::default(),
            rooms: Mutex::default(),
            delivers_rooms: AtomicBool::new(false),
            slow_consumers: AtomicU64::new(0),
            bounds,
        }
    }

    /// What each socket's outbox may hold.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Adds a socket.
    pub fn insert(&self, socket: Arc<Socket>) {
        self.write().insert(socket.meta.id.clone(), socket);
    }

    /// Removes a socket, and it from the rooms it joined.
    pub fn remove(&self, id: &ConnectionId) -> Option<Arc<Socket>> {
        let socket = self.write().remove(id)?;
        let mut index = self.rooms();
        let rooms: Vec<RoomName> = socket.joined().keys().cloned().collect();
        for room in rooms {
            self.leave(&mut index, &socket, &room);
        }
        Some(socket)
    }

    /// Says that every join and leave of the sockets here is mirrored ([`Registry::mirror`]
    /// is called by the host's store for each), so that this registry, as the gateway,
    /// delivers a room publish from the room's ring without fan-out listing its members.
    pub fn deliver_rooms(&self) {
        self.delivers_rooms.store(true, Ordering::Relaxed);
    }

    /// Records that the socket `id` (if held here) joined (`true`) or left `room`: its ring
    /// here takes it in or lets it go (with what it had yet to read moved to its outbox).
    pub fn mirror(&self, id: &ConnectionId, room: &RoomName, joined: bool) {
        // Under the index's lock, so a removal (which takes it after the socket is out of
        // the table) sees every room this adds.
        let mut index = self.rooms();
        let Some(socket) = self.socket(id) else {
            return;
        };
        if !joined {
            self.leave(&mut index, &socket, room);
            return;
        }
        let members = index.entry(room.clone()).or_default();
        let reads_ring = {
            let mut rooms = socket.joined();
            if rooms.contains_key(room) {
                return;
            }
            let rings = rooms.values().filter(|ring| ring.is_some()).count();
            if rings < MAX_RINGS_PER_SOCKET {
                members.ring.join(id, &socket);
                rooms.insert(room.clone(), Some(members.ring.clone()));
                true
            } else {
                members.queued.insert(id.clone());
                rooms.insert(room.clone(), None);
                false
            }
        };
        if reads_ring {
            // A writer waiting now is not yet among the ring's waiting writers: it must look
            // again, and wait on this ring too.
            socket.outbox.wake();
        }
    }

    /// Takes `socket` out of `room`, dropping the room once empty; what it had yet to read
    /// in the room's ring goes to its outbox, in order.
    fn leave(&self, index: &mut HashMap<RoomName, Room>, socket: &Socket, room: &RoomName) {
        let Some(ring) = socket.joined().remove(room) else {
            return;
        };
        let id = &socket.meta.id;
        match ring {
            Some(ring) => socket.outbox.merge(ring.leave(id)),
            None => {
                if let Some(members) = index.get_mut(room) {
                    members.queued.remove(id);
                }
            }
        }
        if index.get(room).is_some_and(Room::is_empty) {
            index.remove(room);
        }
    }

    /// The sockets held here that joined `room`.
    pub fn room_members(&self, room: &RoomName) -> Vec<ConnectionId> {
        self.rooms()
            .get(room)
            .map(|members| {
                let mut ids = members.ring.members();
                ids.extend(members.queued.iter().cloned());
                ids
            })
            .unwrap_or_default()
    }

    /// Delivers `payload` to this host's members of `room` with one append to its ring
    /// (and a push into the outbox of each member reading too many rings already), after
    /// fan-out's pacing: delivered to the members at the time of the append, gone for those
    /// found too far behind (closed as slow consumers, and listed).
    pub async fn deliver_here(
        &self,
        room: &RoomName,
        payload: &Bytes,
    ) -> (Counts, Vec<ConnectionId>) {
        let (ring, queued) = match self.rooms().get(room) {
            Some(members) => (
                members.ring.clone(),
                members.queued.iter().cloned().collect::<Vec<_>>(),
            ),
            None => return (Counts::default(), Vec::new()),
        };
        let frame = match frame(payload.clone()) {
            Ok(frame) => frame,
            Err(_) => {
                let counts = Counts {
                    failed: (ring.len() + queued.len()) as u64,
                    ..Counts::default()
                };
                return (counts, Vec::new());
            }
        };
        self.pace_with(|| self.ring_backlog(&ring)).await;
        if !queued.is_empty() {
            self.pace(&queued).await;
        }
        let appended = ring.append(&frame, self.bounds);
        let mut counts = Counts {
            delivered: appended.delivered,
            gone: appended.detached,
            failed: 0,
        };
        let mut gone = Vec::with_capacity(appended.dropped.len());
        for (socket, unread) in appended.dropped {
            socket.outbox.merge(unread);
            self.overflowed(&socket);
            gone.push(socket.meta.id.clone());
        }
        let failures = self.post_all(&queued, &frame);
        counts.delivered += (queued.len() - failures.len()) as u64;
        for (i, error) in failures {
            if matches!(error, PushError::Gone) {
                counts.gone += 1;
                gone.push(queued[i].clone());
            } else {
                counts.failed += 1;
            }
        }
        (counts, gone)
    }

    /// Whether at least one socket held here has joined `room`.
    pub fn hosts(&self, room: &RoomName) -> bool {
        self.rooms().contains_key(room)
    }

    /// The rooms at least one socket held here has joined.
    pub fn hosted_rooms(&self) -> Vec<RoomName> {
        self.rooms().keys().cloned().collect()
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, Room>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A socket by id.
    pub fn socket(&self, id: &ConnectionId) -> Option<Arc<Socket>> {
        self.sockets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every socket held now.
    pub fn all(&self) -> Vec<Arc<Socket>> {
        self.sockets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// How many sockets are held.
    pub fn len(&self) -> usize {
        self.sockets.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no socket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many from `ip` are held.
    pub fn count_ip(&self, ip: &str) -> usize {
        self.sockets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.meta.source_ip == ip)
            .count()
    }

    /// How many WebSockets are held, in all and from `ip`: the sockets the HTTP side no
    /// longer counts (a reader's HTTP connection is counted there already).
    pub fn websockets(&self, ip: &str) -> (usize, usize) {
        let sockets = self.sockets.read().unwrap_or_else(|p| p.into_inner());
        let websockets = sockets
            .values()
            .filter(|s| s.transport == Transport::WebSocket);
        websockets.fold((0, 0), |(all, from_ip), s| {
            (all + 1, from_ip + usize::from(s.meta.source_ip == ip))
        })
    }

    /// How many WebSockets and how many readers (SSE streams, long polls) are held, counted
    /// under one look at the table.
    pub fn by_transport(&self) -> (usize, usize) {
        let sockets = self.sockets.read().unwrap_or_else(|p| p.into_inner());
        let websockets = sockets
            .values()
            .filter(|s| s.transport == Transport::WebSocket)
            .count();
        (websockets, sockets.len() - websockets)
    }

    /// Clients closed for being too slow, since start.
    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.sockets.write().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, id: &ConnectionId) -> Result<Arc<Socket>, PushError> {
        match self.socket(id) {
            Some(socket) if socket.is_open() => Ok(socket),
            _ => Err(PushError::Gone),
        }
    }
}

type Table = HashMap<ConnectionId, Arc<Socket>, BuildHasherDefault<IdHasher>>;

/// One room's members among the sockets held here: those that read its ring, and those
/// already reading [`MAX_RINGS_PER_SOCKET`] other rings, whose notifications from this room
/// are queued into their outboxes.
#[derive(Default)]
struct Room {
    ring: Arc<Ring<Socket>>,
    queued: HashSet<ConnectionId, BuildHasherDefault<IdHasher>>,
}

impl Room {
    fn is_empty(&self) -> bool {
        self.ring.is_empty() && self.queued.is_empty()
    }
}

/// The frame for a payload: text when it is UTF-8 (all of Herald's own messages), as API
/// Gateway forwards posted bytes as they are otherwise.
pub fn frame(payload: Bytes) -> Result<Frame, PushError> {
    if payload.len() > MAX_NOTIFICATION_BYTES {
        return Err(PushError::PayloadTooLarge);
    }
    let opcode = match std::str::from_utf8(&payload) {
        Ok(_) => Opcode::Text,
        Err(_) => Opcode::Binary,
    };
    Ok(Arc::new(wire::encode(opcode, &payload)))
}

impl Registry {
    /// Queues `message` for each of `ids` under one read lock of the socket table; answers
    /// the ones that failed.
    pub fn post_all(&self, ids: &[ConnectionId], message: &Frame) -> Failures {
        let sockets = self.sockets.read().unwrap_or_else(|p| p.into_inner());
        let mut failures = Failures::new();
        for (i, id) in ids.iter().enumerate() {
            let posted = sockets
                .get(id)
                .map_or(Err(PushError::Gone), |socket| self.post_to(socket, message));
            if let Err(error) = posted {
                failures.push((i, error));
            }
        }
        failures
    }

    /// Waits while most of the sampled queues of `ids` are past the high-water mark and
    /// their writers are draining them (see the module header).
    pub async fn pace(&self, ids: &[ConnectionId]) {
        self.pace_with(|| self.sample_backlog(ids)).await;
    }

    /// Waits while `sample` finds most sampled queues deep and draining (see
    /// [`Registry::pace`]).
    async fn pace_with(&self, sample: impl Fn() -> Option<usize>) {
        let mut last = sample();
        let mut stalled_since = None;
        while last.is_some() {
            tokio::time::sleep(PACE_TICK).await;
            let now = sample();
            match (now, last) {
                (Some(depth), Some(before)) if depth >= before => {
                    let since = *stalled_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= PACE_STALL {
                        return;
                    }
                }
                _ => stalled_since = None,
            }
            last = now;
        }
    }

    /// The summed depth in bytes of up to [`PACE_SAMPLES`] queues spread over `ids`, when
    /// most of them are past the high-water mark (in frames, or half the byte budget);
    /// `None` when they are not.
    fn sample_backlog(&self, ids: &[ConnectionId]) -> Option<usize> {
        let step = ids.len().div_ceil(PACE_SAMPLES).max(1);
        let sockets = self.sockets.read().unwrap_or_else(|p| p.into_inner());
        let (mut sampled, mut deep, mut depth) = (0, 0, 0);
        for socket in ids.iter().step_by(step).filter_map(|id| sockets.get(id)) {
            sampled += 1;
            // A closed socket's queue is not waited for: it is only ever emptied, or dropped.
            if let Some((queued, bytes)) = socket.outbox.backlog() {
                depth += bytes;
                if self.is_deep(queued, bytes) {
                    deep += 1;
                }
            }
        }
        (deep * 2 > sampled).then_some(depth)
    }

    /// [`Registry::sample_backlog`] for a ring: how far behind up to [`PACE_SAMPLES`] of its
    /// members are.
    fn ring_backlog(&self, ring: &Ring<Socket>) -> Option<usize> {
        let lags = ring.lags(PACE_SAMPLES);
        let deep = lags
            .iter()
            .filter(|lag| self.is_deep(lag.frames, lag.bytes))
            .count();
        let depth = lags.iter().map(|lag| lag.bytes).sum();
        (deep * 2 > lags.len()).then_some(depth)
    }

    /// Whether a queue of `frames` and `bytes` is past the high-water mark.
    fn is_deep(&self, frames: usize, bytes: usize) -> bool {
        frames > BACKLOG_HIGH_WATER.min(self.bounds.frames / 2) || bytes > self.bounds.bytes / 2
    }

    /// Queues `message` for a socket already looked up: gone once a close has been asked
    /// for, or when its queue is full (the slow consumer is then closed).
    pub fn post_to(&self, socket: &Socket, message: &Frame) -> Result<(), PushError> {
        // `lastActiveAt` is stamped by the writer when it sends, not here on the hot path.
        match socket.outbox.push(message, self.bounds) {
            Ok(()) => Ok(()),
            Err(Refused::Full) => Err(self.overflowed(socket)),
            Err(Refused::Closed) => Err(PushError::Gone),
        }
    }

    /// Queues a reply for one socket, waiting up to [`REPLY_PATIENCE`] while its queue is
    /// full: the client's own requests are answered at the pace it reads (its next request
    /// is not read meanwhile), so what it asks for never piles up past its budget. A client
    /// that lets the wait run out is closed as a slow consumer.
    pub async fn post_waiting(&self, socket: &Socket, message: &Frame) -> Result<(), PushError> {
        let deadline = tokio::time::Instant::now() + REPLY_PATIENCE;
        let mut tick = REPLY_TICK;
        loop {
            match socket.outbox.push(message, self.bounds) {
                Ok(()) => return Ok(()),
                Err(Refused::Closed) => return Err(PushError::Gone),
                Err(Refused::Full) if tokio::time::Instant::now() < deadline => {
                    tokio::select! {
                        () = tokio::time::sleep(tick) => {}
                        () = socket.closing.cancelled() => return Err(PushError::Gone),
                    }
                    tick = (tick * 2).min(REPLY_TICK_MAX);
                }
                Err(Refused::Full) => return Err(self.overflowed(socket)),
            }
        }
    }

    /// Closes a client whose queue overflowed; the post is answered as gone.
    fn overflowed(&self, socket: &Socket) -> PushError {
        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(connection_id = %socket.meta.id, "outbound queue full; closing the slow consumer");
        socket.close(SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON);
        PushError::Gone
    }
}

/// The in-process `@connections`: posts go straight into the sockets' queues.
#[async_trait]
impl Gateway for Registry {
    /// A post to one connection is a reply or a direct message: it waits for room.
    async fn post(&self, id: &ConnectionId, payload: Bytes) -> Result<(), PushError> {
        let message = frame(payload)?;
        let socket = self.socket(id).ok_or(PushError::Gone)?;
        self.post_waiting(&socket, &message).await
    }

    /// Posting here never waits, so a whole page is queued in one go: the publish is not
    /// interleaved with the writers it wakes, and a writer that runs later finds several
    /// notifications to send in one write.
    fn prefers_batches(&self) -> bool {
        true
    }

    async fn post_many(&self, ids: &[ConnectionId], payload: Bytes) -> Failures {
        self.pace(ids).await;
        match frame(payload) {
            Ok(message) => self.post_all(ids, &message),
            Err(e) => (0..ids.len()).map(|i| (i, e.clone())).collect(),
        }
    }

    /// From the room's ring, when every join here is mirrored ([`Registry::deliver_rooms`]);
    /// a member found too far behind is closed, and its `$disconnect` forgets it.
    async fn deliver_room(&self, room: &RoomName, payload: &Bytes) -> Option<RoomDelivery> {
        if !self.delivers_rooms.load(Ordering::Relaxed) {
            return None;
        }
        let (counts, _gone) = self.deliver_here(room, payload).await;
        Some(RoomDelivery {
            counts,
            error: None,
        })
    }

    async fn get(&self, id: &ConnectionId) -> Result<ConnectionInfo, PushError> {
        let socket = self.live(id)?;
        Ok(ConnectionInfo {
            connected_at: socket.meta.connected_at,
            last_active_at: socket.last_active.0.load(Ordering::Relaxed),
            source_ip: Some(socket.meta.source_ip.clone()),
            user_agent: socket.meta.user_agent.clone(),
        })
    }

    async fn delete(&self, id: &ConnectionId) -> Result<(), PushError> {
        let socket = self.live(id)?;
        socket.close(
            crate::connection::close_code::NORMAL,
            "Connection closed by the server",
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use super::*;

    /// A registry holding `n` sockets, each with `queued` notifications waiting.
    fn registry_with(n: usize, queued: usize) -> (Arc<Registry>, Vec<ConnectionId>) {
        let registry = Arc::new(Registry::default());
        let frame = frame(Bytes::from_static(b"{}")).unwrap();
        let mut ids = Vec::new();
        for _ in 0..n {
            let socket = Socket::for_test();
            for _ in 0..queued {
                socket.outbox.push(&frame, registry.bounds()).unwrap();
            }
            ids.push(socket.meta.id.clone());
            registry.insert(socket);
        }
        (registry, ids)
    }

    #[test]
    fn the_index_of_rooms_follows_joins_leaves_and_removals() {
        let (registry, ids) = registry_with(3, 0);
        let orders = RoomName::parse("orders").unwrap();
        let news = RoomName::parse("news").unwrap();
        for id in &ids {
            registry.mirror(id, &orders, true);
        }
        registry.mirror(&ids[0], &news, true);
        let mut members = registry.room_members(&orders);
        members.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(members, expected);
        let mut hosted = registry.hosted_rooms();
        hosted.sort();
        assert_eq!(hosted, [news.clone(), orders.clone()]);

        registry.mirror(&ids[1], &orders, false);
        assert_eq!(registry.room_members(&orders).len(), 2);
        assert_eq!(registry.socket(&ids[1]).unwrap().rooms(), []);
        // A removed socket leaves every room it was in, and a room left empty is dropped.
        registry.remove(&ids[0]);
        assert_eq!(registry.room_members(&orders), [ids[2].clone()]);
        assert!(registry.room_members(&news).is_empty());
        assert!(!registry.hosts(&news) && registry.hosts(&orders));
        assert_eq!(registry.hosted_rooms(), [orders]);
        // A join mirrored for a socket no longer held here is not indexed.
        registry.mirror(&ids[0], &news, true);
        assert!(registry.room_members(&news).is_empty());
    }

    fn text(s: &str) -> Frame {
        frame(Bytes::from(s.to_owned())).unwrap()
    }

    /// A registry that delivers rooms, holding `n` sockets.
    /// A writer's first take from `socket`, waiting until there is something to take.
    fn waiting_writer(socket: &Arc<Socket>) -> tokio::task::JoinHandle<VecDeque<Frame>> {
        let socket = socket.clone();
        tokio::spawn(async move {
            let mut batch = VecDeque::new();
            socket.take(&mut batch).await;
            batch
        })
    }

    fn delivering(n: usize) -> (Arc<Registry>, Vec<Arc<Socket>>) {
        let registry = Arc::new(Registry::default());
        registry.deliver_rooms();
        let sockets: Vec<_> = (0..n).map(|_| Socket::for_test()).collect();
        for socket in &sockets {
            registry.insert(socket.clone());
        }
        (registry, sockets)
    }

    #[tokio::test]
    async fn a_socket_in_rooms_gets_its_outbox_and_rings_in_the_order_sent() {
        let (registry, sockets) = delivering(1);
        let socket = &sockets[0];
        let (orders, news) = (
            RoomName::parse("orders").unwrap(),
            RoomName::parse("news").unwrap(),
        );
        registry.mirror(&socket.meta.id, &orders, true);
        registry.mirror(&socket.meta.id, &news, true);
        registry.post_to(socket, &text("direct 1")).unwrap();
        registry
            .deliver_here(&news, &Bytes::from_static(b"news 1"))
            .await;
        registry
            .deliver_here(&orders, &Bytes::from_static(b"orders 1"))
            .await;
        registry.post_to(socket, &text("direct 2")).unwrap();
        registry
            .deliver_here(&news, &Bytes::from_static(b"news 2"))
            .await;
        let mut batch = VecDeque::new();
        assert_eq!(socket.take(&mut batch).await, 5);
        let sent: Vec<&[u8]> = batch.iter().map(|f| f.payload()).collect();
        assert_eq!(
            sent,
            [
                &b"direct 1"[..],
                b"news 1",
                b"orders 1",
                b"direct 2",
                b"news 2"
            ]
        );
    }

    #[tokio::test]
    async fn a_room_publish_counts_the_members_here_and_a_leave_keeps_what_was_owed() {
        let (registry, sockets) = delivering(3);
        let room = RoomName::parse("orders").unwrap();
        for socket in &sockets {
            registry.mirror(&socket.meta.id, &room, true);
        }
        let (counts, gone) = registry
            .deliver_here(&room, &Bytes::from_static(b"one"))
            .await;
        assert_eq!((counts.delivered, counts.gone, counts.failed), (3, 0, 0));
        assert!(gone.is_empty());
        let delivery = Gateway::deliver_room(&*registry, &room, &Bytes::from_static(b"two"))
            .await
            .expect("this registry delivers rooms");
        assert_eq!(delivery.counts.delivered, 3);
        // A leave before the writer ran: both notifications are still the socket's to send.
        registry.mirror(&sockets[0].meta.id, &room, false);
        let (counts, _) = registry
            .deliver_here(&room, &Bytes::from_static(b"three"))
            .await;
        assert_eq!(counts.delivered, 2);
        let mut batch = VecDeque::new();
        assert_eq!(sockets[0].take_now(&mut batch), 2);
        assert_eq!(batch, [text("one"), text("two")]);
        assert_eq!(sockets[0].outbox.backlog(), Some((0, 0)));
        // The last member removed drops the room.
        for socket in &sockets[1..] {
            registry.remove(&socket.meta.id);
        }
        assert!(!registry.hosts(&room));
        let (counts, _) = registry
            .deliver_here(&room, &Bytes::from_static(b"four"))
            .await;
        assert_eq!(counts, Counts::default());
    }

    #[tokio::test]
    async fn a_socket_reads_a_bounded_number_of_rings_and_is_queued_the_other_rooms() {
        let (registry, sockets) = delivering(1);
        let socket = &sockets[0];
        let rooms: Vec<RoomName> = (0..MAX_RINGS_PER_SOCKET + 2)
            .map(|n| RoomName::parse(&format!("room{n}")).unwrap())
            .collect();
        for room in &rooms {
            registry.mirror(&socket.meta.id, room, true);
        }
        let rings = socket.joined().values().filter(|r| r.is_some()).count();
        assert_eq!(rings, MAX_RINGS_PER_SOCKET);
        for (n, room) in rooms.iter().enumerate().rev() {
            let (counts, _) = registry
                .deliver_here(room, &Bytes::from(format!("{n}")))
                .await;
            assert_eq!(counts.delivered, 1, "{room}");
        }
        assert_eq!(socket.outbox.len(), 2, "the rooms past the cap are queued");
        let mut batch = VecDeque::new();
        socket.take(&mut batch).await;
        let sent: Vec<String> = batch
            .iter()
            .map(|f| String::from_utf8(f.payload().to_vec()).unwrap())
            .collect();
        let expected: Vec<String> = (0..rooms.len()).rev().map(|n| n.to_string()).collect();
        assert_eq!(
            sent, expected,
            "in the order published, rings and queue merged"
        );
        // Leaving a queued room and a ring room: each stops reaching it.
        registry.mirror(&socket.meta.id, &rooms[rooms.len() - 1], false);
        registry.mirror(&socket.meta.id, &rooms[0], false);
        for room in [&rooms[0], &rooms[rooms.len() - 1]] {
            let (counts, _) = registry.deliver_here(room, &Bytes::from_static(b"x")).await;
            assert_eq!(counts.delivered, 0);
            assert!(!registry.hosts(room), "an empty room is dropped");
        }
        assert_eq!(
            registry.room_members(&rooms[1]),
            std::slice::from_ref(&socket.meta.id)
        );
    }

    #[tokio::test]
    async fn a_registry_not_told_of_every_join_leaves_rooms_to_fan_out() {
        let registry = Registry::default();
        let room = RoomName::parse("orders").unwrap();
        assert!(
            Gateway::deliver_room(&registry, &room, &Bytes::from_static(b"x"))
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_writer_waiting_on_its_outbox_wakes_for_its_first_room_and_its_appends() {
        let (registry, sockets) = delivering(1);
        let socket = sockets[0].clone();
        let room = RoomName::parse("orders").unwrap();
        let writer = waiting_writer(&socket);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "nothing to take yet");
        registry.mirror(&sockets[0].meta.id, &room, true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "a join brings nothing to send");
        registry
            .deliver_here(&room, &Bytes::from_static(b"hello"))
            .await;
        let batch = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the append woke the writer")
            .unwrap();
        assert_eq!(batch, [text("hello")]);
    }

    #[tokio::test]
    async fn a_writer_waiting_on_one_ring_wakes_for_a_room_it_joins_next() {
        let (registry, sockets) = delivering(1);
        let socket = sockets[0].clone();
        let (first, second) = (
            RoomName::parse("first").unwrap(),
            RoomName::parse("second").unwrap(),
        );
        registry.mirror(&socket.meta.id, &first, true);
        let writer = waiting_writer(&socket);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "waiting on the first ring");
        registry.mirror(&socket.meta.id, &second, true);
        registry
            .deliver_here(&second, &Bytes::from_static(b"second"))
            .await;
        let batch = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the second ring's append woke the writer")
            .unwrap();
        assert_eq!(batch, [text("second")]);
    }

    #[tokio::test]
    async fn a_member_a_full_ring_behind_is_closed_as_a_slow_consumer_and_counted_gone() {
        let registry = Arc::new(Registry::new(Bounds {
            frames: 4,
            bytes: usize::MAX,
        }));
        registry.deliver_rooms();
        let (reads, stalls) = (Socket::for_test(), Socket::for_test());
        registry.insert(reads.clone());
        registry.insert(stalls.clone());
        let room = RoomName::parse("orders").unwrap();
        registry.mirror(&reads.meta.id, &room, true);
        registry.mirror(&stalls.meta.id, &room, true);
        let mut batch = VecDeque::new();
        for i in 0..4 {
            let (counts, _) = registry
                .deliver_here(&room, &Bytes::from(format!("{i}")))
                .await;
            assert_eq!(counts.delivered, 2);
            reads.take_now(&mut batch);
        }
        let (counts, gone) = registry
            .deliver_here(&room, &Bytes::from_static(b"4"))
            .await;
        assert_eq!((counts.delivered, counts.gone), (1, 1));
        assert_eq!(gone, std::slice::from_ref(&stalls.meta.id));
        assert_eq!(registry.slow_consumers(), 1);
        assert_eq!(
            stalls.close_reason(),
            Some((SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON.into()))
        );
        assert_eq!(
            stalls.outbox.len(),
            4,
            "what it was owed waits for its close"
        );
    }

    fn deep(registry: &Registry, ids: &[ConnectionId]) -> usize {
        ids.iter()
            .filter(|id| registry.socket(id).unwrap().outbox.len() > BACKLOG_HIGH_WATER)
            .count()
    }

    // Paused time: the ticks of `pace` and of the writers below advance in step, however
    // busy the machine running the test is.
    #[tokio::test(start_paused = true)]
    async fn fan_out_waits_while_the_writers_drain_deep_queues() {
        let (registry, ids) = registry_with(8, BACKLOG_HIGH_WATER + 40);
        // Writers that send four notifications per socket every millisecond.
        let draining = tokio::spawn({
            let registry = registry.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    for socket in registry.all() {
                        let mut taken = VecDeque::new();
                        socket.outbox.take_now(&mut taken);
                        for frame in taken.iter().skip(4) {
                            socket.outbox.push(frame, registry.bounds()).unwrap();
                        }
                    }
                }
            }
        });
        assert_eq!(deep(&registry, &ids), 8);
        tokio::time::timeout(Duration::from_secs(10), registry.pace(&ids))
            .await
            .expect("the queues drained below the mark");
        draining.abort();
        assert!(
            deep(&registry, &ids) * 2 <= ids.len(),
            "fan-out went on only once most queues were below the mark"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fan_out_does_not_wait_for_queues_that_do_not_drain() {
        let (registry, ids) = registry_with(8, BACKLOG_HIGH_WATER + 40);
        tokio::time::timeout(Duration::from_secs(5), registry.pace(&ids))
            .await
            .expect("stalled queues are left to overflow, not waited for");
        assert_eq!(deep(&registry, &ids), 8);
    }

    /// A registry of one socket whose queue holds `bytes` and is full.
    fn one_full_socket(bytes: usize) -> (Arc<Registry>, Arc<Socket>, Frame) {
        let registry = Arc::new(Registry::new(Bounds {
            frames: 1024,
            bytes,
        }));
        let socket = Socket::for_test();
        registry.insert(socket.clone());
        let frame = frame(Bytes::from(vec![b'x'; bytes - 4])).unwrap();
        assert_eq!(frame.len(), bytes, "a 4-byte header");
        registry.post_to(&socket, &frame).unwrap();
        (registry, socket, frame)
    }

    #[test]
    fn a_notification_past_the_byte_budget_closes_the_slow_consumer() {
        let (registry, socket, _) = one_full_socket(1000);
        let one = frame(Bytes::from_static(b"1")).unwrap();
        assert!(matches!(
            registry.post_to(&socket, &one),
            Err(PushError::Gone)
        ));
        assert_eq!(registry.slow_consumers(), 1);
        assert_eq!(
            socket.close_reason(),
            Some((SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON.into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_waits_for_room_and_goes_in_once_the_writer_takes() {
        let (registry, socket, frame) = one_full_socket(1000);
        let id = socket.meta.id.clone();
        let reply = tokio::spawn({
            let registry = registry.clone();
            let payload = Bytes::from(frame.payload().to_vec());
            async move { Gateway::post(&*registry, &id, payload).await }
        });
        tokio::time::sleep(REPLY_PATIENCE / 2).await;
        assert!(!reply.is_finished(), "no room yet: the reply waits");
        let mut batch = VecDeque::new();
        assert_eq!(socket.outbox.take_now(&mut batch), 1);
        reply.await.unwrap().expect("queued once there was room");
        assert_eq!(socket.outbox.backlog(), Some((1, 1000)));
        assert_eq!(registry.slow_consumers(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_that_finds_no_room_in_time_closes_the_slow_consumer() {
        let (registry, socket, frame) = one_full_socket(1000);
        let started = tokio::time::Instant::now();
        let answer = registry.post_waiting(&socket, &frame).await;
        assert!(matches!(answer, Err(PushError::Gone)));
        assert!(started.elapsed() >= REPLY_PATIENCE);
        assert!(started.elapsed() < REPLY_PATIENCE + REPLY_TICK_MAX * 2);
        assert_eq!(registry.slow_consumers(), 1);
        assert!(!socket.outbox.is_open());
    }

    #[test]
    fn shallow_or_mostly_shallow_pages_are_not_held_up() {
        let (registry, ids) = registry_with(8, BACKLOG_HIGH_WATER);
        assert_eq!(registry.sample_backlog(&ids), None);
        // Three deep queues of eight: a minority, so no wait.
        let frame = frame(Bytes::from_static(b"{}")).unwrap();
        for id in &ids[..3] {
            registry
                .socket(id)
                .unwrap()
                .outbox
                .push(&frame, registry.bounds())
                .unwrap();
        }
        assert_eq!(registry.sample_backlog(&ids), None);
        registry
            .socket(&ids[3])
            .unwrap()
            .outbox
            .push(&frame, registry.bounds())
            .unwrap();
        registry
            .socket(&ids[4])
            .unwrap()
            .outbox
            .push(&frame, registry.bounds())
            .unwrap();
        assert!(registry.sample_backlog(&ids).is_some(), "five of eight");
    }
}
