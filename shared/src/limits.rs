//! The limits the handlers enforce, with their defaults written once: the configuration,
//! `herald-local`'s flags and the documentation read them from here.

use std::time::Duration;

/// Connections one user may hold at once, unless configured otherwise.
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 100;
/// How long a connection record lives without `$disconnect`: API Gateway's 2-hour maximum
/// connection duration plus a margin of 5 minutes, so a lost `$disconnect` leaves no zombie.
pub const DEFAULT_CONNECTION_LIFETIME: Duration = Duration::from_secs(2 * 3600 + 300);
/// Rooms one connection may have joined at once, unless configured otherwise: each costs
/// memory in every store and a membership item to write and expire.
pub const DEFAULT_MAX_ROOMS_PER_CONNECTION: usize = 256;
/// How long a publish idempotency key is remembered.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);

/// Limits the handlers enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections one user may hold at once; `None` for no limit.
    pub max_connections_per_user: Option<usize>,
    /// Rooms one connection may have joined at once; `None` for no limit.
    pub max_rooms_per_connection: Option<usize>,
    /// How long a connection record lives without `$disconnect` or a refresh.
    pub connection_lifetime: Duration,
    /// How long a publish idempotency key is remembered.
    pub idempotency_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections_per_user: Some(DEFAULT_MAX_CONNECTIONS_PER_USER),
            max_rooms_per_connection: Some(DEFAULT_MAX_ROOMS_PER_CONNECTION),
            connection_lifetime: DEFAULT_CONNECTION_LIFETIME,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
        }
    }
}
