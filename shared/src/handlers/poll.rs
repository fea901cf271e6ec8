//! The `poll` function: long polling on AWS, behind an HTTP API route `GET /poll`.
//!
//! The same request and answer as `herald-local`'s `GET /{stage}/poll`. A Lambda holds no
//! socket that fan-out could post into, so it reads history instead: it catches up from
//! the cursor, and while nothing follows it and `wait` has not passed, reads again every
//! [`POLL_INTERVAL`]. The token is checked here (`?token=` or `Authorization: Bearer`), as
//! the authorizer checks a WebSocket's.

use std::time::Duration;

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderValue, header};
use tokio::time::Instant;
use tracing::warn;

use super::Services;
use crate::auth::{Verifier, token_from_request};
use crate::protocol::{Cursor, RoomName, Stored};
use crate::reader::{CatchUp, PollAnswer, catch_up, parse_rooms, parse_wait, refusal};
use crate::store::Channel;

/// How often a waiting poll reads history again: on DynamoDB, a Query per channel each time.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Handles one `GET /poll`.
pub async fn poll(
    services: &Services,
    verifier: &Verifier,
    request: &ApiGatewayV2httpRequest,
) -> ApiGatewayV2httpResponse {
    let query = &request.query_string_parameters;
    let bad = |message: &str| error(400, message, None);
    let wait = match parse_wait(query.first("wait")) {
        Ok(wait) => Duration::from_secs(wait),
        Err(e) => return bad(&e.message),
    };
    // API Gateway's HTTP API joins repeated parameters with commas, and the event type
    // splits values at commas again: `rooms=a,b` arrives as two values.
    let rooms = query.all("rooms").unwrap_or_default().join(",");
    let rooms = match parse_rooms(&rooms) {
        Ok(rooms) => rooms,
        Err(e) => return bad(&e.message),
    };
    let since = match query
        .first("cursor")
        .filter(|c| !c.is_empty())
        .map(Cursor::decode)
    {
        None => None,
        Some(Ok(cursor)) => Some(cursor),
        Some(Err(e)) => return bad(&e.message),
    };
    let authorization = request
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(token) = token_from_request(query.first("token"), authorization) else {
        return error(401, "Unauthorized", None);
    };
    let identity = match verifier.verify(token) {
        Ok(identity) => identity,
        Err(_) => return error(401, "Unauthorized", None),
    };
    if let Some(max) = services.limits.max_rooms_per_connection
        && rooms.len() > max
    {
        return bad(&format!("at most {max} rooms, not {}", rooms.len()));
    }
    if let Some(room) = rooms.iter().find(|r| !identity.can_subscribe(r)) {
        return error(403, &format!("you may not subscribe to {room}"), Some(room));
    }
    let mut channels: Vec<Channel> = rooms.into_iter().map(Channel::Room).collect();
    channels.push(Channel::User(identity.user));
    let deadline = Instant::now() + wait;
    let mut since = since;
    loop {
        let caught = catch_up(
            &*services.store,
            services.limits.history,
            &channels,
            since.as_ref(),
        )
        .await;
        let (entries, cursor) = match caught {
            Ok(CatchUp::Reset { cursor }) => return answer(Vec::new(), &cursor, true),
            Ok(CatchUp::Replay { entries, cursor }) => (entries, cursor),
            Err(e) => {
                warn!(error = %e, "poll could not read history");
                return error(503, "the store failed; try again", None);
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

/// A JSON error naming the room it is about, when there is one.
fn error(status: i64, message: &str, room: Option<&RoomName>) -> ApiGatewayV2httpResponse {
    response(status, refusal(message, room).to_string())
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
