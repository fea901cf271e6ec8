//! The fallback readers in Lambda mode: `GET /{stage}/poll` invokes the `poll` binary with
//! the HTTP API (payload 2.0) event AWS sends it, and `GET /{stage}/events` the `stream`
//! binary with a Function URL's event, relaying its streamed response chunk by chunk. A
//! reader that goes away ends the stream, and the function's invocation with it. A function
//! that fails is answered 502, as an HTTP API or a Function URL answers it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use herald::ids::now_ms;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::functions::lambda::Functions;
use crate::functions::runtime_api::Outcome;
use crate::http::answer::message_response;
use crate::http::query::decode_query;

/// `GET /{stage}/poll` through the `poll` function.
pub(crate) async fn poll(
    State(app): State<Arc<App>>,
    Path(stage): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(functions) = checked(&app, &stage) else {
        return message_response(StatusCode::FORBIDDEN, "Forbidden");
    };
    let event = http_event(
        "GET /poll",
        "/poll",
        &stage,
        peer,
        query.as_deref(),
        &headers,
    );
    relay(functions, "poll", event).await
}

/// `GET /{stage}/events` through the `stream` function.
pub(crate) async fn events(
    State(app): State<Arc<App>>,
    Path(stage): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(functions) = checked(&app, &stage) else {
        return message_response(StatusCode::FORBIDDEN, "Forbidden");
    };
    // A Function URL's event: the same payload 2.0, on its `$default` route.
    let event = http_event(
        "$default",
        "/events",
        "$default",
        peer,
        query.as_deref(),
        &headers,
    );
    relay(functions, "stream", event).await
}

/// The functions, when `stage` is the gateway's.
fn checked<'a>(app: &'a App, stage: &str) -> Option<&'a Functions> {
    (stage == app.settings.stage)
        .then_some(app.functions.as_deref())
        .flatten()
}

/// The payload 2.0 event of a `GET` request.
fn http_event(
    route_key: &str,
    path: &str,
    stage: &str,
    peer: SocketAddr,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Value {
    // Repeated headers and parameters arrive joined with commas, as API Gateway joins them.
    let header_map = joined(headers.iter().filter_map(|(name, value)| {
        Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
    }));
    let parameters = joined(decode_query(query.unwrap_or("")));
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let now = now_ms();
    json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query.unwrap_or(""),
        "headers": header_map,
        "queryStringParameters": parameters,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "herald-local",
            "domainName": text(header::HOST),
            "domainPrefix": "herald-local",
            "http": {
                "method": "GET",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": peer.ip().to_string(),
                "userAgent": text(header::USER_AGENT),
            },
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": route_key,
            "stage": stage,
            "time": crate::connection::events::request_time(now),
            "timeEpoch": now,
        },
        "isBase64Encoded": false,
    })
}

/// `pairs` by name, the values of a repeated name joined with commas.
fn joined(pairs: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
    let mut joined: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in pairs {
        joined
            .entry(name)
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    joined
}

/// A function's HTTP answer: buffered (`statusCode`, `headers`, `body`) or a streamed
/// response's prelude (without `body`).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HttpAnswer {
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    cookies: Vec<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    is_base64_encoded: bool,
}

impl HttpAnswer {
    /// The response, with `body`.
    fn into_response(self, body: Body) -> Response {
        let status = self
            .status_code
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        for cookie in &self.cookies {
            if let Ok(value) = HeaderValue::from_str(cookie) {
                headers.append(header::SET_COOKIE, value);
            }
        }
        response
    }
}

/// Invokes `function` with `event` and answers what it answered.
async fn relay(functions: &Functions, function: &str, event: Value) -> Response {
    match functions
        .invoke(function, Bytes::from(event.to_string()))
        .await
    {
        Outcome::Response(bytes) => match serde_json::from_slice::<HttpAnswer>(&bytes) {
            Ok(mut answer) => {
                let body = answer.body.take().unwrap_or_default();
                let body = if answer.is_base64_encoded {
                    base64::engine::general_purpose::STANDARD
                        .decode(body.as_bytes())
                        .unwrap_or_default()
                } else {
                    body.into_bytes()
                };
                answer.into_response(Body::from(body))
            }
            Err(e) => bad_gateway(function, &e.to_string()),
        },
        Outcome::Streamed { prelude, body } => {
            match serde_json::from_slice::<HttpAnswer>(&prelude) {
                Ok(answer) => {
                    let chunks = futures::stream::unfold(body, |mut body| async move {
                        let chunk = body.recv().await?;
                        Some((Ok::<_, std::io::Error>(chunk), body))
                    });
                    answer.into_response(Body::from_stream(chunks.boxed()))
                }
                Err(e) => bad_gateway(function, &e.to_string()),
            }
        }
        Outcome::Failed(e) => bad_gateway(function, &e.to_string()),
    }
}

fn bad_gateway(function: &str, why: &str) -> Response {
    tracing::error!(function, error = why, "the reader's function failed");
    message_response(StatusCode::BAD_GATEWAY, "Internal Server Error").into_response()
}

#[cfg(test)]
mod tests {
    use herald::events::apigw::ApiGatewayV2httpRequest;
    use herald::events::lambda_function_urls::LambdaFunctionUrlRequest;

    use super::*;

    #[test]
    fn the_events_read_as_the_poll_and_stream_functions_read_them() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        headers.append("x-many", HeaderValue::from_static("a"));
        headers.append("x-many", HeaderValue::from_static("b"));
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let query = Some("rooms=a%2Cb&wait=3&wait=4");
        let event = http_event("GET /poll", "/poll", "local", peer, query, &headers);
        let poll: ApiGatewayV2httpRequest = serde_json::from_value(event).unwrap();
        assert_eq!(poll.headers["authorization"], "Bearer t");
        assert_eq!(
            poll.headers["x-many"], "a,b",
            "joined as API Gateway joins them"
        );
        // The event type splits joined values at commas again, as the handlers expect.
        let parameters = &poll.query_string_parameters;
        assert_eq!(parameters.all("rooms"), Some(vec!["a", "b"]));
        assert_eq!(parameters.all("wait"), Some(vec!["3", "4"]));
        let event = http_event("$default", "/events", "$default", peer, query, &headers);
        let stream: LambdaFunctionUrlRequest = serde_json::from_value(event).unwrap();
        assert_eq!(stream.raw_path.as_deref(), Some("/events"));
    }
}
