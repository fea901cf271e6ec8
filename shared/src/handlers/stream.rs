//! The `stream` function: Server-Sent Events on AWS, through Lambda response streaming
//! behind a Function URL (`InvokeMode: RESPONSE_STREAM`).
//!
//! The same request and stream as `herald-local`'s `GET /{stage}/events`. A Lambda holds no
//! socket that fan-out could post into, so, like `poll`, it reads history: the stream opens
//! with what the client missed since `Last-Event-ID` (or `?cursor=`), then reads again every
//! [`POLL_INTERVAL`](super::POLL_INTERVAL) and sends what followed. An invocation cannot
//! outlive the function's timeout, so the stream ends [`STREAM_END_MARGIN`] before it with a
//! `retry:`; the browser reconnects with the last id it got and the next invocation resumes
//! exactly there. While it streams, the reader is a member of its rooms
//! (`reader/membership.rs`).

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use aws_lambda_events::http::{HeaderMap, HeaderValue, StatusCode, header};
use aws_lambda_events::lambda_function_urls::LambdaFunctionUrlRequest;
use bytes::Bytes;
use futures::Stream;
use tokio::time::Instant;
use tracing::warn;

use super::Services;
use super::poll::POLL_INTERVAL;
use crate::auth::Verifier;
use crate::reader::admission::{Admitted, ReadRequest, Refusal, admit};
use crate::reader::membership::Membership;
use crate::reader::sse;
use crate::reader::{Follow, catch_up};
use crate::store::Channel;

/// How long before the function's timeout a stream ends, so that its last bytes and the
/// response's end reach the client before Lambda stops the invocation.
pub const STREAM_END_MARGIN: Duration = Duration::from_secs(5);

/// The chunks of a response body, as Lambda's streaming runtime takes them.
pub type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>> + Send>>;

/// A streamed answer: the status and headers Lambda sends first, then the body's chunks.
pub struct Streamed {
    /// 200 for a stream; 400, 401, 403 or 503 for a refusal.
    pub status: StatusCode,
    /// `text/event-stream` for a stream, `application/json` for a refusal.
    pub headers: HeaderMap,
    /// The events, or the refusal's JSON as one chunk.
    pub body: Chunks,
}

/// Handles one Function URL request; `remaining` is how long the invocation may still run.
pub async fn stream(
    services: Services,
    verifier: &Verifier,
    request: &LambdaFunctionUrlRequest,
    remaining: Duration,
) -> Streamed {
    let query = &request.query_string_parameters;
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    // A Function URL joins repeated parameters with commas, as `rooms=a,b` is written.
    let read = ReadRequest {
        rooms: query.get("rooms").map_or("", String::as_str),
        cursor: header("last-event-id").or(query.get("cursor").map(String::as_str)),
        token: query.get("token").map(String::as_str),
        authorization: header(header::AUTHORIZATION.as_str()),
    };
    let Admitted { channels, since } = match admit(
        verifier,
        services.limits.max_rooms_per_connection,
        services.limits.history.is_some(),
        &read,
    ) {
        Ok(admitted) => admitted,
        Err(refused) => return refusal(&refused),
    };
    let first = catch_up(
        &*services.store,
        services.limits.history,
        &channels,
        since.as_ref(),
    )
    .await;
    let first = match first {
        Ok(first) => first,
        Err(e) => {
            warn!(error = %e, "stream could not read history");
            return refusal(&Refusal::new(503, "the store failed; try again"));
        }
    };
    let source_ip = request.request_context.http.source_ip.clone();
    let lives = remaining.saturating_sub(STREAM_END_MARGIN);
    let membership = Membership::begin(&*services.store, &channels, source_ip, lives).await;
    let membership = match membership {
        Ok(membership) => membership,
        Err(e) => {
            warn!(error = %e, "stream could not join its rooms");
            return refusal(&Refusal::new(503, "the store failed; try again"));
        }
    };
    let mut opening = sse::retry();
    let follow = sse::catch_up_events(&mut opening, first, since);
    let now = Instant::now();
    let reading = Reading {
        services,
        channels,
        membership: Some(membership),
        follow,
        opening: Some(opening),
        ends_at: now + remaining.saturating_sub(STREAM_END_MARGIN),
        last_sent: now,
        ended: false,
    };
    let mut headers = HeaderMap::new();
    let text = HeaderValue::from_static(sse::CONTENT_TYPE);
    headers.insert(header::CONTENT_TYPE, text);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Streamed {
        status: StatusCode::OK,
        headers,
        body: Box::pin(futures::stream::unfold(reading, Reading::next)),
    }
}

