//! The HTTP side: the `@connections` Management API and the Lambda Invoke API, answered as
//! AWS answers them (status codes, `x-amzn-ErrorType`, `X-Amz-Function-Error`), so the real
//! SDK clients work against `herald-local` unchanged.
//!
//! Paths are split on `/` first and each segment percent-decoded after, because SDKs send
//! `@connections` as `%40connections` and encode ids and function ARNs.
//!
//! Both APIs are the control plane: with credentials configured, a request runs only with
//! a valid SigV4 signature (`sigv4.rs`), and is otherwise answered 403 as AWS answers it.
//! Asynchronous invocations wait in a bounded queue (`async_invoke.rs`), and the page jobs
//! of sharded publishes in another, delivered by in-process workers (`page_queue.rs`); in
//! Lambda mode the `publish` binary queues them through an SQS endpoint (`delivery_queue.rs`). Posts can be made
//! to fail or lag as API Gateway's do under load (`faults.rs`). Devices publish through an
//! MQTT broker (`mqtt.rs`), whose client also carries every room and user notification.
//! `GET /metrics` answers the process's metrics under the same rule (`metrics.rs`).

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use herald::gateway::PushError;
use herald::ids::ConnectionId;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

pub(crate) mod async_invoke;
pub(crate) mod delivery_queue;
pub mod faults;
pub(crate) mod metrics;
pub(crate) mod mqtt;
pub(crate) mod page_queue;
pub mod sigv4;

pub use async_invoke::DEFAULT_QUEUED_INVOCATIONS;

use async_invoke::{AsyncInvokes, MAX_ASYNC_PAYLOAD_BYTES, Refused};

use crate::app::App;
use crate::connection::events::iso8601;
use crate::http::answer::{aws_error, json_response, message_response};
use crate::http::query::percent_decode;
use crate::serve::Place;

/// The control plane's state: the gateway's, and the queue of asynchronous invocations,
/// which only the Invoke API feeds.
struct Plane {
    app: Arc<App>,
    async_invokes: AsyncInvokes,
    /// Bytes of request bodies being read now, at most [`BODY_BYTES_IN_FLIGHT`].
    bodies: Arc<Semaphore>,
}

/// The control plane's routes, as a service for every path the other routes leave.
pub(crate) fn router(app: Arc<App>, async_invokes: AsyncInvokes) -> Router {
    Router::new().fallback(dispatch).with_state(Arc::new(Plane {
        app,
        async_invokes,
        bodies: Arc::new(Semaphore::new(BODY_BYTES_IN_FLIGHT)),
    }))
}

/// Bytes of request bodies read at once, in all: a body reserves what its `content-length`
/// declares (or the route's limit, when it declares none) before a byte is read, since on a
/// credentialed control plane the signature can only be checked once the body is in.
/// Ten of the largest Invoke payloads; a body that finds no room is answered 429 at once.
pub const BODY_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

/// Lambda's largest synchronous invocation payload (6 MB).
pub(crate) const MAX_INVOKE_BYTES: usize = 6 * 1024 * 1024;

/// The two control-plane APIs, by path.
enum Route {
    /// `POST /2015-03-31/functions/{name}/invocations`.
    Invoke(String),
    /// `POST|GET|DELETE /{stage}/@connections/{id}`.
    Manage { stage: String, id: String },
    /// `GET /metrics`.
    Metrics,
}

impl Route {
    fn of(segments: Vec<String>) -> Option<Self> {
        match <[String; 4]>::try_from(segments) {
            Ok([version, functions, name, invocations])
                if version == "2015-03-31"
                    && functions == "functions"
                    && invocations == "invocations" =>
            {
                Some(Self::Invoke(name))
            }
            Ok(_) => None,
            Err(segments) => match <[String; 3]>::try_from(segments) {
                Ok([stage, connections, id]) if connections == "@connections" => {
                    Some(Self::Manage { stage, id })
                }
                Ok(_) => None,
                Err(segments) => match <[String; 1]>::try_from(segments) {
                    Ok([path]) if path == metrics::PATH => Some(Self::Metrics),
                    _ => None,
                },
            },
        }
    }

