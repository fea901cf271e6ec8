//! The `poll` handler on recorded HTTP API (v2) events.

use super::*;

const POLL: &str = include_str!("../../../fixtures/poll-http-api.json");

/// The recorded `GET /poll` with `query` as its parameters and a token for alice.
fn poll_event(
    query: &[(&str, &str)],
    token: Option<&str>,
) -> herald::events::apigw::ApiGatewayV2httpRequest {
    let event = with_query(fixture(POLL), query, token);
    serde_json::from_value(event).expect("an HTTP API event")
}

pub(super) async fn poll_answer(
    w: &World,
    query: &[(&str, &str)],
    token: Option<&str>,
) -> (i64, Value) {
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

#[tokio::test(start_paused = true)]
async fn a_waiting_poll_is_a_member_of_its_rooms_that_fan_out_skips() {
    let w = world();
    let token = alice_token();
    let query = [("rooms", "orders"), ("wait", "5")];
    let waiting = poll_answer(&w, &query, Some(&token));
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        alice_reads_orders_unposted(&w).await;
    };
    let ((status, answer), ()) = tokio::join!(waiting, meanwhile);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["notifications"][0]["data"], 1, "{answer}");
    let after = w.publish(json!({"presence": "orders"})).await.unwrap();
    assert_eq!(after["count"], 0, "the poll left with its answer: {after}");
    assert_eq!(
        w.gateway.posts().len(),
        0,
        "nothing was posted to the reader"
    );
}
