//! `herald-bench`: each scenario is one subcommand; each prints a table and, with
//! `--json FILE`, writes its figures. See BENCHMARKS.md for the commands and results.

use clap::{Parser, Subcommand};
use herald_bench::load::{self, Fanout, Server, Transport};
use herald_bench::{baseline, chart, flood, placement, procs};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for herald-local"
)]
struct Cli {
    /// Also write the figures as JSON to this file.
    #[arg(long, global = true)]
    json: Option<String>,
    /// Run the servers on these CPUs (`taskset -c` list, e.g. `0`); pin the generator
    /// itself apart with `taskset -c 1 herald-bench ...`.
    #[arg(long, global = true)]
    server_cpus: Option<String>,
    /// Each subscriber's WebSocket read buffer, in bytes (tungstenite's default otherwise).
    #[arg(long, global = true)]
    read_buffer: Option<usize>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// C subscribers of one room, P publishes of S bytes: gateway with history (the
    /// default), gateway without, then baseline.
    Fanout {
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        publishes: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Run the gateway without history before the one with it (the order a run goes
        /// in moves its figure; alternate it between invocations).
        #[arg(long)]
        no_history_first: bool,
    },
    /// Resident memory idle and with C idle connections, gateway and baseline.
    Memory {
        #[arg(long, default_value_t = 5000)]
        connections: usize,
    },
    /// Event invocations as fast as they are taken, while readers read: 429s, readers
    /// kept, peak memory.
    Flood {
        #[arg(long, default_value_t = 2000)]
        invocations: usize,
        #[arg(long, default_value_t = 100_000)]
        size: usize,
        #[arg(long, default_value_t = 20)]
        readers: usize,
        #[arg(long, default_value_t = 32)]
        in_flight: usize,
    },
    /// Connect + disconnect cycles per second, with auth.
    Churn {
        #[arg(long, default_value_t = 2000)]
        cycles: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// The fan-out across three gateway instances on one Redis (started on a free port),
    /// with history and without.
    Multi {
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        publishes: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
    },
    /// The fan-out to C Server-Sent Events clients beside C WebSocket clients, each run on
    /// a gateway of its own over one Redis (started on a free port).
    Sse {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        publishes: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Run the SSE clients before the WebSocket ones (alternate it between invocations).
        #[arg(long)]
        sse_first: bool,
    },
    /// Fan-out at several connection counts, both servers; writes the chart PNG.
    Sweep {
        #[arg(long, value_delimiter = ',', default_value = "1000,2500,5000,10000")]
        connections: Vec<usize>,
        #[arg(long, default_value_t = 100)]
        publishes: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value = "bench-chart.png")]
        chart: String,
    },
    /// Redraws the chart from a sweep's JSON (`--json` of `sweep`).
    Chart {
        /// The sweep's figures.
        #[arg(long)]
        from: String,
        #[arg(long, default_value = "bench-chart.png")]
        chart: String,
    },
    /// A short run of every fan-out kind that fails unless nothing is lost or duplicated.
    Smoke,
    /// The bare broadcast server (started by the other scenarios).
    BaselineServer {
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

fn raise_file_limit() {
    // Thousands of sockets on each side; child processes inherit the raised limit. Root may
    // raise the hard limit too; anyone may raise the soft one up to it.
    let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, 200_000, 200_000);
    match rlimit::increase_nofile_limit(200_000) {
        Ok(n) if n < 30_000 => eprintln!("warning: only {n} open files allowed"),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open file limit: {e}"),
    }
}

fn print_fanout(runs: &[Fanout]) {
    println!(
        "{:<15} {:>6} {:>5} {:>6} {:>10} {:>5} {:>5} {:>13} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "server",
        "conns",
        "pubs",
        "bytes",
        "delivered",
        "lost",
        "dup",
        "deliveries/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "pub ms",
        "cli cpu%",
        "srv cpu%"
    );
    for r in runs {
        println!(
            "{:<15} {:>6} {:>5} {:>6} {:>10} {:>5} {:>5} {:>13.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.0} {:>8.0}",
            r.server,
            r.connections,
            r.publishes,
            r.size,
            r.deliveries,
            r.lost,
            r.duplicated,
            r.deliveries_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.publish_ms,
            r.client_cpu_pct,
            r.server_cpu_pct
        );
    }
}

/// How the gateway runs without history, to measure what keeping it costs.
const NO_HISTORY: (&str, &str) = ("HERALD_HISTORY_SIZE", "0");
/// The name a run without history is reported under: its server's name and this.
const NO_HISTORY_SUFFIX: &str = "-no-history";

async fn gateway_fanout(connections: usize, publishes: usize, size: usize) -> Fanout {
    gateway_fanout_with(&[], "gateway", connections, publishes, size).await
}

async fn gateway_fanout_with(
    env: &[(&str, &str)],
    name: &str,
    connections: usize,
    publishes: usize,
    size: usize,
) -> Fanout {
    let gateway = procs::gateway(env).await;
    let server = Server::Gateway(vec![gateway.addr]);
    load::fanout(
        &server,
        name,
        &[gateway.pid()],
        connections,
        publishes,
        size,
    )
    .await
}

async fn baseline_fanout(connections: usize, publishes: usize, size: usize) -> Fanout {
    let baseline = procs::baseline().await;
    let server = Server::Baseline(baseline.addr);
    load::fanout(
        &server,
        "baseline",
        &[baseline.pid()],
        connections,
        publishes,
        size,
    )
    .await
}

async fn multi_fanout(connections: usize, publishes: usize, size: usize) -> Fanout {
    multi_fanout_with(&[], "multi-instance", connections, publishes, size).await
}

async fn multi_fanout_with(
    extra: &[(&str, &str)],
    run_name: &str,
    connections: usize,
    publishes: usize,
    size: usize,
) -> Fanout {
    let redis = herald::testing::Server::redis();
    let url = redis.url();
    let mut gateways = Vec::new();
    for name in ["a", "b", "c"] {
        let mut env = vec![
            ("HERALD_STORE", "redis"),
            ("HERALD_REDIS_URL", url.as_str()),
            ("HERALD_INSTANCE_ID", name),
        ];
        env.extend_from_slice(extra);
        gateways.push(procs::gateway(&env).await);
    }
    let server = Server::Gateway(gateways.iter().map(|g| g.addr).collect());
    let pids: Vec<u32> = gateways.iter().map(procs::Proc::pid).collect();
    let run = load::fanout(&server, run_name, &pids, connections, publishes, size).await;
    drop(gateways);
    drop(redis);
    run
}

/// The latency an SSE client may see at the median on herald-local with Redis (issue 16).
const SSE_P50_TARGET_MS: f64 = 50.0;

/// One fan-out run over `transport` on a gateway of its own, on the Redis at `redis_url`.
async fn redis_fanout(
    transport: Transport,
    redis_url: &str,
    name: &str,
    run: (usize, usize, usize),
) -> Fanout {
    let env = [("HERALD_STORE", "redis"), ("HERALD_REDIS_URL", redis_url)];
    let gateway = procs::gateway(&env).await;
    let server = Server::Gateway(vec![gateway.addr]);
    load::fanout_over(transport, &server, name, &[gateway.pid()], run).await
}

/// Deliveries per second of run `over` as a fraction of run `under`'s.
fn ratio(runs: &[Fanout], over: &str, under: &str) -> Option<f64> {
    let rate = |name: &str| {
        runs.iter()
            .find(|r| r.server == name)
            .map(|r| r.deliveries_per_sec)
    };
    Some(rate(over)? / rate(under)?)
}

/// Prints and returns what history costs: deliveries per second with it, as a fraction of
/// those without it, for the run named `name`.
fn history_ratio(runs: &[Fanout], name: &str) -> Option<f64> {
    let without = format!("{name}{NO_HISTORY_SUFFIX}");
    let r = ratio(runs, name, &without)?;
    println!(
        "{name}: history on / off deliveries per second: {:.0}%",
        r * 100.0
    );
    Some(r)
}

fn write_json(path: Option<&str>, value: &serde_json::Value) {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value).expect("figures serialize");
        std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
        println!("figures written to {path}");
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    placement::set(placement::Placement {
        server_cpus: cli.server_cpus.clone(),
        read_buffer: cli.read_buffer,
    });
    raise_file_limit();
    let json_path = cli.json.as_deref();
    match cli.scenario {
        Scenario::BaselineServer { port } => {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("bind");
            println!(
                "baseline listening on {}",
                listener.local_addr().expect("address")
            );
            baseline::serve(listener).await;
        }
        Scenario::Fanout {
            connections,
            publishes,
            size,
            no_history_first,
        } => {
            let no_history = format!("gateway{NO_HISTORY_SUFFIX}");
            let mut runs = Vec::new();
            for without in [no_history_first, !no_history_first] {
                runs.push(if without {
                    gateway_fanout_with(&[NO_HISTORY], &no_history, connections, publishes, size)
                        .await
                } else {
                    gateway_fanout(connections, publishes, size).await
                });
            }
            runs.push(baseline_fanout(connections, publishes, size).await);
            print_fanout(&runs);
            let ratio = ratio(&runs, "gateway", "baseline");
            if let Some(r) = ratio {
                println!(
                    "gateway / baseline deliveries per second: {:.0}%",
                    r * 100.0
                );
            }
            let history = history_ratio(&runs, "gateway");
            write_json(
                json_path,
                &json!({"fanout": runs, "ratio": ratio, "history_ratio": history}),
            );
        }
        Scenario::Multi {
            connections,
            publishes,
            size,
        } => {
            let no_history = format!("multi-instance{NO_HISTORY_SUFFIX}");
            let runs = vec![
                multi_fanout(connections, publishes, size).await,
                multi_fanout_with(&[NO_HISTORY], &no_history, connections, publishes, size).await,
            ];
            print_fanout(&runs);
            let history = history_ratio(&runs, "multi-instance");
            write_json(json_path, &json!({"multi": runs, "history_ratio": history}));
        }
        Scenario::Sse {
            connections,
            publishes,
            size,
            sse_first,
        } => {
            let redis = herald::testing::Server::redis();
            let url = redis.url();
            let run = (connections, publishes, size);
            let mut order = [(Transport::WebSocket, "websocket"), (Transport::Sse, "sse")];
            if sse_first {
                order.reverse();
            }
            let mut runs = Vec::new();
            for (transport, name) in order {
                runs.push(redis_fanout(transport, &url, name, run).await);
            }
            print_fanout(&runs);
            let sse = runs.iter().find(|r| r.server == "sse");
            let p50 = sse.map(|r| r.p50_ms);
            if let Some(p50) = p50 {
                let verdict = if p50 <= SSE_P50_TARGET_MS {
                    "within"
                } else {
                    "OVER"
                };
                println!("sse p50 {p50:.2} ms: {verdict} the {SSE_P50_TARGET_MS} ms target");
            }
            let ratio = ratio(&runs, "sse", "websocket");
            if let Some(r) = ratio {
                println!("sse / websocket deliveries per second: {:.0}%", r * 100.0);
            }
            write_json(json_path, &json!({"sse": runs, "ratio": ratio}));
        }
        Scenario::Memory { connections } => {
            let gateway = procs::gateway(&[]).await;
            let g = load::memory(
                &Server::Gateway(vec![gateway.addr]),
                "gateway",
                gateway.pid(),
                connections,
            )
            .await;
            drop(gateway);
            let baseline = procs::baseline().await;
            let b = load::memory(
                &Server::Baseline(baseline.addr),
                "baseline",
                baseline.pid(),
                connections,
            )
            .await;
            println!(
                "{:<10} {:>6} {:>10} {:>10} {:>14}",
                "server", "conns", "idle KiB", "with KiB", "per conn B"
            );
            for m in [&g, &b] {
                println!(
                    "{:<10} {:>6} {:>10} {:>10} {:>14.0}",
                    m.server, m.connections, m.idle_kib, m.loaded_kib, m.per_connection_bytes
                );
            }
            write_json(json_path, &json!({"memory": [g, b]}));
        }
        Scenario::Flood {
            invocations,
            size,
            readers,
            in_flight,
        } => {
            let gateway = procs::gateway(&[]).await;
            let f = flood::flood(
                gateway.addr,
                gateway.pid(),
                invocations,
                size,
                readers,
                in_flight,
            )
            .await;
            println!(
                "{} Event invocations of {} B, {} at a time, in {:.2} s: {} accepted, {} answered 429",
                f.invocations, f.size, in_flight, f.send_secs, f.accepted, f.throttled
            );
            println!(
                "{} readers: {} closed; each received {}..{} of {} (the final one included)",
                f.readers,
                f.closed,
                f.received_min,
                f.received_max,
                f.accepted + 1
            );
            println!(
                "gateway RSS: {:.1} MiB idle, {:.1} MiB at the peak",
                f.idle_rss_kib as f64 / 1024.0,
                f.peak_rss_kib as f64 / 1024.0
            );
            write_json(json_path, &json!({"flood": f}));
        }
        Scenario::Churn {
            cycles,
            concurrency,
        } => {
            let gateway = procs::gateway(&[]).await;
            let c = load::churn(gateway.addr, cycles, concurrency).await;
            println!(
                "{} connect+disconnect cycles with auth, {} at a time: {:.0} per second",
                c.cycles, c.concurrency, c.per_sec
            );
            write_json(json_path, &json!({"churn": c}));
        }
        Scenario::Sweep {
            connections,
            publishes,
            size,
            chart: png,
        } => {
            let mut runs = Vec::new();
            for &c in &connections {
                runs.push(gateway_fanout(c, publishes, size).await);
                runs.push(baseline_fanout(c, publishes, size).await);
            }
            print_fanout(&runs);
            chart::draw(&runs, &png).unwrap_or_else(|e| panic!("chart: {e}"));
            println!("chart written to {png}");
            write_json(json_path, &json!({"sweep": runs}));
        }
        Scenario::Chart { from, chart: png } => {
            let text = std::fs::read_to_string(&from).unwrap_or_else(|e| panic!("{from}: {e}"));
            let figures: serde_json::Value = serde_json::from_str(&text).expect("sweep JSON");
            let runs: Vec<Fanout> =
                serde_json::from_value(figures["sweep"].clone()).expect("a sweep's runs");
            chart::draw(&runs, &png).unwrap_or_else(|e| panic!("chart: {e}"));
            println!("chart written to {png}");
        }
        Scenario::Smoke => {
            let redis = herald::testing::Server::redis();
            let runs = vec![
                gateway_fanout(50, 20, 100).await,
                baseline_fanout(50, 20, 100).await,
                multi_fanout(60, 20, 100).await,
                redis_fanout(Transport::Sse, &redis.url(), "sse", (50, 20, 100)).await,
            ];
            print_fanout(&runs);
            let mut failed = false;
            for r in &runs {
                let expected = (r.connections * r.publishes) as u64;
                if r.lost != 0 || r.duplicated != 0 || r.deliveries != expected {
                    eprintln!(
                        "{}: lost {} duplicated {} of {expected}",
                        r.server, r.lost, r.duplicated
                    );
                    failed = true;
                }
            }
            write_json(json_path, &json!({"smoke": runs}));
            if failed {
                std::process::exit(1);
            }
            println!("smoke: {} passed, 0 failed", runs.len());
        }
    }
}
