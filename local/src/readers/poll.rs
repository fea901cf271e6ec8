//! Long polling: `GET /{stage}/poll?rooms=a,b&cursor=C&wait=25`, for clients that cannot
//! keep a stream open either.
//!
//! Each request is a short-lived reader (`fallback.rs`): it answers at once with every
//! kept notification after the cursor, or `reset` when history no longer covers it;
//! otherwise it waits up to `wait` seconds (at most 25, under API Gateway's 29-second
//! integration timeout) for the next notification and answers with what arrived. Without a
//! cursor it starts now. The answer is `{"notifications":[…],"cursor":"…","reset":false}`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald::protocol::Stored;
use herald::reader::{CatchUp, Follow, PollAnswer, parse_wait, presence_event};

use crate::app::App;
use crate::http::query::decode_query;
use crate::readers::{Reader, error, open};

/// `GET /{stage}/poll`.
pub(crate) async fn poll(
    State(app): State<Arc<App>>,
    Path(stage): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let wait = decode_query(query.as_deref().unwrap_or(""))
        .into_iter()
        .rev()
        .find(|(k, _)| k == "wait")
        .map(|(_, v)| v);
    let wait = match parse_wait(wait.as_deref()) {
        Ok(wait) => wait,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.message, None),
    };
    let reader = match open(&app, &stage, peer, query.as_deref(), &headers, None).await {
        Ok(reader) => reader,
        Err(refused) => return refused.into_response(),
    };
    let Reader {
        socket,
        ended: _ended,
        first,
        ..
    } = reader;
    let mut notifications = Vec::new();
    let mut follow = match first {
        CatchUp::Reset { cursor } => {
            return answer(Vec::new(), &Follow::from(cursor), true);
        }
        CatchUp::Replay { entries, cursor } => {
            notifications.extend(entries.iter().filter_map(|e| Stored::new(&e.bytes)));
            Follow::from(cursor)
        }
    };
    if notifications.is_empty() {
        let mut batch = VecDeque::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        while notifications.is_empty() {
            let taken = tokio::select! {
                n = socket.take(&mut batch) => n,
                () = tokio::time::sleep_until(deadline) => break,
            };
            if taken == 0 {
                break;
            }
            for frame in batch.drain(..) {
                if let Some(payload) = frame.text()
                    && presence_event(payload).is_none()
                    && follow.take(payload)
                {
                    notifications.extend(Stored::new(payload));
                }
            }
        }
    }
    answer(notifications, &follow, false)
}

fn answer(notifications: Vec<Stored>, follow: &Follow, reset: bool) -> Response {
    let json = PollAnswer {
        notifications,
        cursor: follow.cursor().encode(),
        reset,
    }
    .to_json();
    let mut response = json.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
