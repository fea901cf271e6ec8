//! A soak client, and what the clients share: each connects to a live instance, subscribes
//! (with `since` once it holds something), keeps each offset once, and reconnects when its
//! churn timer fires or its connection drops, until the run stops it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::load::token;

/// Handshakes in flight at once.
const OPENING: usize = 64;
/// How long a client waits before trying another instance after a failed connect.
const RETRY: Duration = Duration::from_millis(200);

/// One client's account of its room: the offset it first subscribed at, and which later
/// offsets it holds.
#[derive(Default)]
pub(super) struct Held {
    pub(super) start: Option<u64>,
    epoch: Option<String>,
    /// Bit `k` set: offset `start + 1 + k` is held.
    bits: Vec<u64>,
    /// Every offset up to this one is held.
    pub(super) contiguous: u64,
}

impl Held {
    /// Records `offset`; false when it was already held (or precedes the start).
    fn take(&mut self, offset: u64) -> bool {
        let Some(start) = self.start else {
            return false;
        };
        if offset <= start {
            return false;
        }
        let k = usize::try_from(offset - start - 1).unwrap_or(usize::MAX);
        let (word, bit) = (k / 64, k % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) != 0 {
            return false;
        }
        self.bits[word] |= 1 << bit;
        while self.is_held(self.contiguous + 1) {
            self.contiguous += 1;
        }
        true
    }

    fn is_held(&self, offset: u64) -> bool {
        let Some(start) = self.start else {
            return false;
        };
        if offset <= start {
            return true;
        }
        let k = usize::try_from(offset - start - 1).unwrap_or(usize::MAX);
        self.bits
            .get(k / 64)
            .is_some_and(|word| word & (1 << (k % 64)) != 0)
    }

    /// Offsets after the start up to `last` it does not hold.
    pub(super) fn missing(&self, last: u64) -> u64 {
        let Some(start) = self.start else {
            return last;
        };
        (start + 1..=last).filter(|o| !self.is_held(*o)).count() as u64
    }
}

/// Counters every client adds to.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) received: AtomicU64,
    pub(super) repeats: AtomicU64,
    pub(super) churned: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) recovered: AtomicU64,
    pub(super) unrecovered: AtomicU64,
    pub(super) fresh: AtomicU64,
    pub(super) connect_failures: AtomicU64,
}

/// What the clients share: where to connect, when to stop churning and stop.
pub(super) struct Shared {
    /// The instances taking clients: index into the run's instances, and address.
    live: RwLock<Vec<(usize, SocketAddr)>>,
    /// Clients connected and subscribed on each instance now.
    held_by: [AtomicI64; 3],
    /// No more churn: clients stay where they are.
    calm: AtomicBool,
    /// Whether the run is over; wakes every client waiting on its socket when set.
    stop: watch::Sender<bool>,
    counters: Counters,
    opening: Semaphore,
}

impl Shared {
    /// Clients that will connect to the instances at `addrs`, in turn.
    pub(super) fn new(addrs: Vec<SocketAddr>) -> Self {
        Self {
            live: RwLock::new(addrs.into_iter().enumerate().collect()),
            held_by: Default::default(),
            calm: AtomicBool::new(false),
            stop: watch::Sender::new(false),
            counters: Counters::default(),
            opening: Semaphore::new(OPENING),
        }
    }

    /// The instances taking clients, to change.
    pub(super) fn live(&self) -> std::sync::RwLockWriteGuard<'_, Vec<(usize, SocketAddr)>> {
        self.live.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Clients connected and subscribed on each instance now.
    pub(super) fn held_by(&self) -> Vec<u64> {
        self.held_by
            .iter()
            .map(|n| u64::try_from(n.load(Ordering::Relaxed)).unwrap_or(0))
            .collect()
    }

    /// What the clients have counted.
    pub(super) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Stops the churn.
    pub(super) fn calm(&self) {
        self.calm.store(true, Ordering::Release);
    }

    /// Ends the run: every client closes and returns.
    pub(super) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Whether the run is over.
    pub(super) fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// A receiver that sees the run end.
    pub(super) fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }
}

/// A small deterministic generator (xorshift64*), so that a run's churn can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An exponentially distributed wait of mean `mean`.
    fn wait(&mut self, mean: Duration) -> Duration {
        mean.mul_f64(-(1.0 - self.next()).max(1e-9).ln())
    }
}

