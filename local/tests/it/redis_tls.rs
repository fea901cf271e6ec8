//! Redis over TLS (`rediss://`), as managed services such as ElastiCache Serverless require:
//! the real binary against a `redis-server` that speaks TLS only, with a certificate signed
//! by the test's own authority. Trusted through `SSL_CERT_FILE`, everything works; not
//! trusted, the gateway refuses to start and says why.

use crate::common;

use std::time::Duration;

use common::{Gateway, SECRET, spawn_binary};
use herald::testing::TlsRedis;
use serde_json::json;

#[tokio::test]
async fn a_gateway_on_redis_over_tls_delivers_when_the_authority_is_trusted() {
    let redis = TlsRedis::start();
    let ca = redis.ca_file().display().to_string();
    let url = redis.url();
    let (_child, addr) = spawn_binary(
        &[],
        &[
            ("HERALD_STORE", "redis"),
            ("HERALD_REDIS_URL", &url),
            ("SSL_CERT_FILE", &ca),
        ],
    )
    .await;
    let gateway = Gateway::at(addr);
    let mut client = gateway.connect("alice", &["*"], &[]).await;
    client.subscribe("orders").await;
    let answer = gateway
        .invoke(json!({"room":"orders","data":"over tls"}))
        .await
        .unwrap();
    assert_eq!(answer["delivered"], 1, "{answer}");
    assert_eq!(client.recv().await["data"], "over tls");
}

#[tokio::test]
async fn a_gateway_refuses_to_start_on_redis_whose_certificate_it_does_not_trust() {
    let redis = TlsRedis::start();
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-local"))
            .args(["--port", "0"])
            .env_clear()
            .env(
                "HERALD_JWT_SECRET",
                String::from_utf8(SECRET.to_vec()).unwrap(),
            )
            .env("HERALD_STORE", "redis")
            .env("HERALD_REDIS_URL", redis.url())
            // An empty trust store: the test's authority is unknown.
            .env("SSL_CERT_FILE", "/dev/null")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("it gives up in time")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach Redis at rediss://"),
        "says where: {stderr}"
    );
}
