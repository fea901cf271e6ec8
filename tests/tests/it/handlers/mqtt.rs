//! MQTT on the Lambda path: a device's publish as the IoT rule brings it to the `publish`
//! function (`fixtures/publish-iot-rule.json`) reaches the room's members, only for an
//! allowed room; and every room and user notification is published through the IoT Data
//! Plane with the real SDK, to a recording endpoint standing in for IoT Core, with exactly
//! the bytes a WebSocket client receives, when the function flushes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::routing::post;
use herald::compose::Lambda;
use herald::sinks::mqtt::IOT_TIMEOUT;

const IOT_RULE: &str = include_str!("../../../fixtures/publish-iot-rule.json");

/// What the stand-in for IoT Core was asked to publish: topic, query, body.
type Published = Arc<Mutex<Vec<(String, String, Bytes)>>>;

/// An IoT Data Plane stand-in on a free port: it answers `Publish` as IoT does (200, an
/// empty body) and keeps each request. Its URL and what it kept.
async fn iot_endpoint() -> (String, Published) {
    let published = Published::default();
    let app = Router::new()
        .route(
            "/topics/{topic}",
            post(
                |State(kept): State<Published>,
                 Path(topic): Path<String>,
                 RawQuery(query): RawQuery,
                 body: Bytes| async move {
                    kept.lock()
                        .unwrap()
                        .push((topic, query.unwrap_or_default(), body));
                    "{}"
                },
            ),
        )
        .with_state(published.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, published)
}

fn functions(vars: &[(&str, &str)]) -> (Services, Arc<MemoryStore>) {
    let vars: std::collections::HashMap<_, _> = vars.iter().copied().collect();
    let config = Config::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned())).unwrap();
    let store = Arc::new(MemoryStore::new());
    let sdk = herald::aws::local_sdk_config("http://127.0.0.1:9");
    (Lambda { config }.services_on(store.clone(), &sdk), store)
}

#[tokio::test]
async fn a_device_publish_from_the_iot_rule_reaches_the_room_and_every_copy_goes_to_iot() {
    let (iot, published) = iot_endpoint().await;
    let (services, _store) = functions(&[
        ("HERALD_MQTT_URL", &iot),
        ("HERALD_MQTT_PUBLISH_ROOMS", "devices:*"),
    ]);
    let gateway = RecordingGateway::new();
    let connect = handlers::connect(&services, &route(CONNECT, "m1", "alice", None)).await;
    assert_eq!(connect.status_code, 200);
    let mut subscribe = fixture(SUBSCRIBE);
    subscribe["requestContext"]["connectionId"] = json!("m1");
    subscribe["requestContext"]["authorizer"]["rooms"] = json!("devices:*");
    subscribe["body"] = json!(r#"{"action":"subscribe","room":"devices:1"}"#);
    handlers::message(&services, &gateway, &ws_event(subscribe)).await;
    let joined = gateway.messages_to(&ConnectionId::new("m1"));
    assert_eq!(joined[0]["type"], "subscribed", "{joined:?}");

    let answer = handlers::publish(&services, &gateway, fixture(IOT_RULE))
        .await
        .expect("the device's publish is taken");
    assert_eq!(answer["delivered"], 1, "{answer}");
    assert_eq!(answer["mqtt"], "queued", "{answer}");
    let received = gateway
        .messages_to(&ConnectionId::new("m1"))
        .pop()
        .expect("the notification");
    assert_eq!(received["room"], "devices:1");
    assert_eq!(received["data"], json!({"temp": 21.5}));
    assert!(
        published.lock().unwrap().is_empty(),
        "nothing before the flush"
    );

    let user = handlers::publish(&services, &gateway, json!({"user": "alice", "data": 2}))
        .await
        .unwrap();
    assert_eq!(user["mqtt"], "queued");
    services.flush().await;
    let kept = published.lock().unwrap().clone();
    let topics: Vec<&str> = kept.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(topics, ["herald/rooms/devices:1", "herald/users/alice"]);
    assert!(
        kept.iter().all(|(_, query, _)| query == "qos=1"),
        "{kept:?}"
    );
    // The member (alice's connection) got both: the same bytes, in the same order.
    let to_member: Vec<Bytes> = gateway
        .posts()
        .into_iter()
        .filter(|(id, _)| id.as_str() == "m1")
        .map(|(_, bytes)| bytes)
        .collect();
    let copies: Vec<Bytes> = kept.iter().map(|(_, _, body)| body.clone()).collect();
    assert_eq!(
        copies,
        to_member[to_member.len() - 2..],
        "the WebSocket client's bytes"
    );
    services.flush().await;
    assert_eq!(published.lock().unwrap().len(), 2, "each copy once");
}

#[tokio::test]
async fn device_publishes_are_refused_outside_the_allowed_rooms_and_without_mqtt() {
    let (iot, _published) = iot_endpoint().await;
    let (services, _store) = functions(&[
        ("HERALD_MQTT_URL", &iot),
        ("HERALD_MQTT_PUBLISH_ROOMS", "sensors:*"),
    ]);
    let gateway = RecordingGateway::new();
    let refused = |reason: &'static str, event: Value| {
        let services = services.clone();
        let gateway = &gateway;
        async move {
            let err = handlers::publish(&services, gateway, event)
                .await
                .expect_err(reason);
            assert!(
                matches!(err, PublishError::BadRequest(_)) && err.to_string().contains(reason),
                "{reason}: {err}"
            );
        }
    };
    refused("room not in HERALD_MQTT_PUBLISH_ROOMS", fixture(IOT_RULE)).await;
    let mut event = fixture(IOT_RULE);
    event["mqttTopic"] = json!("herald/publish/sensors:1");
    event["mqttPayload"] = json!("bm90IGpzb24="); // "not json"
    refused("the body is not JSON", event.clone()).await;
    event["mqttTopic"] = json!("elsewhere/publish/sensors:1");
    refused("not a PREFIX/publish/ROOM topic", event.clone()).await;
    event["mqttTopic"] = json!("herald/publish/sensors:1");
    event["mqttPayload"] = json!("%%%");
    refused("not base64", event).await;

    let (without, _) = functions(&[]);
    let err = handlers::publish(&without, &gateway, fixture(IOT_RULE))
        .await
        .expect_err("MQTT is off");
    assert!(err.to_string().contains("HERALD_MQTT_URL=iot"), "{err}");
}

#[tokio::test]
async fn iot_that_does_not_answer_costs_the_flush_its_timeout_and_nothing_else() {
    // A listener that never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let (services, _store) = functions(&[("HERALD_MQTT_URL", &url)]);
    let gateway = RecordingGateway::new();
    handlers::connect(&services, &route(CONNECT, "m2", "bob", None)).await;
    let answer = handlers::publish(&services, &gateway, json!({"user": "bob", "data": 1}))
        .await
        .unwrap();
    assert_eq!(answer["delivered"], 1, "delivered before any copy is sent");
    let started = Instant::now();
    services.flush().await;
    let took = started.elapsed();
    assert!(
        took >= IOT_TIMEOUT && took < IOT_TIMEOUT + Duration::from_secs(2),
        "{took:?}"
    );
    drop(silent);
}
