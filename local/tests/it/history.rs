//! History and recovery over real sockets, on every store: a client that was away gets
//! exactly what it missed, in order, each notification as it was first sent, then live
//! ones; or `recovered:false` and nothing when that cannot be done (too old, another
//! epoch, Redis flushed). The user inbox recovers the same way; `history` reads a room.

use crate::common;

use std::time::Duration;

use common::{Client, Gateway, SharedRedis, settings_with};
use herald::testing::Server;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    Redis,
    RedisCluster,
    Dynamo,
}

/// What a test gateway's store runs on, kept alive with it.
enum Held {
    Nothing,
    Server(Server),
    Redis(SharedRedis),
}

impl Held {
    /// The server, for a test that reaches it directly.
    fn server(&self) -> &Server {
        match self {
            Self::Server(server) | Self::Redis(SharedRedis::Single(server)) => server,
            _ => panic!("this test's store runs on one server"),
        }
    }
}

/// A gateway on `store` with `vars`, and the server behind it (kept alive with it).
async fn gateway(store: Store, vars: &[(&str, &str)]) -> (Gateway, Held) {
    let held = match store {
        Store::Memory => Held::Nothing,
        Store::Redis => Held::Redis(SharedRedis::single()),
        Store::RedisCluster => Held::Redis(SharedRedis::cluster()),
        Store::Dynamo => Held::Server(Server::dynamodb()),
    };
    let mut all: Vec<(&str, String)> = match &held {
        Held::Nothing => vec![],
        Held::Redis(redis) => redis.vars(),
        Held::Server(server) => vec![
            ("HERALD_STORE", "dynamodb".into()),
            ("HERALD_TABLE", "herald-history".into()),
            ("AWS_ENDPOINT_URL_DYNAMODB", server.url()),
        ],
    };
    all.extend(vars.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Gateway::start_with(settings_with(&all)).await;
    (gw, held)
}

/// Publishes `data` to a room through the Invoke API; the answer.
async fn publish(gw: &Gateway, target: Value) -> Value {
    gw.invoke(target).await.expect("published")
}

/// The next `n` messages a client receives.
async fn next(client: &mut Client, n: usize) -> Vec<Value> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(client.recv().await);
    }
    got
}

fn offsets(notifications: &[Value]) -> Vec<u64> {
    notifications
        .iter()
        .map(|n| n["offset"].as_u64().expect("an offset"))
        .collect()
}

