//! Where the load goes and what it shares with the publisher: the servers a run drives, a
//! client's socket, and the clock every publish is stamped with.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the load goes.
#[derive(Clone, Debug)]
pub enum Server {
    /// `herald-local` instances: clients spread over all, publishes through the first.
    Gateway(Vec<SocketAddr>),
    /// The bare broadcast server.
    Baseline(SocketAddr),
    /// The same server's broadcast ring: a publish is one append.
    Ring(SocketAddr),
    /// Instances of the seed's Node server on one Redis: clients spread over all,
    /// publishes through the first (`POST /publish`).
    Seed(Vec<SocketAddr>),
}

/// One client's socket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Now, in µs since the epoch, as every publish is stamped.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
