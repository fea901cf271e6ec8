//! The Lambda Runtime API (version 2018-06-01) one instance of a function polls, on a
//! loopback port of its own (`AWS_LAMBDA_RUNTIME_API`), as the Lambda service serves it:
//!
//! - `GET /2018-06-01/runtime/invocation/next` waits for the function's next invocation and
//!   answers its event, with `Lambda-Runtime-Aws-Request-Id`, `-Deadline-Ms` and
//!   `-Invoked-Function-Arn`; an instance's first call ends its cold start;
//! - `POST …/invocation/{id}/response` is the answer, buffered (at most Lambda's 6 MB) or,
//!   with `Lambda-Runtime-Function-Response-Mode: streaming`, a metadata prelude, eight
//!   NUL bytes, then the body, handed on chunk by chunk as it arrives;
//! - `POST …/invocation/{id}/error` and `POST …/init/error`: what failed, as
//!   `{"errorType","errorMessage"}`.
//!
//! An instance runs one invocation at a time: the one it took last is its current one, and
//! an answer for any other id is refused as Lambda refuses it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::FunctionError;

/// Lambda's largest buffered response (6 MB).
pub(crate) const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;
/// Lambda's largest error document: what a function reports is cut at this many bytes.
const MAX_ERROR_BYTES: usize = 256 * 1024;
/// What separates a streamed response's metadata prelude from its body.
const PRELUDE_END: &[u8] = &[0; 8];
/// Bytes of a streamed response's prelude, at most (it is status, headers and cookies).
const MAX_PRELUDE_BYTES: usize = 64 * 1024;
/// Chunks of a streamed body buffered for a reader that is slower than the function.
const STREAM_CHUNKS_BUFFERED: usize = 16;

/// One invocation on its way to an instance.
pub(crate) struct Invocation {
    /// `Lambda-Runtime-Aws-Request-Id`.
    pub id: String,
    /// The event, as JSON.
    pub event: Bytes,
    /// Where the answer goes.
    pub answer: oneshot::Sender<Outcome>,
}

/// What an invocation came to.
pub(crate) enum Outcome {
    /// A buffered response: the function's JSON answer.
    Response(Bytes),
    /// A streamed response: its metadata prelude (status, headers, cookies, as JSON), then
    /// the body's chunks as the function sends them.
    Streamed {
        prelude: Bytes,
        body: mpsc::Receiver<Bytes>,
    },
    /// The function failed, or Lambda failed it (timeout, exit).
    Failed(FunctionError),
}

/// The invocation an instance is running.
pub(crate) struct Running {
    pub id: String,
    pub answer: oneshot::Sender<Outcome>,
    /// When Lambda would stop it.
    pub deadline: Instant,
}

/// How an instance's start ended.
pub(crate) enum Started {
    /// It asked for its first invocation.
    Polling,
    /// It reported an init error.
    InitError(FunctionError),
}

/// Counts an instance as idle while it waits for an invocation.
struct Idle<'a>(&'a AtomicUsize);

impl<'a> Idle<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One function's invocations waiting for an instance, which every instance's API takes
/// from, and how many instances wait for one.
pub(crate) struct Invocations {
    queue: mpsc::Sender<Invocation>,
    pending: tokio::sync::Mutex<mpsc::Receiver<Invocation>>,
    /// Instances waiting in `/next` now.
    idle: AtomicUsize,
    stop: CancellationToken,
}

impl Invocations {
    /// Room for `capacity` waiting invocations; `stop` ends every wait in `/next`.
    pub(crate) fn new(capacity: usize, stop: CancellationToken) -> Self {
        let (queue, pending) = mpsc::channel(capacity);
        Self {
            queue,
            pending: tokio::sync::Mutex::new(pending),
            idle: AtomicUsize::new(0),
            stop,
        }
    }

    /// Queues `invocation`; false when the queue is full.
    pub(crate) fn offer(&self, invocation: Invocation) -> bool {
        self.queue.try_send(invocation).is_ok()
    }

