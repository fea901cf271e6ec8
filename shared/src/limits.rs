//! The limits the handlers enforce, with their defaults written once: the configuration,
//! `herald-local`'s flags and the documentation read them from here.

use std::time::Duration;

use crate::store::Retention;

/// Connections one user may hold at once, unless configured otherwise.
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 100;
/// How long a connection record lives without `$disconnect`: API Gateway's 2-hour maximum
/// connection duration plus a margin of 5 minutes, so a lost `$disconnect` leaves no zombie.
pub const DEFAULT_CONNECTION_LIFETIME: Duration = Duration::from_secs(2 * 3600 + 300);
/// Rooms one connection may have joined at once, unless configured otherwise: each costs
/// memory in every store and a membership item to write and expire.
pub const DEFAULT_MAX_ROOMS_PER_CONNECTION: usize = 256;
/// Socket publishes a second one user may make, across every connection and host.
pub const DEFAULT_SOCKET_PUBLISH_RATE: u32 = 10;
/// Socket publishes one user may make at once.
pub const DEFAULT_SOCKET_PUBLISH_BURST: u32 = 20;
/// A room publish limit's burst, as a multiple of its rate, unless configured.
pub const ROOM_PUBLISH_BURST_FACTOR: u32 = 2;
/// Join and leave events a second one room's members get, with presence events on: enough
/// for a room where people come and go, few enough that a stampede cannot fill its posts.
pub const DEFAULT_PRESENCE_EVENTS_PER_SECOND: u32 = 10;
/// How long a publish idempotency key is remembered.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);

/// Limits the handlers enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections one user may hold at once; `None` for no limit.
    pub max_connections_per_user: Option<usize>,
    /// Rooms one connection may have joined at once; `None` for no limit.
    pub max_rooms_per_connection: Option<usize>,
    /// Socket publishes per user, counted in the store; `None` for no limit.
    pub socket_publish: Option<Rate>,
    /// Publishes per room from any caller (the Invoke API, SQS, sockets), counted in the
    /// store; `None`, the default, for no limit: the Invoke API's callers are trusted.
    pub room_publish: Option<Rate>,
    /// Join and leave events per room, counted in the store; `None`, the default, for no
    /// events at all.
    pub presence_events: Option<Rate>,
    /// How long a connection record lives without `$disconnect` or a refresh.
    pub connection_lifetime: Duration,
    /// How long a publish idempotency key is remembered.
    pub idempotency_window: Duration,
    /// History kept per room and per user; `None` for none.
    pub history: Option<Retention>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections_per_user: Some(DEFAULT_MAX_CONNECTIONS_PER_USER),
            max_rooms_per_connection: Some(DEFAULT_MAX_ROOMS_PER_CONNECTION),
            socket_publish: Some(Rate {
                per_second: DEFAULT_SOCKET_PUBLISH_RATE,
                burst: DEFAULT_SOCKET_PUBLISH_BURST,
            }),
            room_publish: None,
            presence_events: None,
            connection_lifetime: DEFAULT_CONNECTION_LIFETIME,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            history: Some(Retention::default()),
        }
    }
}

/// A rate kept in the store, where a token bucket would need a read and a write: `burst`
/// events in each window of `burst / per_second` seconds, so `per_second` on average and
/// `burst` at once (up to twice that across the edge of two windows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Events a second, on average.
    pub per_second: u32,
    /// Events at once.
    pub burst: u32,
}

impl Rate {
    /// The window events are counted in.
    pub fn window(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.burst.max(1)) / f64::from(self.per_second.max(1)))
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up. Time is passed in, so
/// the bucket is exact under test.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: u32, burst: u32, now: std::time::Instant) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Takes one token if there is one at `now`.
    pub fn take(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(50, 100, start);
        for n in 0..100 {
            assert!(bucket.take(start), "token {n} of the burst");
        }
        assert!(!bucket.take(start), "the 101st at once is refused");
        // 50 a second: one every 20 ms.
        assert!(!bucket.take(start + Duration::from_millis(19)));
        assert!(bucket.take(start + Duration::from_millis(21)));
        assert!(!bucket.take(start + Duration::from_millis(22)));
        // Never more than the burst saved up, however long it rests.
        let later = start + Duration::from_secs(3600);
        for _ in 0..100 {
            assert!(bucket.take(later));
        }
        assert!(!bucket.take(later));
    }

    #[test]
    fn a_rate_counts_its_burst_in_its_window() {
        let rate = Rate {
            per_second: 10,
            burst: 20,
        };
        assert_eq!(rate.window(), Duration::from_secs(2));
        assert_eq!(Limits::default().socket_publish, Some(rate));
    }

    #[test]
    fn a_record_outlives_the_longest_api_gateway_connection_by_a_margin() {
        // API Gateway closes every WebSocket after two hours: a record that expired first
        // would drop a live connection; one that lasted much longer would keep a zombie.
        let api_gateway_maximum = Duration::from_secs(2 * 3600);
        assert!(DEFAULT_CONNECTION_LIFETIME > api_gateway_maximum);
        assert!(DEFAULT_CONNECTION_LIFETIME <= api_gateway_maximum + Duration::from_secs(600));
    }

    #[test]
    fn a_clock_that_goes_back_gives_nothing() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(1, 1, start);
        assert!(bucket.take(start));
        assert!(!bucket.take(start - Duration::from_secs(5)));
        assert!(!bucket.take(start + Duration::from_millis(900)));
        assert!(bucket.take(start + Duration::from_millis(1001)));
    }
}
