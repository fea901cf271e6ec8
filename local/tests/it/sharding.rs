//! Sharded fan-out through `herald-local`: above `HERALD_SHARD_THRESHOLD` recipients a
//! publish answers at once with the pages it queued, and in-process workers post each page
//! (with injected 429s retried, 410s forgotten) under `HERALD_POST_BUDGET_PER_SECOND`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald::store::{Connection, ConnectionStore, RedisStore};
use herald_local::Faults;
use serde_json::{Value, json};

use crate::common::{self, Client, Gateway, SharedRedis};

/// Notifications each member got within `wait` after the first, in order.
async fn drain(client: &mut Client, wait: Duration) -> Vec<Value> {
    let mut got = vec![client.recv().await];
    while let Ok(Some(Ok(message))) = tokio::time::timeout(wait, client.ws.next()).await {
        if let Ok(text) = message.to_text() {
            got.push(serde_json::from_str(text).unwrap());
        }
    }
    got
}

#[tokio::test]
async fn a_publish_above_the_threshold_answers_its_pages_and_reaches_each_member_once() {
    let mut settings = common::settings_with(&[("HERALD_SHARD_THRESHOLD", "10")]);
    settings.faults = Faults::new(0.3, 0.0, Duration::ZERO).unwrap();
    let gw = Gateway::start_with(settings).await;
    let mut at_threshold = gw.members(10, "small").await;
    let answer = gw
        .invoke(json!({"room": "small", "data": 0}))
        .await
        .unwrap();
    assert_eq!(
        answer["delivered"], 10,
        "at the threshold, delivered directly: {answer}"
    );
    assert!(answer.get("queued_pages").is_none(), "{answer}");
    for client in &mut at_threshold {
        assert_eq!(client.recv().await["data"], 0);
    }

    let mut members = gw.members(11, "big").await;
    let answer = gw.invoke(json!({"room": "big", "data": 1})).await.unwrap();
    assert_eq!(answer["queued_pages"], 1, "{answer}");
    assert!(
        answer["id"].is_string() && answer["offset"].is_u64(),
        "{answer}"
    );
    assert!(
        answer.get("delivered").is_none(),
        "nothing claimed yet: {answer}"
    );
    for client in &mut members {
        let got = drain(client, Duration::from_millis(300)).await;
        assert_eq!(got.len(), 1, "exactly once: {got:?}");
        assert_eq!(got[0]["data"], 1);
        assert_eq!(got[0]["id"], answer["id"]);
        assert_eq!(got[0]["offset"], answer["offset"]);
    }

    // Listed connections are counted as listed.
    let ids: Vec<&str> = members.iter().map(|c| c.id.as_str()).collect();
    let answer = gw
        .invoke(json!({"connections": ids, "data": 2}))
        .await
        .unwrap();
    assert_eq!(answer["queued_pages"], 1, "{answer}");
    for client in &mut members {
        assert_eq!(client.recv().await["data"], 2);
    }
}

#[tokio::test]
async fn the_binary_takes_the_threshold_and_budget_as_flags_and_refuses_bad_ones() {
    for (flag, value) in [
        ("--shard-threshold", "-1"),
        ("--post-budget-per-second", "lots"),
    ] {
        let mut binary = common::binary();
        binary.args(["--port", "0", &format!("{flag}={value}")]);
        let stderr = common::refused_start(binary).await;
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
    let help = common::binary().arg("--help").output().await.unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("HERALD_SHARD_THRESHOLD"), "{help}");
    assert!(help.contains("HERALD_POST_BUDGET_PER_SECOND"), "{help}");
}

/// Members with a socket: with the rest of the 20,000 as records whose instance is gone,
/// the test and the gateway each stay under this machine's 20,000 descriptors.
const LIVE: usize = 15_000;
/// Members whose records outlived their instance: each post to one answers 410.
const STALE: usize = 5_000;
/// Posts a second for the whole deployment.
const BUDGET: usize = 4_000;

/// A field's number in a log line (`name=12`).
fn field(line: &str, name: &str) -> u64 {
    let at = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("{name} in {line}"));
    line[at + name.len() + 2..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {line}"))
}

