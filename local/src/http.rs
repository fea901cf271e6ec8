//! The HTTP side: the `@connections` Management API and the Lambda Invoke API, answered as
//! AWS answers them (status codes, `x-amzn-ErrorType`, `X-Amz-Function-Error`), so the real
//! SDK clients work against `herald-local` unchanged.
//!
//! Paths are split on `/` first and each segment percent-decoded after, because SDKs send
//! `@connections` as `%40connections` and encode ids and function ARNs.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald::gateway::PushError;
use herald::ids::ConnectionId;
use serde_json::{Value, json};

use crate::answer::{aws_error, json_response, message_response};
use crate::events::iso8601;
use crate::query::percent_decode;
use crate::{App, handshake};

/// Every route of the gateway.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/{stage}", get(handshake::handshake))
        .fallback(dispatch)
        .with_state(app)
}

async fn dispatch(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let segments: Vec<String> = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    match segments.as_slice() {
        [version, functions, name, invocations]
            if version == "2015-03-31"
                && functions == "functions"
                && invocations == "invocations" =>
        {
            if method != Method::POST {
                return message_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            }
            invoke(app, name, &headers, body).await
        }
        [stage, connections, id] if connections == "@connections" => {
            if *stage != app.settings.stage {
                return message_response(StatusCode::FORBIDDEN, "Forbidden");
            }
            manage(&app, &method, &ConnectionId::new(id.as_str()), body).await
        }
        _ => message_response(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// `POST|GET|DELETE /{stage}/@connections/{id}`, for a socket held here or, with several
/// instances, anywhere in the cluster.
async fn manage(app: &App, method: &Method, id: &ConnectionId, body: Bytes) -> Response {
    let router = &*app.router;
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
async fn invoke(app: Arc<App>, name: &str, headers: &HeaderMap, body: Bytes) -> Response {
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
    let payload: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(payload) => payload,
            Err(e) => {
                return aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    &format!("Could not parse request body into json: {e}"),
                );
            }
        }
    };
    let invocation = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    match invocation {
        "DryRun" => StatusCode::NO_CONTENT.into_response(),
        "Event" => {
            tokio::spawn(async move {
                if let Err(e) =
                    herald::handlers::publish(&app.services, &*app.gateway, payload).await
                {
                    tracing::warn!(error = %e, "asynchronous publish failed");
                }
            });
            StatusCode::ACCEPTED.into_response()
        }
        "RequestResponse" => {
            let result = herald::handlers::publish(&app.services, &*app.gateway, payload).await;
            let mut response = match result {
                Ok(answer) => json_response(StatusCode::OK, &answer),
                Err(e) => {
                    let mut response = json_response(
                        StatusCode::OK,
                        &json!({"errorType": e.error_type(), "errorMessage": e.to_string()}),
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
