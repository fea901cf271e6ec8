//! `$default` and the action routes: one client frame in, one reply out through the
//! gateway (API Gateway does not send a route's return value unless a route response is
//! configured, and the contract's replies are pushes).

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use bytes::Bytes;
use tracing::{error, warn};

use super::publish::{PublishError, publish_one};
use super::{Services, connection_id, no_connection_id, response};
use crate::auth::Identity;
use crate::fanout::post_retrying;
use crate::gateway::{Gateway, PushError};
use crate::ids::ConnectionId;
use crate::metrics::Refusal;
use crate::presence_events::Change;
use crate::protocol::{
    ClientRequest, ErrorCode, MAX_NOTIFICATION_BYTES, Position, ProtocolError, PublishRequest,
    Reply, RoomName, ServerMessage, Stored, Target, parse_client_frame,
};
use crate::store::{Channel, Entry, Range, StoreError};

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
    let (reply, replay, announce) = match parse_client_frame(body) {
        Err(rejected) => (
            Reply {
                message: rejected.error.into(),
                reference: rejected.reference,
            },
            Vec::new(),
            None,
        ),
        Ok(frame) => {
            let identity = Identity::from_context(&ctx.authorizer.fields);
            let answer = match &identity {
                Ok(identity) => dispatch(services, gateway, &id, identity, frame.request)
                    .await
                    .unwrap_or_else(|e| {
                        count_refusal(services, &e);
                        Answer::from(ServerMessage::from(e))
                    }),
                Err(e) => {
                    error!(connection_id = %id, error = %e, "message without an authorizer context");
                    Answer::from(ServerMessage::from(ProtocolError::new(
                        ErrorCode::Internal,
                        "connection has no identity",
                    )))
                }
            };
            let announce = identity
                .ok()
                .zip(answer.announce)
                .map(|(identity, (change, room))| (change, room, identity.user));
            (
                Reply {
                    message: answer.message,
                    reference: frame.reference,
                },
                answer.replay,
                announce,
            )
        }
    };
    let payload = Bytes::from(reply.to_json());
    if post_retrying(&*services.store, gateway, &id, payload, &services.fanout).await {
        replay_to(services, gateway, &id, replay).await;
    }
    // After the reply, whether or not it was delivered: the membership changed either way.
    if let Some((change, room, user)) = announce {
        services.announce(gateway, change, &room, &user, &id).await;
    }
    response(200, "")
}

/// Counts a request refused for a reason operators watch (a store failure answers
/// `internal`).
fn count_refusal(services: &Services, error: &ProtocolError) {
    let metrics = &services.metrics;
    match error.code {
        ErrorCode::Forbidden => metrics.refused(Refusal::Forbidden),
        ErrorCode::RateLimited => metrics.refused(Refusal::RateLimited),
        ErrorCode::LimitExceeded => metrics.refused(Refusal::LimitExceeded),
        ErrorCode::Internal => metrics.store_error(),
        _ => {}
    }
}

/// Pushes a recovery's notifications in order, each retried as fan-out retries. The client
/// was told it recovered, so a replay cut short must not pass for a whole one: the
/// connection is closed instead, and the client reconnects and recovers again from the
/// last notification it received.
async fn replay_to(
    services: &Services,
    gateway: &dyn Gateway,
    id: &ConnectionId,
    replay: Vec<Entry>,
) {
    for (sent, entry) in replay.iter().enumerate() {
        let delivered = post_retrying(
            &*services.store,
            gateway,
            id,
            entry.bytes.clone(),
            &services.fanout,
        )
        .await;
        if delivered {
            continue;
        }
        warn!(connection_id = %id, sent, of = replay.len(), "replay cut short: closing the connection");
        match gateway.delete(id).await {
            Ok(()) | Err(PushError::Gone) => {}
            Err(e) => error!(connection_id = %id, error = %e, "could not close after a cut replay"),
        }
        return;
    }
}

/// A reply, the kept notifications to push after it, in order, and the room to tell of a
/// join or leave after both (so a member hears its own join after `subscribed`; told only
/// with presence events on).
struct Answer {
    message: ServerMessage,
    replay: Vec<Entry>,
    announce: Option<(Change, RoomName)>,
}

impl From<ServerMessage> for Answer {
    fn from(message: ServerMessage) -> Self {
        Self {
            message,
            replay: Vec::new(),
            announce: None,
        }
    }
}

/// What a client at `since` gets back from `channel`'s history: whether it recovers (with
/// `since` only), the channel's position, and the notifications to replay.
async fn recover(
    services: &Services,
    channel: &Channel,
    since: Option<&Position>,
) -> Result<(Option<bool>, Option<Position>, Vec<Entry>), ProtocolError> {
    let Some(retention) = services.limits.history else {
        return Ok((since.map(|_| false), None, Vec::new()));
    };
    let (range, limit) = match since {
        Some(since) => (Range::After(since.offset), retention.size),
        None => (Range::Latest, 0),
    };
    services.metrics.history_read();
    let read = services
        .store
        .read_history(channel, range, limit, &retention)
        .await
        .map_err(store_error)?;
    let position = read.position.clone();
    let answer = match since {
        None => (None, Some(position), Vec::new()),
        Some(since) => match read.replay_after(since) {
            Some(replay) => (Some(true), Some(position), replay),
            None => (Some(false), Some(position), Vec::new()),
        },
    };
    if let Some(all) = answer.0 {
        services.metrics.recovered(all);
    }
    Ok(answer)
}

/// Bytes of a `history` reply kept free for its `ref`: a `ref` string of the longest kind,
/// every character escaped.
const REF_ALLOWANCE: usize = 6 * crate::protocol::MAX_ID_LEN + 16;