    /// Invocations waiting.
    pub(crate) fn waiting(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Instances waiting for one.
    pub(crate) fn idle(&self) -> usize {
        self.idle.load(Ordering::SeqCst)
    }

    /// A waiting invocation, if one is there and no instance is taking it.
    pub(crate) fn try_take(&self) -> Option<Invocation> {
        self.pending.try_lock().ok()?.try_recv().ok()
    }

    /// The next invocation, for an instance in `/next`; `None` once the gateway stops.
    async fn take(&self) -> Option<Invocation> {
        let _idle = Idle::new(&self.idle);
        tokio::select! {
            invocation = async { self.pending.lock().await.recv().await } => invocation,
            () = self.stop.cancelled() => None,
        }
    }
}

/// One instance's side of the API.
pub(crate) struct InstanceApi {
    /// Its function's invocations.
    pub invocations: Arc<Invocations>,
    /// Its function's name.
    pub function: &'static str,
    /// Its function's ARN (`Lambda-Runtime-Invoked-Function-Arn`).
    pub arn: String,
    /// Its function's timeout.
    pub timeout: Duration,
    /// Signalled once: the first `/next`, or `/init/error`.
    pub started: Mutex<Option<oneshot::Sender<Started>>>,
    /// The invocation it runs now.
    pub running: Mutex<Option<Running>>,
    /// Wakes the instance's watch when `running` changes.
    pub changed: Notify,
}

impl InstanceApi {
    fn start(&self, how: Started) {
        if let Some(started) = lock(&self.started).take() {
            let _ = started.send(how);
        }
    }

    /// Ends the running invocation with `outcome`, when `id` is the one running.
    fn finish(&self, id: &str, outcome: Outcome) -> bool {
        let mut running = lock(&self.running);
        if running.as_ref().is_none_or(|r| r.id != id) {
            return false;
        }
        let done = running.take().expect("checked to be the running one");
        drop(running);
        self.changed.notify_one();
        let _ = done.answer.send(outcome);
        true
    }

    /// Fails the running invocation, whichever it is (the instance timed out or exited).
    pub(crate) fn fail_running(&self, error: FunctionError) {
        let done = lock(&self.running).take();
        if let Some(done) = done {
            let _ = done.answer.send(Outcome::Failed(error));
        }
    }
}

/// The lock of `mutex`; a panic elsewhere while holding it leaves plain data behind.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The routes of one instance's API.
pub(crate) fn router(api: Arc<InstanceApi>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(api)
}

/// `GET …/invocation/next`: the next invocation no caller has given up on.
async fn next(State(api): State<Arc<InstanceApi>>) -> Response {
    api.start(Started::Polling);
    let invocation = loop {
        let Some(invocation) = api.invocations.take().await else {
            // The gateway is stopping, and its watcher stops this instance next. Nothing
            // is answered meanwhile, as AWS's API answers nothing without an invocation: a
            // runtime given an answer with no request id panics, and its exit would race
            // the stop (and be reported as an instance that exited on its own).
            return std::future::pending().await;
        };
        if !invocation.answer.is_closed() {
            break invocation;
        }
    };
    // A runtime that asks for more without answering what it took has dropped it.
    api.fail_running(FunctionError::new(
        "Runtime.InvalidResponse",
        "the runtime asked for its next invocation without answering this one",
    ));
    let deadline = Instant::now() + api.timeout;
    let deadline_ms = herald::ids::now_ms()
        .saturating_add(i64::try_from(api.timeout.as_millis()).unwrap_or(i64::MAX));
    *lock(&api.running) = Some(Running {
        id: invocation.id.clone(),
        answer: invocation.answer,
        deadline,
    });
    api.changed.notify_one();
    let mut response = Response::new(Body::from(invocation.event));
    let headers = response.headers_mut();
    let text = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("lambda-runtime-aws-request-id", text(&invocation.id));
    headers.insert("lambda-runtime-deadline-ms", text(&deadline_ms.to_string()));
    headers.insert("lambda-runtime-invoked-function-arn", text(&api.arn));
    headers.insert(
        "lambda-runtime-trace-id",
        text(&format!(
            "Root=1-{:08x}-{}",
            deadline_ms / 1000,
            invocation.id.replace('-', "").get(..24).unwrap_or("")
        )),
    );
    response
}

/// `POST …/invocation/{id}/response`.
async fn response(
    State(api): State<Arc<InstanceApi>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if lock(&api.running).as_ref().is_none_or(|r| r.id != id) {
        return unknown_request(&id);
    }
    let streaming = headers
        .get("lambda-runtime-function-response-mode")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"streaming"));
    if streaming {
        return streamed(&api, &id, body).await;
    }
    match axum::body::to_bytes(body, MAX_RESPONSE_BYTES).await {
        Ok(bytes) => {
            api.finish(&id, Outcome::Response(bytes));
            accepted()
        }
        Err(_) => {
            api.finish(
                &id,
                Outcome::Failed(FunctionError::new(
                    "Function.ResponseSizeTooLarge",
                    format!("Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."),
                )),
            );
            runtime_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "response too large",
            )
        }
    }
}

