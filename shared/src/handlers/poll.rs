//! The `poll` function: long polling on AWS, behind an HTTP API route `GET /poll`.
//!
//! The same request and answer as `herald-local`'s `GET /{stage}/poll`. A Lambda holds no
//! socket that fan-out could post into, so it reads history instead: it catches up from
//! the cursor, and while nothing follows it and `wait` has not passed, reads again every
//! [`POLL_INTERVAL`]. The token is checked here (`?token=` or `Authorization: Bearer`), as
//! the authorizer checks a WebSocket's. While it waits, the reader is a member of its rooms
//! (`reader/membership.rs`).

use std::time::Duration;

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderValue, header};
use tokio::time::Instant;
use tracing::warn;

use super::Services;
use crate::auth::Verifier;
use crate::protocol::{Cursor, Stored};
use crate::reader::admission::{Admitted, ReadRequest, Refusal, admit};
use crate::reader::membership::Membership;
use crate::reader::{CatchUp, PollAnswer, catch_up, parse_wait};

/// How often a waiting poll reads history again: on DynamoDB, a Query per channel each time.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Handles one `GET /poll`.
pub async fn poll(
    services: &Services,
    verifier: &Verifier,
    request: &ApiGatewayV2httpRequest,
) -> ApiGatewayV2httpResponse {
    let query = &request.query_string_parameters;
    let wait = match parse_wait(query.first("wait")) {
        Ok(wait) => Duration::from_secs(wait),
        Err(e) => return error(&Refusal::from(e)),
    };
    // API Gateway's HTTP API joins repeated parameters with commas, and the event type
    // splits values at commas again: `rooms=a,b` arrives as two values.
    let rooms = query.all("rooms").unwrap_or_default().join(",");
    let authorization = request
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let read = ReadRequest {
        rooms: &rooms,
        cursor: query.first("cursor"),
        token: query.first("token"),
        authorization,
    };
    let Admitted { channels, since } = match admit(
        verifier,
        services.limits.max_rooms_per_connection,
        services.limits.history.is_some(),
        &read,
    ) {
        Ok(admitted) => admitted,
        Err(refused) => return error(&refused),
    };
    let source_ip = request.request_context.http.source_ip.clone();
    let store = &*services.store;
    let membership = match Membership::begin(store, &channels, source_ip, wait).await {
        Ok(membership) => membership,
        Err(e) => {
            warn!(error = %e, "poll could not join its rooms");
            return error(&Refusal::new(503, "the store failed; try again"));
        }
    };
    let answer = wait_for(services, &channels, since, wait).await;
    membership.end(store).await;
    answer
}

/// Catches up from `since`, reading again until something follows or `wait` has passed.
async fn wait_for(
    services: &Services,
    channels: &[crate::store::Channel],
    since: Option<Cursor>,
    wait: Duration,
) -> ApiGatewayV2httpResponse {
    let deadline = Instant::now() + wait;
    let mut since = since;
    loop {
        let caught = catch_up(
            &*services.store,
            services.limits.history,
            channels,
            since.as_ref(),
        )
        .await;
        let (entries, cursor) = match caught {
            Ok(CatchUp::Reset { cursor }) => return answer(Vec::new(), &cursor, true),
            Ok(CatchUp::Replay { entries, cursor }) => (entries, cursor),
            Err(e) => {
                warn!(error = %e, "poll could not read history");
                return error(&Refusal::new(503, "the store failed; try again"));
            }
        };
        let now = Instant::now();
        if !entries.is_empty() || now >= deadline {
            let notifications = entries.iter().filter_map(|e| Stored::new(&e.bytes));
            return answer(notifications.collect(), &cursor, false);
        }
        since = Some(cursor);
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

fn answer(notifications: Vec<Stored>, cursor: &Cursor, reset: bool) -> ApiGatewayV2httpResponse {
    let body = PollAnswer {
        notifications,
        cursor: cursor.encode(),
        reset,
    }
    .to_json();
    let body = String::from_utf8(body).expect("JSON is UTF-8");
    response(200, body)
}

/// A refusal as its JSON error.
fn error(refused: &Refusal) -> ApiGatewayV2httpResponse {
    response(i64::from(refused.status), refused.body().to_string())
}

fn response(status: i64, body: String) -> ApiGatewayV2httpResponse {
    let mut response = ApiGatewayV2httpResponse::default();
    response.status_code = status;
    response.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response.body = Some(Body::Text(body));
    response
}
