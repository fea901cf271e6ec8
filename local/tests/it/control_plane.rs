//! The control plane (`@connections`, the Lambda Invoke API) with credentials: the real AWS
//! SDK clients signed with the right keys work unchanged; wrong keys, a stale clock and
//! unsigned requests are refused with AWS's answers; and nothing that can publish or
//! disconnect is served beyond loopback without credentials unless asked for.

use crate::common;

use std::time::{Duration, SystemTime};

use aws_sdk_apigatewaymanagement::config::{Credentials as SdkCredentials, Region};
use aws_sdk_apigatewaymanagement::error::ProvideErrorMetadata;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use aws_smithy_async::time::StaticTimeSource;
use common::{Gateway, settings};
use herald_local::{
    BODY_BYTES_IN_FLIGHT, ControlPlane, ControlPlaneMode, Credentials, Settings, StartError,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY_ID: &str = "AKIDHERALDTEST";
const SECRET: &str = "herald-control-plane-test-secret";

fn signed_settings() -> Settings {
    let mut settings = settings();
    settings.control_plane.credentials = Some(Credentials {
        access_key_id: KEY_ID.into(),
        secret_access_key: SECRET.into(),
    });
    settings
}

/// A management client signing with these keys, at `now` (the real clock when `None`).
fn management(
    gw: &Gateway,
    key: &str,
    secret: &str,
    now: Option<SystemTime>,
) -> aws_sdk_apigatewaymanagement::Client {
    let mut config = aws_sdk_apigatewaymanagement::Config::builder()
        .behavior_version(aws_sdk_apigatewaymanagement::config::BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(SdkCredentials::new(key, secret, None, None, "test"))
        .endpoint_url(format!("http://{}/local", gw.addr));
    if let Some(now) = now {
        config = config.time_source(StaticTimeSource::new(now));
    }
    aws_sdk_apigatewaymanagement::Client::from_conf(config.build())
}

fn lambda(gw: &Gateway, key: &str, secret: &str) -> aws_sdk_lambda::Client {
    let config = aws_sdk_lambda::Config::builder()
        .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
        .region(aws_sdk_lambda::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_lambda::config::Credentials::new(
            key, secret, None, None, "test",
        ))
        .endpoint_url(format!("http://{}", gw.addr))
        .build();
    aws_sdk_lambda::Client::from_conf(config)
}

/// Invokes `publish` with `payload`, signed with these keys.
async fn publish(
    gw: &Gateway,
    key: &str,
    secret: &str,
    payload: serde_json::Value,
) -> Result<
    aws_sdk_lambda::operation::invoke::InvokeOutput,
    aws_sdk_lambda::error::SdkError<aws_sdk_lambda::operation::invoke::InvokeError>,
> {
    lambda(gw, key, secret)
        .invoke()
        .function_name("publish")
        .payload(aws_sdk_lambda::primitives::Blob::new(payload.to_string()))
        .send()
        .await
}

/// One raw HTTP/1.1 request; the status line and headers of the answer, lowercased.
async fn raw(gw: &Gateway, request: &str) -> String {
    common::raw_http(gw.addr, request).await.to_lowercase()
}

#[tokio::test]
async fn sdk_clients_with_the_right_keys_work_unchanged() {
    let gw = Gateway::start_with(signed_settings()).await;
    let mut client = gw.connect("ann", &["orders"], &[]).await;
    client.subscribe("orders").await;

    let management = management(&gw, KEY_ID, SECRET, None);
    management
        .post_to_connection()
        .connection_id(&client.id)
        .data(Blob::new(b"{\"direct\":1}".to_vec()))
        .send()
        .await
        .expect("a signed post is accepted");
    assert_eq!(client.recv().await, json!({"direct": 1}));
    let info = management
        .get_connection()
        .connection_id(&client.id)
        .send()
        .await
        .expect("a signed get is accepted");
    assert!(info.connected_at().is_some());

    let answer = publish(
        &gw,
        KEY_ID,
        SECRET,
        json!({"room": "orders", "data": {"n": 2}}),
    )
    .await
    .expect("a signed invoke is accepted");
    assert_eq!(answer.function_error(), None);
    assert_eq!(client.recv().await["data"], json!({"n": 2}));
}

#[tokio::test]
async fn wrong_keys_and_stale_clocks_are_refused_as_aws_refuses_them() {
    let gw = Gateway::start_with(signed_settings()).await;
    let mut client = gw.connect("ann", &["orders"], &[]).await;
    let post = |management: aws_sdk_apigatewaymanagement::Client, id: String| async move {
        management
            .post_to_connection()
            .connection_id(id)
            .data(Blob::new(b"forged".to_vec()))
            .send()
            .await
            .expect_err("refused")
    };
    let wrong_secret = post(management(&gw, KEY_ID, "not-it", None), client.id.clone()).await;
    assert_eq!(wrong_secret.code(), Some("InvalidSignatureException"));
    let wrong_key = post(
        management(&gw, "AKIDOTHER", SECRET, None),
        client.id.clone(),
    )
    .await;
    assert_eq!(wrong_key.code(), Some("UnrecognizedClientException"));
    let stale = SystemTime::now() - Duration::from_secs(20 * 60);
    let stale = post(
        management(&gw, KEY_ID, SECRET, Some(stale)),
        client.id.clone(),
    )
    .await;
    assert_eq!(stale.code(), Some("InvalidSignatureException"));

    let deleted = management(&gw, KEY_ID, "not-it", None)
        .delete_connection()
        .connection_id(&client.id)
        .send()
        .await
        .expect_err("refused");
    assert_eq!(deleted.code(), Some("InvalidSignatureException"));

    let invoke = publish(&gw, KEY_ID, "not-it", json!({"room": "orders", "data": 1}))
        .await
        .expect_err("refused");
    assert_eq!(invoke.code(), Some("InvalidSignatureException"));

    // Nothing forged arrived, and the connection is still open.
    client.expect_nothing(Duration::from_millis(300)).await;
    assert_eq!(client.whoami().await, client.id);
}

#[tokio::test]
async fn unsigned_requests_are_missing_a_token() {
    let gw = Gateway::start_with(signed_settings()).await;
    let client = gw.connect("ann", &[], &[]).await;
    let body = r#"{"broadcast":true,"data":1}"#;
    for request in [
        format!(
            "POST /2015-03-31/functions/publish/invocations HTTP/1.1\r\nhost: {}\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            gw.addr,
            body.len()
        ),
        format!(
            "DELETE /local/@connections/{} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
            client.id, gw.addr
        ),
        format!(
            "GET /local/%40connections/{} HTTP/1.1\r\nhost: {}\r\nauthorization: AWS4-HMAC-SHA256 \
             Credential={KEY_ID}/20260101/us-east-1/execute-api/aws4_request, \
             SignedHeaders=host, Signature=00\r\nconnection: close\r\n\r\n",
            client.id, gw.addr
        ),
    ] {
        let answer = raw(&gw, &request).await;
        assert!(answer.starts_with("http/1.1 403"), "{answer}");
        assert!(answer.contains("x-amzn-errortype: "), "{answer}");
    }
    let unsigned = raw(
        &gw,
        &format!(
            "GET /local/@connections/{} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
            client.id, gw.addr
        ),
    )
    .await;
    assert!(
        unsigned.contains("x-amzn-errortype: missingauthenticationtokenexception"),
        "{unsigned}"
    );
    // The WebSocket side is not the control plane: it keeps its JWT handshake.
    let mut again = gw.connect("bob", &[], &[]).await;
    assert!(!again.whoami().await.is_empty());
}

#[tokio::test]
async fn the_http_push_path_signs_with_the_configured_keys() {
    let mut settings = signed_settings();
    settings.push_via_http = true;
    let gw = Gateway::start_with(settings).await;
    let mut client = gw.connect("ann", &["orders"], &[]).await;
    client.subscribe("orders").await;
    let payload = json!({"room": "orders", "data": "through http"});
    let answer = publish(&gw, KEY_ID, SECRET, payload).await.unwrap();
    let body: serde_json::Value =
        serde_json::from_slice(answer.payload().unwrap().as_ref()).unwrap();
    assert_eq!(body["delivered"], 1, "{body}");
    assert_eq!(client.recv().await["data"], "through http");
}

#[tokio::test]
async fn without_credentials_only_loopback_is_served_unless_asked() {
    let err = herald_local::bind("0.0.0.0", 0, settings())
        .await
        .err()
        .expect("refused beyond loopback");
    assert!(matches!(err, StartError::OpenControlPlane(_)), "{err}");

    let mut insecure = settings();
    insecure.control_plane = ControlPlane {
        credentials: None,
        insecure_open: true,
    };
    let ready = herald_local::bind("0.0.0.0", 0, insecure).await.unwrap();
    assert_eq!(ready.control_plane, ControlPlaneMode::OpenInsecure);
    drop(ready);

    let ready = herald_local::bind("0.0.0.0", 0, signed_settings())
        .await
        .unwrap();
    assert_eq!(ready.control_plane, ControlPlaneMode::Signed);
    drop(ready);

    let ready = herald_local::bind("127.0.0.1", 0, settings())
        .await
        .unwrap();
    assert_eq!(ready.control_plane, ControlPlaneMode::OpenOnLoopback);
}

#[tokio::test]
async fn a_short_jwt_secret_is_refused_beyond_loopback_only() {
    let with_secret = |secret: &[u8]| {
        let mut s = signed_settings();
        s.config.auth = Some(herald::auth::AuthConfig {
            key: herald::auth::JwtKey::Secret(secret.to_vec()),
            issuer: None,
            audience: None,
        });
        s
    };
    let short = vec![b's'; herald_local::MIN_HS256_SECRET_BYTES - 1];
    let err = herald_local::bind("0.0.0.0", 0, with_secret(&short))
        .await
        .err()
        .expect("a guessable secret is not served beyond loopback");
    assert!(
        matches!(err, StartError::WeakJwtSecret(n) if n == short.len()),
        "{err}"
    );
    assert!(
        herald_local::bind("127.0.0.1", 0, with_secret(&short))
            .await
            .is_ok()
    );
    let enough = vec![b's'; herald_local::MIN_HS256_SECRET_BYTES];
    assert!(
        herald_local::bind("0.0.0.0", 0, with_secret(&enough))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn blank_credentials_are_no_credentials() {
    for (id, secret) in [("", ""), ("AKIDEXAMPLE", " "), ("\t", "secret")] {
        let mut blank = settings();
        blank.control_plane = ControlPlane {
            credentials: Some(Credentials {
                access_key_id: id.into(),
                secret_access_key: secret.into(),
            }),
            insecure_open: false,
        };
        let err = herald_local::bind("0.0.0.0", 0, blank.clone())
            .await
            .err()
            .expect("refused beyond loopback");
        assert!(
            matches!(err, StartError::OpenControlPlane(_)),
            "{id:?}: {err}"
        );
        let ready = herald_local::bind("127.0.0.1", 0, blank).await.unwrap();
        assert_eq!(
            ready.control_plane,
            ControlPlaneMode::OpenOnLoopback,
            "{id:?}"
        );
    }
    assert_eq!(
        Credentials::from_parts(Some("".into()), Some("".into())),
        None
    );
    assert_eq!(Credentials::from_parts(Some("k".into()), None), None);
    assert!(Credentials::from_parts(Some("k".into()), Some("s".into())).is_some());
}

#[tokio::test]
async fn the_binary_takes_empty_credential_variables_for_none() {
    // It must not start signed with empty keys.
    let mut binary = common::binary();
    binary
        .args(["--host", "0.0.0.0", "--port", "0"])
        .env("HERALD_JWT_SECRET", "s")
        .env("HERALD_ACCESS_KEY_ID", "")
        .env("HERALD_SECRET_ACCESS_KEY", "");
    let stderr = common::refused_start(binary).await;
    assert!(stderr.contains("HERALD_ACCESS_KEY_ID"), "{stderr}");
}

#[tokio::test]
async fn the_binary_refuses_to_expose_an_open_control_plane() {
    let mut binary = common::binary();
    binary
        .args(["--host", "0.0.0.0", "--port", "0"])
        .env("HERALD_JWT_SECRET", "s")
        .env_remove("HERALD_ACCESS_KEY_ID")
        .env_remove("HERALD_SECRET_ACCESS_KEY");
    let stderr = common::refused_start(binary).await;
    assert!(stderr.contains("HERALD_ACCESS_KEY_ID"), "{stderr}");
}

/// Sends `head` (and nothing more), then reads the answer for at most `within`: the status
/// line and headers, lowercased; `None` if nothing came in time.
async fn answer_to_head(gw: &Gateway, head: &str, within: Duration) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(within, stream.read(&mut answer))
        .await
        .ok()?
        .unwrap();
    Some(String::from_utf8_lossy(&answer[..n]).to_lowercase())
}

#[tokio::test]
async fn an_unsigned_request_is_refused_from_its_head_without_waiting_for_its_body() {
    let gw = Gateway::start_with(signed_settings()).await;
    let head = format!(
        "POST /2015-03-31/functions/publish/invocations HTTP/1.1\r\nhost: {}\r\n\
         content-length: 6291456\r\n\r\n0123456789",
        gw.addr
    );
    let answer = answer_to_head(&gw, &head, Duration::from_secs(2))
        .await
        .expect("answered from the head, not after a 6 MB body that never comes");
    assert!(answer.starts_with("http/1.1 403"), "{answer}");
    assert!(
        answer.contains("x-amzn-errortype: missingauthenticationtokenexception"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_declared_size_over_the_limit_and_a_stalled_body_are_answered_at_once_or_in_time() {
    let mut s = settings();
    s.http.head_timeout = Duration::from_millis(500);
    let gw = Gateway::start_with(s).await;
    let over = format!(
        "POST /2015-03-31/functions/publish/invocations HTTP/1.1\r\nhost: {}\r\n\
         content-length: 7000000\r\n\r\n",
        gw.addr
    );
    let answer = answer_to_head(&gw, &over, Duration::from_secs(2)).await;
    let answer = answer.expect("a declared size over the limit is refused at once");
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    let stalled = format!(
        "POST /2015-03-31/functions/publish/invocations HTTP/1.1\r\nhost: {}\r\n\
         content-length: 100\r\n\r\n{{\"room\":",
        gw.addr
    );
    let started = std::time::Instant::now();
    let answer = answer_to_head(&gw, &stalled, Duration::from_secs(3)).await;
    let answer = answer.expect("a stalled body is cut at the deadline");
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "not before the deadline"
    );
}

/// A head with an `Authorization` of SigV4's form (its signature cannot be checked before
/// the body is in), declaring a 6 MB body of which it sends ten bytes.
fn stalled_signed_head(gw: &Gateway) -> String {
    format!(
        "POST /2015-03-31/functions/publish/invocations HTTP/1.1\r\nhost: {}\r\n\
         authorization: AWS4-HMAC-SHA256 Credential={KEY_ID}/20261206/us-east-1/lambda/aws4_request, \
         SignedHeaders=host;x-amz-date, Signature={}\r\nx-amz-date: 20261206T000000Z\r\n\
         content-length: 6291456\r\n\r\n0123456789",
        gw.addr,
        "0".repeat(64)
    )
}

#[tokio::test]
async fn stalled_bodies_hold_no_place_a_websocket_needs_and_share_a_byte_budget() {
    let mut s = signed_settings();
    s.limits.max_total = Some(4);
    let gw = Gateway::start_with(s).await;
    let bodies = BODY_BYTES_IN_FLIGHT / 6_291_456;
    // As many stalled 6 MB bodies as the budget holds, one at a time (each is counted as a
    // connection until its head is read), then one more.
    let mut stalled = Vec::new();
    for _ in 0..bodies {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        stream
            .write_all(stalled_signed_head(&gw).as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        stalled.push(stream);
    }
    let answer = answer_to_head(&gw, &stalled_signed_head(&gw), Duration::from_secs(2)).await;
    let answer = answer.expect("a body past the budget is refused at once");
    assert!(answer.starts_with("http/1.1 429"), "{answer}");
    assert!(
        answer.contains("x-amzn-errortype: toomanyrequestsexception"),
        "{answer}"
    );
    // Ten stalled bodies, a limit of four connections: a WebSocket still gets in.
    let mut alice = gw.connect("alice", &[], &[]).await;
    assert_eq!(alice.ask(json!({"action":"ping"})).await["type"], "pong");
    drop(stalled);
}

#[tokio::test]
async fn a_browser_page_cannot_publish_through_the_open_control_plane() {
    let gw = Gateway::start().await;
    let mut client = gw.connect("ann", &["news"], &[]).await;
    client.subscribe("news").await;
    let body = r#"{"room":"news","data":"from a web page"}"#;
    // What a page's `fetch(..., {method: "POST", mode: "no-cors"})` sends: a simple request
    // with no preflight.
    let request = format!(
        "POST /2015-03-31/functions/publish/invocations HTTP/1.1\r\nhost: {}\r\n\
         origin: http://evil.example\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        gw.addr,
        body.len()
    );
    let answer = raw(&gw, &request).await;
    assert!(answer.starts_with("http/1.1 403"), "{answer}");
    assert!(answer.contains("accessdeniedexception"), "{answer}");
    let published = publish_plain(&gw, r#"{"room":"news","data":"from a backend"}"#).await;
    assert!(published.starts_with("http/1.1 200"), "{published}");
    assert_eq!(
        client.recv().await["data"],
        "from a backend",
        "the page's never came"
    );
}

/// A publish through the open control plane, as a backend's plain HTTP client sends it.
async fn publish_plain(gw: &Gateway, body: &str) -> String {
    let request = format!(
        "POST /2015-03-31/functions/publish/invocations HTTP/1.1\r\nhost: {}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        gw.addr,
        body.len()
    );
    raw(gw, &request).await
}