/// A streamed response: the prelude first, then each chunk to the caller as it comes, until
/// the invocation's deadline (a stream past it is cut, and its instance freed).
async fn streamed(api: &InstanceApi, id: &str, body: Body) -> Response {
    let deadline = lock(&api.running).as_ref().map(|r| r.deadline);
    let Some(deadline) = deadline else {
        return unknown_request(id);
    };
    match tokio::time::timeout_at(deadline, relay_stream(api, id, body)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                function = api.function,
                "streamed response cut at the function's timeout"
            );
            api.finish(id, Outcome::Failed(FunctionError::timed_out(api.timeout)));
            accepted()
        }
    }
}

async fn relay_stream(api: &InstanceApi, id: &str, body: Body) -> Response {
    let mut chunks = body.into_data_stream();
    let mut head = Vec::new();
    let rest = loop {
        match chunks.next().await {
            Some(Ok(chunk)) => {
                head.extend_from_slice(&chunk);
                if let Some(at) = head
                    .windows(PRELUDE_END.len())
                    .position(|w| w == PRELUDE_END)
                {
                    let rest = Bytes::copy_from_slice(&head[at + PRELUDE_END.len()..]);
                    head.truncate(at);
                    break rest;
                }
                if head.len() > MAX_PRELUDE_BYTES {
                    api.finish(
                        id,
                        Outcome::Failed(FunctionError::new(
                            "Runtime.InvalidResponse",
                            "a streamed response's prelude did not end within 64 KiB",
                        )),
                    );
                    return runtime_error(
                        StatusCode::BAD_REQUEST,
                        "InvalidResponse",
                        "prelude too long",
                    );
                }
            }
            Some(Err(_)) | None => {
                api.finish(
                    id,
                    Outcome::Failed(FunctionError::new(
                        "Runtime.InvalidResponse",
                        "a streamed response ended before its prelude",
                    )),
                );
                return accepted();
            }
        }
    };
    let (tx, rx) = mpsc::channel(STREAM_CHUNKS_BUFFERED);
    api.finish(
        id,
        Outcome::Streamed {
            prelude: Bytes::from(head),
            body: rx,
        },
    );
    if !rest.is_empty() && tx.send(rest).await.is_err() {
        return accepted();
    }
    while let Some(Ok(chunk)) = chunks.next().await {
        // The reader went away: ending this request ends the function's stream too.
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    accepted()
}

/// What a runtime reports an error with.
#[derive(Deserialize)]
struct ErrorDocument {
    #[serde(rename = "errorType", default)]
    error_type: Option<String>,
    #[serde(rename = "errorMessage", default)]
    error_message: Option<String>,
}

/// The error a runtime posted: its document, else its header, else the body as text.
fn reported(headers: &HeaderMap, body: &[u8]) -> FunctionError {
    let header_type = headers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok());
    let document: Option<ErrorDocument> = serde_json::from_slice(body).ok();
    let error_type = document
        .as_ref()
        .and_then(|d| d.error_type.clone())
        .or_else(|| header_type.map(str::to_owned))
        .unwrap_or_else(|| "Unhandled".to_owned());
    let message = document
        .and_then(|d| d.error_message)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    FunctionError::new(&error_type, message)
}

/// `POST …/invocation/{id}/error`.
async fn error(
    State(api): State<Arc<InstanceApi>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = axum::body::to_bytes(body, MAX_ERROR_BYTES)
        .await
        .unwrap_or_default();
    if api.finish(&id, Outcome::Failed(reported(&headers, &body))) {
        accepted()
    } else {
        unknown_request(&id)
    }
}

/// `POST …/init/error`: the instance could not start; it is stopped by whoever started it.
async fn init_error(
    State(api): State<Arc<InstanceApi>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = axum::body::to_bytes(body, MAX_ERROR_BYTES)
        .await
        .unwrap_or_default();
    api.start(Started::InitError(reported(&headers, &body)));
    accepted()
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

fn unknown_request(id: &str) -> Response {
    runtime_error(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        &format!("request {id} is not this instance's current invocation"),
    )
}

fn runtime_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errorType": error_type, "errorMessage": message})),
    )
        .into_response()
}

/// How long an instance has between its spawn and its first `/next` (Lambda's init phase).
pub(crate) const INIT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_read_from_the_document_then_the_header_then_the_text() {
        let mut headers = HeaderMap::new();
        let e = reported(
            &headers,
            br#"{"errorType":"BadRequest","errorMessage":"no room"}"#,
        );
        assert_eq!(e, FunctionError::new("BadRequest", "no room"));
        headers.insert(
            "lambda-runtime-function-error-type",
            HeaderValue::from_static("Runtime.InitError"),
        );
        let e = reported(&headers, b"boom");
        assert_eq!(e, FunctionError::new("Runtime.InitError", "boom"));
    }
}