#[tokio::test]
async fn twenty_thousand_members_get_one_notification_each_in_pages_under_the_budget() {
    let redis = SharedRedis::single();
    let SharedRedis::Single(server) = &redis else {
        unreachable!("one server");
    };
    let mut env: Vec<(&str, String)> = redis.vars();
    env.push(("HERALD_SHARD_THRESHOLD", "1000".into()));
    env.push(("HERALD_POST_BUDGET_PER_SECOND", BUDGET.to_string()));
    // One post in fifty throttled: retried with backoff (each retry taken from the budget
    // too); all five attempts of any of 20,000 posts throttled has a chance of 6 in 100,000.
    env.push(("HERALD_FAULT_THROTTLE", "0.02".into()));
    env.push(("HERALD_MAX_CONNECTIONS_PER_USER", "0".into()));
    // Records outlive the test between heartbeats: renewing 15,000 of them while this
    // process connects as fast as it can is not what is tested here.
    env.push(("HERALD_HEARTBEAT_MS", "60000".into()));
    env.push(("RUST_LOG", "warn,herald::handlers::deliver=info".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_child, addr, log) = common::spawn_binary_logged(&[], &env).await;
    let gw = Arc::new(Gateway::at(addr));

    // Records of an instance that died without its `$disconnect`s.
    let store: Arc<dyn ConnectionStore> =
        Arc::new(RedisStore::connect(&server.url()).await.unwrap());
    let room = herald::protocol::RoomName::parse("crowd").unwrap();
    let stale: Vec<Connection> = (0..STALE)
        .map(|_| Connection {
            instance: Some("departed".into()),
            ..herald::store::suite::connection("stale")
        })
        .collect();
    futures::stream::iter(&stale)
        .for_each_concurrent(64, |c| {
            let (store, room) = (store.clone(), room.clone());
            async move {
                store.add(c).await.unwrap();
                store.join(&c.id, &room).await.unwrap();
            }
        })
        .await;
    let mut members: Vec<Client> = futures::stream::iter(0..LIVE)
        .map(|i| {
            let gw = gw.clone();
            async move {
                let mut client = gw.connect(&format!("m{i}"), &["crowd"], &[]).await;
                client.subscribe("crowd").await;
                client
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;

    let started = Instant::now();
    let answer = gw
        .invoke(json!({"room": "crowd", "data": "all"}))
        .await
        .unwrap();
    let pages = (LIVE + STALE).div_ceil(500);
    assert_eq!(answer["queued_pages"], pages, "{answer}");
    // Read with a patience of its own: this process reads 15,000 sockets more slowly
    // than the gateway writes them.
    futures::stream::iter(members.iter_mut())
        .for_each_concurrent(LIVE, |client| async move {
            let got = tokio::time::timeout(Duration::from_secs(120), client.ws.next())
                .await
                .expect("every member is reached")
                .expect("the socket is open")
                .expect("a frame");
            let got: Value = serde_json::from_str(got.to_text().unwrap()).unwrap();
            assert_eq!(got["data"], "all");
        })
        .await;
    // Exactly once: nothing more arrives anywhere.
    futures::stream::iter(members.iter_mut())
        .for_each_concurrent(LIVE, |client| {
            client.expect_nothing(Duration::from_millis(500))
        })
        .await;

    // What the workers say of each page: every member counted once, the stale ones gone.
    let done: Vec<(Instant, String)> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, line)| line.contains("page delivered"))
        .cloned()
        .collect();
    assert_eq!(done.len(), pages, "one line per page");
    let sum = |name| done.iter().map(|(_, l)| field(l, name)).sum::<u64>();
    assert_eq!(sum("delivered"), LIVE as u64);
    assert_eq!(sum("gone"), STALE as u64);
    assert_eq!(sum("failed"), 0);
    for c in &stale {
        assert_eq!(store.get(&c.id).await.unwrap(), None, "{} forgotten", c.id);
    }
    // The budget held: 20,000 posts (and the retries) took at least 20,000 / 4,000
    // seconds, less the one window a first grant may start at the end of.
    let took = done.iter().map(|(at, _)| *at).max().unwrap() - started;
    let rate = (LIVE + STALE) as f64 / took.as_secs_f64();
    assert!(
        rate <= BUDGET as f64 * 1.05,
        "{rate:.0} posts a second over {took:?}"
    );
}
