//! The WebSocket transport: the handshake route (`handshake.rs`), the upgrade taken out of
//! hyper (`upgrade.rs`), and each connection's reader and writer (`socket.rs`), which follows
//! the client's frame headers to count every fragment (`headers.rs`).

pub(crate) mod handshake;
mod headers;
pub(crate) mod socket;
pub(crate) mod upgrade;
