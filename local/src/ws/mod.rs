//! The WebSocket transport: the handshake route (`handshake.rs`), the upgrade taken out of
//! hyper (`upgrade.rs`), and each connection's reader and writer (`socket.rs`).

pub(crate) mod handshake;
pub(crate) mod socket;
pub(crate) mod upgrade;
