//! `herald-bench`: each scenario is one subcommand; each prints a table and, with
//! `--json FILE`, writes its figures. See BENCHMARKS.md for the commands and results.

use clap::Parser;
use herald_bench::cli::Cli;

#[tokio::main]
async fn main() {
    herald_bench::scenarios::run(Cli::parse()).await;
}
