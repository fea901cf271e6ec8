//! `herald-local`: a WebSocket gateway that behaves like API Gateway WebSocket APIs and runs
//! Herald's handlers in-process.
//!
//! It is a host, not a second implementation: it owns sockets, limits and events, and
//! hands every decision to `herald::handlers`, exactly as the Lambda functions do.
//!
//! # Layout
//!
//! Each folder is one concept; arrows point one way, from the top of this table down:
//! `root` builds the [`App`] and serves `routes`, whose handlers (`ws`, `readers`,
//! `control_plane`, `demo`) open and close connections through `session` and run the
//! handlers through `functions`, on top of
//! `connection`, `cluster` and `http`, which know nothing above them.
//!
//! | place | what |
//! |---|---|
//! | `src/main.rs` | flags (defaults from the constants here), signals, then [`bind`] and [`Ready::serve`] |
//! | `src/root.rs` | the composition root: store, auth or dev mode, cluster, push path, from one [`Settings`]; [`Ready::serve`] |
//! | `src/routes.rs` | every route, by path |
//! | `src/serve.rs` | accepting connections: limits from accept, head timeout, bounded drain |
//! | `src/app.rs` | [`Settings`] and their defaults, the limits, [`StartError`], the state the routes share |
//! | `src/demo.rs` | the demo page at `/`, the JavaScript client it runs, the figures its chart draws |
//! | `src/session/` | opening a connection (admission, token, authorizer, `$connect`) and closing it (`$disconnect`), for every transport |
//! | `src/ws/` | the WebSocket transport: the handshake route, the upgrade, each socket's reader and writer |
//! | `src/readers/` | the fallback transports: Server-Sent Events, long polling, CORS for both |
//! | `src/functions/` | what runs the handlers: in process, or (`--lambda-dir`) the function binaries behind an embedded Lambda Runtime API |
//! | `src/control_plane/` | the `@connections` Management API and the Lambda Invoke API, SigV4, asynchronous invocations |
//! | `src/connection/` | a connection's parts: events as API Gateway builds them, the registry of sockets (the in-process `Gateway`), the outbox, frames on the wire, close codes, the frame rate, the connections' runtime |
//! | `src/cluster/` | several instances on one Redis: routed posts over pub/sub, re-registration after a loss, the heartbeat, the store that mirrors local rooms |
//! | `src/http/` | HTTP answers in AWS's shapes, percent-decoding of paths and query strings |
//! | `src/cli/` | the subcommands for shells and scripts: `token`, `listen`, `publish` |

mod app;
pub mod cli;
mod cluster;
pub mod connection;
pub mod control_plane;
mod demo;
pub mod functions;
mod http;
mod readers;
mod root;
mod routes;
mod serve;
mod session;
mod ws;

pub use app::{
    AuthMode, ControlPlane, ControlPlaneMode, DEFAULT_DRAIN, DEFAULT_HEAD_TIMEOUT,
    DEFAULT_HEARTBEAT, DEFAULT_HOST, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_DURATION,
    DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PORT, DEFAULT_PUBLISH_FUNCTIONS,
    DEFAULT_STAGE, HEARTBEATS_PER_LIFETIME, HttpLimits, Settings, SocketLimits, StartError,
    random_instance_id,
};
pub use cluster::ROOM_REQUEST_TIMEOUT;
pub use connection::close_code;
pub use connection::events::{EventFactory, iso8601, request_time, route_key};
pub use connection::frame_rate::{DEFAULT_FRAME_BURST, DEFAULT_FRAMES_PER_SECOND, FrameRate};
pub use connection::registry::{
    Bounds as OutboundBounds, DEFAULT_OUTBOUND_QUEUE, DEFAULT_OUTBOUND_QUEUE_BYTES,
    MAX_OUTBOUND_QUEUE_BYTES, Registry, SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON,
};
pub use control_plane::faults::{Faults, FaultsError, MAX_FAULT_LATENCY};
pub use control_plane::sigv4::{self, Credentials};
pub use control_plane::{BODY_BYTES_IN_FLIGHT, DEFAULT_QUEUED_INVOCATIONS};
pub use functions::lambda::{ColdStart, FUNCTIONS, LambdaError};
pub use root::{MIN_HS256_SECRET_BYTES, Ready, bind, prepare, run};
