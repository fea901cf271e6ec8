//! The scenarios, one function each; `run` picks the one the command line names.

use std::time::Duration;

use serde_json::json;

use crate::cli::{Cli, Scenario};
use crate::load::{self, Fanout, Transport};
use crate::report::{
    NO_HISTORY_SUFFIX, history_ratio, print_fanout, print_medians, ratio, write_json,
};
use crate::runs::{
    NO_HISTORY, SSE_P50_TARGET_MS, baseline_fanout, gateway_fanout, gateway_fanout_with,
    multi_fanout, multi_fanout_extras, redis_fanout, ring_fanout, seed_fanout,
};
use crate::server::Server;
use crate::{baseline, chart, flood, placement, procs};

/// Runs the scenario `cli` names, with its placement.
pub async fn run(cli: Cli) {
    placement::set(placement::Placement {
        server_cpus: cli.server_cpus.clone(),
        read_buffer: cli.read_buffer,
    });
    crate::cli::raise_file_limit();
    let json_path = cli.json.as_deref();
    match cli.scenario {
        Scenario::BaselineServer { port } => baseline_server(port).await,
        Scenario::Fanout {
            connections,
            publishes,
            size,
            no_history_first,
        } => fanout(connections, publishes, size, no_history_first, json_path).await,
        Scenario::Multi {
            connections,
            publishes,
            size,
            runs,
        } => multi(connections, publishes, size, runs, json_path).await,
        Scenario::WebhookChurn {
            cycles,
            concurrency,
            runs,
        } => webhook_churn(cycles, concurrency, runs, json_path).await,
        Scenario::Mqtt {
            connections,
            publishes,
            size,
            runs,
        } => mqtt(connections, publishes, size, runs, json_path).await,
        Scenario::Sse {
            connections,
            publishes,
            size,
            sse_first,
        } => sse(connections, publishes, size, sse_first, json_path).await,
        Scenario::Memory { connections } => memory(connections, json_path).await,
        Scenario::Flood {
            invocations,
            size,
            readers,
            in_flight,
        } => async_flood(invocations, size, readers, in_flight, json_path).await,
        Scenario::Churn {
            cycles,
            concurrency,
        } => churn(cycles, concurrency, json_path).await,
        Scenario::Sweep {
            connections,
            publishes,
            size,
            chart: png,
        } => sweep(connections, publishes, size, png, json_path).await,
        Scenario::Chart { from, chart: png } => redraw_chart(from, png).await,
        Scenario::Smoke => smoke(json_path).await,
        Scenario::Cost {
            clients,
            room_events,
        } => write_json(json_path, &crate::cost::run(clients, room_events).await),
        Scenario::Soak {
            clients,
            minutes,
            rooms,
            publishes_per_second,
            churn_per_second,
            down_secs,
            cluster,
        } => {
            let settings = crate::soak::Settings {
                clients,
                duration: Duration::from_secs_f64(minutes * 60.0),
                rooms,
                publishes_per_second,
                churn_per_second,
                down: Duration::from_secs(down_secs),
                cluster,
            };
            soak(&settings, json_path).await;
        }
    }
}

/// The bare broadcast server, until killed.
pub async fn baseline_server(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    println!(
        "baseline listening on {}",
        listener.local_addr().expect("address")
    );
    baseline::serve(listener).await;
}

/// One room's fan-out: the gateway with history, without, the baseline, and the
/// baseline's broadcast ring.
pub async fn fanout(
    connections: usize,
    publishes: usize,
    size: usize,
    no_history_first: bool,
    json_path: Option<&str>,
) {
    let no_history = format!("gateway{NO_HISTORY_SUFFIX}");
    let mut runs = Vec::new();
    for without in [no_history_first, !no_history_first] {
        runs.push(if without {
            gateway_fanout_with(&[NO_HISTORY], &no_history, connections, publishes, size).await
        } else {
            gateway_fanout(connections, publishes, size).await
        });
    }
    runs.push(baseline_fanout(connections, publishes, size).await);
    runs.push(ring_fanout(connections, publishes, size).await);
    print_fanout(&runs);
    let ratio = ratio(&runs, "gateway", "baseline");
    if let Some(r) = ratio {
        println!(
            "gateway / baseline deliveries per second: {:.0}%",
            r * 100.0
        );
    }
    let ring_ratio = crate::report::ratio(&runs, "gateway", "baseline-ring");
    if let Some(r) = ring_ratio {
        println!(
            "gateway / baseline-ring deliveries per second: {:.0}%",
            r * 100.0
        );
    }
    let history = history_ratio(&runs, "gateway");
    write_json(
        json_path,
        &json!({"fanout": runs, "ratio": ratio, "ring_ratio": ring_ratio,
            "history_ratio": history}),
    );
}

