//! Cross-origin reads of the fallback transports: an app served from another origin (a dev
//! server on another port, a deployed site) opens `EventSource` or fetches `poll` here, and
//! a browser shows it the answer only if it says that origin may read it.
//!
//! Every origin may: a reader's credentials travel in `?token=` or `Authorization`, never
//! in cookies, so a page without a token reads nothing. The `stream` function's URL and the
//! `poll` HTTP API say the same on AWS.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// How long a browser may cache a preflight's answer, in seconds.
pub const PREFLIGHT_MAX_AGE_SECS: u32 = 600;

/// Adds the header that lets any origin read a reader's answer (refusals included, so the
/// app can show why).
pub(crate) fn allow_any_origin(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// Answers a preflight: `GET` with a bearer token or `Last-Event-ID` is allowed.
pub(crate) async fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, last-event-id, cache-control"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(PREFLIGHT_MAX_AGE_SECS),
    );
    response
}
