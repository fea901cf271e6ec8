//! The handlers driven by recorded API Gateway and SQS events (`tests/fixtures/`), on the
//! memory store, with a recording gateway standing in for `@connections`.

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
use herald::store::{ConnectionStore, MemoryStore};
use serde_json::{Value, json};

const AUTHORIZER: &str = include_str!("../fixtures/authorizer-request.json");
const CONNECT: &str = include_str!("../fixtures/connect.json");
const SUBSCRIBE: &str = include_str!("../fixtures/message-subscribe.json");
const DEFAULT: &str = include_str!("../fixtures/message-default.json");
const DISCONNECT: &str = include_str!("../fixtures/disconnect.json");
const SQS: &str = include_str!("../fixtures/publish-sqs.json");

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

// --- authorizer ---------------------------------------------------------------------------

fn fixture_verifier() -> Verifier {
    Verifier::new(&AuthConfig {
        key: JwtKey::Secret(b"herald-fixture-secret".to_vec()),
        issuer: None,
        audience: None,
    })
    .unwrap()
}

fn authorizer_event(edit: impl FnOnce(&mut Value)) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
    let mut event = fixture(AUTHORIZER);
    edit(&mut event);
    serde_json::from_value(event).expect("an authorizer event")
}

#[test]
fn authorizer_allows_the_method_arn_with_the_identity_as_context() {
    let response = handlers::authorize(&fixture_verifier(), &authorizer_event(|_| {})).unwrap();
    assert_eq!(response.principal_id.as_deref(), Some("alice"));
    let policy = &response.policy_document;
    assert_eq!(policy.version.as_deref(), Some("2012-10-17"));
    assert_eq!(policy.statement.len(), 1);
    assert_eq!(policy.statement[0].effect, IamPolicyEffect::Allow);
    assert_eq!(policy.statement[0].action, vec!["execute-api:Invoke"]);
    assert_eq!(
        policy.statement[0].resource,
        vec!["arn:aws:execute-api:eu-west-1:123456789012:k3lzx8qv2d/prod/$connect"]
    );
    assert_eq!(
        response.context,
        json!({"sub":"alice","rooms":"orders,team:*","publish":"chat:*"})
    );
    // Serialized as API Gateway reads it.
    let wire = serde_json::to_value(&response).unwrap();
    assert_eq!(wire["principalId"], "alice");
    assert_eq!(wire["policyDocument"]["Statement"][0]["Effect"], "Allow");
}

#[test]
fn authorizer_takes_a_bearer_header_when_there_is_no_query_token() {
    let event = authorizer_event(|e| {
        let token = e["queryStringParameters"]["token"].clone();
        e["queryStringParameters"] = json!({});
        e["multiValueQueryStringParameters"] = json!({});
        e["headers"]["Authorization"] = json!(format!("Bearer {}", token.as_str().unwrap()));
    });
    let response = handlers::authorize(&fixture_verifier(), &event).unwrap();
    assert_eq!(response.principal_id.as_deref(), Some("alice"));
}

#[test]
fn authorizer_refuses_missing_and_bad_tokens() {
    let no_token = authorizer_event(|e| {
        e["queryStringParameters"] = json!({});
        e["multiValueQueryStringParameters"] = json!({});
    });
    assert_eq!(
        handlers::authorize(&fixture_verifier(), &no_token).unwrap_err(),
        AuthError::MissingToken
    );
    let other_secret = Verifier::new(&AuthConfig {
        key: JwtKey::Secret(b"another-secret".to_vec()),
        issuer: None,
        audience: None,
    })
    .unwrap();
    assert_eq!(
        handlers::authorize(&other_secret, &authorizer_event(|_| {})).unwrap_err(),
        AuthError::BadSignature
    );
}

// --- connect / disconnect -----------------------------------------------------------------

#[tokio::test]
async fn connect_stores_the_connection_with_its_identity() {
    let w = world();
    let response = handlers::connect(&w.services, &ws_event(fixture(CONNECT))).await;
    assert_eq!(response.status_code, 200);
    let stored = w
        .store
        .get(&ConnectionId::new(FIXTURE_ID))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.user, "alice");
    assert_eq!(stored.source_ip.as_deref(), Some("203.0.113.24"));
    assert_eq!(stored.connected_at, 1_795_945_200_000);
    let lifetime = i64::try_from(w.services.limits.connection_lifetime.as_millis()).unwrap();
    let expected = herald::ids::now_ms() + lifetime;
    assert!((expected - 5_000..=expected).contains(&stored.expires_at));
}

#[tokio::test]
async fn connect_refuses_a_user_over_the_limit_with_429() {
    let w = world_with(&[("HERALD_MAX_CONNECTIONS_PER_USER", "2")]);
    assert_eq!(w.connect("c1", "bob").await, 200);
    assert_eq!(w.connect("c2", "bob").await, 200);
    assert_eq!(w.connect("c3", "bob").await, 429);
    assert_eq!(w.connect("c4", "carol").await, 200, "the limit is per user");
    assert_eq!(w.store.count_user("bob").await.unwrap(), 2);
    handlers::disconnect(&w.services, &route(DISCONNECT, "c1", "bob", None)).await;
    assert_eq!(
        w.connect("c3", "bob").await,
        200,
        "a freed slot can be used"
    );
}

