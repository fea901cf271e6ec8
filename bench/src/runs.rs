//! One fan-out run on each kind of server: the gateway (with or without history), the
//! baseline, three instances on one Redis, the seed's Node server ×3, a gateway over Redis
//! for SSE clients.

use crate::load::{self, Fanout, Transport};
use crate::procs;
use crate::server::Server;

/// How the gateway runs without history, to measure what keeping it costs.
pub const NO_HISTORY: (&str, &str) = ("HERALD_HISTORY_SIZE", "0");
/// One room's fan-out on a gateway.
pub async fn gateway_fanout(connections: usize, publishes: usize, size: usize) -> Fanout {
    gateway_fanout_with(&[], "gateway", connections, publishes, size).await
}

/// The same on a gateway started with `env`, reported as `name`.
pub async fn gateway_fanout_with(
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

/// One room's fan-out on the baseline.
pub async fn baseline_fanout(connections: usize, publishes: usize, size: usize) -> Fanout {
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

/// One room's fan-out on the baseline's broadcast ring (a publish is one append).
pub async fn ring_fanout(connections: usize, publishes: usize, size: usize) -> Fanout {
    let baseline = procs::baseline().await;
    let server = Server::Ring(baseline.addr);
    let pids = [baseline.pid()];
    load::fanout(
        &server,
        "baseline-ring",
        &pids,
        connections,
        publishes,
        size,
    )
    .await
}

/// One room's fan-out across three instances on one Redis.
pub async fn multi_fanout(connections: usize, publishes: usize, size: usize) -> Fanout {
    multi_fanout_with(&[], "multi-instance", connections, publishes, size).await
}

/// The same with `extra` settings, reported as `run_name`.
pub async fn multi_fanout_with(
    extra: &[(&str, &str)],
    run_name: &str,
    connections: usize,
    publishes: usize,
    size: usize,
) -> Fanout {
    let run = (connections, publishes, size);
    multi_fanout_extras(extra, run_name, run, 1).await
}

/// Three instances on one Redis with `extra` settings and `in_flight` publish calls at
/// once; counts the Redis commands each publish costs.
pub async fn multi_fanout_extras(
    extra: &[(&str, &str)],
    run_name: &str,
    run: (usize, usize, usize),
    in_flight: usize,
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
    let extras = load::Extras {
        in_flight,
        redis_url: Some(url.clone()),
    };
    let fanout = load::fanout_with(Transport::WebSocket, &server, run_name, &pids, run, &extras);
    let run = fanout.await;
    drop(gateways);
    drop(redis);
    run
}

/// The seed's Node server (`ws` + `ioredis`), three instances on one Redis, publishes
/// one after another through the first one's `POST /publish`.
pub async fn seed_fanout(run: (usize, usize, usize)) -> Fanout {
    let redis = herald::testing::Server::redis();
    let url = redis.url();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(procs::seed(&url).await);
    }
    let server = Server::Seed(instances.iter().map(|i| i.addr).collect());
    let pids: Vec<u32> = instances.iter().map(procs::Proc::pid).collect();
    let extras = load::Extras {
        in_flight: 1,
        redis_url: Some(url.clone()),
    };
    let fanout = load::fanout_with(
        Transport::WebSocket,
        &server,
        "seed-node-x3",
        &pids,
        run,
        &extras,
    );
    let run = fanout.await;
    drop(instances);
    drop(redis);
    run
}

/// The latency an SSE client may see at the median on herald-local with Redis (issue 16).
pub const SSE_P50_TARGET_MS: f64 = 50.0;

/// One fan-out run over `transport` on a gateway of its own, on the Redis at `redis_url`.
pub async fn redis_fanout(
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
