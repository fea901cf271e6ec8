//! Several `herald-local` processes on one Redis, and on a 3-master Redis Cluster (each
//! started by the test on free ports): delivery exactly once whichever instance is asked,
//! one Redis message per instance, `@connections` across instances, an instance killed with
//! SIGKILL, Redis restarted or a master restarted empty (and never a short delivery
//! answered as a success while the instances re-register). Every case runs on both.

use crate::common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_sdk_apigatewaymanagement::primitives::Blob;
use common::{Client, Gateway, PATIENCE, SECRET, SharedRedis};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One `herald-local` process on the shared Redis.
struct Instance {
    gateway: Gateway,
    child: Child,
}

/// The heartbeat the tests run with: short, so an expiry is seen within a test.
const HEARTBEAT_MS: u64 = 300;

impl Instance {
    async fn spawn(redis: &SharedRedis, name: &str, heartbeat_ms: u64) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald-local"))
            .args([
                "--port",
                "0",
                "--instance-id",
                name,
                "--heartbeat-ms",
                &heartbeat_ms.to_string(),
            ])
            .env_clear()
            .envs(redis.vars())
            .env(
                "HERALD_JWT_SECRET",
                String::from_utf8(SECRET.to_vec()).unwrap(),
            )
            .env("HERALD_MAX_CONNECTIONS_PER_USER", "0")
            // Rooms delivered by the instances hosting them, the path these tests measure
            // at any size (page jobs have tests of their own, in `sharding`).
            .env("HERALD_SHARD_THRESHOLD", "0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("herald-local starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr: SocketAddr = loop {
            let line = tokio::time::timeout(PATIENCE, lines.next_line())
                .await
                .expect("start-up output in time")
                .unwrap()
                .expect("the address is printed");
            if let Some(rest) = line.strip_prefix("herald-local listening on ws://") {
                break rest.trim_end_matches("/local").parse().unwrap();
            }
        };
        // Keep reading, as a terminal would.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            gateway: Gateway::at(addr),
            child,
        }
    }

    fn sigkill(&mut self) {
        self.signal("-KILL");
    }

    fn signal(&mut self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    }
}

async fn cluster(redis: &SharedRedis, n: usize) -> Vec<Instance> {
    cluster_beating(redis, n, HEARTBEAT_MS).await
}

async fn cluster_beating(redis: &SharedRedis, n: usize, heartbeat_ms: u64) -> Vec<Instance> {
    let mut instances = Vec::new();
    for i in 0..n {
        instances.push(Instance::spawn(redis, &format!("i{i}"), heartbeat_ms).await);
    }
    instances
}

/// `per_instance` clients on each instance, all subscribed to `room`.
async fn members(instances: &[Instance], per_instance: usize, room: &str) -> Vec<Vec<Client>> {
    let mut all = Vec::new();
    for (i, instance) in instances.iter().enumerate() {
        let mut here = Vec::new();
        for c in 0..per_instance {
            let mut client = instance
                .gateway
                .connect(&format!("user-{i}-{c}"), &["*"], &[])
                .await;
            client.subscribe(room).await;
            here.push(client);
        }
        all.push(here);
    }
    all
}

async fn expect_once(clients: &mut [Vec<Client>], data: serde_json::Value) {
    for client in clients.iter_mut().flatten() {
        assert_eq!(client.recv().await["data"], data, "client {}", client.id);
    }
    for client in clients.iter_mut().flatten() {
        client.expect_nothing(Duration::from_millis(30)).await;
    }
}

async fn every_member_receives_each_publish_once_whichever_instance_is_asked(redis: SharedRedis) {
    let instances = cluster(&redis, 3).await;
    let mut clients = members(&instances, 4, "orders").await;
    let mut outsider = instances[1].gateway.connect("outsider", &[], &[]).await;

    for (n, instance) in instances.iter().enumerate() {
        let answer = instance
            .gateway
            .invoke(json!({"room":"orders","data":n}))
            .await
            .unwrap();
        assert_eq!(answer["delivered"], 12, "via instance {n}: {answer}");
        assert_eq!(answer["gone"], 0);
        expect_once(&mut clients, json!(n)).await;
    }
    outsider.expect_nothing(Duration::from_millis(50)).await;

    // A user with connections on two instances.
    let mut alice_a = instances[0].gateway.connect("alice", &[], &[]).await;
    let mut alice_c = instances[2].gateway.connect("alice", &[], &[]).await;
    let answer = instances[1]
        .gateway
        .invoke(json!({"user":"alice","data":"hi"}))
        .await
        .unwrap();
    assert_eq!(answer["delivered"], 2);
    assert_eq!(alice_a.recv().await["data"], "hi");
    assert_eq!(alice_c.recv().await["data"], "hi");

    let answer = instances[2]
        .gateway
        .invoke(json!({"broadcast":true,"data":"all"}))
        .await
        .unwrap();
    assert_eq!(answer["delivered"], 15);
    expect_once(&mut clients, json!("all")).await;
    for c in [&mut outsider, &mut alice_a, &mut alice_c] {
        assert_eq!(c.recv().await["data"], "all");
    }
}

