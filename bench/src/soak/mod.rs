//! The soak: many clients on three `herald-local` instances over one Redis (or a Redis
//! Cluster) for a long time. Clients churn (each reconnects now and then, to any live
//! instance, subscribing with `since` from the last offset it holds without a gap); one
//! instance is killed with SIGKILL midway and started again. In the end every client must
//! hold every notification of its room published after it first subscribed, exactly once
//! (live or recovered), and each instance's resident memory must stay flat.
//!
//! A client does what the protocol asks of one (`docs/protocol.md`, History and recovery):
//! it drops an offset it already handled, as a notification racing a resubscribe may come
//! twice. Those are counted apart (`repeats`); what must be zero is `missing` (an offset
//! never received), `unrecovered` (a `since` answered `recovered:false`) and
//! `publish_errors`.

mod client;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::procs::{self, Proc};
use crate::publisher::{INVOKE_PATH, exchange, http_connection};
use client::{Held, Shared, client, lock};

/// What a soak runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Clients, spread over the live instances.
    pub clients: usize,
    /// How long publishing goes on.
    pub duration: Duration,
    /// Rooms; client `i` is in room `i % rooms`.
    pub rooms: usize,
    /// Publishes a second, to the rooms in turn.
    pub publishes_per_second: f64,
    /// Reconnections a second, over all clients.
    pub churn_per_second: f64,
    /// How long the killed instance stays down.
    pub down: Duration,
    /// On a 3-master Redis Cluster instead of one server.
    pub cluster: bool,
}

/// What a soak found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Clients.
    pub clients: usize,
    /// Seconds of publishing.
    pub seconds: f64,
    /// Publishes answered.
    pub publishes: u64,
    /// Publishes that failed.
    pub publish_errors: u64,
    /// Notifications each client should hold, summed.
    pub expected: u64,
    /// Notifications received and kept (first time each offset was seen).
    pub received: u64,
    /// Offsets never received.
    pub missing: u64,
    /// Offsets received again and dropped, as the protocol tells clients to.
    pub repeats: u64,
    /// Reconnections the clients chose (churn).
    pub churned: u64,
    /// Connections that dropped under a client (the killed instance's).
    pub dropped: u64,
    /// Subscribes with `since` answered `recovered:true`.
    pub recovered: u64,
    /// Subscribes with `since` answered `recovered:false`.
    pub unrecovered: u64,
    /// Failed connection attempts (retried).
    pub connect_failures: u64,
    /// Subscribes without `since`: reconnections before the room had any notification,
    /// when there is no position to give.
    pub fresh: u64,
    /// Each instance's resident memory (KiB) when it had settled (a quarter of the way
    /// through for the first two; for the restarted one, a minute after it came back) and
    /// at the end.
    pub rss_kib: Vec<(String, u64, u64)>,
    /// Every instance's resident memory (KiB), sampled every [`RSS_EVERY`] from the first
    /// publish: seconds, one figure per instance (0 while down), and the clients each
    /// instance held then.
    pub rss_series: Vec<Sample>,
}

/// One sample of the instances: seconds since the first publish, resident memory (KiB)
/// and clients held, per instance.
pub type Sample = (f64, Vec<u64>, Vec<u64>);

impl Report {
    /// Whether every client ended with every notification of its room exactly once.
    pub fn whole(&self) -> bool {
        self.missing == 0 && self.unrecovered == 0 && self.publish_errors == 0
    }
}

/// The instances' names; the last one is killed midway.
const INSTANCES: [&str; 3] = ["a", "b", "c"];
/// How long the clients have, after the last publish, to hold everything.
const SETTLE: Duration = Duration::from_secs(30);
/// How often the instances' memory is sampled.
pub const RSS_EVERY: Duration = Duration::from_secs(30);
/// How long the restarted instance takes its share of clients before its memory counts
/// as settled.
const REBORN_SETTLES: Duration = Duration::from_secs(60);

fn room_name(i: usize, rooms: usize) -> String {
    format!("soak-{}", i % rooms)
}