/// Scale-out: three instances on one Redis (publishes one at a time, and
/// [`MULTI_IN_FLIGHT`] in flight), the seed's Node server ×3, one instance, and three
/// instances without history; `runs` times, then the medians.
pub async fn multi(
    connections: usize,
    publishes: usize,
    size: usize,
    runs: usize,
    json_path: Option<&str>,
) {
    let run = (connections, publishes, size);
    let no_history = format!("multi-instance{NO_HISTORY_SUFFIX}");
    let in_flight = format!("multi-instance-{MULTI_IN_FLIGHT}");
    let mut all = Vec::new();
    for _ in 0..runs.max(1) {
        let round = vec![
            multi_fanout_extras(&[], "multi-instance", run, 1).await,
            multi_fanout_extras(&[], &in_flight, run, MULTI_IN_FLIGHT).await,
            seed_fanout(run).await,
            gateway_fanout(connections, publishes, size).await,
            multi_fanout_extras(&[NO_HISTORY], &no_history, run, 1).await,
        ];
        print_fanout(&round);
        all.extend(round);
    }
    let medians = print_medians(&all);
    let history = history_ratio(&all, "multi-instance");
    write_json(
        json_path,
        &json!({"multi": all, "medians": medians, "history_ratio": history}),
    );
}

/// MQTT's cost to delivery: without it, with its broker down, with a live broker, in turn
/// for `runs` rounds (the order rotates each round); medians and the down/without ratios of
/// the publish-to-delivery median and of the publish call.
pub async fn mqtt(
    connections: usize,
    publishes: usize,
    size: usize,
    runs: usize,
    json_path: Option<&str>,
) {
    let broker = herald::testing::Server::mosquitto();
    let live = broker.url();
    let (_held, port) = herald::testing::refused_port();
    let down = format!("mqtt://127.0.0.1:{port}");
    let setups: [(&str, Vec<(&str, &str)>); 3] = [
        ("no-mqtt", vec![]),
        ("mqtt-broker-down", vec![("HERALD_MQTT_URL", down.as_str())]),
        ("mqtt-broker-up", vec![("HERALD_MQTT_URL", live.as_str())]),
    ];
    let mut all = Vec::new();
    for round in 0..runs.max(1) {
        let mut figures = Vec::new();
        for i in 0..setups.len() {
            let (name, env) = &setups[(round + i) % setups.len()];
            figures.push(gateway_fanout_with(env, name, connections, publishes, size).await);
        }
        print_fanout(&figures);
        all.extend(figures);
    }
    let medians = print_medians(&all);
    let median_of = |name: &str, field: fn(&Fanout) -> f64| {
        let mut values: Vec<f64> = all.iter().filter(|r| r.server == name).map(field).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    let mut ratios = serde_json::Map::new();
    for (label, field) in [
        ("p50_ms", (|r: &Fanout| r.p50_ms) as fn(&Fanout) -> f64),
        ("publish_ms", |r: &Fanout| r.publish_ms),
    ] {
        let without = median_of("no-mqtt", field);
        for with in ["mqtt-broker-down", "mqtt-broker-up"] {
            let ratio = median_of(with, field) / without;
            println!("{with} / no-mqtt, median {label}: {:.1}%", ratio * 100.0);
            ratios.insert(format!("{with}/{label}"), json!(ratio));
        }
    }
    write_json(
        json_path,
        &json!({"mqtt": all, "medians": medians, "ratios": ratios}),
    );
}

/// Publish calls in flight at once in `multi`'s second run.
pub const MULTI_IN_FLIGHT: usize = 8;

/// SSE clients beside WebSocket clients, each on a gateway of its own over one Redis.
pub async fn sse(
    connections: usize,
    publishes: usize,
    size: usize,
    sse_first: bool,
    json_path: Option<&str>,
) {
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

/// Resident memory idle and with idle connections, gateway and baseline.
pub async fn memory(connections: usize, json_path: Option<&str>) {
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

/// Event invocations as fast as they are taken, while readers read.
pub async fn async_flood(
    invocations: usize,
    size: usize,
    readers: usize,
    in_flight: usize,
    json_path: Option<&str>,
) {
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

/// Connect and disconnect cycles per second, with auth.
pub async fn churn(cycles: usize, concurrency: usize, json_path: Option<&str>) {
    let gateway = procs::gateway(&[]).await;
    let c = load::churn(gateway.addr, cycles, concurrency).await;
    println!(
        "{} connect+disconnect cycles with auth, {} at a time: {:.0} per second",
        c.cycles, c.concurrency, c.per_sec
    );
    write_json(json_path, &json!({"churn": c}));
}

/// Churn without webhooks and with a receiver that never answers, in turn (the order
/// alternates each round); the median cycles per second of each and their ratio.
pub async fn webhook_churn(
    cycles: usize,
    concurrency: usize,
    runs: usize,
    json_path: Option<&str>,
) {
    // Accepts every connection and reads nothing: each delivery attempt waits its 10 s.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hooks", silent.local_addr().expect("address"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    // 32 bytes of 0x2a, base64: any whsec_ key of 24 to 64 bytes signs as well.
    let secret = "whsec_KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
    let setups: [(&str, Vec<(&str, &str)>); 2] = [
        ("no-webhooks", vec![]),
        (
            "webhooks-receiver-hangs",
            vec![
                ("HERALD_WEBHOOK_URL", url.as_str()),
                ("HERALD_WEBHOOK_SECRET", secret),
            ],
        ),
    ];
    let mut all: Vec<(String, load::Churn)> = Vec::new();
    for round in 0..runs.max(1) {
        for i in 0..setups.len() {
            let (name, env) = &setups[(round + i) % setups.len()];
            let gateway = procs::gateway(env).await;
            let c = load::churn(gateway.addr, cycles, concurrency).await;
            println!(
                "{name:<26} {} cycles, {} at a time: {:.0} per second ({:.2} ms each)",
                c.cycles,
                c.concurrency,
                c.per_sec,
                1000.0 * c.concurrency as f64 / c.per_sec
            );
            all.push(((*name).to_owned(), c));
        }
    }
    let median = |name: &str| {
        let mut values: Vec<f64> = all
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, c)| c.per_sec)
            .collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    let (without, hanging) = (median("no-webhooks"), median("webhooks-receiver-hangs"));
    println!(
        "median cycles/s: no-webhooks {without:.0}, webhooks-receiver-hangs {hanging:.0} \
         ({:.1}%)",
        100.0 * hanging / without
    );
    let runs: Vec<serde_json::Value> = all
        .iter()
        .map(|(name, c)| json!({"setup": name, "churn": c}))
        .collect();
    write_json(
        json_path,
        &json!({"runs": runs, "median_per_sec": {"no-webhooks": without,
            "webhooks-receiver-hangs": hanging}, "ratio": hanging / without}),
    );
}

/// The fan-out at several connection counts, both servers, and its chart.
pub async fn sweep(
    connections: Vec<usize>,
    publishes: usize,
    size: usize,
    png: String,
    json_path: Option<&str>,
) {
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

/// Redraws a sweep's chart from its JSON.
pub async fn redraw_chart(from: String, png: String) {
    let text = std::fs::read_to_string(&from).unwrap_or_else(|e| panic!("{from}: {e}"));
    let figures: serde_json::Value = serde_json::from_str(&text).expect("sweep JSON");
    let runs: Vec<Fanout> =
        serde_json::from_value(figures["sweep"].clone()).expect("a sweep's runs");
    chart::draw(&runs, &png).unwrap_or_else(|e| panic!("chart: {e}"));
    println!("chart written to {png}");
}

/// A short run of every fan-out kind; exits 1 unless nothing is lost or duplicated.
pub async fn smoke(json_path: Option<&str>) {
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

/// The soak; exits non-zero unless every client ended whole.
pub async fn soak(settings: &crate::soak::Settings, json_path: Option<&str>) {
    let report = crate::soak::run(settings).await;
    crate::soak::print(&report);
    write_json(json_path, &json!({"soak": report}));
    if !report.whole() {
        std::process::exit(1);
    }
}