async fn a_room_publish_costs_one_redis_message_per_instance_with_members(redis: SharedRedis) {
    let instances = cluster(&redis, 3).await;
    // Members on instances 1 and 2 only; the publish goes through instance 0.
    let mut clients = members(&instances[1..], 30, "big").await;
    // PUBLISH on one server, SPUBLISH on a cluster, counted on every node.
    let publishes = async || -> u64 {
        let mut calls = 0;
        for url in redis.urls() {
            let info = redis.info(&url, "commandstats").await;
            calls += info
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("cmdstat_publish:calls=")
                        .or_else(|| l.strip_prefix("cmdstat_spublish:calls="))
                })
                .map(|rest| rest.split(',').next().unwrap().parse::<u64>().unwrap())
                .sum::<u64>();
        }
        calls
    };
    let before = publishes().await;
    let answer = instances[0]
        .gateway
        .invoke(json!({"room":"big","data":1}))
        .await
        .unwrap();
    let after = publishes().await;
    assert_eq!(answer["delivered"], 60);
    // One request to each of the two instances, and each one's reply.
    assert_eq!(after - before, 4);
    expect_once(&mut clients, json!(1)).await;
}

async fn a_room_publish_costs_the_same_redis_commands_at_ten_members_as_at_three_thousand(
    redis: SharedRedis,
) {
    // Thousands of sockets on each side: the test and the instances it starts.
    let limit = rlimit::increase_nofile_limit(20_000).unwrap_or(0);
    assert!(
        limit >= 8_000,
        "open files limited to {limit}: raise `ulimit -n`"
    );
    // No heartbeat within the test, so Redis counts only what the publishes cost.
    let instances = cluster_beating(&redis, 3, 600_000).await;
    // Each node counts the INFO that asks it.
    let asking = redis.urls().len() as u64;
    let mut cost = Vec::new();
    for (room, per_instance) in [("small", 5), ("big", 1_500)] {
        // Members on instances 1 and 2; the publish goes through instance 0.
        let mut clients = members(&instances[1..], per_instance, room).await;
        // The first publish also loads the scripts and starts the room's history.
        for n in [1, 2] {
            let before = redis.commands_run().await;
            let answer = instances[0]
                .gateway
                .invoke(json!({"room": room, "data": n}))
                .await
                .unwrap();
            let after = redis.commands_run().await;
            assert_eq!(answer["delivered"], 2 * per_instance, "{answer}");
            for client in clients.iter_mut().flatten() {
                assert_eq!(client.recv().await["data"], n, "client {}", client.id);
            }
            if n == 2 {
                cost.push(after - before - asking);
            }
        }
    }
    assert_eq!(
        cost[0], cost[1],
        "Redis commands for a publish to 10 members and to 3,000: {cost:?}"
    );
}

async fn a_frozen_instances_members_count_as_failed_not_delivered_nor_forgotten(
    redis: SharedRedis,
) {
    let mut instances = cluster_beating(&redis, 3, 600_000).await;
    let mut clients = members(&instances, 3, "orders").await;
    instances[2].signal("-STOP");
    let started = Instant::now();
    let answer = instances[0]
        .gateway
        .invoke(json!({"room":"orders","data":"frozen"}))
        .await
        .unwrap();
    let waited = started.elapsed();
    instances[2].signal("-CONT");
    assert_eq!(
        (&answer["delivered"], &answer["gone"], &answer["failed"]),
        (&json!(6), &json!(0), &json!(3)),
        "{answer}"
    );
    assert!(
        waited >= herald_local::ROOM_REQUEST_TIMEOUT,
        "it waited for the frozen instance: {waited:?}"
    );
    for client in clients[..2].iter_mut().flatten() {
        assert_eq!(client.recv().await["data"], "frozen");
    }
    // Not forgotten: once it thaws, its members are reached again.
    let answer = instances[1]
        .gateway
        .invoke(json!({"room":"orders","data":"thawed"}))
        .await
        .unwrap();
    assert_eq!(answer["delivered"], 9, "{answer}");
}