/// Runs the soak and reports it.
pub async fn run(settings: &Settings) -> Report {
    let single;
    let cluster;
    let env: Vec<(&str, String)> = if settings.cluster {
        cluster = Some(herald::testing::RedisCluster::start());
        vec![(
            "HERALD_REDIS_CLUSTER",
            cluster.as_ref().map(|c| c.list()).unwrap_or_default(),
        )]
    } else {
        single = herald::testing::Server::redis();
        vec![("HERALD_REDIS_URL", single.url())]
    };
    let start_instance = |name: &'static str| {
        let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        vars.extend([("HERALD_STORE", "redis"), ("HERALD_INSTANCE_ID", name)]);
        async move { procs::gateway(&vars).await }
    };
    let mut instances: Vec<Proc> = Vec::new();
    for name in INSTANCES {
        instances.push(start_instance(name).await);
    }
    let shared = Arc::new(Shared::new(instances.iter().map(|p| p.addr).collect()));
    let held: Arc<Vec<Mutex<Held>>> =
        Arc::new((0..settings.clients).map(|_| Mutex::default()).collect());
    let mean_churn = if settings.churn_per_second > 0.0 {
        Duration::from_secs_f64(settings.clients as f64 / settings.churn_per_second)
    } else {
        Duration::MAX / 4
    };
    let mut clients = Vec::with_capacity(settings.clients);
    for i in 0..settings.clients {
        let (shared, held) = (shared.clone(), held.clone());
        let room = room_name(i, settings.rooms);
        clients.push(tokio::spawn(async move {
            client(i, room, shared, held, mean_churn).await;
        }));
    }
    // Everyone in before the first publish.
    let opened = Instant::now();
    while held.iter().any(|h| lock(h).start.is_none()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            opened.elapsed() < Duration::from_secs(600),
            "clients did not all subscribe within 10 minutes"
        );
    }
    eprintln!(
        "soak: {} clients in after {:.1} s; publishing for {:.0} s",
        settings.clients,
        opened.elapsed().as_secs_f64(),
        settings.duration.as_secs_f64()
    );
    let pids: Arc<Mutex<Vec<u32>>> =
        Arc::new(Mutex::new(instances.iter().map(Proc::pid).collect()));
    let series: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampling = {
        let (pids, series, shared) = (pids.clone(), series.clone(), shared.clone());
        tokio::spawn(async move {
            let began = Instant::now();
            let mut stopped = shared.stopped();
            while !shared.is_stopped() {
                let pids = lock(&pids).clone();
                let rss = pids
                    .iter()
                    .map(|pid| {
                        if *pid == 0 {
                            0
                        } else {
                            procs::rss_kib(&pid.to_string())
                        }
                    })
                    .collect();
                let held = shared.held_by();
                lock(&series).push((began.elapsed().as_secs_f64(), rss, held));
                let _ = tokio::time::timeout(RSS_EVERY, stopped.wait_for(|stop| *stop)).await;
            }
        })
    };

    // The publisher goes through the first instance, which is never killed.
    let finals: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let publishing_began = Instant::now();
    let publishing = {
        let (finals, settings) = (finals.clone(), settings.clone());
        let addr = instances[0].addr;
        tokio::spawn(async move { publish(addr, &settings, &finals).await })
    };
    // Midway, the last instance dies and comes back after a while.
    tokio::time::sleep(settings.duration / 2).await;
    let victim = instances.pop().expect("three instances");
    let victim_addr = victim.addr;
    shared.live().retain(|(_, a)| *a != victim_addr);
    drop(victim); // killed (SIGKILL, as the process is dropped)
    lock(&pids)[2] = 0;
    let reborn_at = Instant::now() + settings.down;
    eprintln!("soak: instance c killed");
    tokio::time::sleep(settings.down).await;
    let reborn = start_instance(INSTANCES[2]).await;
    shared.live().push((2, reborn.addr));
    lock(&pids)[2] = reborn.pid();
    instances.push(reborn);
    eprintln!("soak: instance c started again");
    let (publishes, publish_errors) = publishing.await.expect("the publisher finishes");

    // No more churn; everyone gets the chance to catch up.
    shared.calm();
    let finals = lock(&finals).clone();
    let settled = Instant::now();
    let behind = |held: &[Mutex<Held>]| {
        (0..held.len())
            .filter(|i| {
                let last = finals
                    .get(&room_name(*i, settings.rooms))
                    .copied()
                    .unwrap_or(0);
                lock(&held[*i]).contiguous < last
            })
            .count()
    };
    while behind(&held) > 0 && settled.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    shared.stop();
    for client in clients {
        let _ = client.await;
    }
    let _ = sampling.await;
    let mut report = Report {
        clients: settings.clients,
        seconds: settings.duration.as_secs_f64(),
        publishes,
        publish_errors,
        ..Report::default()
    };
    for (i, h) in held.iter().enumerate() {
        let h = lock(h);
        let last = finals
            .get(&room_name(i, settings.rooms))
            .copied()
            .unwrap_or(0);
        report.expected += last.saturating_sub(h.start.unwrap_or(last));
        report.missing += h.missing(last);
    }
    let c = shared.counters();
    report.received = c.received.load(Ordering::Relaxed);
    report.repeats = c.repeats.load(Ordering::Relaxed);
    report.churned = c.churned.load(Ordering::Relaxed);
    report.dropped = c.dropped.load(Ordering::Relaxed);
    report.recovered = c.recovered.load(Ordering::Relaxed);
    report.unrecovered = c.unrecovered.load(Ordering::Relaxed);
    report.connect_failures = c.connect_failures.load(Ordering::Relaxed);
    report.fresh = c.fresh.load(Ordering::Relaxed);
    let series = lock(&series).clone();
    let reborn_settled = (reborn_at + REBORN_SETTLES - publishing_began).as_secs_f64();
    for (n, name) in INSTANCES.iter().enumerate() {
        let from = if n == 2 {
            reborn_settled
        } else {
            settings.duration.as_secs_f64() / 4.0
        };
        let window: Vec<u64> = series
            .iter()
            .filter(|(at, _, _)| *at >= from)
            .map(|(_, rss, _)| rss[n])
            .filter(|rss| *rss > 0)
            .collect();
        if let (Some(first), Some(last)) = (window.first(), window.last()) {
            report.rss_kib.push(((*name).to_owned(), *first, *last));
        }
    }
    report.rss_series = series;
    report
}

