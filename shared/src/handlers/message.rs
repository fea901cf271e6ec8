//! `$default` and the action routes: one client frame in, one reply out through the
//! gateway (API Gateway does not send a route's return value unless a route response is
//! configured, and the contract's replies are pushes).

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use bytes::Bytes;
use tracing::{error, warn};

use super::publish::{PublishError, publish_one};
use super::{Services, connection_id, no_connection_id, response};
use crate::auth::Identity;
use crate::gateway::{Gateway, PushError};
use crate::ids::ConnectionId;
use crate::protocol::{
    ClientRequest, ErrorCode, ProtocolError, PublishRequest, Reply, ServerMessage, Target,
    parse_client_frame,
};
use crate::store::StoreError;

/// Handles one client frame and replies to the sender. Answers 200 once the reply is
/// handled (even an `error` reply: the connection stays usable), 400 without a connection id.
pub async fn message(
    services: &Services,
    gateway: &dyn Gateway,
    event: &ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let ctx = &event.request_context;
    let Some(id) = connection_id(event) else {
        return no_connection_id();
    };
    let body = event.body.as_deref().unwrap_or("");
    let reply = match parse_client_frame(body) {
        Err(rejected) => Reply {
            message: rejected.error.into(),
            reference: rejected.reference,
        },
        Ok(frame) => {
            let message = match Identity::from_context(&ctx.authorizer.fields) {
                Ok(identity) => dispatch(services, gateway, &id, &identity, frame.request)
                    .await
                    .unwrap_or_else(ServerMessage::from),
                Err(e) => {
                    error!(connection_id = %id, error = %e, "message without an authorizer context");
                    ProtocolError::new(ErrorCode::Internal, "connection has no identity").into()
                }
            };
            Reply {
                message,
                reference: frame.reference,
            }
        }
    };
    send(services, gateway, &id, &reply).await;
    response(200, "")
}

async fn dispatch(
    services: &Services,
    gateway: &dyn Gateway,
    id: &ConnectionId,
    identity: &Identity,
    request: ClientRequest,
) -> Result<ServerMessage, ProtocolError> {
    let store = &services.store;
    match request {
        ClientRequest::Ping => Ok(ServerMessage::Pong),
        ClientRequest::Whoami => Ok(ServerMessage::Whoami {
            connection_id: id.clone(),
            user: identity.user.clone(),
        }),
        ClientRequest::Subscribe { room, since } => {
            if !identity.can_subscribe(&room) {
                return Err(forbidden(&format!("you may not subscribe to {room}")));
            }
            if let Some(max) = services.limits.max_rooms_per_connection {
                check_room_cap(&**store, id, &room, max).await?;
            }
            store.join(id, &room).await.map_err(store_error)?;
            // Herald keeps no history yet, so nothing missed can be replayed: say so,
            // and the client knows to refetch its state.
            Ok(ServerMessage::Subscribed {
                room,
                recovered: since.map(|_| false),
            })
        }
        ClientRequest::Unsubscribe { room } => {
            store.leave(id, &room).await.map_err(store_error)?;
            Ok(ServerMessage::Unsubscribed { room })
        }
        ClientRequest::Publish { room, data } => {
            if !identity.can_publish(&room) {
                return Err(forbidden(&format!("you may not publish to {room}")));
            }
            if let Some(rate) = services.limits.socket_publish {
                // Per user, in the store: every connection and every host counts together.
                let key = format!("publish:{}", identity.user);
                let allowed = store
                    .count_event(&key, rate.window(), rate.burst)
                    .await
                    .map_err(store_error)?;
                if !allowed {
                    return Err(ProtocolError::new(
                        ErrorCode::RateLimited,
                        format!(
                            "at most {} socket publishes a second per user, in bursts of {}: \
                             this one was not published",
                            rate.per_second, rate.burst
                        ),
                    ));
                }
            }
            let request = PublishRequest {
                target: Target::Room(room.clone()),
                data,
                idempotency_key: None,
            };
            match publish_one(services, gateway, &request).await {
                Ok(outcome) => Ok(ServerMessage::Published {
                    room,
                    id: outcome.id,
                }),
                Err(PublishError::BadRequest(e)) => Err(e),
                Err(PublishError::RateLimited(message)) => {
                    Err(ProtocolError::new(ErrorCode::RateLimited, message))
                }
                Err(PublishError::Unavailable(e)) => {
                    error!(connection_id = %id, error = %e, "socket publish failed");
                    Err(internal())
                }
            }
        }
    }
}

/// Refuses a subscription that would take the connection past `max` rooms; a room it has
/// already joined can always be joined again. Requests of one connection are handled in
/// order on `herald-local`; on AWS two subscribes of one connection handled at the same
/// instant may both pass, so the cap can be exceeded by the few in flight, never more.
async fn check_room_cap(
    store: &dyn crate::store::ConnectionStore,
    id: &ConnectionId,
    room: &crate::protocol::RoomName,
    max: usize,
) -> Result<(), ProtocolError> {
    let rooms = store.rooms_of(id).await.map_err(store_error)?;
    if rooms.len() >= max && !rooms.contains(room) {
        return Err(ProtocolError::new(
            ErrorCode::LimitExceeded,
            format!("a connection may join at most {max} rooms: unsubscribe from one first"),
        ));
    }
    Ok(())
}

fn forbidden(message: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::Forbidden, message)
}

fn internal() -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, "temporarily unavailable; try again")
}

fn store_error(e: StoreError) -> ProtocolError {
    match e {
        // The record expired or was removed while the socket stayed open.
        StoreError::NotFound => ProtocolError::new(
            ErrorCode::Internal,
            "this connection is no longer registered; reconnect",
        ),
        other => {
            error!(error = %other, "store failed");
            internal()
        }
    }
}

/// Posts the reply to the sender; a sender that has gone meanwhile is forgotten.
async fn send(services: &Services, gateway: &dyn Gateway, id: &ConnectionId, reply: &Reply) {
    match gateway.post(id, Bytes::from(reply.to_json())).await {
        Ok(()) => {}
        Err(PushError::Gone) => {
            if let Err(e) = services.store.remove(id).await {
                warn!(connection_id = %id, error = %e, "could not forget a gone sender");
            }
        }
        Err(e) => warn!(connection_id = %id, error = %e, "reply not delivered"),
    }
}
