//! Publishing through the Lambda Invoke API with the real `aws-sdk-lambda` client, as
//! another Lambda would call `publish`.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use common::{Client, Gateway, settings};
use serde_json::{Value, json};

#[tokio::test]
async fn publish_reaches_rooms_users_connections_and_everyone() {
    let gw = Gateway::start().await;
    let mut a = gw.connect("alice", &["orders"], &[]).await;
    let mut b = gw.connect("bob", &["orders"], &[]).await;
    let mut c = gw.connect("carol", &[], &[]).await;
    a.subscribe("orders").await;
    b.subscribe("orders").await;

    let answer = gw
        .invoke(json!({"room":"orders","data":{"n":1}}))
        .await
        .unwrap();
    assert_eq!(answer["delivered"], 2);
    assert_eq!(
        (answer["gone"].clone(), answer["failed"].clone()),
        (json!(0), json!(0))
    );
    for client in [&mut a, &mut b] {
        let got = client.recv().await;
        assert_eq!(got["room"], "orders");
        assert_eq!(got["id"], answer["id"]);
        assert_eq!(got["data"], json!({"n":1}));
    }
    c.expect_nothing(Duration::from_millis(200)).await;

    let answer = gw
        .invoke(json!({"user":"carol","data":"hi"}))
        .await
        .unwrap();
    assert_eq!(answer["delivered"], 1);
    let got = c.recv().await;
    assert_eq!(
        (got["user"].clone(), got["data"].clone()),
        (json!("carol"), json!("hi"))
    );

    let answer = gw
        .invoke(json!({"connections":[a.id, "AAAAAAAAAAAAAAA="],"data":3}))
        .await
        .unwrap();
    assert_eq!(
        (answer["delivered"].clone(), answer["gone"].clone()),
        (json!(1), json!(1))
    );
    let got = a.recv().await;
    assert!(
        got.get("room").is_none() && got.get("user").is_none(),
        "{got}"
    );

    let answer = gw.invoke(json!({"broadcast":true,"data":4})).await.unwrap();
    assert_eq!(answer["delivered"], 3);
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(client.recv().await["data"], 4);
    }
}

#[tokio::test]
async fn batches_arrive_in_list_order() {
    let gw = Gateway::start().await;
    let mut a = gw.connect("alice", &["orders"], &[]).await;
    a.subscribe("orders").await;
    let answer = gw
        .invoke(json!({"messages":[
            {"room":"orders","data":1},
            {"user":"alice","data":2},
            {"room":"orders","data":3}
        ]}))
        .await
        .unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for expected in 1..=3 {
        assert_eq!(a.recv().await["data"], expected);
    }
}

#[tokio::test]
async fn sqs_events_report_only_bad_records() {
    let gw = Gateway::start().await;
    let mut a = gw.connect("alice", &["orders"], &[]).await;
    a.subscribe("orders").await;
    let record = |id: &str, body: Value| {
        json!({"messageId": id, "body": body.to_string(), "eventSource": "aws:sqs",
               "eventSourceARN": "arn:aws:sqs:local:000000000000:herald", "awsRegion": "local"})
    };
    let event = json!({"Records": [
        record("m1", json!({"room":"orders","data":"one"})),
        record("m2", json!({"room":"orders"})),
        record("m3", json!({"room":"orders","data":"three"})),
    ]});
    let answer = gw.invoke(event).await.unwrap();
    assert_eq!(
        answer,
        json!({"batchItemFailures":[{"itemIdentifier":"m2"}]})
    );
    assert_eq!(a.recv().await["data"], "one");
    assert_eq!(a.recv().await["data"], "three");
}

#[tokio::test]
async fn invalid_publishes_are_function_errors() {
    let gw = Gateway::start().await;
    let error = gw.invoke(json!({"room":"orders"})).await.unwrap_err();
    assert_eq!(error["errorType"], "BadRequest");
    assert!(error["errorMessage"].as_str().unwrap().contains("data"));
    let error = gw
        .invoke(json!({"room":"a","user":"b","data":1}))
        .await
        .unwrap_err();
    assert_eq!(error["errorType"], "BadRequest");
}

#[tokio::test]
async fn unknown_functions_and_unparsable_payloads_are_refused_as_lambda_does() {
    let gw = Gateway::start().await;
    let lambda = gw.lambda();
    let err = lambda
        .invoke()
        .function_name("no-such-function")
        .payload(Blob::new("{}"))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_resource_not_found_exception());
    let err = lambda
        .invoke()
        .function_name("publish")
        .payload(Blob::new("{not json"))
        .send()
        .await
        .unwrap_err();
    assert!(
        err.into_service_error()
            .is_invalid_request_content_exception()
    );
    // A function ARN works as a name.
    let out = lambda
        .invoke()
        .function_name("arn:aws:lambda:us-east-1:000000000000:function:herald-publish")
        .payload(Blob::new(r#"{"broadcast":true,"data":1}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status_code(), 200);
    assert_eq!(out.executed_version(), Some("$LATEST"));
}

#[tokio::test]
async fn event_invocations_are_accepted_and_delivered() {
    let gw = Gateway::start().await;
    let mut a = gw.connect("alice", &["orders"], &[]).await;
    a.subscribe("orders").await;
    let out = gw
        .lambda()
        .invoke()
        .function_name("publish")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(r#"{"room":"orders","data":"later"}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status_code(), 202);
    assert_eq!(a.recv().await["data"], "later");
}

/// 200 clients in one room, 20 publishes: every client gets all 20, once each, in order.
async fn many_clients_receive_everything_in_order(gw: &Gateway) {
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..200 {
        let mut c = gw.connect(&format!("user{i}"), &["stress"], &[]).await;
        c.subscribe("stress").await;
        clients.push(c);
    }
    for n in 0..20 {
        let answer = gw.invoke(json!({"room":"stress","data":n})).await.unwrap();
        assert_eq!(answer["delivered"], 200, "publish {n}: {answer}");
    }
    for c in &mut clients {
        let mut ids = HashSet::new();
        for n in 0..20 {
            let got = c.recv().await;
            assert_eq!(got["data"], n, "client {} out of order", c.id);
            assert!(
                ids.insert(got["id"].as_str().unwrap().to_owned()),
                "duplicate"
            );
        }
        c.expect_nothing(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn two_hundred_clients_twenty_messages_in_process() {
    let gw = Gateway::start().await;
    many_clients_receive_everything_in_order(&gw).await;
}

#[tokio::test]
async fn two_hundred_clients_twenty_messages_through_the_http_push_path() {
    let mut s = settings();
    s.push_via_http = true;
    s.config.limits.max_connections_per_user = None;
    let gw = Gateway::start_with(s).await;
    many_clients_receive_everything_in_order(&gw).await;
}