    /// The largest body the API takes, and its answer to a larger one, as AWS gives it.
    fn body_limit(&self, app: &App) -> (usize, Response) {
        match self {
            Self::Invoke(_) => (
                MAX_INVOKE_BYTES,
                request_too_large(MAX_INVOKE_BYTES, "the InvokeFunction operation"),
            ),
            // A post is one message: nothing larger could be delivered.
            Self::Manage { .. } => (
                app.settings.limits.max_message_bytes,
                push_error(&PushError::PayloadTooLarge),
            ),
            // A scrape has no body.
            Self::Metrics => (
                0,
                message_response(StatusCode::PAYLOAD_TOO_LARGE, "a scrape has no body"),
            ),
        }
    }
}

/// Lambda's answer to a payload over `limit` bytes for `what`.
fn request_too_large(limit: usize, what: &str) -> Response {
    aws_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestTooLargeException",
        &format!("Request must be smaller than {limit} bytes for {what}"),
    )
}

async fn dispatch(
    State(plane): State<Arc<Plane>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    place: Option<Extension<Place>>,
    body: Body,
) -> Response {
    let app = &plane.app;
    let segments: Vec<String> = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let Some(route) = Route::of(segments) else {
        return message_response(StatusCode::NOT_FOUND, "Not Found");
    };
    // Everything the head alone can refuse is refused before a byte of the body is read:
    // a browser's request, a request that cannot be signed, a declared size over the limit.
    if headers.contains_key(header::ORIGIN) {
        return aws_error(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            "the control plane does not serve browsers: a web page must not publish or \
             disconnect through it (call it from your backend)",
        );
    }
    if app.settings.control_plane.credentials.is_some()
        && let Err(refusal) = sigv4::check_head(&headers)
    {
        tracing::info!(path = uri.path(), error = %refusal, "control-plane request refused");
        return aws_error(StatusCode::FORBIDDEN, refusal.kind(), &refusal.to_string());
    }
    let (limit, too_large) = route.body_limit(app);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large;
    }
    let reserved = declared.map_or(limit, |n| usize::try_from(n).unwrap_or(limit));
    let Some(_reserved) = u32::try_from(reserved)
        .ok()
        .and_then(|n| plane.bodies.clone().try_acquire_many_owned(n).ok())
    else {
        return aws_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            "too many request bodies are being read at once; retry with backoff",
        );
    };
    // While its body arrives the connection gives up its place under the connection
    // limits (the budget above bounds bodies), and takes it back once the body is in.
    let aside = place.as_ref().map(|Extension(place)| place.aside());
    // A body must arrive within the same time a head must.
    let deadline = app.settings.http.head_timeout;
    let body = match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => return too_large,
        Err(_) => {
            return message_response(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            );
        }
    };
    drop(aside);
    if let Err(refusal) = authenticate(
        app.settings.control_plane.credentials.as_ref(),
        &method,
        &uri,
        &headers,
        &body,
    ) {
        tracing::info!(path = uri.path(), error = %refusal, "control-plane request refused");
        return aws_error(StatusCode::FORBIDDEN, refusal.kind(), &refusal.to_string());
    }
    match route {
        Route::Invoke(name) => {
            if method != Method::POST {
                return message_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            }
            invoke(&plane, &name, &headers, body).await
        }
        Route::Manage { stage, id } => {
            if stage != app.settings.stage {
                return message_response(StatusCode::FORBIDDEN, "Forbidden");
            }
            manage(app, &method, &ConnectionId::new(id.as_str()), body).await
        }
        Route::Metrics => {
            if method != Method::GET {
                return message_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            }
            metrics::scrape(&app.services.metrics)
        }
    }
}

/// Checks the request's SigV4 signature when control-plane `credentials` are configured;
/// without them (loopback, or `--insecure-open-control-plane`) any request goes through.
/// Every control-plane endpoint checks with it: `@connections`, Invoke, the delivery queue.
pub(crate) fn authenticate(
    credentials: Option<&sigv4::Credentials>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), sigv4::Refusal> {
    let Some(credentials) = credentials else {
        return Ok(());
    };
    let request = sigv4::Request {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers,
        body,
    };
    sigv4::verify(credentials, &request, std::time::SystemTime::now())
}