async fn missed_twenty_are_recovered_in_order_then_live_ones(store: Store) {
    let (gw, _server) = gateway(store, &[]).await;
    let mut stayed = gw.connect("bob", &["orders"], &[]).await;
    stayed.subscribe("orders").await;
    let mut away = gw.connect("alice", &["orders"], &[]).await;
    away.subscribe("orders").await;

    let first = publish(&gw, json!({"room":"orders","data":{"n":0}})).await;
    assert_eq!(first["offset"], 1, "{first}");
    let seen = away.recv().await;
    assert_eq!(stayed.recv().await, seen);
    assert_eq!(
        (seen["offset"].clone(), seen["epoch"].clone()),
        (first["offset"].clone(), first["epoch"].clone())
    );
    away.ws.close(None).await.unwrap();

    for n in 1..=20 {
        let answer = publish(&gw, json!({"room":"orders","data":{"n":n}})).await;
        assert_eq!(answer["offset"], n + 1, "{answer}");
        assert_eq!(answer["epoch"], seen["epoch"]);
    }
    let sent = next(&mut stayed, 20).await;

    let mut back = gw.connect("alice", &["orders"], &[]).await;
    let since = json!({"offset": seen["offset"], "epoch": seen["epoch"]});
    let reply = back
        .ask(json!({"action":"subscribe","room":"orders","since":since,"ref":"r"}))
        .await;
    assert_eq!(
        reply,
        json!({"type":"subscribed","room":"orders","recovered":true,"offset":21,"epoch":seen["epoch"],"ref":"r"})
    );
    let replayed = next(&mut back, 20).await;
    assert_eq!(
        replayed, sent,
        "exactly the 20 missed, in order, as first sent"
    );
    assert_eq!(offsets(&replayed), (2..=21).collect::<Vec<_>>());

    publish(&gw, json!({"room":"orders","data":"live"})).await;
    let live = back.recv().await;
    assert_eq!(
        (live["offset"].clone(), live["data"].clone()),
        (json!(22), json!("live"))
    );
    back.expect_nothing(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn missed_twenty_are_recovered_on_memory() {
    missed_twenty_are_recovered_in_order_then_live_ones(Store::Memory).await;
}

#[tokio::test]
async fn missed_twenty_are_recovered_on_redis() {
    missed_twenty_are_recovered_in_order_then_live_ones(Store::Redis).await;
}

#[tokio::test]
async fn missed_twenty_are_recovered_on_a_redis_cluster() {
    missed_twenty_are_recovered_in_order_then_live_ones(Store::RedisCluster).await;
}

#[tokio::test]
async fn missed_twenty_are_recovered_on_dynamodb() {
    missed_twenty_are_recovered_in_order_then_live_ones(Store::Dynamo).await;
}

async fn too_old_is_not_recovered_and_nothing_is_replayed(store: Store) {
    let (gw, _server) = gateway(store, &[("HERALD_HISTORY_SIZE", "5")]).await;
    let mut epoch = Value::Null;
    for n in 1..=10 {
        epoch = publish(&gw, json!({"room":"orders","data":n})).await["epoch"].clone();
    }
    let mut client = gw.connect("alice", &["orders"], &[]).await;
    // 5 is the last one no longer kept: 6 … 10 are, so 5 recovers and 4 does not.
    let reply = client
        .ask(json!({"action":"subscribe","room":"orders","since":{"offset":4,"epoch":epoch}}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(
        (reply["offset"].clone(), reply["epoch"].clone()),
        (json!(10), epoch.clone())
    );
    client.expect_nothing(Duration::from_millis(300)).await;
    let reply = client
        .ask(json!({"action":"subscribe","room":"orders","since":{"offset":5,"epoch":epoch}}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(offsets(&next(&mut client, 5).await), [6, 7, 8, 9, 10]);
    // Another epoch: nothing, whatever the offset.
    let reply = client
        .ask(json!({"action":"subscribe","room":"orders","since":{"offset":9,"epoch":"another"}}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    client.expect_nothing(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn too_old_is_not_recovered_on_memory() {
    too_old_is_not_recovered_and_nothing_is_replayed(Store::Memory).await;
}

#[tokio::test]
async fn too_old_is_not_recovered_on_redis() {
    too_old_is_not_recovered_and_nothing_is_replayed(Store::Redis).await;
}

#[tokio::test]
async fn too_old_is_not_recovered_on_a_redis_cluster() {
    too_old_is_not_recovered_and_nothing_is_replayed(Store::RedisCluster).await;
}

#[tokio::test]
async fn too_old_is_not_recovered_on_dynamodb() {
    too_old_is_not_recovered_and_nothing_is_replayed(Store::Dynamo).await;
}

async fn the_user_inbox_recovers(store: Store) {
    let (gw, _server) = gateway(store, &[]).await;
    let mut alice = gw.connect("alice", &[], &[]).await;
    publish(&gw, json!({"user":"alice","data":0})).await;
    let seen = alice.recv().await;
    assert_eq!(
        (seen["user"].clone(), seen["offset"].clone()),
        (json!("alice"), json!(1))
    );
    alice.ws.close(None).await.unwrap();
    let mut sent = Vec::new();
    for n in 1..=3 {
        sent.push(publish(&gw, json!({"user":"alice","data":n})).await);
        publish(&gw, json!({"user":"carol","data":n})).await;
    }
    assert_eq!(offsets(&sent), [2, 3, 4], "per user, not shared");

    let mut back = gw.connect("alice", &[], &[]).await;
    let reply = back
        .ask(json!({"action":"recover","since":{"offset":1,"epoch":seen["epoch"]}}))
        .await;
    assert_eq!(
        reply,
        json!({"type":"recovered","recovered":true,"offset":4,"epoch":seen["epoch"]})
    );
    let replayed = next(&mut back, 3).await;
    assert_eq!(offsets(&replayed), [2, 3, 4]);
    assert!(replayed.iter().all(|n| n["user"] == "alice"));
    assert_eq!(
        replayed.iter().map(|n| n["id"].clone()).collect::<Vec<_>>(),
        sent.iter().map(|a| a["id"].clone()).collect::<Vec<_>>()
    );
    let reply = back
        .ask(json!({"action":"recover","since":{"offset":4,"epoch":"old"}}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    back.expect_nothing(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn the_user_inbox_recovers_on_memory() {
    the_user_inbox_recovers(Store::Memory).await;
}

#[tokio::test]
async fn the_user_inbox_recovers_on_redis() {
    the_user_inbox_recovers(Store::Redis).await;
}

#[tokio::test]
async fn the_user_inbox_recovers_on_a_redis_cluster() {
    the_user_inbox_recovers(Store::RedisCluster).await;
}

#[tokio::test]
async fn the_user_inbox_recovers_on_dynamodb() {
    the_user_inbox_recovers(Store::Dynamo).await;
}

async fn history_answers_what_the_caller_may_read(store: Store) {
    let (gw, _server) = gateway(store, &[]).await;
    let mut answers = Vec::new();
    for n in 1..=5 {
        answers.push(publish(&gw, json!({"room":"orders","data":n})).await);
    }
    let epoch = answers[0]["epoch"].clone();
    let mut client = gw.connect("alice", &["orders"], &[]).await;
    let newest = client
        .ask(json!({"action":"history","room":"orders","limit":3,"ref":1}))
        .await;
    assert_eq!(newest["type"], "history", "{newest}");
    assert_eq!(
        (
            newest["offset"].clone(),
            newest["epoch"].clone(),
            newest["ref"].clone()
        ),
        (json!(5), epoch.clone(), json!(1))
    );
    let kept = newest["notifications"].as_array().unwrap();
    assert_eq!(offsets(kept), [3, 4, 5], "the newest, newest last");
    assert_eq!(kept[2]["id"], answers[4]["id"]);
    let after = client
        .ask(json!({"action":"history","room":"orders","limit":2,"since":{"offset":1,"epoch":epoch}}))
        .await;
    assert_eq!(offsets(after["notifications"].as_array().unwrap()), [2, 3]);
    let forbidden = client
        .ask(json!({"action":"history","room":"payroll"}))
        .await;
    assert_eq!(forbidden["code"], "forbidden", "{forbidden}");
    let empty = client
        .ask(json!({"action":"history","room":"orders","since":{"offset":5,"epoch":epoch}}))
        .await;
    assert_eq!(empty["notifications"], json!([]));
}

#[tokio::test]
async fn history_answers_on_memory() {
    history_answers_what_the_caller_may_read(Store::Memory).await;
}

#[tokio::test]
async fn history_answers_on_redis() {
    history_answers_what_the_caller_may_read(Store::Redis).await;
}

#[tokio::test]
async fn history_answers_on_a_redis_cluster() {
    history_answers_what_the_caller_may_read(Store::RedisCluster).await;
}

#[tokio::test]
async fn history_answers_on_dynamodb() {
    history_answers_what_the_caller_may_read(Store::Dynamo).await;
}

#[tokio::test]
async fn after_flushall_nothing_is_recovered_and_a_new_epoch_begins() {
    let (gw, held) = gateway(Store::Redis, &[]).await;
    let server = held.server();
    let mut before = Value::Null;
    for n in 1..=3 {
        before = publish(&gw, json!({"room":"orders","data":n})).await;
    }
    let client = redis::Client::open(server.url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();

    // The socket registers after the flush; the room's history is gone.
    let mut alice = gw.connect("alice", &["orders"], &[]).await;
    let since = json!({"offset": before["offset"], "epoch": before["epoch"]});
    let reply = alice
        .ask(json!({"action":"subscribe","room":"orders","since":since}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["offset"], 0);
    assert_ne!(reply["epoch"], before["epoch"], "a new epoch");
    alice.expect_nothing(Duration::from_millis(300)).await;
    // The first publish finds the flush (this instance's marker went with it): refused as
    // `Unavailable` while the instance re-registers, never a short delivery. A refused
    // publish was kept in the history before its recipients were listed: each attempt
    // takes the next offset of the new epoch.
    let mut attempts = 0;
    let after = loop {
        attempts += 1;
        match gw.invoke(json!({"room":"orders","data":"again"})).await {
            Ok(answer) => break answer,
            Err(error) => assert_eq!(error["errorType"], "Unavailable", "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(attempts > 1, "the flush was noticed by the first publish");
    assert_eq!(after["delivered"], 1, "{after}");
    assert_eq!(
        (after["offset"].clone(), after["epoch"].clone()),
        (json!(attempts), reply["epoch"].clone())
    );
    assert_eq!(alice.recv().await["offset"], attempts);
}

#[tokio::test]
async fn a_second_instance_answers_for_the_same_room() {
    let (first, server) = gateway(Store::Redis, &[]).await;
    let url = server.server().url();
    let second = Gateway::start_with(settings_with(&[
        ("HERALD_STORE", "redis"),
        ("HERALD_REDIS_URL", &url),
    ]))
    .await;
    let mut sent = Vec::new();
    for n in 1..=4 {
        sent.push(publish(&first, json!({"room":"orders","data":n})).await);
    }
    let mut client = second.connect("alice", &["orders"], &[]).await;
    let reply = client
        .ask(json!({"action":"subscribe","room":"orders","since":{"offset":1,"epoch":sent[0]["epoch"]}}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(offsets(&next(&mut client, 3).await), [2, 3, 4]);
    let live = publish(&first, json!({"room":"orders","data":"live"})).await;
    assert_eq!(live["delivered"], 1);
    assert_eq!(client.recv().await["offset"], 5);
}

#[tokio::test]
async fn with_history_off_notifications_carry_no_position() {
    let (gw, _server) = gateway(Store::Memory, &[("HERALD_HISTORY_SIZE", "0")]).await;
    let mut client = gw.connect("alice", &["orders"], &[]).await;
    let reply = client
        .ask(json!({"action":"subscribe","room":"orders","since":{"offset":1,"epoch":"e"}}))
        .await;
    assert_eq!(
        reply,
        json!({"type":"subscribed","room":"orders","recovered":false})
    );
    let answer = publish(&gw, json!({"room":"orders","data":1})).await;
    assert_eq!(answer.get("offset"), None, "{answer}");
    let got = client.recv().await;
    assert_eq!(got.get("offset"), None, "{got}");
}

#[tokio::test]
async fn broadcasts_and_connection_publishes_keep_no_history() {
    let (gw, _server) = gateway(Store::Memory, &[]).await;
    let mut client = gw.connect("alice", &["orders"], &[]).await;
    let broadcast = publish(&gw, json!({"broadcast":true,"data":1})).await;
    assert_eq!(broadcast.get("offset"), None, "{broadcast}");
    assert_eq!(client.recv().await.get("offset"), None);
    let direct = publish(&gw, json!({"connections":[client.id],"data":2})).await;
    assert_eq!(direct.get("offset"), None, "{direct}");
    assert_eq!(client.recv().await.get("epoch"), None);
}

/// The Lambda host: the `message` and `publish` handlers, given API Gateway's events and
/// a real `@connections` client (here herald-local's own endpoint, as API Gateway's would
/// be), replay and deliver to a real socket exactly as herald-local does.
#[tokio::test]
async fn the_lambda_handlers_replay_through_connections() {
    use herald::gateway::ApiGatewayManagement;
    use herald::store::RedisStore;
    use std::sync::Arc;

    const SUBSCRIBE: &str = include_str!("../../../tests/fixtures/message-subscribe.json");
    let (gw, server) = gateway(Store::Redis, &[]).await;
    let redis = server.server().url();
    let lambda = herald::compose::services(
        Arc::new(RedisStore::connect(&redis).await.unwrap()),
        &herald::config::Config::from_lookup(|_| None).unwrap(),
    );
    let management = ApiGatewayManagement::local(&format!("http://{}/local", gw.addr));

    let mut stayed = gw.connect("bob", &["orders"], &[]).await;
    stayed.subscribe("orders").await;
    let first = herald::handlers::publish(&lambda, &management, json!({"room":"orders","data":0}))
        .await
        .unwrap();
    assert_eq!(
        (first["offset"].clone(), first["delivered"].clone()),
        (json!(1), json!(1))
    );
    stayed.recv().await;
    for n in 1..=20 {
        herald::handlers::publish(&lambda, &management, json!({"room":"orders","data":n}))
            .await
            .unwrap();
    }
    let sent = next(&mut stayed, 20).await;

    // Alice comes back on a new connection; API Gateway hands her frame to `message`.
    let mut alice = gw.connect("alice", &["orders"], &[]).await;
    let mut event: Value = serde_json::from_str(SUBSCRIBE).unwrap();
    event["requestContext"]["connectionId"] = json!(alice.id);
    event["body"] = json!(
        json!({"action":"subscribe","room":"orders","since":{"offset":1,"epoch":first["epoch"]},"ref":"r1"})
            .to_string()
    );
    let event = serde_json::from_value(event).unwrap();
    let response = herald::handlers::message(&lambda, &management, &event).await;
    assert_eq!(response.status_code, 200);
    let reply = alice.recv().await;
    assert_eq!(
        reply,
        json!({"type":"subscribed","room":"orders","recovered":true,"offset":21,"epoch":first["epoch"],"ref":"r1"})
    );
    assert_eq!(
        next(&mut alice, 20).await,
        sent,
        "the same 20, as first sent"
    );
    let live =
        herald::handlers::publish(&lambda, &management, json!({"room":"orders","data":"live"}))
            .await
            .unwrap();
    assert_eq!(live["delivered"], 2, "{live}");
    assert_eq!(alice.recv().await["offset"], 22);
}