/// Publishes to the rooms in turn at the settings' rate for their duration; answers how
/// many went through and how many failed, and leaves each room's last offset in `finals`.
async fn publish(
    addr: SocketAddr,
    settings: &Settings,
    finals: &Mutex<HashMap<String, u64>>,
) -> (u64, u64) {
    let mut http = http_connection(addr).await;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(
        1.0 / settings.publishes_per_second.max(0.001),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ends = Instant::now() + settings.duration;
    let (mut done, mut failed) = (0u64, 0u64);
    let mut k = 0usize;
    while Instant::now() < ends {
        tick.tick().await;
        let room = room_name(k, settings.rooms);
        let body = json!({"room": room, "data": {"k": k}}).to_string();
        k += 1;
        let Ok(answer) = exchange(&mut http, INVOKE_PATH, &body).await else {
            failed += 1;
            http = http_connection(addr).await;
            continue;
        };
        let offset = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v["offset"].as_u64());
        match offset {
            Some(offset) if answer.status == 200 && !answer.function_error => {
                done += 1;
                let mut finals = lock(finals);
                let last = finals.entry(room).or_default();
                *last = (*last).max(offset);
            }
            _ => {
                failed += 1;
                eprintln!(
                    "soak: publish failed ({}): {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                );
            }
        }
    }
    (done, failed)
}

/// Prints the report.
pub fn print(report: &Report) {
    println!(
        "soak: {} clients, {:.0} s, {} publishes ({} failed)",
        report.clients, report.seconds, report.publishes, report.publish_errors
    );
    println!(
        "  notifications: expected {}, received {}, missing {}, repeats dropped {}",
        report.expected, report.received, report.missing, report.repeats
    );
    println!(
        "  reconnections: churned {}, dropped {} (killed instance), recovered {}, not recovered {}, \
         without a position yet {}, failed connects {}",
        report.churned,
        report.dropped,
        report.recovered,
        report.unrecovered,
        report.fresh,
        report.connect_failures
    );
    for (name, first, last) in &report.rss_kib {
        println!(
            "  instance {name}: RSS {first} KiB settled, {last} KiB at the end ({:+.1} %)",
            (*last as f64 - *first as f64) * 100.0 / (*first).max(1) as f64
        );
    }
    println!(
        "  {}",
        if report.whole() {
            "every client holds every notification of its room exactly once"
        } else {
            "NOT WHOLE"
        }
    );
}
