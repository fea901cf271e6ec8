//! The command line: one subcommand per scenario, and the options every scenario shares.

use clap::{Parser, Subcommand};

/// The command line.
#[derive(Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for herald-local"
)]
pub struct Cli {
    /// Also write the figures as JSON to this file.
    #[arg(long, global = true)]
    pub json: Option<String>,
    /// Run the servers on these CPUs (`taskset -c` list, e.g. `0`); pin the generator
    /// itself apart with `taskset -c 1 herald-bench ...`.
    #[arg(long, global = true)]
    pub server_cpus: Option<String>,
    /// Each subscriber's WebSocket read buffer, in bytes (tungstenite's default otherwise).
    #[arg(long, global = true)]
    pub read_buffer: Option<usize>,
    /// The scenario to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The scenarios.
#[derive(Subcommand)]
pub enum Scenario {
    /// C subscribers of one room, P publishes of S bytes: gateway with history (the
    /// default), gateway without, then baseline.
    Fanout {
        /// Subscribers (WebSocket clients, or SSE clients where the scenario says).
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        /// Publishes, issued one after another.
        #[arg(long, default_value_t = 100)]
        publishes: usize,
        /// Bytes of each publish's payload.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Run the gateway without history before the one with it (the order a run goes
        /// in moves its figure; alternate it between invocations).
        #[arg(long)]
        no_history_first: bool,
    },
    /// Resident memory idle and with C idle connections, gateway and baseline.
    Memory {
        /// Subscribers (WebSocket clients, or SSE clients where the scenario says).
        #[arg(long, default_value_t = 5000)]
        connections: usize,
    },
    /// Event invocations as fast as they are taken, while readers read: 429s, readers
    /// kept, peak memory.
    Flood {
        /// Asynchronous invocations sent.
        #[arg(long, default_value_t = 2000)]
        invocations: usize,
        /// Bytes of each publish's payload.
        #[arg(long, default_value_t = 100_000)]
        size: usize,
        /// Clients reading while the flood runs.
        #[arg(long, default_value_t = 20)]
        readers: usize,
        /// Invocations in flight at once.
        #[arg(long, default_value_t = 32)]
        in_flight: usize,
    },
    /// Connect + disconnect cycles per second, with auth.
    Churn {
        /// Connect and disconnect cycles.
        #[arg(long, default_value_t = 2000)]
        cycles: usize,
        /// Cycles at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Webhooks' cost to connects: churn without webhooks and with a receiver that
    /// accepts and never answers (every attempt waits out its timeout), in turn, `runs`
    /// times; the medians and the ratio.
    WebhookChurn {
        /// Connect and disconnect cycles.
        #[arg(long, default_value_t = 2000)]
        cycles: usize,
        /// Cycles at once (1: each cycle's time is its latency).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Rounds of the two setups.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// MQTT's cost to WebSocket delivery: one gateway without MQTT, one whose broker is
    /// down (nothing listens at its URL), one with a live `mosquitto` (started on a free
    /// port), in turn, `runs` times; the medians and the down/without ratios.
    Mqtt {
        /// Subscribers (WebSocket clients).
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Publishes, issued one after another.
        #[arg(long, default_value_t = 200)]
        publishes: usize,
        /// Bytes of each publish's payload.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Rounds of the three setups.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Scale-out: three gateway instances on one Redis (started on a free port), with
    /// publishes one at a time and eight in flight, beside the seed's Node server ×3 and
    /// one instance; also three instances without history. Counts Redis commands per
    /// publish.
    Multi {
        /// Subscribers (WebSocket clients, or SSE clients where the scenario says).
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        /// Publishes, issued one after another.
        #[arg(long, default_value_t = 100)]
        publishes: usize,
        /// Bytes of each publish's payload.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Rounds of every setup; the medians are printed after.
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// The fan-out to C Server-Sent Events clients beside C WebSocket clients, each run on
    /// a gateway of its own over one Redis (started on a free port).
    Sse {
        /// Subscribers (WebSocket clients, or SSE clients where the scenario says).
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Publishes, issued one after another.
        #[arg(long, default_value_t = 100)]
        publishes: usize,
        /// Bytes of each publish's payload.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Run the SSE clients before the WebSocket ones (alternate it between invocations).
        #[arg(long)]
        sse_first: bool,
    },
    /// Fan-out at several connection counts, both servers; writes the chart PNG.
    Sweep {
        /// Subscribers (WebSocket clients, or SSE clients where the scenario says).
        #[arg(long, value_delimiter = ',', default_value = "1000,2500,5000,10000")]
        connections: Vec<usize>,
        /// Publishes, issued one after another.
        #[arg(long, default_value_t = 100)]
        publishes: usize,
        /// Bytes of each publish's payload.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Where the chart PNG goes.
        #[arg(long, default_value = "bench-chart.png")]
        chart: String,
    },
    /// Redraws the chart from a sweep's JSON (`--json` of `sweep`).
    Chart {
        /// The sweep's figures.
        #[arg(long)]
        from: String,
        /// Where the chart PNG goes.
        #[arg(long, default_value = "bench-chart.png")]
        chart: String,
    },
    /// A long run of many clients on three instances over Redis: clients reconnect now
    /// and then with `since`, one instance is killed midway and started again; fails
    /// unless every client ends with every notification of its room exactly once.
    Soak {
        /// Clients, spread over the live instances.
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Minutes of publishing.
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Rooms; the clients are spread over them.
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// Publishes a second, to the rooms in turn.
        #[arg(long, default_value_t = 50.0)]
        publishes_per_second: f64,
        /// Reconnections a second, over all clients.
        #[arg(long, default_value_t = 20.0)]
        churn_per_second: f64,
        /// Seconds the killed instance stays down.
        #[arg(long, default_value_t = 10)]
        down_secs: u64,
        /// Run on a 3-master Redis Cluster instead of one Redis server.
        #[arg(long)]
        cluster: bool,
    },
    /// A short run of every fan-out kind that fails unless nothing is lost or duplicated.
    Smoke,
    /// DynamoDB requests and write units of each operation (connect, subscribe, publish,
    /// unsubscribe, disconnect), counted in front of a `moto_server` started here, and
    /// their price per million (see infra/COST.md).
    Cost {
        /// Clients, all in one room.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// With the room webhooks on, so the store counts rooms' members (their receiver
        /// is a port that refuses: the deliveries cost the table nothing).
        #[arg(long)]
        room_events: bool,
    },
    /// The bare broadcast server (started by the other scenarios).
    BaselineServer {
        /// The port to listen on (0: a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

/// Thousands of sockets on each side; child processes inherit the raised limit.
pub fn raise_file_limit() {
    // Root may raise the hard limit too; anyone may raise the soft one up to it.
    let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, 200_000, 200_000);
    match rlimit::increase_nofile_limit(200_000) {
        Ok(n) if n < 30_000 => eprintln!("warning: only {n} open files allowed"),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open file limit: {e}"),
    }
}
