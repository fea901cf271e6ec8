//! The handlers driven by recorded API Gateway and SQS events (`tests/fixtures/`), on the
//! memory store, with a recording gateway standing in for `@connections`.
//!
//! The set-up every handler's tests share is here; each handler's tests are a module.

mod authorizer;
mod connection;
mod history;
mod message;
mod mqtt;
mod poll;
mod presence;
mod publish;
mod stream;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use herald::auth::{AuthConfig, AuthError, JwtKey, Verifier};
use herald::config::Config;
use herald::events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayWebsocketProxyRequest,
};
use herald::events::iam::IamPolicyEffect;
use herald::gateway::{RecordingGateway, Scripted};
use herald::handlers::{self, PublishError, Services};
use herald::ids::ConnectionId;
use herald::protocol::RoomName;
use herald::store::MemoryStore;
use serde_json::{Value, json};

const AUTHORIZER: &str = include_str!("../../../fixtures/authorizer-request.json");
const CONNECT: &str = include_str!("../../../fixtures/connect.json");
const SUBSCRIBE: &str = include_str!("../../../fixtures/message-subscribe.json");
const DEFAULT: &str = include_str!("../../../fixtures/message-default.json");
const DISCONNECT: &str = include_str!("../../../fixtures/disconnect.json");
const SQS: &str = include_str!("../../../fixtures/publish-sqs.json");

/// The connection id every route fixture carries.
const FIXTURE_ID: &str = "Qm3xLcB5joECFYg=";

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).expect("fixtures are JSON")
}

fn ws_event(value: Value) -> ApiGatewayWebsocketProxyRequest {
    serde_json::from_value(value).expect("a WebSocket route event")
}

/// A route fixture re-addressed to `id` (for `user`), with `body` when given.
fn route(text: &str, id: &str, user: &str, body: Option<Value>) -> ApiGatewayWebsocketProxyRequest {
    let mut event = fixture(text);
    event["requestContext"]["connectionId"] = json!(id);
    event["requestContext"]["authorizer"]["sub"] = json!(user);
    event["requestContext"]["authorizer"]["principalId"] = json!(user);
    if let Some(body) = body {
        event["body"] = json!(body.to_string());
    }
    ws_event(event)
}

struct World {
    services: Services,
    store: Arc<MemoryStore>,
    gateway: RecordingGateway,
}

fn world() -> World {
    world_with(&[])
}

fn world_with(vars: &[(&str, &str)]) -> World {
    let vars: std::collections::HashMap<_, _> = vars.iter().copied().collect();
    let config = Config::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned())).unwrap();
    let store = Arc::new(MemoryStore::new());
    World {
        services: herald::compose::services(store.clone(), &config),
        store,
        gateway: RecordingGateway::new(),
    }
}

impl World {
    /// Connects `id` for `user` through the connect handler, as the fixture's `$connect`.
    async fn connect(&self, id: &str, user: &str) -> i64 {
        handlers::connect(&self.services, &route(CONNECT, id, user, None))
            .await
            .status_code
    }

    /// Sends `body` from `id` (user alice unless re-addressed) through the message handler.
    async fn send(&self, id: &str, body: Value) -> i64 {
        let event = route(SUBSCRIBE, id, "alice", Some(body));
        handlers::message(&self.services, &self.gateway, &event)
            .await
            .status_code
    }

    fn replies(&self, id: &str) -> Vec<Value> {
        self.gateway.messages_to(&ConnectionId::new(id))
    }

    fn last_reply(&self, id: &str) -> Value {
        self.replies(id).pop().expect("a reply was posted")
    }

    async fn publish(&self, payload: Value) -> Result<Value, PublishError> {
        handlers::publish(&self.services, &self.gateway, payload).await
    }
}

fn fixture_verifier() -> Verifier {
    Verifier::new(&AuthConfig {
        key: JwtKey::Secret(b"herald-fixture-secret".to_vec()),
        issuer: None,
        audience: None,
    })
    .unwrap()
}

/// A recorded HTTP event (payload 2.0) with `query` as its parameters and `token` as its
/// bearer token (none when `None`).
fn with_query(mut event: Value, query: &[(&str, &str)], token: Option<&str>) -> Value {
    let params: serde_json::Map<String, Value> = query
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    event["queryStringParameters"] = Value::Object(params);
    let headers = event["headers"]
        .as_object_mut()
        .expect("events have headers");
    match token {
        Some(token) => headers.insert("authorization".into(), json!(format!("Bearer {token}"))),
        None => headers.remove("authorization"),
    };
    event
}

/// Asserts that alice's reader is the only member of `orders`, and that a publish there
/// posts nothing: fan-out skips a reader (it reads history instead) and does not forget it.
async fn alice_reads_orders_unposted(w: &World) {
    let present = w.publish(json!({"presence": "orders"})).await.unwrap();
    assert_eq!(present["count"], 1, "{present}");
    assert_eq!(present["members"][0]["user"], "alice");
    let reader = present["members"][0]["connectionId"].as_str().unwrap();
    assert!(reader.starts_with(herald::ids::READER_PREFIX), "{reader}");
    let published = w
        .publish(json!({"room": "orders", "data": 1}))
        .await
        .unwrap();
    assert_eq!(
        (
            &published["delivered"],
            &published["gone"],
            &published["failed"]
        ),
        (&json!(0), &json!(0), &json!(0)),
        "{published}"
    );
}

fn alice_token() -> String {
    herald::auth::sign_hs256(b"herald-fixture-secret", "alice", &["orders"], &[], 3600).unwrap()
}

/// A world keeping 2 notifications per room, alice's token, and a cursor taken before 3
/// were published to `orders`: history no longer covers it.
async fn a_cursor_history_outran() -> (World, String, String) {
    let w = world_with(&[("HERALD_HISTORY_SIZE", "2")]);
    let token = alice_token();
    let (_, start) =
        poll::poll_answer(&w, &[("rooms", "orders"), ("wait", "0")], Some(&token)).await;
    let cursor = start["cursor"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        w.publish(json!({"room":"orders","data":n})).await.unwrap();
    }
    (w, token, cursor)
}