/// How long an invocation may still run, from its deadline (ms since the epoch, as
/// Lambda's context gives it).
pub fn time_left(deadline_ms: u64) -> Duration {
    let now = u64::try_from(crate::ids::now_ms()).unwrap_or(0);
    Duration::from_millis(deadline_ms.saturating_sub(now))
}

/// A refusal: its JSON in one chunk.
fn refusal(refused: &Refusal) -> Streamed {
    let mut headers = HeaderMap::new();
    let json = HeaderValue::from_static("application/json");
    headers.insert(header::CONTENT_TYPE, json);
    let body = Bytes::from(refused.body().to_string());
    Streamed {
        status: StatusCode::from_u16(refused.status).unwrap_or(StatusCode::BAD_REQUEST),
        headers,
        body: Box::pin(futures::stream::iter([Ok(body)])),
    }
}

/// A stream's state between chunks.
struct Reading {
    services: Services,
    channels: Vec<Channel>,
    /// Its place among its rooms' members, given up when the stream ends (or, if the
    /// client leaves first, with its record's expiry).
    membership: Option<Membership>,
    follow: Follow,
    opening: Option<Vec<u8>>,
    ends_at: Instant,
    last_sent: Instant,
    ended: bool,
}

impl Reading {
    /// The next chunk: the opening, then what each read of history found, a comment line
    /// when idle, and a last `retry:` before the invocation's time is up (or when the store
    /// fails: the browser reconnects and the next invocation tries again).
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if let Some(opening) = self.opening.take() {
            return Some((Ok(Bytes::from(opening)), self));
        }
        if self.ended {
            if let Some(membership) = self.membership.take() {
                membership.end(&*self.services.store).await;
            }
            return None;
        }
        loop {
            let now = Instant::now();
            if now >= self.ends_at {
                self.ended = true;
                return Some((Ok(Bytes::from(sse::retry())), self));
            }
            let heartbeat = self.last_sent + sse::SSE_HEARTBEAT;
            if now >= heartbeat {
                self.last_sent = now;
                return Some((Ok(Bytes::from_static(sse::KEEP_ALIVE)), self));
            }
            let read_at = now + POLL_INTERVAL;
            let wake = read_at.min(self.ends_at).min(heartbeat);
            tokio::time::sleep_until(wake).await;
            if wake < read_at {
                continue;
            }
            let at = self.follow.cursor().clone();
            let services = &self.services;
            let store = &*services.store;
            let read = catch_up(store, services.limits.history, &self.channels, Some(&at));
            match read.await {
                Ok(found) => {
                    let mut chunk = Vec::new();
                    self.follow = sse::catch_up_events(&mut chunk, found, Some(at));
                    if !chunk.is_empty() {
                        self.last_sent = Instant::now();
                        return Some((Ok(Bytes::from(chunk)), self));
                    }
                }
                Err(e) => {
                    warn!(error = %e, "stream could not read history; the client reconnects");
                    self.ended = true;
                    return Some((Ok(Bytes::from(sse::retry())), self));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_counts_down_to_the_deadline_and_stops_at_zero() {
        let now = u64::try_from(crate::ids::now_ms()).unwrap();
        let left = time_left(now + 5_000);
        assert!(
            left <= Duration::from_secs(5) && left > Duration::from_millis(4_000),
            "{left:?}"
        );
        assert_eq!(
            time_left(now - 1_000),
            Duration::ZERO,
            "a deadline already passed"
        );
    }
}
