//! `herald-bench`: drives a `herald-local` with real WebSocket (and SSE) clients and measures it
//! against a bare broadcast server run in the same invocation.
//!
//! # Layout
//!
//! | file | what |
//! |---|---|
//! | `src/main.rs` | parses the command line and runs its scenario |
//! | `src/cli.rs` | the scenarios as subcommands, the options they share |
//! | `src/scenarios.rs` | each scenario, one function |
//! | `src/runs.rs` | one fan-out run on each kind of server |
//! | `src/report.rs` | the table, the ratios between runs, the JSON |
//! | `src/procs.rs` | starting `herald-local`, the baseline and the seed's server as processes; CPU and memory from `/proc` |
//! | `src/baseline.rs` | the bare tokio + tungstenite broadcast server |
//! | `src/server.rs` | where the load goes (the kinds of server), a client's socket, the clock publishes are stamped with |
//! | `src/load.rs` | clients, fan-out, memory and churn measurements |
//! | `src/publisher.rs` | the publisher, and the HTTP/1.1 it speaks to the servers |
//! | `src/chart.rs` | the PNG chart of a sweep |
//! | `src/cost.rs` | DynamoDB requests and write units per operation, counted by a proxy in front of `moto_server` |
//! | `src/flood.rs` | the asynchronous flood: 429s, readers kept, peak memory |
//! | `src/sse.rs` | the Server-Sent Events client the `sse` scenario reads with |
//! | `src/soak/mod.rs` | the soak: its instances, publisher, memory samples and report |
//! | `src/soak/client.rs` | a soak client churning with `since` and keeping each offset once, and what the clients share |
//! | `src/placement.rs` | servers pinned apart from the generator, the clients' read buffer |

pub mod baseline;
pub mod chart;
pub mod cli;
pub mod cost;
pub mod flood;
pub mod load;
pub mod placement;
pub mod procs;
pub mod publisher;
pub mod report;
pub mod runs;
pub mod scenarios;
pub mod server;
pub mod soak;
pub mod sse;
