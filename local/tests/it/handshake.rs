//! Authentication at the handshake, as API Gateway runs it: no token is 401 without the
//! authorizer; a refused token is 401; limits are 429; a good token connects.

use crate::common;

use base64::Engine;
use common::{Gateway, SECRET, settings};
use serde_json::json;

#[tokio::test]
async fn a_valid_token_in_the_query_connects() {
    let gw = Gateway::start().await;
    let mut client = gw.connect("alice", &["orders"], &[]).await;
    assert_eq!(client.id.len(), 16);
    let reply = client.ask(json!({"action":"whoami"})).await;
    assert_eq!(reply["user"], "alice");
}

#[tokio::test]
async fn a_bearer_header_connects() {
    let gw = Gateway::start().await;
    let token = gw.token("bob", &[], &[]);
    let mut client = gw
        .handshake(&gw.url(), Some(&token))
        .await
        .expect("connected");
    assert_eq!(client.ask(json!({"action":"whoami"})).await["user"], "bob");
}

#[tokio::test]
async fn no_token_is_401() {
    let gw = Gateway::start().await;
    assert_eq!(gw.handshake(&gw.url(), None).await.err(), Some(401));
    let empty = format!("{}?token=", gw.url());
    assert_eq!(gw.handshake(&empty, None).await.err(), Some(401));
}

#[tokio::test]
async fn refused_tokens_never_connect() {
    let gw = Gateway::start().await;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims = json!({"sub":"mallory","exp": herald::ids::now_ms() / 1000 + 600, "rooms":["*"]});
    let tokens = [
        (
            "bad signature",
            herald::auth::sign_hs256(b"not-the-secret", "mallory", &["*"], &[], 600).unwrap(),
        ),
        (
            "expired",
            herald::auth::sign_hs256(SECRET, "mallory", &["*"], &[], -600).unwrap(),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg":"none","typ":"JWT"})),
                b64(claims)
            ),
        ),
        ("garbage", "not-a-jwt".to_owned()),
    ];
    for (what, token) in tokens {
        let url = format!("{}?token={token}", gw.url());
        let status = gw.handshake(&url, None).await.err();
        assert!(matches!(status, Some(401 | 403)), "{what}: {status:?}");
        let status = gw.handshake(&gw.url(), Some(&token)).await.err();
        assert!(
            matches!(status, Some(401 | 403)),
            "{what} as bearer: {status:?}"
        );
    }
}

#[tokio::test]
async fn a_wrong_stage_is_forbidden() {
    let gw = Gateway::start().await;
    let url = format!("ws://{}/prod?token={}", gw.addr, gw.token("a", &[], &[]));
    assert_eq!(gw.handshake(&url, None).await.err(), Some(403));
}

#[tokio::test]
async fn connection_limits_answer_429() {
    let mut s = settings();
    s.config.limits.max_connections_per_user = Some(2);
    s.limits.max_total = Some(3);
    let gw = Gateway::start_with(s).await;
    let url = |user: &str| format!("{}?token={}", gw.url(), gw.token(user, &[], &[]));
    let _a1 = gw.handshake(&url("a"), None).await.expect("first");
    let _a2 = gw.handshake(&url("a"), None).await.expect("second");
    assert_eq!(
        gw.handshake(&url("a"), None).await.err(),
        Some(429),
        "per user"
    );
    let _b1 = gw.handshake(&url("b"), None).await.expect("another user");
    assert_eq!(
        gw.handshake(&url("c"), None).await.err(),
        Some(429),
        "global"
    );
}

#[tokio::test]
async fn the_per_ip_limit_answers_429() {
    let mut s = settings();
    s.limits.max_per_ip = Some(1);
    let gw = Gateway::start_with(s).await;
    let url = |user: &str| format!("{}?token={}", gw.url(), gw.token(user, &[], &[]));
    let _first = gw.handshake(&url("a"), None).await.expect("first");
    assert_eq!(gw.handshake(&url("b"), None).await.err(), Some(429));
}