/// `m`'s value, even if a holder panicked.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One client: connects to a live instance, subscribes (with `since` once it holds
/// something), reads and keeps what it receives, reconnects when its churn timer fires or
/// the connection drops, until told to stop.
pub(super) async fn client(
    i: usize,
    room: String,
    shared: Arc<Shared>,
    held: Arc<Vec<Mutex<Held>>>,
    mean_churn: Duration,
) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
    let token = token(&format!("soak-{i}"));
    let counters = &shared.counters;
    let mut attempt = i;
    let mut stopped = shared.stopped();
    loop {
        if shared.is_stopped() {
            return;
        }
        let (instance, addr) = {
            let live = shared.live.read().unwrap_or_else(|p| p.into_inner());
            live[attempt % live.len()]
        };
        attempt += 1;
        let url = format!("ws://{addr}/local?token={token}");
        let permit = shared.opening.acquire().await.expect("never closed");
        let config = crate::placement::client_config();
        let connected = tokio_tungstenite::connect_async_with_config(&url, config, false).await;
        let Ok((mut ws, _)) = connected else {
            drop(permit);
            counters.connect_failures.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let since = {
            let h = lock(&held[i]);
            h.epoch
                .as_ref()
                .map(|epoch| json!({"offset": h.contiguous, "epoch": epoch}))
        };
        let mut subscribe = json!({"action": "subscribe", "room": room});
        if let Some(since) = &since {
            subscribe["since"] = since.clone();
        }
        if ws.send(Message::text(subscribe.to_string())).await.is_err() {
            drop(permit);
            counters.connect_failures.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        drop(permit);
        let churn_at = tokio::time::Instant::now() + rng.wait(mean_churn);
        let mut subscribed = false;
        let ended = loop {
            let frame = tokio::select! {
                frame = ws.next() => frame,
                () = tokio::time::sleep_until(churn_at),
                    if subscribed && !shared.calm.load(Ordering::Acquire) => break End::Churn,
                _ = stopped.wait_for(|stop| *stop) => break End::Stop,
            };
            let Some(Ok(Message::Text(text))) = frame else {
                break End::Dropped;
            };
            let Ok(message) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            match message["type"].as_str() {
                Some("subscribed") => {
                    if !subscribed {
                        shared.held_by[instance].fetch_add(1, Ordering::Relaxed);
                    }
                    subscribed = true;
                    let mut h = lock(&held[i]);
                    if since.is_some() {
                        if message["recovered"] == true {
                            counters.recovered.fetch_add(1, Ordering::Relaxed);
                        } else {
                            counters.unrecovered.fetch_add(1, Ordering::Relaxed);
                            eprintln!("soak: client {i} not recovered: {message}");
                        }
                    } else if h.start.is_some() {
                        counters.fresh.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let offset = message["offset"].as_u64().unwrap_or(0);
                        h.start = Some(offset);
                        h.contiguous = offset;
                        h.epoch = message["epoch"].as_str().map(str::to_owned);
                    }
                }
                _ => {
                    let Some(offset) = message["offset"].as_u64() else {
                        continue;
                    };
                    let mut h = lock(&held[i]);
                    if h.epoch.is_none() {
                        h.epoch = message["epoch"].as_str().map(str::to_owned);
                    }
                    if h.take(offset) {
                        counters.received.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counters.repeats.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        };
        if subscribed {
            shared.held_by[instance].fetch_sub(1, Ordering::Relaxed);
        }
        match ended {
            End::Churn => {
                counters.churned.fetch_add(1, Ordering::Relaxed);
                let _ = ws.close(None).await;
            }
            End::Dropped => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            End::Stop => {
                let _ = ws.close(None).await;
                return;
            }
        }
    }
}

/// Why a client's connection ended.
enum End {
    Churn,
    Dropped,
    Stop,
}

#[cfg(test)]
mod tests {
    use super::Held;

    #[test]
    fn held_offsets_count_once_and_gaps_are_missing() {
        let mut h = Held {
            start: Some(10),
            ..Held::default()
        };
        assert!(!h.take(10), "before the start");
        assert!(h.take(11));
        assert!(h.take(13));
        assert!(!h.take(13), "a repeat");
        assert_eq!(h.contiguous, 11);
        assert_eq!(h.missing(14), 2);
        assert!(h.take(12));
        assert_eq!(h.contiguous, 13);
        assert!(h.take(200));
        assert_eq!(h.missing(200), 186);
    }
}