/// `POST|GET|DELETE /{stage}/@connections/{id}`, for a socket held here or, with several
/// instances, anywhere in the cluster.
async fn manage(app: &App, method: &Method, id: &ConnectionId, body: Bytes) -> Response {
    let router = &*app.control;
    let result = match *method {
        Method::POST => router
            .post(id, body)
            .await
            .map(|()| StatusCode::OK.into_response()),
        Method::GET => router.get(id).await.map(|info| {
            let body = json!({
                "connectedAt": iso8601(info.connected_at),
                "identity": {"sourceIp": info.source_ip, "userAgent": info.user_agent},
                "lastActiveAt": iso8601(info.last_active_at),
            });
            json_response(StatusCode::OK, &body)
        }),
        Method::DELETE => router
            .delete(id)
            .await
            .map(|()| StatusCode::NO_CONTENT.into_response()),
        _ => return message_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
    };
    result.unwrap_or_else(|e| push_error(&e))
}

fn push_error(error: &PushError) -> Response {
    let (status, kind) = match error {
        PushError::Gone => (StatusCode::GONE, "GoneException"),
        PushError::Throttled => (StatusCode::TOO_MANY_REQUESTS, "LimitExceededException"),
        PushError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLargeException"),
        PushError::Forbidden(_) => (StatusCode::FORBIDDEN, "ForbiddenException"),
        PushError::Other(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerErrorException",
        ),
    };
    aws_error(status, kind, &error.to_string())
}

/// `POST /2015-03-31/functions/{name}/invocations`: runs `publish` for its names.
async fn invoke(plane: &Plane, name: &str, headers: &HeaderMap, body: Bytes) -> Response {
    let app = &plane.app;
    let function = function_name(name);
    if !app.settings.publish_functions.iter().any(|f| f == function) {
        let arn = format!("arn:aws:lambda:local:000000000000:function:{function}");
        return aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!(
                "Function not found: {arn}; herald-local runs `publish` as {}",
                app.settings.publish_functions.join(", ")
            ),
        );
    }
    // An empty body is `{}`, as Lambda takes it. The text is checked to be JSON here; it is
    // parsed into a value only when it runs (an asynchronous one waits as text).
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        body
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            &format!("Could not parse request body into json: {e}"),
        );
    }
    let invocation = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    match invocation {
        "DryRun" => StatusCode::NO_CONTENT.into_response(),
        "Event" => match plane.async_invokes.submit(body) {
            Ok(()) => StatusCode::ACCEPTED.into_response(),
            Err(Refused::Full) => aws_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                "Rate Exceeded. herald-local's queue of asynchronous invocations is full: \
                 retry with backoff",
            ),
            Err(Refused::TooLarge) => {
                request_too_large(MAX_ASYNC_PAYLOAD_BYTES, "an asynchronous invocation")
            }
        },
        "RequestResponse" => {
            let payload: Value = match serde_json::from_slice(&body) {
                Ok(payload) => payload,
                Err(e) => {
                    return aws_error(
                        StatusCode::BAD_REQUEST,
                        "InvalidRequestContentException",
                        &e.to_string(),
                    );
                }
            };
            let result = app.handlers.publish(payload).await;
            let mut response = match result {
                Ok(answer) => json_response(StatusCode::OK, &answer),
                Err(e) => {
                    let mut response = json_response(
                        StatusCode::OK,
                        &json!({"errorType": e.error_type, "errorMessage": e.message}),
                    );
                    response.headers_mut().insert(
                        "x-amz-function-error",
                        HeaderValue::from_static("Unhandled"),
                    );
                    response
                }
            };
            response.headers_mut().insert(
                "x-amz-executed-version",
                HeaderValue::from_static("$LATEST"),
            );
            response
        }
        other => aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!("unknown invocation type {other:?}"),
        ),
    }
}

/// The function name of `publish`, `herald-publish:$LATEST` or a function ARN.
fn function_name(name: &str) -> &str {
    let name = match name.find(":function:") {
        Some(at) => &name[at + ":function:".len()..],
        None => name,
    };
    name.split(':').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_from_names_and_arns() {
        assert_eq!(function_name("publish"), "publish");
        assert_eq!(function_name("publish:$LATEST"), "publish");
        assert_eq!(
            function_name("arn:aws:lambda:eu-west-1:123456789012:function:herald-publish:prod"),
            "herald-publish"
        );
    }
}