#[tokio::test]
async fn connect_without_authorizer_context_is_refused() {
    let w = world();
    let mut event = fixture(CONNECT);
    event["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("authorizer");
    let response = handlers::connect(&w.services, &ws_event(event)).await;
    assert_eq!(response.status_code, 401);
    assert_eq!(
        w.store.get(&ConnectionId::new(FIXTURE_ID)).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn disconnect_forgets_the_connection_and_its_rooms_idempotently() {
    let w = world();
    assert_eq!(w.connect(FIXTURE_ID, "alice").await, 200);
    handlers::message(&w.services, &w.gateway, &ws_event(fixture(SUBSCRIBE))).await;
    let room = RoomName::parse("orders").unwrap();
    assert_eq!(
        w.store
            .room_members(&room, None, 10)
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let event = ws_event(fixture(DISCONNECT));
    assert_eq!(event.request_context.disconnect_status_code, Some(1001));
    assert_eq!(
        handlers::disconnect(&w.services, &event).await.status_code,
        200
    );
    assert_eq!(
        w.store.get(&ConnectionId::new(FIXTURE_ID)).await.unwrap(),
        None
    );
    assert!(
        w.store
            .room_members(&room, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        handlers::disconnect(&w.services, &event).await.status_code,
        200
    );
}

// --- message ------------------------------------------------------------------------------

#[tokio::test]
async fn subscribe_fixture_joins_the_room_and_replies_with_the_ref() {
    let w = world();
    w.connect(FIXTURE_ID, "alice").await;
    let event = ws_event(fixture(SUBSCRIBE));
    assert_eq!(
        event.request_context.message_id.as_deref(),
        Some("Qm3xQeTujoECJ8A=")
    );
    let response = handlers::message(&w.services, &w.gateway, &event).await;
    assert_eq!(response.status_code, 200);
    let reply = w.last_reply(FIXTURE_ID);
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(reply["room"], "orders");
    assert_eq!(reply["ref"], "r1");
    assert_eq!(reply["offset"], 0, "nothing published to it yet: {reply}");
    assert!(reply["epoch"].is_string(), "{reply}");
    let rooms = w
        .store
        .rooms_of(&ConnectionId::new(FIXTURE_ID))
        .await
        .unwrap();
    assert_eq!(rooms, vec![RoomName::parse("orders").unwrap()]);
}

#[tokio::test]
async fn default_route_answers_garbage_with_an_error_frame() {
    let w = world();
    w.connect(FIXTURE_ID, "alice").await;
    let response = handlers::message(&w.services, &w.gateway, &ws_event(fixture(DEFAULT))).await;
    assert_eq!(response.status_code, 200);
    let reply = w.last_reply(FIXTURE_ID);
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "bad_request");
    // Still connected and usable.
    assert_eq!(w.send(FIXTURE_ID, json!({"action":"ping"})).await, 200);
    assert_eq!(w.last_reply(FIXTURE_ID), json!({"type":"pong"}));
}

#[tokio::test]
async fn every_kind_of_bad_input_gets_its_error_code() {
    let w = world();
    w.connect("c1", "alice").await;
    let cases = [
        (json!({"action":"dance"}), "unknown_action"),
        (json!({"room":"orders"}), "bad_request"),
        (json!({"action":"subscribe"}), "bad_request"),
        (json!({"action":"subscribe","room":"a b"}), "bad_request"),
        (json!({"action":"subscribe","room":"secret"}), "forbidden"),
        // Input errors come before permission errors.
        (
            json!({"action":"subscribe","room":"secret","bogus":1}),
            "bad_request",
        ),
        (
            json!({"action":"publish","room":"orders","data":1}),
            "forbidden",
        ),
        (json!({"action":"publish","room":"chat:x"}), "bad_request"),
        (
            json!({"action":"publish","room":"chat:x","data":"x".repeat(140 * 1024)}),
            "too_large",
        ),
    ];
    for (body, code) in cases {
        w.send("c1", body.clone()).await;
        let reply = w.last_reply("c1");
        assert_eq!(reply["type"], "error", "{body}");
        assert_eq!(reply["code"], code, "{body}: {reply}");
    }
    w.send("c1", json!({"action":"whoami","ref":9})).await;
    assert_eq!(
        w.last_reply("c1"),
        json!({"type":"whoami","connectionId":"c1","user":"alice","ref":9})
    );
}

#[tokio::test]
async fn subscribe_checks_patterns_and_unsubscribe_leaves() {
    let w = world();
    w.connect("c1", "alice").await;
    w.send("c1", json!({"action":"subscribe","room":"team:blue"}))
        .await;
    let blue = w.last_reply("c1");
    assert_eq!(
        blue,
        json!({"type":"subscribed","room":"team:blue","offset":0,"epoch":blue["epoch"]})
    );
    w.send(
        "c1",
        json!({"action":"subscribe","room":"team:red","since":{"offset":3,"epoch":"gone"}}),
    )
    .await;
    let red = w.last_reply("c1");
    assert_eq!(
        red,
        json!({"type":"subscribed","room":"team:red","recovered":false,"offset":0,"epoch":red["epoch"]})
    );
    assert_ne!(red["epoch"], "gone");
    w.send(
        "c1",
        json!({"action":"unsubscribe","room":"team:blue","ref":"u"}),
    )
    .await;
    assert_eq!(
        w.last_reply("c1"),
        json!({"type":"unsubscribed","room":"team:blue","ref":"u"})
    );
    let rooms = w.store.rooms_of(&ConnectionId::new("c1")).await.unwrap();
    assert_eq!(rooms, vec![RoomName::parse("team:red").unwrap()]);
}

#[tokio::test]
async fn a_connection_joins_at_most_its_cap_of_rooms_and_stays_open() {
    let w = world_with(&[("HERALD_MAX_ROOMS_PER_CONNECTION", "3")]);
    w.connect("c1", "alice").await;
    for room in ["team:a", "team:b", "team:c"] {
        w.send("c1", json!({"action":"subscribe","room":room}))
            .await;
        assert_eq!(w.last_reply("c1")["type"], "subscribed", "{room}");
    }
    w.send("c1", json!({"action":"subscribe","room":"team:d","ref":4}))
        .await;
    let refused = w.last_reply("c1");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "limit_exceeded", "{refused}");
    assert_eq!(refused["ref"], 4);
    // Joining a room it holds is no new room; leaving one makes space.
    w.send("c1", json!({"action":"subscribe","room":"team:a"}))
        .await;
    assert_eq!(w.last_reply("c1")["type"], "subscribed");
    w.send("c1", json!({"action":"unsubscribe","room":"team:b"}))
        .await;
    w.send("c1", json!({"action":"subscribe","room":"team:d"}))
        .await;
    assert_eq!(w.last_reply("c1")["type"], "subscribed");
    let rooms = w.store.rooms_of(&ConnectionId::new("c1")).await.unwrap();
    assert_eq!(rooms.len(), 3);
}

#[tokio::test]
async fn the_default_cap_is_256_rooms() {
    let w = world();
    w.connect("c1", "alice").await;
    for n in 0..256 {
        w.send(
            "c1",
            json!({"action":"subscribe","room":format!("team:{n}")}),
        )
        .await;
        assert_eq!(w.last_reply("c1")["type"], "subscribed", "room {n}");
    }
    w.send("c1", json!({"action":"subscribe","room":"team:256"}))
        .await;
    assert_eq!(w.last_reply("c1")["code"], "limit_exceeded");
    let off = world_with(&[("HERALD_MAX_ROOMS_PER_CONNECTION", "0")]);
    off.connect("c1", "alice").await;
    for n in 0..300 {
        off.send(
            "c1",
            json!({"action":"subscribe","room":format!("team:{n}")}),
        )
        .await;
    }
    assert_eq!(off.last_reply("c1")["type"], "subscribed", "0 turns it off");
}

#[tokio::test]
async fn socket_publishes_are_limited_per_user_across_connections() {
    let w = world_with(&[
        ("HERALD_SOCKET_PUBLISH_PER_SECOND", "2"),
        ("HERALD_SOCKET_PUBLISH_BURST", "4"),
    ]);
    // Two connections of one user share the limit: 4 in the window, then refusals.
    for id in ["one", "two"] {
        w.connect(id, "alice").await;
    }
    let publish = |n: u32| json!({"action":"publish","room":"chat:lobby","data":n,"ref":n});
    // Begin in the first half of a two-second window, so all six fall in one.
    let into = herald::ids::now_ms().rem_euclid(2_000);
    if into > 1_000 {
        let rest = u64::try_from(2_000 - into + 20).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(rest)).await;
    }
    let mut published = 0;
    for n in 0..6 {
        let id = if n % 2 == 0 { "one" } else { "two" };
        w.send(id, publish(n)).await;
        let reply = w.last_reply(id);
        match reply["type"].as_str() {
            Some("published") => published += 1,
            _ => {
                assert_eq!(reply["code"], "rate_limited", "{reply}");
                assert_eq!(reply["ref"], n);
            }
        }
    }
    assert_eq!(published, 4);
    let off = world_with(&[("HERALD_SOCKET_PUBLISH_PER_SECOND", "0")]);
    off.connect("one", "alice").await;
    for n in 0..30 {
        off.send("one", publish(n)).await;
        assert_eq!(off.last_reply("one")["type"], "published", "publish {n}");
    }
}

#[tokio::test]
async fn a_room_limit_also_refuses_socket_publishes_as_rate_limited() {
    let w = world_with(&[
        ("HERALD_ROOM_PUBLISH_PER_SECOND", "1"),
        ("HERALD_ROOM_PUBLISH_BURST", "2"),
        ("HERALD_SOCKET_PUBLISH_PER_SECOND", "0"),
    ]);
    w.connect("one", "alice").await;
    // Begin in the first half of a two-second window, so all three fall in one.
    let into = herald::ids::now_ms().rem_euclid(2_000);
    if into > 1_000 {
        let rest = u64::try_from(2_000 - into + 20).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(rest)).await;
    }
    let mut kinds = Vec::new();
    for n in 0..3 {
        w.send(
            "one",
            json!({"action":"publish","room":"chat:lobby","data":n,"ref":n}),
        )
        .await;
        let reply = w.last_reply("one");
        kinds.push(reply["code"].as_str().unwrap_or("published").to_owned());
    }
    assert_eq!(kinds, ["published", "published", "rate_limited"]);
}

#[tokio::test]
async fn publish_rights_are_not_subscribe_rights() {
    let w = world();
    for id in ["pub", "other"] {
        w.connect(id, "alice").await;
    }
    // The fixture's alice may publish to chat:* but not subscribe to it.
    w.send("other", json!({"action":"subscribe","room":"chat:lobby"}))
        .await;
    assert_eq!(w.last_reply("other")["code"], "forbidden");
    w.send(
        "pub",
        json!({"action":"publish","room":"chat:lobby","data":{"hi":1},"ref":"p"}),
    )
    .await;
    let reply = w.last_reply("pub");
    assert_eq!(reply["type"], "published");
    assert_eq!(reply["room"], "chat:lobby");
    assert_eq!(reply["ref"], "p");
    assert_eq!(reply["id"].as_str().unwrap().len(), 32);
    assert_eq!(
        w.replies("other").len(),
        1,
        "a non-subscriber receives nothing"
    );
}

#[tokio::test]
async fn socket_publish_delivers_to_members_including_the_sender() {
    let w = world();
    for id in ["a", "b", "c"] {
        w.connect(id, "alice").await;
    }
    let event = |id: &str, body: Value| {
        let mut event = route(SUBSCRIBE, id, "alice", Some(body));
        event
            .request_context
            .authorizer
            .fields
            .insert("rooms".into(), json!("chat:*"));
        event
    };
    for id in ["a", "b"] {
        handlers::message(
            &w.services,
            &w.gateway,
            &event(id, json!({"action":"subscribe","room":"chat:1"})),
        )
        .await;
    }
    handlers::message(
        &w.services,
        &w.gateway,
        &event(
            "a",
            json!({"action":"publish","room":"chat:1","data":{"n":1}}),
        ),
    )
    .await;
    let to_a = w.replies("a");
    let notification = &to_a[1];
    assert_eq!(notification["type"], "notification");
    assert_eq!(notification["room"], "chat:1");
    assert_eq!(notification["data"], json!({"n":1}));
    assert_eq!(to_a[2]["type"], "published");
    assert_eq!(to_a[2]["id"], notification["id"]);
    assert_eq!(w.replies("b")[1], *notification);
    assert!(w.replies("c").is_empty());
}

#[tokio::test]
async fn a_sender_that_has_gone_is_forgotten() {
    let w = world();
    w.connect("c1", "alice").await;
    w.gateway.script(&ConnectionId::new("c1"), Scripted::Gone);
    assert_eq!(w.send("c1", json!({"action":"ping"})).await, 200);
    assert_eq!(w.store.get(&ConnectionId::new("c1")).await.unwrap(), None);
}

#[tokio::test]
async fn a_message_from_an_expired_connection_is_told_to_reconnect() {
    let w = world();
    w.connect("c1", "alice").await;
    w.store.remove(&ConnectionId::new("c1")).await.unwrap();
    w.send("c1", json!({"action":"subscribe","room":"orders"}))
        .await;
    let reply = w.last_reply("c1");
    assert_eq!(reply["code"], "internal");
    assert!(reply["message"].as_str().unwrap().contains("reconnect"));
}

// --- publish ------------------------------------------------------------------------------

async fn subscribed(w: &World, id: &str, user: &str, room: &str) {
    assert_eq!(w.connect(id, user).await, 200);
    w.store
        .join(&ConnectionId::new(id), &RoomName::parse(room).unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn publish_reaches_each_kind_of_target() {
    let w = world();
    subscribed(&w, "r1", "u1", "orders").await;
    subscribed(&w, "r2", "u2", "orders").await;
    subscribed(&w, "x", "u2", "elsewhere").await;

    let room = w
        .publish(json!({"room":"orders","data":{"n":1}}))
        .await
        .unwrap();
    assert_eq!(
        (
            room["delivered"].clone(),
            room["gone"].clone(),
            room["failed"].clone()
        ),
        (json!(2), json!(0), json!(0))
    );
    let got = w.last_reply("r1");
    assert_eq!(got["room"], "orders");
    assert_eq!(got["id"], room["id"]);
    assert!(w.replies("x").is_empty());

    let user = w.publish(json!({"user":"u2","data":"hi"})).await.unwrap();
    assert_eq!(user["delivered"], 2);
    assert_eq!(w.last_reply("x")["user"], "u2");

    // The recording double accepts any id; script the unknown one as API Gateway answers it.
    w.gateway
        .script(&ConnectionId::new("missing"), Scripted::Gone);
    let listed = w
        .publish(json!({"connections":["r1","missing"],"data":1}))
        .await
        .unwrap();
    assert_eq!(
        (listed["delivered"].clone(), listed["gone"].clone()),
        (json!(1), json!(1))
    );

    let everyone = w.publish(json!({"broadcast":true,"data":1})).await.unwrap();
    assert_eq!(everyone["delivered"], 3);
    assert!(w.last_reply("x").get("room").is_none());
}

#[tokio::test]
async fn publish_batches_deliver_in_list_order() {
    let w = world();
    subscribed(&w, "r1", "u1", "orders").await;
    let answer = w
        .publish(json!({"messages":[
            {"room":"orders","data":1},
            {"room":"orders","data":2},
            {"user":"u1","data":3}
        ]}))
        .await
        .unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r["delivered"] == 1));
    let data: Vec<Value> = w.replies("r1").iter().map(|m| m["data"].clone()).collect();
    assert_eq!(data, vec![json!(1), json!(2), json!(3)]);
}

#[tokio::test]
async fn invalid_publishes_are_bad_requests_and_deliver_nothing() {
    let w = world();
    subscribed(&w, "r1", "u1", "orders").await;
    for payload in [
        json!({"data":1}),
        json!({"room":"orders","user":"u1","data":1}),
        json!({"messages":[{"room":"orders","data":1},{"room":"bad room","data":2}]}),
        json!({"room":"orders","data":"x".repeat(130 * 1024)}),
        json!("just a string"),
    ] {
        let err = w.publish(payload.clone()).await.unwrap_err();
        assert_eq!(err.error_type(), "BadRequest", "{payload}");
    }
    assert!(
        w.replies("r1").is_empty(),
        "a batch is validated before anything is sent"
    );
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_id_and_delivers_nothing() {
    let w = world();
    subscribed(&w, "r1", "u1", "orders").await;
    let first = w
        .publish(json!({"room":"orders","data":1,"id":"order-42"}))
        .await
        .unwrap();
    let again = w
        .publish(json!({"room":"orders","data":1,"id":"order-42"}))
        .await
        .unwrap();
    assert_eq!(first["delivered"], 1);
    assert_eq!(
        again,
        json!({"id": first["id"], "delivered":0, "gone":0, "failed":0})
    );
    assert_eq!(w.replies("r1").len(), 1);
    let other = w
        .publish(json!({"room":"orders","data":1,"id":"order-43"}))
        .await
        .unwrap();
    assert_ne!(other["id"], first["id"]);
}

#[tokio::test]
async fn idempotency_keys_are_forgotten_after_the_window() {
    let w = world_with(&[("HERALD_IDEMPOTENCY_WINDOW_SECS", "1")]);
    subscribed(&w, "r1", "u1", "orders").await;
    w.publish(json!({"room":"orders","data":1,"id":"k"}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let later = w
        .publish(json!({"room":"orders","data":1,"id":"k"}))
        .await
        .unwrap();
    assert_eq!(later["delivered"], 1);
}

#[tokio::test]
async fn sqs_reports_only_invalid_records_as_failures() {
    let w = world();
    subscribed(&w, "r1", "alice", "orders").await;
    let answer = w.publish(fixture(SQS)).await.unwrap();
    let failed: Vec<&str> = answer["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        vec![
            "5d9f2e71-8c3b-4a6d-b1e0-2c7a9e4f6b02",
            "9e1c7b3a-4d2f-4e8b-a5c6-7f0d2b1e3c03"
        ]
    );
    let data: Vec<Value> = w.replies("r1").iter().map(|m| m["data"].clone()).collect();
    assert_eq!(
        data,
        vec![
            json!({"order":42,"status":"shipped"}),
            json!("first"),
            json!("second")
        ]
    );
}

#[tokio::test]
async fn sqs_does_not_retry_records_whose_recipients_failed() {
    let w = world();
    subscribed(&w, "r1", "alice", "orders").await;
    w.gateway.script(&ConnectionId::new("r1"), Scripted::Fails);
    let answer = w.publish(fixture(SQS)).await.unwrap();
    assert_eq!(answer["batchItemFailures"].as_array().unwrap().len(), 2);
}

// --- history ------------------------------------------------------------------------------

#[tokio::test]
async fn a_history_reply_fits_one_frame_and_says_when_it_was_cut() {
    let w = world();
    w.connect("c1", "alice").await;
    let big = "x".repeat(50 * 1024);
    for n in 1..=3 {
        let answer = w
            .publish(json!({"room":"orders","data":{"n":n,"big":big}}))
            .await
            .unwrap();
        assert_eq!(answer["offset"], n);
    }
    w.send("c1", json!({"action":"history","room":"orders","limit":10}))
        .await;
    let posted = w.gateway.posts().pop().expect("a reply").1;
    assert!(posted.len() <= herald::protocol::MAX_NOTIFICATION_BYTES);
    let reply: Value = serde_json::from_slice(&posted).unwrap();
    let offsets = |reply: &Value| -> Vec<u64> {
        reply["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["offset"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(offsets(&reply), [2, 3], "the newest that fit");
    assert_eq!(reply["truncated"], true);
    let epoch = reply["epoch"].clone();
    w.send(
        "c1",
        json!({"action":"history","room":"orders","since":{"offset":0,"epoch":epoch}}),
    )
    .await;
    let reply = w.last_reply("c1");
    assert_eq!(
        offsets(&reply),
        [1, 2],
        "the oldest after since, to page on"
    );
    assert_eq!(reply["truncated"], true);
    w.send("c1", json!({"action":"history","room":"orders","limit":1}))
        .await;
    let reply = w.last_reply("c1");
    assert_eq!(offsets(&reply), [3]);
    assert_eq!(reply.get("truncated"), None, "all that was asked for");
}

#[tokio::test]
async fn a_replay_stops_when_the_connection_is_gone() {
    let w = world();
    w.connect("c1", "alice").await;
    let first = w.publish(json!({"room":"orders","data":0})).await.unwrap();
    for n in 1..=3 {
        w.publish(json!({"room":"orders","data":n})).await.unwrap();
    }
    w.gateway.script(&ConnectionId::new("c1"), Scripted::Gone);
    let since = json!({"offset":1,"epoch":first["epoch"]});
    assert_eq!(
        w.send(
            "c1",
            json!({"action":"subscribe","room":"orders","since":since})
        )
        .await,
        200
    );
    assert_eq!(
        w.gateway.attempts(&ConnectionId::new("c1")),
        1,
        "no post after the 410"
    );
    assert_eq!(w.store.get(&ConnectionId::new("c1")).await.unwrap(), None);
}

#[tokio::test]
async fn a_replay_that_cannot_be_finished_closes_the_connection() {
    let w = world();
    let first = w.publish(json!({"user":"alice","data":0})).await.unwrap();
    for n in 1..=3 {
        w.publish(json!({"user":"alice","data":n})).await.unwrap();
    }
    w.connect("c1", "alice").await;
    let id = ConnectionId::new("c1");
    // The reply and the first replayed notification go through, then every post fails.
    w.gateway.script(&id, Scripted::FailsAfter(2));
    w.send(
        "c1",
        json!({"action":"recover","since":{"offset":1,"epoch":first["epoch"]}}),
    )
    .await;
    let posted = w.replies("c1");
    assert_eq!(posted.len(), 2, "{posted:?}");
    assert_eq!(posted[0]["recovered"], true);
    assert_eq!(
        w.gateway.deleted(),
        vec![id],
        "closed, so the client recovers again rather than believe it has everything"
    );
}

#[tokio::test]
async fn a_throttled_replay_is_retried_and_completes() {
    let w = world();
    let first = w.publish(json!({"user":"alice","data":0})).await.unwrap();
    w.publish(json!({"user":"alice","data":1})).await.unwrap();
    w.connect("c1", "alice").await;
    let id = ConnectionId::new("c1");
    w.gateway.script(&id, Scripted::ThrottledTimes(2));
    w.send(
        "c1",
        json!({"action":"recover","since":{"offset":1,"epoch":first["epoch"]}}),
    )
    .await;
    let posted = w.replies("c1");
    assert_eq!(posted.len(), 2, "the reply and the one missed: {posted:?}");
    assert_eq!(posted[1]["data"], 1);
    assert_eq!(w.gateway.attempts(&id), 4, "two 429s retried");
    assert!(w.gateway.deleted().is_empty());
}

#[tokio::test]
async fn a_recovery_replays_the_user_inbox_through_the_gateway_in_order() {
    let w = world();
    w.connect("c1", "alice").await;
    let first = w.publish(json!({"user":"alice","data":0})).await.unwrap();
    for n in 1..=3 {
        w.publish(json!({"user":"alice","data":n})).await.unwrap();
    }
    let before = w.replies("c1").len();
    w.send(
        "c1",
        json!({"action":"recover","since":{"offset":1,"epoch":first["epoch"]},"ref":"r"}),
    )
    .await;
    let posted = w.replies("c1").split_off(before);
    assert_eq!(
        posted[0],
        json!({"type":"recovered","recovered":true,"offset":4,"epoch":first["epoch"],"ref":"r"})
    );
    let data: Vec<Value> = posted[1..].iter().map(|n| n["data"].clone()).collect();
    assert_eq!(data, [json!(1), json!(2), json!(3)]);
}

// --- poll (HTTP API) ----------------------------------------------------------------------

const POLL: &str = include_str!("../fixtures/poll-http-api.json");

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

/// The recorded `GET /poll` with `query` as its parameters and a token for alice.
fn poll_event(
    query: &[(&str, &str)],
    token: Option<&str>,
) -> herald::events::apigw::ApiGatewayV2httpRequest {
    let event = with_query(fixture(POLL), query, token);
    serde_json::from_value(event).expect("an HTTP API event")
}

fn alice_token() -> String {
    herald::auth::sign_hs256(b"herald-fixture-secret", "alice", &["orders"], &[], 3600).unwrap()
}

async fn poll_answer(w: &World, query: &[(&str, &str)], token: Option<&str>) -> (i64, Value) {
    let response =
        handlers::poll(&w.services, &fixture_verifier(), &poll_event(query, token)).await;
    let body = match response.body {
        Some(herald::events::encodings::Body::Text(text)) => serde_json::from_str(&text).unwrap(),
        other => panic!("a JSON body, not {other:?}"),
    };
    (response.status_code, body)
}

#[tokio::test]
async fn poll_fixture_answers_what_followed_the_cursor() {
    let w = world();
    let token = alice_token();
    let (status, start) =
        poll_answer(&w, &[("rooms", "orders"), ("wait", "0")], Some(&token)).await;
    assert_eq!(status, 200, "{start}");
    assert_eq!(start["notifications"], json!([]));
    let cursor = start["cursor"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        w.publish(json!({"room":"orders","data":n})).await.unwrap();
    }
    w.publish(json!({"user":"alice","data":"mine"}))
        .await
        .unwrap();
    let (_, missed) = poll_answer(
        &w,
        &[("rooms", "orders"), ("cursor", &cursor), ("wait", "0")],
        Some(&token),
    )
    .await;
    let data: Vec<Value> = missed["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["data"].clone())
        .collect();
    assert_eq!(
        data,
        [json!(1), json!(2), json!(3), json!("mine")],
        "rooms, then the inbox"
    );
    assert_eq!(missed["reset"], false);
    let after = missed["cursor"].as_str().unwrap().to_owned();
    let (_, none) = poll_answer(
        &w,
        &[("rooms", "orders"), ("cursor", &after), ("wait", "0")],
        Some(&token),
    )
    .await;
    assert_eq!(none["notifications"], json!([]), "nothing twice");
}

#[tokio::test(start_paused = true)]
async fn a_poll_with_nothing_to_answer_waits_then_answers_empty() {
    let w = world();
    let token = alice_token();
    let started = tokio::time::Instant::now();
    let (status, empty) =
        poll_answer(&w, &[("rooms", "orders"), ("wait", "3")], Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(empty["notifications"], json!([]));
    assert_eq!(started.elapsed(), std::time::Duration::from_secs(3));
}

#[tokio::test]
async fn poll_refusals_say_why() {
    let w = world();
    let token = alice_token();
    let (status, _) = poll_answer(&w, &[("rooms", "orders")], None).await;
    assert_eq!(status, 401);
    let (status, _) = poll_answer(&w, &[("rooms", "orders")], Some("not-a-token")).await;
    assert_eq!(status, 401);
    let (status, body) = poll_answer(&w, &[("rooms", "orders,payroll")], Some(&token)).await;
    assert_eq!((status, body["room"].clone()), (403, json!("payroll")));
    let (status, _) = poll_answer(&w, &[("rooms", "orders"), ("wait", "26")], Some(&token)).await;
    assert_eq!(status, 400);
    let (status, _) = poll_answer(&w, &[("rooms", "orders"), ("cursor", "!!")], Some(&token)).await;
    assert_eq!(status, 400);
    let (status, _) = poll_answer(&w, &[("rooms", "a b")], Some(&token)).await;
    assert_eq!(status, 400);
}

/// A world keeping 2 notifications per room, alice's token, and a cursor taken before 3
/// were published to `orders`: history no longer covers it.
async fn a_cursor_history_outran() -> (World, String, String) {
    let w = world_with(&[("HERALD_HISTORY_SIZE", "2")]);
    let token = alice_token();
    let (_, start) = poll_answer(&w, &[("rooms", "orders"), ("wait", "0")], Some(&token)).await;
    let cursor = start["cursor"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        w.publish(json!({"room":"orders","data":n})).await.unwrap();
    }
    (w, token, cursor)
}

#[tokio::test]
async fn a_poll_at_a_cursor_history_no_longer_covers_is_reset() {
    let (w, token, cursor) = a_cursor_history_outran().await;
    let (_, reset) = poll_answer(
        &w,
        &[("rooms", "orders"), ("cursor", &cursor)],
        Some(&token),
    )
    .await;
    assert_eq!(reset["reset"], true, "{reset}");
    assert_eq!(reset["notifications"], json!([]));
}

// --- stream (Function URL, response streaming) --------------------------------------------

const STREAM: &str = include_str!("../fixtures/stream-function-url.json");

/// The recorded Function URL request with `query` as its parameters, alice's token unless
/// `token` is `None`, and `Last-Event-ID` when given.
fn stream_event(
    query: &[(&str, &str)],
    token: Option<&str>,
    last_event_id: Option<&str>,
) -> herald::events::lambda_function_urls::LambdaFunctionUrlRequest {
    let mut event = with_query(fixture(STREAM), query, token);
    if let Some(id) = last_event_id {
        event["headers"]["last-event-id"] = json!(id);
    }
    serde_json::from_value(event).expect("a Function URL event")
}

/// One server-sent event.
#[derive(Debug)]
struct Sse {
    kind: String,
    id: String,
    data: Value,
}

/// The events in a chunk (comment lines and a lone `retry:` carry none).
fn sse_events(chunk: &[u8]) -> Vec<Sse> {
    let text = std::str::from_utf8(chunk).expect("an event stream is UTF-8");
    text.split_terminator("\n\n")
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .map(str::to_owned)
            };
            Some(Sse {
                kind: field("event")?,
                id: field("id").expect("every event has an id"),
                data: serde_json::from_str(&field("data")?).expect("data is JSON"),
            })
        })
        .collect()
}

async fn open_stream(
    w: &World,
    query: &[(&str, &str)],
    token: Option<&str>,
    last_event_id: Option<&str>,
    remaining: Duration,
) -> handlers::Streamed {
    let event = stream_event(query, token, last_event_id);
    handlers::stream(w.services.clone(), &fixture_verifier(), &event, remaining).await
}

async fn next_chunk(streamed: &mut handlers::Streamed) -> Option<Vec<u8>> {
    use futures::StreamExt as _;
    let chunk = streamed.body.next().await?;
    Some(chunk.expect("chunks cannot fail").to_vec())
}

#[tokio::test(start_paused = true)]
async fn stream_fixture_streams_what_follows_and_resumes_after_last_event_id() {
    let w = world();
    let token = alice_token();
    let minute = Duration::from_secs(60);
    let mut stream = open_stream(&w, &[("rooms", "orders")], Some(&token), None, minute).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    let opening = next_chunk(&mut stream).await.unwrap();
    assert_eq!(opening, b"retry: 1000\n\n", "from now: nothing to replay");
    for n in 1..=3 {
        w.publish(json!({"room":"orders","data":n})).await.unwrap();
    }
    w.publish(json!({"user":"alice","data":"mine"}))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let events = sse_events(&next_chunk(&mut stream).await.unwrap());
    assert!(
        started.elapsed() <= handlers::POLL_INTERVAL,
        "read every second"
    );
    let data: Vec<Value> = events.iter().map(|e| e.data["data"].clone()).collect();
    assert_eq!(data, [json!(1), json!(2), json!(3), json!("mine")]);
    assert!(events.iter().all(|e| e.kind == "notification"));
    assert_eq!(events[0].data["offset"], 1);

    // The browser reconnects with the id of the second event: the rest comes first.
    let mut again = open_stream(
        &w,
        &[("rooms", "orders")],
        Some(&token),
        Some(&events[1].id),
        minute,
    )
    .await;
    let replayed = sse_events(&next_chunk(&mut again).await.unwrap());
    let data: Vec<Value> = replayed.iter().map(|e| e.data["data"].clone()).collect();
    assert_eq!(data, [json!(3), json!("mine")], "after the cursor, once");
    assert_eq!(replayed[1].id, events[3].id, "the same cursor either way");
}

#[tokio::test(start_paused = true)]
async fn a_stream_keeps_alive_and_ends_before_the_timeout_with_retry() {
    let w = world();
    let token = alice_token();
    let remaining = Duration::from_secs(60);
    let started = tokio::time::Instant::now();
    let mut stream = open_stream(&w, &[("rooms", "orders")], Some(&token), None, remaining).await;
    let mut chunks = Vec::new();
    while let Some(chunk) = next_chunk(&mut stream).await {
        chunks.push((
            started.elapsed().as_secs(),
            String::from_utf8(chunk).unwrap(),
        ));
    }
    let end = (remaining - handlers::STREAM_END_MARGIN).as_secs();
    let expected = [
        (0, "retry: 1000\n\n"),
        (25, ": keep-alive\n\n"),
        (50, ": keep-alive\n\n"),
        (end, "retry: 1000\n\n"),
    ];
    let chunks: Vec<(u64, &str)> = chunks.iter().map(|(t, c)| (*t, c.as_str())).collect();
    assert_eq!(chunks, expected);
}

#[tokio::test]
async fn stream_refusals_say_why() {
    let w = world();
    let token = alice_token();
    let forever = Duration::from_secs(900);
    let refused = |q: &'static [(&'static str, &'static str)], t: Option<String>, id| {
        let w = &w;
        async move {
            let mut s = open_stream(w, q, t.as_deref(), id, forever).await;
            assert_eq!(s.headers["content-type"], "application/json");
            let body: Value = serde_json::from_slice(&next_chunk(&mut s).await.unwrap()).unwrap();
            assert!(next_chunk(&mut s).await.is_none(), "one chunk");
            (s.status.as_u16(), body)
        }
    };
    assert_eq!(refused(&[("rooms", "orders")], None, None).await.0, 401);
    let bad_token = Some("not-a-token".to_owned());
    assert_eq!(
        refused(&[("rooms", "orders")], bad_token, None).await.0,
        401
    );
    let (status, body) = refused(&[("rooms", "orders,payroll")], Some(token.clone()), None).await;
    assert_eq!((status, body["room"].clone()), (403, json!("payroll")));
    let bad_id = Some("!!");
    assert_eq!(
        refused(&[("rooms", "orders")], Some(token.clone()), bad_id)
            .await
            .0,
        400
    );
    assert_eq!(refused(&[("rooms", "a b")], Some(token), None).await.0, 400);
}

#[tokio::test]
async fn a_stream_without_history_is_refused_rather_than_silent() {
    let w = world_with(&[("HERALD_HISTORY_TTL_SECS", "0")]);
    let token = alice_token();
    let forever = Duration::from_secs(900);
    let mut s = open_stream(&w, &[("rooms", "orders")], Some(&token), None, forever).await;
    assert_eq!(s.status, 503);
    let body: Value = serde_json::from_slice(&next_chunk(&mut s).await.unwrap()).unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("history"),
        "{body}"
    );
}

#[tokio::test]
async fn a_stream_at_a_cursor_history_no_longer_covers_opens_with_a_reset() {
    let (w, token, cursor) = a_cursor_history_outran().await;
    let forever = Duration::from_secs(900);
    let query = [("rooms", "orders"), ("cursor", cursor.as_str())];
    let mut s = open_stream(&w, &query, Some(&token), None, forever).await;
    let events = sse_events(&next_chunk(&mut s).await.unwrap());
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, "reset");
    assert_eq!(events[0].data["cursor"], events[0].id.as_str());
}
