//! Herald's core: everything the seven Lambda functions and `herald-local` share.
//!
//! A Lambda binary and the local gateway run the very same handlers; they differ only in
//! how events arrive and which [`ConnectionStore`](store::ConnectionStore) and
//! [`Gateway`](gateway::Gateway) implementations they pass in.
//!
//! # Layout
//!
//! | module | file | what |
//! |---|---|---|
//! | [`error`] | `src/error.rs` | what each layer's error keeps of its cause |
//! | [`ids`] | `src/ids.rs` | connection ids in API Gateway's shape, notification ids, the clock |
//! | [`protocol`] | `src/protocol/` | client frames, replies, notifications, the publish API, validation |
//! | [`auth`] | `src/auth/` | JWT verification, room patterns, the identity in the authorizer context |
//! | [`aws`] | `src/aws.rs` | SDK settings: the default chain, or fixed ones for loopback servers |
//! | [`store`] | `src/store/` | the store's three traits, one per concern (`Connections`, `History`, `Counters`; together `ConnectionStore`), declared once each with `ForwardingStore` for decorators (`forwarding.rs`); its backends (`memory/`, `redis/`, `dynamo/`, each a file per concern); history's types (`history.rs`); the shared store test suite |
//! | [`gateway`] | `src/gateway/` | `Gateway` (`@connections`), `ApiGatewayManagement`, a recording double |
//! | [`reader`] | `src/reader/` | readers of channels (SSE, long polling) on both hosts: one admission (rooms, cursor, token, room limit), catching up from a cursor, following live, SSE framing |
//! | [`fanout`] | `src/fanout.rs` | paged recipients, bounded concurrency, 410 cleanup, 429 backoff |
//! | [`shard`] | `src/shard/` | sharded fan-out: page jobs on a queue (SQS), the shared `@connections` budget |
//! | [`sinks`] | `src/sinks/` | sinks beyond sockets: webhooks (Standard Webhooks: events, signatures, delivery with retries in process or from an SQS queue on AWS), MQTT (topics, settings; the broker's client with feature `mqtt`, AWS IoT Core's data plane) |
//! | [`limits`] | `src/limits.rs` | the limits the handlers enforce, and their defaults |
//! | [`metrics`] | `src/metrics.rs` | the counts operators scrape, in the Prometheus text format |
//! | [`presence_events`] | `src/presence_events.rs` | join and leave notifications to a room's members, rate-limited per room |
//! | [`handlers`] | `src/handlers/` | one file per function: `authorize`, `connect`, `disconnect`, `message`, `publish`, `poll`, `stream` |
//! | [`config`] | `src/config.rs` | configuration from `HERALD_*` variables, read once |
//! | [`compose`] | `src/compose.rs` | the composition root: every component built from one `Config` |
//! | [`telemetry`] | `src/telemetry.rs` | tracing set-up for Lambda and `herald-local` |
//! | `testing` | `src/testing/` (`tls.rs`: the TLS-only servers) | feature `test-support`: real servers (Redis) started for tests |

pub mod auth;
pub mod aws;
pub mod compose;
pub mod config;
pub mod error;
pub mod fanout;
pub mod gateway;
pub mod handlers;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod presence_events;
pub mod protocol;
pub mod reader;
pub mod shard;
pub mod sinks;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

/// The AWS SDK configuration type hosts build clients from.
pub use aws_config;
/// The AWS event types the handlers take, re-exported so hosts need no extra dependency.
pub use aws_lambda_events as events;
