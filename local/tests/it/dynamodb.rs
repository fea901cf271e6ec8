//! `herald-local` with `HERALD_STORE=dynamodb` against a real DynamoDB-compatible server
//! (`moto_server`, started by the test on a free port): it creates its table, runs the whole
//! flow, and reports a store outage as clean errors.

use crate::common;

use std::time::{Duration, Instant};

use common::{Gateway, settings_with};
use herald::testing::Server;
use serde_json::json;

async fn gateway_on(server: &Server) -> Gateway {
    let url = server.url();
    Gateway::start_with(settings_with(&[
        ("HERALD_STORE", "dynamodb"),
        ("HERALD_TABLE", "herald-local-e2e"),
        ("AWS_ENDPOINT_URL_DYNAMODB", &url),
    ]))
    .await
}

#[tokio::test]
async fn connect_subscribe_publish_disconnect() {
    let server = Server::dynamodb();
    let gw = gateway_on(&server).await;
    let mut alice = gw.connect("alice", &["orders"], &[]).await;
    let mut bob = gw.connect("bob", &["orders"], &[]).await;
    alice.subscribe("orders").await;

    let answer = gw
        .invoke(json!({"room":"orders","data":{"n":1}}))
        .await
        .unwrap();
    assert_eq!(answer["delivered"], 1, "{answer}");
    assert_eq!(alice.recv().await["data"], json!({"n":1}));
    bob.expect_nothing(Duration::from_millis(200)).await;

    let answer = gw.invoke(json!({"user":"bob","data":"hi"})).await.unwrap();
    assert_eq!(answer["delivered"], 1);
    assert_eq!(bob.recv().await["data"], "hi");

    let answer = gw
        .invoke(json!({"broadcast":true,"data":"all"}))
        .await
        .unwrap();
    assert_eq!(answer["delivered"], 2);

    // Disconnecting removes the connection and its membership from the table.
    alice.ws.close(None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = gw.invoke(json!({"room":"orders","data":2})).await.unwrap();
        if answer["delivered"] == 0 && answer["gone"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "alice still a member: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_unreachable_table_gives_clean_errors_not_hangs() {
    let mut server = Server::dynamodb();
    let gw = gateway_on(&server).await;
    let mut client = gw.connect("alice", &["orders"], &[]).await;
    server.stop();

    let started = Instant::now();
    let reply = client
        .ask(json!({"action":"subscribe","room":"orders"}))
        .await;
    assert_eq!(reply["code"], "internal", "{reply}");
    let error = gw
        .invoke(json!({"room":"orders","data":1}))
        .await
        .unwrap_err();
    assert_eq!(error["errorType"], "Unavailable", "{error}");
    let url = format!("{}?token={}", gw.url(), gw.token("bob", &[], &[]));
    let status = gw.handshake(&url, None).await.err();
    assert_eq!(status, Some(500), "connect refuses the upgrade with a 5xx");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // The socket that was open stays usable for what needs no store.
    assert_eq!(client.ask(json!({"action":"ping"})).await["type"], "pong");
}

/// Clients that connect and subscribe at the same instant.
const AT_ONCE: usize = 200;

#[tokio::test]
async fn two_hundred_clients_connect_and_subscribe_at_once_on_a_plain_moto_server() {
    /// How long a subscriber of the crowd waits for its reply.
    const CROWD_PATIENCE: Duration = Duration::from_secs(60);
    let server = Server::plain_moto();
    let gw = std::sync::Arc::new(gateway_on(&server).await);
    let joined = futures::future::join_all((0..AT_ONCE).map(|i| {
        let gw = gw.clone();
        async move {
            let mut client = gw.connect(&format!("crowd-{i}"), &["lobby"], &[]).await;
            client
                .send(json!({"action": "subscribe", "room": "lobby"}))
                .await;
            // moto_server answers one request at a time: the last of 200 subscribes waits
            // for the others. What is checked is that none fails, not how soon each ends
            // (a store error would come back as a refusal within the store's timeouts).
            let reply = client.recv_within(CROWD_PATIENCE).await;
            (client, reply)
        }
    }))
    .await;
    let refused: Vec<_> = joined
        .iter()
        .filter(|(_, reply)| reply["type"] != "subscribed")
        .map(|(_, reply)| reply.to_string())
        .collect();
    assert!(
        refused.is_empty(),
        "{} refused: {:?}",
        refused.len(),
        &refused[..refused.len().min(3)]
    );
    let answer = gw
        .invoke(json!({"room": "lobby", "data": 1}))
        .await
        .unwrap();
    assert_eq!(answer["delivered"], AT_ONCE, "{answer}");
}
