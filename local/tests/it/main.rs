//! `herald-local`'s black-box tests, one binary (each test file would otherwise link the
//! whole tree again): real gateways started in-process on `127.0.0.1:0` or as the real
//! binary, real clients (WebSockets, SSE and polling over TCP, the AWS SDKs), real Redis and
//! `moto_server` started on free ports. Each module says what it covers.

mod common;

mod binary;
mod cli;
mod client_protocol;
mod cluster;
mod compose;
mod control_plane;
mod demo;
mod dynamodb;
mod faults;
mod handshake;
mod history;
mod invoke;
mod lambda_mode;
mod limits;
mod management_api;
mod memory;
mod metrics;
mod mqtt;
mod openapi;
mod poll;
mod presence;
mod protocol_doc;
mod redis_tls;
mod sharding;
mod sse;
mod stalled_clients;
mod upgrade;
mod webhooks;