async fn the_connections_api_of_any_instance_reaches_any_connection(redis: SharedRedis) {
    let instances = cluster(&redis, 2).await;
    let mut client = instances[1].gateway.connect("bob", &[], &[]).await;
    let api = instances[0].gateway.management();

    api.post_to_connection()
        .connection_id(&client.id)
        .data(Blob::new(r#"{"via":"instance 0"}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(client.recv().await, json!({"via":"instance 0"}));

    let info = api
        .get_connection()
        .connection_id(&client.id)
        .send()
        .await
        .unwrap();
    assert_eq!(info.identity().unwrap().source_ip(), Some("127.0.0.1"));

    api.delete_connection()
        .connection_id(&client.id)
        .send()
        .await
        .unwrap();
    assert_eq!(client.closed().await.0, 1000);
    let mut gone = false;
    for _ in 0..50 {
        match api.get_connection().connection_id(&client.id).send().await {
            Err(e) => {
                assert!(e.into_service_error().is_gone_exception());
                gone = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(gone);
    let err = api
        .post_to_connection()
        .connection_id("AAAAAAAAAAAAAAA=")
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_gone_exception());
}

async fn a_killed_instance_does_not_stop_the_others(redis: SharedRedis) {
    let mut instances = cluster(&redis, 3).await;
    let mut clients = members(&instances, 5, "orders").await;
    let _lonely = instances[2].gateway.connect("lonely", &[], &[]).await;
    instances[2].sigkill();
    let _ = instances[2].child.wait().await;
    clients.pop(); // those sockets died with their instance

    let started = Instant::now();
    let answer = instances[0]
        .gateway
        .invoke(json!({"room":"orders","data":"after"}))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(answer["delivered"], 10, "{answer}");
    assert_eq!(answer["gone"], 5, "{answer}");
    expect_once(&mut clients, json!("after")).await;

    // The dead instance's connections were forgotten on the first failed routing.
    let answer = instances[1]
        .gateway
        .invoke(json!({"room":"orders","data":"again"}))
        .await
        .unwrap();
    assert_eq!(
        (answer["delivered"].clone(), answer["gone"].clone()),
        (json!(10), json!(0))
    );
    expect_once(&mut clients, json!("again")).await;

    // A connection no publish touched expires with its record: three missed heartbeats.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let answer = instances[0]
        .gateway
        .invoke(json!({"user":"lonely","data":1}))
        .await
        .unwrap();
    assert_eq!(
        (answer["delivered"].clone(), answer["gone"].clone()),
        (json!(0), json!(0))
    );
}

async fn redis_down_then_back_keeps_sockets_and_restores_service(mut redis: SharedRedis) {
    let instances = cluster(&redis, 2).await;
    let mut clients = members(&instances, 3, "orders").await;

    redis.stop();
    // Sockets stay open, what needs no Redis still works, what needs it fails fast.
    let client = &mut clients[0][0];
    assert_eq!(client.ask(json!({"action":"ping"})).await["type"], "pong");
    let started = Instant::now();
    let reply = client
        .ask(json!({"action":"subscribe","room":"other"}))
        .await;
    assert_eq!(reply["code"], "internal", "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let error = instances[0]
        .gateway
        .invoke(json!({"room":"orders","data":"lost"}))
        .await
        .unwrap_err();
    assert_eq!(error["errorType"], "Unavailable", "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    redis.restart(); // empty: every record and membership is gone
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = instances[1]
            .gateway
            .invoke(json!({"room":"orders","data":"back"}))
            .await;
        if let Ok(answer) = &answer
            && answer["delivered"] == 6
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service not restored: {answer:?}"
        );
        // Drain anything a partial restore delivered, then try again.
        for c in clients.iter_mut().flatten() {
            while let Ok(Some(Ok(_))) = tokio::time::timeout(
                Duration::from_millis(5),
                futures::StreamExt::next(&mut c.ws),
            )
            .await
            {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    expect_once(&mut clients, json!("back")).await;
}

/// Publishes `payload` through `instance` until it succeeds: every failure must be
/// `Unavailable`, and the success must reach `expected` (a short delivery answered as a
/// success is the lie this guards against). Answers how many attempts were refused.
async fn publish_until_restored(
    instance: &Instance,
    payload: serde_json::Value,
    expected: usize,
    within: Duration,
) -> usize {
    let started = Instant::now();
    let mut refused = 0;
    loop {
        match instance.gateway.invoke(payload.clone()).await {
            Ok(answer) => {
                assert_eq!(
                    answer["delivered"], expected,
                    "after {refused} refusals, a short delivery answered as a success: {answer}"
                );
                return refused;
            }
            Err(error) => assert_eq!(error["errorType"], "Unavailable", "{error}"),
        }
        refused += 1;
        assert!(
            started.elapsed() < within,
            "not restored within {within:?} ({refused} refusals)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn after_redis_restarts_empty_publishes_are_refused_until_every_instance_re_registered(
    mut redis: SharedRedis,
) {
    // A heartbeat far longer than the test: the instances must re-register on their own
    // when the connection comes back, not on the next heartbeat.
    let instances = cluster_beating(&redis, 2, 60_000).await;
    let mut clients = members(&instances, 5, "orders").await;
    let mut bob = instances[1].gateway.connect("bob", &[], &[]).await;

    redis.restart(); // empty: every record, membership and marker is gone
    let payload = json!({"room":"orders","data":"back"});
    publish_until_restored(&instances[0], payload, 10, Duration::from_secs(10)).await;
    expect_once(&mut clients, json!("back")).await;

    // A user held by the other instance, and a broadcast, are whole too.
    let payload = json!({"user":"bob","data":"hi"});
    publish_until_restored(&instances[0], payload, 1, Duration::from_secs(1)).await;
    assert_eq!(bob.recv().await["data"], "hi");
    let payload = json!({"broadcast":true,"data":"all"});
    publish_until_restored(&instances[1], payload, 11, Duration::from_secs(1)).await;
    expect_once(&mut clients, json!("all")).await;
    assert_eq!(bob.recv().await["data"], "all");
}

async fn after_a_flush_the_next_publish_is_refused_not_short_and_every_instance_re_registers(
    redis: SharedRedis,
) {
    // A heartbeat far longer than the test, and a flush drops no connection: only the reads
    // of recipients can notice it.
    let instances = cluster_beating(&redis, 2, 60_000).await;
    let mut clients = members(&instances, 5, "orders").await;
    let mut bob = instances[1].gateway.connect("bob", &[], &[]).await;

    redis.flush().await;
    let payload = json!({"room":"orders","data":"back"});
    let refused = publish_until_restored(&instances[0], payload, 10, Duration::from_secs(10)).await;
    assert!(
        refused >= 1,
        "the first publish after the flush was refused"
    );
    expect_once(&mut clients, json!("back")).await;

    // The other instance re-registered too (told by the first): its user is found.
    let payload = json!({"user":"bob","data":"hi"});
    publish_until_restored(&instances[1], payload, 1, Duration::from_secs(5)).await;
    assert_eq!(bob.recv().await["data"], "hi");
    let payload = json!({"broadcast":true,"data":"all"});
    publish_until_restored(&instances[1], payload, 11, Duration::from_secs(1)).await;
    expect_once(&mut clients, json!("all")).await;
    assert_eq!(bob.recv().await["data"], "all");
}

async fn an_instance_waits_for_a_peer_that_has_not_re_registered_yet(mut redis: SharedRedis) {
    let mut instances = cluster_beating(&redis, 2, 60_000).await;
    let mut clients = members(&instances, 5, "orders").await;

    // Instance 1 is frozen across the restart: it cannot put its five sockets back.
    instances[1].signal("-STOP");
    redis.restart();
    let frozen = Instant::now();
    // Well inside the grace a silent peer gets before it counts as gone.
    while frozen.elapsed() < Duration::from_secs(1) {
        let answer = instances[0]
            .gateway
            .invoke(json!({"room":"orders","data":"early"}))
            .await;
        let error = answer.expect_err("instance 1's sockets are not registered yet");
        assert_eq!(error["errorType"], "Unavailable", "{error}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in &mut clients[0] {
        c.expect_nothing(Duration::from_millis(10)).await;
    }
    instances[1].signal("-CONT");
    let payload = json!({"room":"orders","data":"whole"});
    publish_until_restored(&instances[0], payload, 10, Duration::from_secs(10)).await;
    expect_once(&mut clients, json!("whole")).await;
}

/// On a Redis Cluster, one master restarted empty loses the records in its slots only: the
/// instances notice the dropped connection, refuse what lists recipients until each has
/// put its sockets back, and never answer a short delivery as a success; each master in
/// turn.
#[tokio::test]
async fn a_cluster_master_restarted_empty_is_refused_until_restored_never_short() {
    let mut redis = SharedRedis::cluster();
    // A heartbeat far longer than the test: the dropped connection is what tells.
    let instances = cluster_beating(&redis, 2, 60_000).await;
    let mut clients = members(&instances, 5, "orders").await;
    let mut bob = instances[1].gateway.connect("bob", &[], &[]).await;
    let SharedRedis::Cluster(nodes) = &mut redis else {
        unreachable!("a cluster was started")
    };
    for master in 0..herald::testing::CLUSTER_MASTERS {
        nodes.stop(master);
        nodes.restart(master);
        let payload = json!({"room":"orders","data":master});
        publish_until_restored(&instances[0], payload, 10, Duration::from_secs(15)).await;
        expect_once(&mut clients, json!(master)).await;
        let payload = json!({"user":"bob","data":master});
        publish_until_restored(&instances[0], payload, 1, Duration::from_secs(5)).await;
        assert_eq!(bob.recv().await["data"], master);
    }
}

/// Presence across two instances: a socket asks, the Invoke API of the other instance
/// answers the same, a poll reader waiting counts while it waits, and the members of an
/// instance killed drop out within a record's lifetime (three missed heartbeats).
async fn presence_counts_every_instances_members_and_forgets_a_killed_ones(redis: SharedRedis) {
    let mut instances = cluster(&redis, 2).await;
    let mut ann = instances[0].gateway.connect("ann", &["lobby"], &[]).await;
    ann.subscribe("lobby").await;
    let mut bob = instances[1].gateway.connect("bob", &["lobby"], &[]).await;
    bob.subscribe("lobby").await;

    let answer = ann
        .ask(json!({"action": "presence", "room": "lobby"}))
        .await;
    assert_eq!(answer["type"], "presence", "{answer}");
    assert_eq!(answer["count"], 2, "{answer}");
    let mut users: Vec<&str> = answer["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["ann", "bob"]);
    let invoked = instances[1]
        .gateway
        .invoke(json!({"presence": "lobby"}))
        .await
        .unwrap();
    assert_eq!(invoked["count"], 2, "{invoked}");
    assert_eq!(invoked.get("type"), None, "{invoked}");

    // A poll reader on the first instance is a member while it waits.
    let token = instances[0].gateway.token("dee", &["lobby"], &[]);
    let addr = instances[0].gateway.addr;
    let reader = tokio::spawn(async move {
        common::http_get(
            addr,
            &format!("/local/poll?rooms=lobby&wait=3&token={token}"),
        )
        .await
    });
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = ann
            .ask(json!({"action": "presence", "room": "lobby"}))
            .await;
        if answer["count"] == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reader never counted: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = reader.await.unwrap();
    assert_eq!(status, 200);

    let refused = ann
        .ask(json!({"action": "presence", "room": "elsewhere"}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    instances[1].sigkill();
    let _ = instances[1].child.wait().await;
    drop(bob);
    let deadline = Instant::now() + Duration::from_millis(HEARTBEAT_MS * 3) + PATIENCE;
    loop {
        let answer = ann
            .ask(json!({"action": "presence", "room": "lobby"}))
            .await;
        if answer["count"] == 1 {
            assert_eq!(answer["members"][0]["user"], "ann", "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "bob still counted: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn presence_on_one_redis() {
    presence_counts_every_instances_members_and_forgets_a_killed_ones(SharedRedis::single()).await;
}

/// Each case above, on one Redis server and on a 3-master Redis Cluster.
macro_rules! on_one_server_and_on_a_cluster {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn single() {
                    super::$case(super::SharedRedis::single()).await;
                }

                #[tokio::test]
                async fn cluster() {
                    super::$case(super::SharedRedis::cluster()).await;
                }
            }
        )*
    };
}

on_one_server_and_on_a_cluster!(
    every_member_receives_each_publish_once_whichever_instance_is_asked,
    a_room_publish_costs_one_redis_message_per_instance_with_members,
    a_room_publish_costs_the_same_redis_commands_at_ten_members_as_at_three_thousand,
    a_frozen_instances_members_count_as_failed_not_delivered_nor_forgotten,
    the_connections_api_of_any_instance_reaches_any_connection,
    a_killed_instance_does_not_stop_the_others,
    redis_down_then_back_keeps_sockets_and_restores_service,
    after_redis_restarts_empty_publishes_are_refused_until_every_instance_re_registered,
    after_a_flush_the_next_publish_is_refused_not_short_and_every_instance_re_registers,
    an_instance_waits_for_a_peer_that_has_not_re_registered_yet,
);
