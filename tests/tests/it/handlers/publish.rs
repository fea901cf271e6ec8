//! The `publish` handler, invoked directly and from recorded SQS events.

use super::*;
use herald::store::Connections;

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

#[tokio::test]
async fn each_invocation_writes_its_counts_as_one_emf_line() {
    let config = Config::from_lookup(|k| {
        (k == "AWS_LAMBDA_FUNCTION_NAME").then(|| "herald-publish".to_owned())
    })
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    let sdk = herald::aws::local_sdk_config("http://127.0.0.1:9");
    let services = herald::compose::Lambda { config }.services_on(store, &sdk);
    let gateway = RecordingGateway::new();
    for id in ["e1", "e2"] {
        handlers::connect(&services, &route(CONNECT, id, "alice", None)).await;
    }
    handlers::publish(&services, &gateway, json!({"user": "alice", "data": 1}))
        .await
        .unwrap();
    let line: Value = serde_json::from_str(&services.emf_line().unwrap()).unwrap();
    assert_eq!(line["Function"], "herald-publish", "{line}");
    assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Namespace"], "Herald");
    assert_eq!(
        (&line["Publishes"], &line["Delivered"]),
        (&json!(1), &json!(2))
    );
    let next: Value = serde_json::from_str(&services.emf_line().unwrap()).unwrap();
    assert_eq!(
        next["Publishes"], 0,
        "the next invocation's line starts again"
    );
}

/// A store that cannot list anyone: every read of recipients fails, as a store that cannot
/// be reached.
struct ListingDown(Arc<MemoryStore>);

fn down() -> herald::store::StoreError {
    herald::store::StoreError::Unavailable {
        backend: "test",
        source: herald::error::source(std::io::Error::other("listing down")),
    }
}

#[async_trait::async_trait]
impl herald::store::ForwardingStore for ListingDown {
    fn inner(&self) -> &dyn herald::store::ConnectionStore {
        &*self.0
    }

    async fn room_members(
        &self,
        _: &RoomName,
        _: Option<&str>,
        _: usize,
    ) -> Result<herald::store::Page<ConnectionId>, herald::store::StoreError> {
        Err(down())
    }

    async fn user_connections(
        &self,
        _: &str,
    ) -> Result<Vec<ConnectionId>, herald::store::StoreError> {
        Err(down())
    }
}

#[tokio::test]
async fn store_failures_are_counted_whichever_way_a_publish_came() {
    let config = Config::from_lookup(|_| None).unwrap();
    let store = Arc::new(ListingDown(Arc::new(MemoryStore::new())));
    let services = herald::compose::services(store, &config);
    let gateway = RecordingGateway::new();
    let errors = |services: &Services| {
        let text = services.metrics.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("herald_store_errors_total "))
            .expect("the store errors counter")
            .to_owned();
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
    };
    let direct = handlers::publish(&services, &gateway, json!({"room": "orders", "data": 1})).await;
    assert!(
        matches!(direct, Err(PublishError::Unavailable(_))),
        "{direct:?}"
    );
    assert_eq!(errors(&services), 1);
    // Through SQS: the two valid records (a room publish, a batch to a user) fail on the
    // store and are counted; the bad room name and the body that is not JSON are the
    // sender's fault, not the store's.
    let answer = handlers::publish(&services, &gateway, fixture(SQS))
        .await
        .unwrap();
    assert_eq!(
        answer["batchItemFailures"].as_array().unwrap().len(),
        4,
        "{answer}"
    );
    assert_eq!(errors(&services), 1 + 2, "{answer}");
}
