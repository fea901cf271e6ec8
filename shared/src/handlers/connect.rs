//! `$connect`: record the connection with the identity the authorizer established, unless
//! the user is over the per-user connection limit.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use tracing::{error, info, warn};

use crate::sinks::webhook::Event;

use super::{Services, connection_id, no_connection_id, response};
use crate::auth::Identity;
use crate::ids::now_ms;
use crate::store::Connection;

/// Stores the connection. Answers 200, or: 400 without a connection id, 401 without an
/// authorizer context, 429 over the per-user limit, 500 when the store fails. API Gateway
/// (and `herald-local`) refuse the handshake on any non-2xx.
pub async fn connect(
    services: &Services,
    event: &ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let ctx = &event.request_context;
    let Some(id) = connection_id(event) else {
        return no_connection_id();
    };
    let identity = match Identity::from_context(&ctx.authorizer.fields) {
        Ok(identity) => identity,
        Err(e) => {
            warn!(connection_id = %id, error = %e, "connect without an authorizer context");
            return response(401, "Unauthorized");
        }
    };
    let store = &services.store;
    if let Some(max) = services.limits.max_connections_per_user {
        match store.count_user(&identity.user).await {
            Ok(n) if n >= max => {
                info!(user = %identity.user, connections = n, "per-user connection limit reached");
                return response(429, "too many connections for this user");
            }
            Ok(_) => {}
            Err(e) => {
                error!(connection_id = %id, error = %e, "could not count the user's connections");
                return response(500, "store unavailable");
            }
        }
    }
    let now = now_ms();
    let connected_at = if ctx.connected_at > 0 {
        ctx.connected_at
    } else {
        now
    };
    let lifetime =
        i64::try_from(services.limits.connection_lifetime.as_millis()).unwrap_or(i64::MAX);
    let connection = Connection {
        id: id.clone(),
        user: identity.user,
        source_ip: ctx.identity.source_ip.clone(),
        connected_at,
        // From the time the record is written, not `connectedAt`: a redelivered or
        // replayed event must not create a record that is already expired.
        expires_at: now.saturating_add(lifetime),
        instance: services.instance.clone(),
    };
    match store.add(&connection).await {
        Ok(()) => {
            if let Some(webhooks) = &services.webhooks {
                webhooks.emit(Event::connection_opened(&connection.id, &connection.user));
            }
            response(200, "")
        }
        Err(e) => {
            error!(connection_id = %id, error = %e, "could not store the connection");
            response(500, "store unavailable")
        }
    }
}
