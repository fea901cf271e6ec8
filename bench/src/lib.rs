//! `herald-bench`: drives a `herald-local` with real WebSocket clients and measures it
//! against a bare broadcast server run in the same invocation.
//!
//! # Layout
//!
//! | file | what |
//! |---|---|
//! | `src/main.rs` | the scenarios as subcommands, the report as a table and JSON |
//! | `src/procs.rs` | starting `herald-local` and the baseline as processes; CPU and memory from `/proc` |
//! | `src/baseline.rs` | the bare tokio + tungstenite broadcast server |
//! | `src/load.rs` | clients, the publisher, fan-out, memory and churn measurements |
//! | `src/chart.rs` | the PNG chart of a sweep |

pub mod baseline;
pub mod chart;
pub mod load;
pub mod procs;
