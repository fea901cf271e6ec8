//! `$disconnect`: forget the connection and its memberships. Idempotent, since API Gateway
//! may deliver it more than once and a gone post may have removed the connection already.
//! With presence events on, each room it was in hears that it left (through `gateway`).

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use tracing::{error, info};

use crate::gateway::Gateway;
use crate::presence_events::Change;
use crate::sinks::webhook::Event;

use super::{Services, connection_id, no_connection_id, response};

/// Removes the connection; 200 whether or not it was known, 500 if the store failed.
pub async fn disconnect(
    services: &Services,
    gateway: &dyn Gateway,
    event: &ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let ctx = &event.request_context;
    let Some(id) = connection_id(event) else {
        return no_connection_id();
    };
    // Read before they are forgotten, only when someone is to hear of them; a failed read
    // costs the events, never the disconnect.
    let rooms = match services.limits.presence_events {
        Some(_) => services.store.rooms_of(&id).await.unwrap_or_default(),
        None => Vec::new(),
    };
    match services.store.remove(&id).await {
        Ok(removed) => {
            info!(
                connection_id = %id,
                known = removed.connection.is_some(),
                status = ctx.disconnect_status_code,
                reason = ctx.disconnect_reason.as_deref().unwrap_or(""),
                "disconnected"
            );
            // Once per connection: a repeated `$disconnect` finds nothing to remove.
            if let Some(gone) = &removed.connection {
                for room in &rooms {
                    services
                        .announce(gateway, Change::Leave, room, &gone.user, &id)
                        .await;
                }
            }
            if let (Some(webhooks), Some(gone)) = (&services.webhooks, &removed.connection) {
                webhooks.emit(Event::connection_closed(
                    &id,
                    &gone.user,
                    ctx.disconnect_status_code,
                    ctx.disconnect_reason.as_deref(),
                ));
            }
            response(200, "")
        }
        Err(e) => {
            error!(connection_id = %id, error = %e, "could not forget the connection");
            response(500, "store unavailable")
        }
    }
}
