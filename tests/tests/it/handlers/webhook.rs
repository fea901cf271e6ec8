//! Webhooks on the Lambda path, on real parts: the connect, message and disconnect
//! handlers driven by the recorded events put their events on an SQS queue
//! (`moto_server`) when the function flushes, and the `webhook` handler delivers what the
//! queue gives back to a receiver that verifies each with the Standard Webhooks library,
//! answering each first attempt 500: the failure is received again after its backoff
//! and delivered once, under the same `webhook-id`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use base64::Engine;
use herald::compose::Lambda;
use herald::events::sqs::SqsEvent;
use herald::handlers::{WebhookRetries, webhook_id};
use herald::testing::{Deliveries, Server, WebhookReceiver, file_delivery, sqs_queue};

/// How long the whole exchange may take (a retry waits a second).
const PATIENCE: Duration = Duration::from_secs(30);

fn config(vars: &[(&str, &str)]) -> Config {
    let vars: std::collections::HashMap<_, _> = vars.iter().copied().collect();
    Config::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned())).unwrap()
}

/// The queue's messages as the SQS event source hands them to a function.
fn sqs_event(messages: &[aws_sdk_sqs::types::Message]) -> SqsEvent {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let attributes: serde_json::Map<String, Value> = m
                .attributes()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.as_str().to_owned(), json!(v)))
                .collect();
            json!({
                "messageId": m.message_id(),
                "receiptHandle": m.receipt_handle(),
                "body": m.body(),
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:herald-webhooks",
                "awsRegion": "us-east-1",
            })
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).expect("an SQS event")
}

#[tokio::test]
async fn events_of_a_connection_are_queued_and_each_delivered_once_after_a_failed_attempt() {
    let moto = Server::dynamodb();
    let sdk = herald::aws::local_sdk_config(&moto.url());
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = sqs_queue(&sdk, "herald-webhooks").await;
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    );
    let mut receiver = WebhookReceiver::start(&secret);

    // The connect, message and disconnect functions: events queued, nothing sent yet.
    let functions = Lambda {
        config: config(&[("HERALD_WEBHOOK_QUEUE_URL", &queue)]),
    };
    let store = Arc::new(MemoryStore::new());
    let services = functions.services_on(store, &sdk);
    let gateway = RecordingGateway::new();
    let connect = handlers::connect(&services, &route(CONNECT, FIXTURE_ID, "ann", None)).await;
    assert_eq!(connect.status_code, 200);
    services.flush().await;
    let subscribe = route(
        SUBSCRIBE,
        FIXTURE_ID,
        "ann",
        Some(json!({"action": "subscribe", "room": "orders"})),
    );
    assert_eq!(
        handlers::message(&services, &gateway, &subscribe)
            .await
            .status_code,
        200
    );
    services.flush().await;
    handlers::disconnect(
        &services,
        &gateway,
        &route(DISCONNECT, FIXTURE_ID, "ann", None),
    )
    .await;
    services.flush().await;

    // The webhook function, fed what the queue gives back, as its event source does.
    let delivering = Lambda {
        config: config(&[
            ("HERALD_WEBHOOK_URL", &receiver.url("/hooks")),
            ("HERALD_WEBHOOK_SECRET", &secret),
            ("HERALD_WEBHOOK_QUEUE_URL", &queue),
        ]),
    };
    let sender = delivering.webhook_sender().await.expect("a sender");
    let retries = WebhookRetries::new(&sdk, &queue);
    let mut message_ids: BTreeMap<String, u32> = BTreeMap::new();
    let mut delivered = 0;
    let until = Instant::now() + PATIENCE;
    while delivered < 4 {
        assert!(Instant::now() < until, "delivered {delivered} of 4 in time");
        let received = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        let messages = received.messages();
        if messages.is_empty() {
            continue;
        }
        let answer = handlers::webhook(&sender, Some(&retries), sqs_event(messages)).await;
        let failed: Vec<&str> = answer
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        for m in messages {
            let id = m.message_id().unwrap();
            *message_ids.entry(id.to_owned()).or_default() += 1;
            if !failed.contains(&id) {
                // Done: the event source deletes it.
                sqs.delete_message()
                    .queue_url(&queue)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
                delivered += 1;
            }
        }
    }
    assert_eq!(message_ids.len(), 4, "four events: {message_ids:?}");
    assert!(
        message_ids.values().all(|receives| *receives == 2),
        "each received twice: {message_ids:?}"
    );

    // The receiver saw each event twice by webhook-id (500, then 204), all verified.
    let mut by_id = Deliveries::new();
    for _ in 0..8 {
        let line = tokio::time::timeout(PATIENCE, receiver.next_line())
            .await
            .expect("eight deliveries")
            .unwrap()
            .expect("the receiver is up");
        file_delivery(&mut by_id, &line, |_| true);
    }
    let expected_ids: Vec<String> = message_ids.keys().map(|id| webhook_id(id)).collect();
    let mut ids: Vec<String> = by_id.keys().cloned().collect();
    let mut expected = expected_ids.clone();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected, "webhook-ids are the SQS message ids");
    let mut kinds = Vec::new();
    for attempts in by_id.values() {
        let statuses: Vec<&Value> = attempts.iter().map(|a| &a["status"]).collect();
        assert_eq!(statuses, [500, 204]);
        let body = &attempts[1]["body"];
        assert_eq!(body["data"]["connectionId"], FIXTURE_ID, "{body}");
        assert_eq!(body["data"]["user"], "ann", "{body}");
        kinds.push(body["type"].as_str().unwrap().to_owned());
        if body["type"] == "room.vacated" {
            assert_eq!(body["data"]["room"], "orders");
            assert_eq!(body["data"]["reason"], "disconnected");
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "connection.closed",
            "connection.opened",
            "room.occupied",
            "room.vacated"
        ]
    );
}
