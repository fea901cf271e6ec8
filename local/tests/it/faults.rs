//! Fault injection on the control plane's posts (`--fault-throttle`, `--fault-forbidden`,
//! `--fault-latency-ms`), met through the real SDK clients: refused posts never arrive, the
//! others do, and a publish's counts say which were which.

use std::time::{Duration, Instant};

use aws_sdk_apigatewaymanagement::config::retry::RetryConfig;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use herald_local::Faults;
use serde_json::{Value, json};

use crate::common::{self, Gateway};

/// A gateway whose control-plane posts meet `faults`.
async fn faulty(faults: Faults) -> Gateway {
    let mut settings = common::settings();
    settings.faults = faults;
    Gateway::start_with(settings).await
}

/// The Management API client without the SDK's own retries, so each answer is seen.
fn management(gw: &Gateway) -> aws_sdk_apigatewaymanagement::Client {
    let config = gw
        .management()
        .config()
        .to_builder()
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_apigatewaymanagement::Client::from_conf(config)
}

#[tokio::test]
async fn a_share_of_posts_answers_429_or_403_and_only_the_others_arrive() {
    let gw = faulty(Faults::new(0.3, 0.2, Duration::ZERO).unwrap()).await;
    let api = management(&gw);
    let mut client = gw.connect("alice", &[], &[]).await;
    let (mut posted, mut throttled, mut forbidden) = (Vec::new(), 0, 0);
    for n in 0..300 {
        let answer = api
            .post_to_connection()
            .connection_id(&client.id)
            .data(Blob::new(json!({ "n": n }).to_string()))
            .send()
            .await;
        match answer {
            Ok(_) => posted.push(n),
            Err(e) => {
                let e = e.into_service_error();
                if e.is_limit_exceeded_exception() {
                    throttled += 1;
                } else if e.is_forbidden_exception() {
                    forbidden += 1;
                } else {
                    panic!("only the injected faults: {e:?}");
                }
            }
        }
    }
    // 300 draws: 90 and 60 expected; these bounds are five standard deviations wide.
    assert!(
        (50..=130).contains(&throttled),
        "{throttled} of 300 throttled"
    );
    assert!(
        (25..=95).contains(&forbidden),
        "{forbidden} of 300 forbidden"
    );
    assert_eq!(posted.len() + throttled + forbidden, 300);
    for n in &posted {
        assert_eq!(
            client.recv().await,
            json!({ "n": n }),
            "what was posted, in order"
        );
    }
    client.expect_nothing(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn latency_is_added_to_every_post_and_to_nothing_else() {
    let latency = Duration::from_millis(300);
    let gw = faulty(Faults::new(0.0, 0.0, latency).unwrap()).await;
    let api = management(&gw);
    let mut client = gw.connect("alice", &[], &[]).await;
    let started = Instant::now();
    api.post_to_connection()
        .connection_id(&client.id)
        .data(Blob::new("{}"))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= latency, "{:?}", started.elapsed());
    assert_eq!(client.recv().await, json!({}));
    let started = Instant::now();
    api.get_connection()
        .connection_id(&client.id)
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < latency, "a GET is not delayed");
    // Nor is a reply to the client's own request.
    let started = Instant::now();
    client.whoami().await;
    assert!(started.elapsed() < latency, "a reply is not delayed");
}

#[tokio::test]
async fn a_publish_counts_as_failed_the_posts_its_faults_refused_and_delivers_the_rest() {
    let gw = faulty(Faults::new(0.0, 0.5, Duration::ZERO).unwrap()).await;
    // Subscribing is answered while every other post may fail: clients keep working.
    let mut clients = gw.members(40, "orders").await;
    let answer: Value = gw
        .invoke(json!({"room": "orders", "data": "hello"}))
        .await
        .unwrap();
    let (delivered, failed) = (
        answer["delivered"].as_u64().unwrap(),
        answer["failed"].as_u64().unwrap(),
    );
    assert_eq!(delivered + failed, 40, "{answer}");
    assert!((5..=35).contains(&delivered), "{answer}");
    // Whatever was queued has arrived by now; each client is then looked at briefly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut received = 0;
    for client in &mut clients {
        match tokio::time::timeout(Duration::from_millis(50), client.recv()).await {
            Ok(got) => {
                assert_eq!(got["data"], "hello");
                received += 1;
            }
            Err(_) => client.expect_nothing(Duration::from_millis(10)).await,
        }
    }
    assert_eq!(
        received, delivered,
        "exactly the posts counted delivered arrived"
    );
}

#[tokio::test]
async fn the_binary_refuses_shares_past_their_bounds_naming_the_flag() {
    for (args, says) in [
        (vec!["--fault-throttle", "1.5"], "--fault-throttle"),
        (vec!["--fault-forbidden=-0.1"], "--fault-forbidden"),
        (
            vec!["--fault-throttle", "0.7", "--fault-forbidden", "0.7"],
            "add up",
        ),
        (vec!["--fault-latency-ms", "30001"], "--fault-latency-ms"),
    ] {
        let mut binary = common::binary();
        binary.args(["--port", "0"]).args(&args);
        let stderr = common::refused_start(binary).await;
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_publish_retries_throttled_posts_and_counts_failed_only_what_stayed_throttled() {
    // Half of all posts throttled: with fan-out's retries nearly every member is reached.
    let gw = faulty(Faults::new(0.5, 0.0, Duration::ZERO).unwrap()).await;
    // Held open for the publish.
    let _members = gw.members(40, "orders").await;
    let answer = gw
        .invoke(json!({"room": "orders", "data": 1}))
        .await
        .unwrap();
    let delivered = answer["delivered"].as_u64().unwrap();
    assert_eq!(
        delivered + answer["failed"].as_u64().unwrap(),
        40,
        "{answer}"
    );
    // Without retries about 20; with four, each member fails only one time in 32.
    assert!(delivered >= 30, "{answer}");
    // Every post throttled: each member is retried, then counted failed, and none arrives.
    let gw = faulty(Faults::new(1.0, 0.0, Duration::ZERO).unwrap()).await;
    let mut client = gw.connect("alone", &["orders"], &[]).await;
    client.subscribe("orders").await;
    let answer = gw
        .invoke(json!({"room": "orders", "data": 2}))
        .await
        .unwrap();
    assert_eq!(
        (answer["delivered"].clone(), answer["failed"].clone()),
        (json!(0), json!(1)),
        "{answer}"
    );
    client.expect_nothing(Duration::from_millis(200)).await;
}
