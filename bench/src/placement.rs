//! Where a run's processes sit and how its clients read, set once from the command line:
//! the servers pinned to some CPUs (through `taskset`) while the load generator is pinned
//! to others, and the subscribers' WebSocket read buffer, so a figure can be shown to hold
//! under a generator that was not tuned for it.

use std::sync::OnceLock;

/// How a run is placed.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// CPUs the servers run on (`taskset -c` syntax, e.g. `0`); `None` leaves them wherever
    /// the load generator runs.
    pub server_cpus: Option<String>,
    /// Each subscriber's WebSocket read buffer in bytes; `None` for tungstenite's default.
    pub read_buffer: Option<usize>,
}

static PLACEMENT: OnceLock<Placement> = OnceLock::new();

/// Sets the placement for the rest of the process; the first call wins.
pub fn set(placement: Placement) {
    let _ = PLACEMENT.set(placement);
}

/// The placement in force.
pub fn get() -> Placement {
    PLACEMENT.get().cloned().unwrap_or_default()
}

/// The subscribers' WebSocket settings.
pub fn client_config() -> Option<tokio_tungstenite::tungstenite::protocol::WebSocketConfig> {
    let size = get().read_buffer?;
    Some(
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(size),
    )
}
