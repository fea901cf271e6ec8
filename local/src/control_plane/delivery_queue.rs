//! The delivery queue in Lambda mode: the `publish` binary queues the page jobs of a
//! sharded publish with the real SQS client (`SendMessageBatch`, `SendMessage`, JSON
//! protocol), pointed here by `AWS_ENDPOINT_URL_SQS`; each job goes into the gateway's
//! page queue (`page_queue.rs`), whose workers invoke the `deliver` binary
//! with it as an SQS event.
//!
//! It listens on loopback only, for the gateway's own functions, and with control-plane
//! credentials configured takes only requests signed with them (SigV4), as the control plane
//! does: the functions sign with them. A body that is not a page job is refused entry by
//! entry (`InvalidMessageContents`), as nothing would deliver it; a
//! queue that stays full refuses with `ServiceUnavailable`, which the sender retries.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use herald::shard::{PageJob, PageQueue};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::authenticate;
use super::sigv4::Credentials;
use crate::functions::instances::AbortOnDrop;

/// What the endpoint serves with.
struct Queue {
    jobs: Arc<dyn PageQueue>,
    /// The control plane's credentials, when configured: requests must be signed with them.
    credentials: Option<Credentials>,
}

/// Bytes of one request at most: ten entries of SQS's largest message (256 KiB), and room.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// The JSON protocol's content type.
const JSON_1_0: &str = "application/x-amz-json-1.0";

/// One message to send.
#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Id", default)]
    id: String,
    #[serde(rename = "MessageBody")]
    body: String,
}

/// `SendMessageBatch`'s request.
#[derive(Deserialize)]
struct Batch {
    #[serde(rename = "Entries")]
    entries: Vec<Entry>,
}

/// The queue's endpoint, serving while it is kept.
pub(crate) struct DeliveryQueue {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _server: AbortOnDrop,
}

impl DeliveryQueue {
    /// Serves the endpoint on a free loopback port, queueing into `jobs`; with
    /// `credentials`, only for requests signed with them.
    pub(crate) async fn serve(
        jobs: Arc<dyn PageQueue>,
        credentials: Option<Credentials>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let queue = Arc::new(Queue { jobs, credentials });
        let router = Router::new().fallback(receive).with_state(queue);
        let server = tokio::spawn(axum::serve(listener, router).into_future());
        Ok(Self {
            endpoint,
            _server: AbortOnDrop(server),
        })
    }
}

async fn receive(
    State(queue): State<Arc<Queue>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let Ok(body) = axum::body::to_bytes(body, MAX_REQUEST_BYTES).await else {
        return sqs_error("BatchRequestTooLong", "the request is over 4 MiB");
    };
    if let Err(refusal) = authenticate(queue.credentials.as_ref(), &method, &uri, &headers, &body) {
        let mut response = sqs_error(refusal.kind(), &refusal.to_string());
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    }
    let queue = &*queue.jobs;
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match target {
        "AmazonSQS.SendMessageBatch" => match serde_json::from_slice::<Batch>(&body) {
            Ok(batch) => send_batch(queue, batch.entries).await,
            Err(e) => sqs_error("InvalidParameterValue", &e.to_string()),
        },
        "AmazonSQS.SendMessage" => match serde_json::from_slice::<Entry>(&body) {
            Ok(entry) => {
                let id = uuid::Uuid::new_v4().to_string();
                match send(queue, &entry.body).await {
                    Ok(()) => answer(&json!({"MessageId": id, "MD5OfMessageBody": ""})),
                    Err((code, message)) => sqs_error(code, &message),
                }
            }
            Err(e) => sqs_error("InvalidParameterValue", &e.to_string()),
        },
        other => sqs_error(
            "UnsupportedOperation",
            &format!(
                "herald-local's delivery queue takes SendMessage and SendMessageBatch, not {other:?}"
            ),
        ),
    }
}

/// Queues one page job; the SQS error code and message when it is not taken.
async fn send(queue: &dyn PageQueue, body: &str) -> Result<(), (&'static str, String)> {
    let job = PageJob::from_json(body)
        .map_err(|e| ("InvalidMessageContents", format!("not a page job: {e}")))?;
    queue
        .enqueue(vec![job])
        .await
        .map_err(|e| ("ServiceUnavailable", e.to_string()))
}

async fn send_batch(queue: &dyn PageQueue, entries: Vec<Entry>) -> Response {
    let mut successful = Vec::new();
    let mut failed = Vec::new();
    for entry in entries {
        match send(queue, &entry.body).await {
            Ok(()) => successful.push(json!({
                "Id": entry.id,
                "MessageId": uuid::Uuid::new_v4().to_string(),
                "MD5OfMessageBody": "",
            })),
            Err((code, message)) => failed.push(json!({
                "Id": entry.id,
                "SenderFault": code == "InvalidMessageContents",
                "Code": code,
                "Message": message,
            })),
        }
    }
    answer(&json!({"Successful": successful, "Failed": failed}))
}

fn answer(body: &Value) -> Response {
    let mut response = body.to_string().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_1_0));
    response
}

fn sqs_error(code: &str, message: &str) -> Response {
    let mut response = answer(&json!({
        "__type": format!("com.amazonaws.sqs#{code}"),
        "message": message,
    }));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
}
