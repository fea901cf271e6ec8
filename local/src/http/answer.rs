//! HTTP answers in the shapes AWS gives them: API Gateway's `{"message": …}` for a refused
//! handshake or an unknown path, and the AWS APIs' errors with `x-amzn-ErrorType`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// `body` as JSON with `status`.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// An AWS-style error: the type in `x-amzn-ErrorType`, the text in the body's `message`.
pub(crate) fn aws_error(status: StatusCode, kind: &'static str, message: &str) -> Response {
    let mut response = json_response(status, &json!({"message": message, "Type": "User"}));
    response
        .headers_mut()
        .insert("x-amzn-errortype", HeaderValue::from_static(kind));
    response
}

/// `{"message": ...}` with `status`, as API Gateway answers a refused handshake.
pub(crate) fn message_response(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "message": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_carry_their_type_and_message() {
        let response = aws_error(StatusCode::GONE, "GoneException", "gone");
        assert_eq!(response.status(), StatusCode::GONE);
        assert_eq!(response.headers()["x-amzn-errortype"], "GoneException");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["message"], "gone");
        let response = message_response(StatusCode::UNAUTHORIZED, "Unauthorized");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], br#"{"message":"Unauthorized"}"#);
    }
}
