//! `ApiGatewayManagement` (the real `aws-sdk-apigatewaymanagement` client) against an HTTP
//! server on loopback that answers as API Gateway's `@connections` API does: the request
//! it sends and the errors it maps, 410 apart from 429 apart from the rest.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use herald::aws_config::{BehaviorVersion, Region, SdkConfig};
use herald::gateway::{ApiGatewayManagement, Gateway, PushError};
use herald::ids::ConnectionId;

type Seen = Arc<Mutex<Vec<(Method, String, Vec<u8>)>>>;

/// An `@connections` API whose answer depends on the connection id in the path.
async fn start() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
        let log = log.clone();
        async move {
            let path = uri.path().to_owned();
            log.lock()
                .unwrap()
                .push((method.clone(), path.clone(), body.to_vec()));
            answer(&method, &path)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn error(status: StatusCode, kind: &str) -> Response {
    (
        status,
        [
            ("x-amzn-ErrorType", kind),
            ("content-type", "application/json"),
        ],
        format!(r#"{{"message":"{kind}"}}"#),
    )
        .into_response()
}

fn answer(method: &Method, path: &str) -> Response {
    let id = path.rsplit('/').next().unwrap_or("");
    match id {
        "gone" => error(StatusCode::GONE, "GoneException"),
        "throttled" => error(StatusCode::TOO_MANY_REQUESTS, "LimitExceededException"),
        "big" => error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLargeException"),
        "forbidden" => error(StatusCode::FORBIDDEN, "ForbiddenException"),
        "broken" => error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerErrorException"),
        "bare410" => StatusCode::GONE.into_response(),
        _ if method == Method::GET => (
            StatusCode::OK,
            [("content-type", "application/json")],
            r#"{"connectedAt":"2026-11-30T09:40:00.000Z","identity":{"sourceIp":"203.0.113.24","userAgent":"curl/8"},"lastActiveAt":"2026-11-30T09:41:00.500Z"}"#,
        )
            .into_response(),
        _ if method == Method::DELETE => StatusCode::NO_CONTENT.into_response(),
        _ => StatusCode::OK.into_response(),
    }
}

fn sdk() -> SdkConfig {
    let credentials = aws_sdk_apigatewaymanagement::config::Credentials::new(
        "AKIDTEST", "secret", None, None, "test",
    );
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(
            aws_sdk_apigatewaymanagement::config::SharedCredentialsProvider::new(credentials),
        )
        .build()
}

async fn client() -> (ApiGatewayManagement, Seen) {
    let (addr, seen) = start().await;
    (
        ApiGatewayManagement::new(&sdk(), &format!("http://{addr}/local")),
        seen,
    )
}

#[tokio::test]
async fn post_sends_the_bytes_to_the_stage_connections_path() {
    let (gateway, seen) = client().await;
    let id = ConnectionId::new("Qm3xLcB5joECFYg=");
    gateway
        .post(&id, bytes::Bytes::from_static(br#"{"type":"pong"}"#))
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    let (method, path, body) = &seen[0];
    assert_eq!(method, Method::POST);
    // The SDK percent-encodes the id (and may encode the `@`).
    let decoded = path.replace("%40", "@").replace("%3D", "=");
    assert_eq!(decoded, "/local/@connections/Qm3xLcB5joECFYg=");
    assert_eq!(body, br#"{"type":"pong"}"#);
}

#[tokio::test]
async fn errors_are_mapped_by_kind() {
    let (gateway, _) = client().await;
    let post = |id: &'static str| {
        let gateway = gateway.clone();
        async move {
            gateway
                .post(&ConnectionId::new(id), bytes::Bytes::from_static(b"x"))
                .await
        }
    };
    assert!(matches!(post("gone").await, Err(PushError::Gone)));
    assert!(matches!(post("bare410").await, Err(PushError::Gone)));
    assert!(matches!(post("throttled").await, Err(PushError::Throttled)));
    assert!(matches!(post("big").await, Err(PushError::PayloadTooLarge)));
    assert!(matches!(
        post("forbidden").await,
        Err(PushError::Forbidden(_))
    ));
    assert!(matches!(post("broken").await, Err(PushError::Other(_))));
    assert!(matches!(post("fine").await, Ok(())));
}

#[tokio::test]
async fn throttling_is_not_retried_inside_the_sdk() {
    let (gateway, seen) = client().await;
    let result = gateway
        .post(
            &ConnectionId::new("throttled"),
            bytes::Bytes::from_static(b"x"),
        )
        .await;
    assert!(matches!(result, Err(PushError::Throttled)));
    assert_eq!(seen.lock().unwrap().len(), 1, "fan-out owns the retries");
}

#[tokio::test]
async fn get_and_delete_work_and_map_gone() {
    let (gateway, seen) = client().await;
    let info = gateway.get(&ConnectionId::new("abc")).await.unwrap();
    assert_eq!(info.connected_at, 1_796_031_600_000);
    assert_eq!(info.last_active_at, 1_796_031_660_500);
    assert_eq!(info.source_ip.as_deref(), Some("203.0.113.24"));
    assert_eq!(info.user_agent.as_deref(), Some("curl/8"));
    assert!(matches!(
        gateway.get(&ConnectionId::new("gone")).await,
        Err(PushError::Gone)
    ));
    gateway.delete(&ConnectionId::new("abc")).await.unwrap();
    assert!(matches!(
        gateway.delete(&ConnectionId::new("gone")).await,
        Err(PushError::Gone)
    ));
    let methods: Vec<Method> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(m, _, _)| m.clone())
        .collect();
    assert_eq!(
        methods,
        vec![Method::GET, Method::GET, Method::DELETE, Method::DELETE]
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_quickly_as_other() {
    // A port that was free a moment ago: connection refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let gateway = ApiGatewayManagement::new(&sdk(), &format!("http://{addr}/local"));
    let result = gateway
        .post(&ConnectionId::new("x"), bytes::Bytes::from_static(b"x"))
        .await;
    assert!(matches!(result, Err(PushError::Other(_))), "{result:?}");
}