/// The `history` reply: kept notifications of `room`, as many as fit in one frame.
async fn history(
    services: &Services,
    room: RoomName,
    limit: usize,
    since: Option<Position>,
) -> Result<ServerMessage, ProtocolError> {
    let Some(retention) = services.limits.history else {
        return Ok(ServerMessage::History {
            room,
            notifications: Vec::new(),
            position: None,
            truncated: false,
        });
    };
    let channel = &Channel::Room(room.clone());
    services.metrics.history_read();
    let read = |range| async move {
        services
            .store
            .read_history(channel, range, limit, &retention)
            .await
            .map_err(store_error)
    };
    let mut found = match &since {
        Some(since) => read(Range::After(since.offset)).await?,
        None => read(Range::Latest).await?,
    };
    // Offsets of another epoch mean nothing here: answer the newest instead, and the
    // client sees from the epoch that its history was lost.
    if since
        .as_ref()
        .is_some_and(|s| s.epoch != found.position.epoch)
    {
        found = read(Range::Latest).await?;
    }
    let mut notifications: Vec<Stored> = found
        .entries
        .iter()
        .filter_map(|e| Stored::new(&e.bytes))
        .collect();
    let envelope = serde_json::to_vec(&ServerMessage::History {
        room: room.clone(),
        notifications: Vec::new(),
        position: Some(found.position.clone()),
        truncated: true,
    })
    .map(|v| v.len())
    .unwrap_or(0);
    let budget = MAX_NOTIFICATION_BYTES.saturating_sub(envelope + REF_ALLOWANCE);
    let mut used: usize = notifications.iter().map(|n| n.len() + 1).sum();
    let mut truncated = false;
    while used > budget && !notifications.is_empty() {
        // Keep the end a client pages from: the newest without `since`, the oldest with.
        let dropped = if since.is_some() {
            notifications.pop()
        } else {
            Some(notifications.remove(0))
        };
        used -= dropped.map_or(0, |n| n.len() + 1);
        truncated = true;
    }
    Ok(ServerMessage::History {
        room,
        notifications,
        position: Some(found.position),
        truncated,
    })
}

async fn dispatch(
    services: &Services,
    gateway: &dyn Gateway,
    id: &ConnectionId,
    identity: &Identity,
    request: ClientRequest,
) -> Result<Answer, ProtocolError> {
    let store = &services.store;
    match request {
        ClientRequest::Ping => Ok(ServerMessage::Pong.into()),
        ClientRequest::Whoami => Ok(ServerMessage::Whoami {
            connection_id: id.clone(),
            user: identity.user.clone(),
        }
        .into()),
        ClientRequest::Subscribe { room, since } => {
            if !identity.can_subscribe(&room) {
                return Err(forbidden(&format!("you may not subscribe to {room}")));
            }
            let cap = services.limits.max_rooms_per_connection;
            let announced = services.limits.presence_events.is_some();
            // Its rooms are read only when a limit or a join event needs them.
            let rooms = match cap.is_some() || announced {
                true => store.rooms_of(id).await.map_err(store_error)?,
                false => Vec::new(),
            };
            if let Some(max) = cap {
                check_room_cap(&rooms, &room, max)?;
            }
            let member = rooms.contains(&room);
            // Joined before the history is read: a notification published meanwhile is
            // either in what is read or fanned out to this connection (or both).
            store.join(id, &room).await.map_err(store_error)?;
            let announce = (announced && !member).then(|| (Change::Join, room.clone()));
            let channel = Channel::Room(room.clone());
            let (recovered, position, replay) = recover(services, &channel, since.as_ref()).await?;
            Ok(Answer {
                message: ServerMessage::Subscribed {
                    room,
                    recovered,
                    position,
                },
                replay,
                announce,
            })
        }
        ClientRequest::Recover { since } => {
            let channel = Channel::User(identity.user.clone());
            let (recovered, position, replay) = recover(services, &channel, Some(&since)).await?;
            Ok(Answer {
                message: ServerMessage::Recovered {
                    recovered: recovered.unwrap_or(false),
                    position,
                },
                replay,
                announce: None,
            })
        }
        ClientRequest::History { room, limit, since } => {
            if !identity.can_subscribe(&room) {
                return Err(forbidden(&format!("you may not read {room}")));
            }
            history(services, room, limit, since)
                .await
                .map(Answer::from)
        }
        ClientRequest::Unsubscribe { room } => {
            let left = store.leave(id, &room).await.map_err(store_error)?;
            let announce = left.was_member.then(|| (Change::Leave, room.clone()));
            Ok(Answer {
                announce,
                ..ServerMessage::Unsubscribed { room }.into()
            })
        }
        ClientRequest::Presence { room } => {
            if !identity.can_subscribe(&room) {
                return Err(forbidden(&format!("you may not see who is in {room}")));
            }
            crate::store::presence(&**store, &room)
                .await
                .map(|presence| ServerMessage::Presence(presence).into())
                .map_err(store_error)
        }
        ClientRequest::Publish { room, data } => {
            if !identity.can_publish(&room) {
                return Err(forbidden(&format!("you may not publish to {room}")));
            }
            if let Some(rate) = services.limits.socket_publish {
                // Per user, in the store: every connection and every host counts together.
                let key = format!("publish:{}", identity.user);
                let allowed = store
                    .count_events(&key, rate.window(), 1, rate.burst)
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
                    position: outcome
                        .offset
                        .zip(outcome.epoch)
                        .map(|(offset, epoch)| Position { offset, epoch }),
                }
                .into()),
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
fn check_room_cap(rooms: &[RoomName], room: &RoomName, max: usize) -> Result<(), ProtocolError> {
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
