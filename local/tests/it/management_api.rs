//! The `@connections` Management API with the real `aws-sdk-apigatewaymanagement` client.

use crate::common;

use aws_sdk_apigatewaymanagement::primitives::Blob;
use common::Gateway;
use serde_json::json;

#[tokio::test]
async fn post_get_and_delete_a_live_connection() {
    let gw = Gateway::start().await;
    let api = gw.management();
    let mut c = gw.connect("alice", &[], &[]).await;

    api.post_to_connection()
        .connection_id(&c.id)
        .data(Blob::new(r#"{"hello":"there"}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(c.recv().await, json!({"hello":"there"}));

    let info = api
        .get_connection()
        .connection_id(&c.id)
        .send()
        .await
        .unwrap();
    let identity = info.identity().unwrap();
    assert_eq!(identity.source_ip(), Some("127.0.0.1"));
    let connected = info.connected_at().unwrap().to_millis().unwrap();
    let active = info.last_active_at().unwrap().to_millis().unwrap();
    assert!(connected > 0 && active >= connected);

    api.delete_connection()
        .connection_id(&c.id)
        .send()
        .await
        .unwrap();
    let (code, _) = c.closed().await;
    assert_eq!(code, 1000);
    let err = api
        .get_connection()
        .connection_id(&c.id)
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_gone_exception());
    // $disconnect ran: the store forgot the connection.
    let answer = gw.invoke(json!({"user":"alice","data":1})).await.unwrap();
    assert_eq!(answer["delivered"], 0);
}

#[tokio::test]
async fn unknown_malformed_and_closed_ids_are_gone() {
    let gw = Gateway::start().await;
    let api = gw.management();
    for id in ["AAAAAAAAAAAAAAA=", "not a real id", "%%%"] {
        let err = api
            .post_to_connection()
            .connection_id(id)
            .data(Blob::new("x"))
            .send()
            .await
            .unwrap_err();
        assert!(err.into_service_error().is_gone_exception(), "post {id}");
        let err = api
            .get_connection()
            .connection_id(id)
            .send()
            .await
            .unwrap_err();
        assert!(err.into_service_error().is_gone_exception(), "get {id}");
        let err = api
            .delete_connection()
            .connection_id(id)
            .send()
            .await
            .unwrap_err();
        assert!(err.into_service_error().is_gone_exception(), "delete {id}");
    }

    let mut c = gw.connect("bob", &[], &[]).await;
    let id = c.id.clone();
    c.ws.close(None).await.unwrap();
    drop(c);
    let mut gone = false;
    for _ in 0..100 {
        let result = api
            .post_to_connection()
            .connection_id(&id)
            .data(Blob::new("x"))
            .send()
            .await;
        if let Err(e) = result {
            assert!(e.into_service_error().is_gone_exception());
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "a closed connection answers 410");
}

#[tokio::test]
async fn posts_over_128_kib_are_413() {
    let gw = Gateway::start().await;
    let api = gw.management();
    let mut c = gw.connect("alice", &[], &[]).await;
    let err = api
        .post_to_connection()
        .connection_id(&c.id)
        .data(Blob::new(vec![b'x'; 128 * 1024 + 1]))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_payload_too_large_exception());
    // Exactly 128 KiB is fine.
    let body = format!("\"{}\"", "x".repeat(128 * 1024 - 2));
    api.post_to_connection()
        .connection_id(&c.id)
        .data(Blob::new(body))
        .send()
        .await
        .unwrap();
    assert_eq!(c.recv().await.as_str().unwrap().len(), 128 * 1024 - 2);
}
