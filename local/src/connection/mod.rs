//! A connection's parts, whatever its transport: the events API Gateway would send for it,
//! the registry of live sockets (the in-process `Gateway`), each socket's bounded outbox,
//! each room's ring of notifications its local members read,
//! frames as bytes on the wire, close codes by name, the frame rate limit, and the runtime
//! the connections run on. Nothing here knows the app above it.

pub mod close_code;
pub mod events;
pub mod frame_rate;
pub(crate) mod id_hash;
pub(crate) mod mirror;
pub(crate) mod outbox;
pub mod registry;
pub(crate) mod ring;
pub(crate) mod runtime;
pub(crate) mod wire;
