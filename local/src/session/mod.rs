//! Opening and closing a connection, whatever its transport: what the WebSocket handshake
//! (`ws/handshake.rs`) and the fallback readers (`readers/`) both run, as API Gateway runs
//! it, one step after another: admission (stage, shutdown, connection limits: 429), the
//! token (401 without calling the authorizer when there is none), the `authorizer` handler
//! (through `functions/`: 401 on refusal, 403 on a Deny policy), then `connect` (its non-2xx refuses the
//! connection with that status); and at the end `$disconnect`, exactly once.
//!
//! The socket's queue is in the registry before `connect` stores the connection, so a
//! publish that sees the stored connection always finds a socket to queue into, even
//! before the upgrade has finished.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use herald::auth::token_from_request;
use herald::events::encodings::Body;
use herald::events::iam::IamPolicyEffect;
use herald::ids::{ConnectionId, now_ms};
use serde_json::Value;
use tracing::debug;

use crate::app::App;
use crate::connection::events::{ConnectionMeta, Context};
use crate::connection::registry::{Socket, Transport};
use crate::http::answer::message_response;
use crate::http::query::decode_query;

/// A refused handshake: the status and API Gateway's message.
pub(crate) struct Refusal(StatusCode, String);

impl Refusal {
    fn new(status: StatusCode, message: &str) -> Self {
        Self(status, message.to_owned())
    }

    pub(crate) fn into_response(self) -> Response {
        message_response(self.0, &self.1)
    }
}

/// What the handshake knows of the request.
pub(crate) struct Request {
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
}

impl Request {
    /// The last value of the query parameter `name`, decoded.
    pub(crate) fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Admission, the token and the `authorizer`: what every transport's handshake (the
/// WebSocket's, SSE's) does before `$connect`. The request as the events carry it, and the
/// connection it would be, with the authorizer's context.
pub(crate) async fn admit_and_authorize(
    app: &App,
    stage: &str,
    peer: SocketAddr,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(Request, ConnectionMeta), Refusal> {
    let source_ip = peer.ip().to_string();
    admit(app, stage, &source_ip)?;
    let request = Request {
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        query: decode_query(query.unwrap_or("")),
    };
    let meta = ConnectionMeta {
        id: ConnectionId::generate(),
        connected_at: now_ms(),
        source_ip,
        user_agent: header_text(headers, header::USER_AGENT).map(str::to_owned),
        domain_name: header_text(headers, header::HOST)
            .unwrap_or("localhost")
            .to_owned(),
        context: Context::default(),
    };
    let meta = authorize(app, headers, &request, meta).await?;
    Ok((request, meta))
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The stage, shutdown and the connection limits: refused before any handler runs.
fn admit(app: &App, stage: &str, source_ip: &str) -> Result<(), Refusal> {
    if stage != app.settings.stage {
        return Err(Refusal::new(StatusCode::FORBIDDEN, "Forbidden"));
    }
    if app.shutdown.is_cancelled() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Shutting down",
        ));
    }
    let limits = &app.settings.limits;
    if limits.full(app.registry.len(), app.registry.count_ip(source_ip)) {
        return Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests",
        ));
    }
    Ok(())
}

/// The token, then the `authorizer` handler; an allowed connection carries its context.
async fn authorize(
    app: &App,
    headers: &HeaderMap,
    request: &Request,
    mut meta: ConnectionMeta,
) -> Result<ConnectionMeta, Refusal> {
    let query_token = request.query("token");
    // API Gateway answers 401 itself, without invoking the authorizer, when the identity
    // source is missing.
    if token_from_request(query_token, header_text(headers, header::AUTHORIZATION)).is_none() {
        return Err(Refusal::new(StatusCode::UNAUTHORIZED, "Unauthorized"));
    }
    let event = app
        .events
        .authorizer_request(&meta, &request.headers, &request.query);
    // The handlers log why; the client is told only `Unauthorized`, as API Gateway tells it.
    let allowed = app
        .handlers
        .authorize(&event)
        .await
        .map_err(|_| Refusal::new(StatusCode::UNAUTHORIZED, "Unauthorized"))?;
    let statement = allowed.policy_document.statement.first();
    if !statement.is_some_and(|s| s.effect == IamPolicyEffect::Allow) {
        return Err(Refusal::new(StatusCode::FORBIDDEN, "Forbidden"));
    }
    if let Value::Object(context) = &allowed.context {
        meta.context = Context::new(context);
    }
    Ok(meta)
}

/// Registers the socket, then runs `$connect`; a refusal takes the socket back out.
pub(crate) async fn connect(
    app: &App,
    request: &Request,
    meta: ConnectionMeta,
    transport: Transport,
) -> Result<Arc<Socket>, Refusal> {
    let socket = Socket::with_transport(meta, transport);
    app.registry.insert(socket.clone());
    let event = app
        .events
        .connect(&socket.meta, &request.headers, &request.query);
    let answer = app.handlers.connect(&event).await;
    if (200..300).contains(&answer.status_code) {
        return Ok(socket);
    }
    app.registry.remove(&socket.meta.id);
    let status = u16::try_from(answer.status_code)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match answer.body {
        Some(Body::Text(text)) => text,
        _ => status.canonical_reason().unwrap_or("").to_owned(),
    };
    Err(Refusal(status, body))
}

/// Runs `$disconnect`, once per connection whatever path got here.
pub(crate) async fn finish(app: Arc<App>, socket: Arc<Socket>, code: u16, reason: String) {
    if !socket.claim_disconnect() {
        return;
    }
    let event = app.events.disconnect(&socket.meta, code, &reason);
    let answer = app.handlers.disconnect(&event).await;
    debug!(connection_id = %socket.meta.id, code, reason, status = answer.status_code, "disconnected");
}
