//! The `publish` function: direct invocations (one request or a batch) and SQS events.
//!
//! With SQS, a record is reported as a `batchItemFailure` only when it is invalid or could
//! not be processed (the store failed). Recipients that were gone or failed are counted in
//! the result and not retried through SQS, which would re-deliver to everyone else.

use std::time::Instant;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use bytes::Bytes;
use serde_json::Value;
use tracing::{error, warn};

use super::Services;
use crate::error::{self, Described, Source};
use crate::fanout::deliver;
use crate::gateway::Gateway;
use crate::ids::{notification_id, now_ms};
use crate::protocol::{
    BatchOutcome, Notification, ProtocolError, PublishInput, PublishOutcome, PublishRequest,
    RoomName, Target, check_size,
};
use crate::shard::{self, PageQueue, Plan};
use crate::store::{Channel, Draft, Position};

/// Why a publish did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The request is invalid; retrying it will not help.
    #[error("{0}")]
    BadRequest(ProtocolError),
    /// Herald could not complete it (the store failed); a retry may succeed. The source is
    /// the store's or the interrupted fan-out's error.
    #[error("unavailable: {0}")]
    Unavailable(#[source] Source),
    /// The room's publish limit was reached; this publish was not delivered to anyone.
    #[error("{0}")]
    RateLimited(String),
}

impl PublishError {
    /// The Lambda `errorType` this error is reported under.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BadRequest",
            Self::Unavailable(_) => "Unavailable",
            Self::RateLimited(_) => "RateLimited",
        }
    }
}

/// Handles one invocation of the `publish` function: a publish request, a batch, or an
/// SQS event. Returns the JSON answer.
pub async fn publish(
    services: &Services,
    gateway: &dyn Gateway,
    payload: Value,
) -> Result<Value, PublishError> {
    if payload.get("Records").is_some() {
        let event: SqsEvent = serde_json::from_value(payload).map_err(|e| {
            PublishError::BadRequest(ProtocolError::bad_request(format!("not an SQS event: {e}")))
        })?;
        let answer = sqs(services, gateway, event).await;
        return Ok(serde_json::to_value(answer).expect("an SQS batch response serializes"));
    }
    if let Some(room) = payload.get(PRESENCE) {
        return presence_of(services, room).await;
    }
    let payload = match payload.get(DEVICE_TOPIC) {
        Some(_) => device_publish(services, &payload)?,
        None => payload,
    };
    let input = PublishInput::parse(&payload).map_err(PublishError::BadRequest)?;
    let answer = match input {
        PublishInput::Single(request) => publish_one(services, gateway, &request)
            .await
            .map(serde_json::to_value),
        PublishInput::Batch(requests) => publish_batch(services, gateway, &requests)
            .await
            .map(serde_json::to_value),
    };
    if let Err(PublishError::Unavailable(_)) = &answer {
        services.metrics.store_error();
    }
    Ok(answer?.expect("publish outcomes serialize"))
}

/// The field of an Invoke that asks who is in a room instead of publishing
/// (`{"presence":"orders"}`).
pub const PRESENCE: &str = "presence";

/// The answer to `{"presence":ROOM}`: `{"room","count","members"}`.
async fn presence_of(services: &Services, room: &Value) -> Result<Value, PublishError> {
    let room = room
        .as_str()
        .and_then(|r| RoomName::parse(r).ok())
        .ok_or_else(|| {
            PublishError::BadRequest(ProtocolError::bad_request(
                "presence must name a room (a room name string)",
            ))
        })?;
    let presence = crate::store::presence(&*services.store, &room)
        .await
        .map_err(|e| PublishError::Unavailable(error::source(e)))?;
    Ok(serde_json::to_value(presence).expect("presence serializes"))
}

/// The field an IoT rule puts a device's topic in (`SELECT topic() AS mqttTopic,
/// encode(*, 'base64') AS mqttPayload FROM 'PREFIX/publish/+'`), and its body's.
pub const DEVICE_TOPIC: &str = "mqttTopic";
/// The field the IoT rule puts a device's body in, base64 (so any JSON, not only an
/// object, arrives as it was sent).
pub const DEVICE_PAYLOAD: &str = "mqttPayload";

/// A device's publish, brought by the IoT rule, as the room publish it stands for: checked
/// as `herald-local` checks one from its broker (topic, room name, allowed room, JSON body).
fn device_publish(services: &Services, event: &Value) -> Result<Value, PublishError> {
    use base64::Engine;
    let refuse = |reason: &str| {
        warn!(reason, "device publish refused");
        PublishError::BadRequest(ProtocolError::bad_request(format!(
            "device publish refused: {reason}"
        )))
    };
    let Some(rules) = &services.devices else {
        return Err(refuse(
            "MQTT is not on for this function (HERALD_MQTT_URL=iot with HERALD_MQTT_PUBLISH_ROOMS)",
        ));
    };
    let topic = event[DEVICE_TOPIC]
        .as_str()
        .ok_or_else(|| refuse("no topic"))?;
    let body = event[DEVICE_PAYLOAD]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .ok_or_else(|| refuse("the payload is not base64 (the rule encodes it)"))?;
    let device = rules.check(topic, &body).map_err(refuse)?;
    Ok(serde_json::json!({"room": device.room.as_str(), "data": device.data}))
}

/// Publishes a batch in list order, stopping at the first message that cannot be done.
async fn publish_batch(
    services: &Services,
    gateway: &dyn Gateway,
    requests: &[PublishRequest],
) -> Result<BatchOutcome, PublishError> {
    let mut results = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        match publish_one(services, gateway, request).await {
            Ok(outcome) => results.push(outcome),
            Err(e) => {
                let context = format!("messages[{i}] (the {i} before it were published)");
                return Err(match e {
                    PublishError::BadRequest(p) => PublishError::BadRequest(ProtocolError {
                        code: p.code,
                        message: format!("{context}: {}", p.message),
                    }),
                    PublishError::Unavailable(source) => PublishError::Unavailable(error::source(
                        Described::new(format!("{context}: {source}"), source),
                    )),
                    PublishError::RateLimited(message) => {
                        PublishError::RateLimited(format!("{context}: {message}"))
                    }
                });
            }
        }
    }
    Ok(BatchOutcome { results })
}

async fn sqs(services: &Services, gateway: &dyn Gateway, event: SqsEvent) -> SqsBatchResponse {
    let mut failures = Vec::new();
    for record in event.records {
        let message_id = record.message_id.clone().unwrap_or_default();
        let input = serde_json::from_str::<Value>(record.body.as_deref().unwrap_or(""))
            .map_err(|e| ProtocolError::bad_request(format!("body is not JSON: {e}")))
            .and_then(|body| PublishInput::parse(&body));
        let result = match input {
            Err(e) => Err(PublishError::BadRequest(e)),
            Ok(PublishInput::Single(request)) => {
                publish_one(services, gateway, &request).await.map(drop)
            }
            Ok(PublishInput::Batch(requests)) => {
                publish_batch(services, gateway, &requests).await.map(drop)
            }
        };
        if let Err(e) = result {
            if let PublishError::Unavailable(_) = e {
                services.metrics.store_error();
            }
            warn!(message_id = %message_id, error = %e, "SQS record not published");
            failures.push(message_id);
        }
    }
    super::sqs_answer(failures)
}

/// Publishes one validated request: serialize once, honour the idempotency key, keep it in
/// the room's or user's history, fan out; or, above the shard threshold with a queue,
/// queue one job per page of recipients and answer how many.
pub async fn publish_one(
    services: &Services,
    gateway: &dyn Gateway,
    request: &PublishRequest,
) -> Result<PublishOutcome, PublishError> {
    let started = Instant::now();
    let outcome = publish_counted(services, gateway, request).await;
    // Refusals and failures are counted by the caller, which knows whose they are.
    if let Ok(o) = &outcome {
        services.metrics.published(
            &request.target,
            started.elapsed(),
            o.delivered,
            o.gone,
            o.failed,
        );
    }
    outcome
}

/// [`publish_one`], which counts what this does.
async fn publish_counted(
    services: &Services,
    gateway: &dyn Gateway,
    request: &PublishRequest,
) -> Result<PublishOutcome, PublishError> {
    let id = notification_id();
    let (head, tail) = Notification::new(&id, &request.target, &request.data, now_ms()).split();
    let draft = Draft { head, tail };
    let kept = Channel::of(&request.target).zip(services.limits.history);
    let largest = match kept {
        Some(_) => draft.max_len(),
        None => draft.head.len() + draft.tail.len(),
    };
    check_size(largest).map_err(PublishError::BadRequest)?;
    let store = &services.store;
    if let Some(key) = &request.idempotency_key {
        let claimed = store
            .claim_idempotency_key(key, &id, services.limits.idempotency_window)
            .await
            .map_err(|e| PublishError::Unavailable(error::source(e)))?;
        if let Some(first) = claimed {
            return Ok(PublishOutcome {
                id: first,
                ..PublishOutcome::default()
            });
        }
    }
    // After the claim, so a repeat of a published key is answered with its first id (and
    // not counted); a refused publish gives its key back, so it may be sent again.
    if let Err(refused) = check_room_limit(services, &request.target).await {
        release_key(services, request, &id).await;
        return Err(refused);
    }
    // Kept before the fan-out starts: a client subscribing meanwhile either is listed as
    // a recipient or finds the notification in the history it reads after joining.
    let (payload, position) = match &kept {
        Some((channel, retention)) => match store.append(channel, &draft, retention).await {
            Ok(position) => (draft.assemble(&position), Some(position)),
            Err(e) => {
                release_key(services, request, &id).await;
                return Err(PublishError::Unavailable(error::source(e)));
            }
        },
        None => (draft.bare(), None),
    };
    // Off the delivery's path: the copy for MQTT is queued or refused at once.
    let mqtt = services
        .mqtt
        .as_ref()
        .and_then(|mqtt| mqtt.publish(&request.target, &payload));
    // Planned after the notification is kept, as fan-out lists recipients after it.
    let plan = match services.sharding.queue() {
        Some(queue) => {
            let threshold = services.sharding.threshold;
            match shard::plan(&**store, &request.target, threshold).await {
                Ok(plan) => Some((queue, plan)),
                Err(e) => {
                    error!(notification_id = %id, error = %e, "could not count the recipients");
                    release_key(services, request, &id).await;
                    return Err(PublishError::Unavailable(error::source(e)));
                }
            }
        }
        None => None,
    };
    let listed;
    let target = match plan {
        Some((queue, Plan::Sharded)) => {
            return sharded(services, request, queue, id, &payload, position)
                .await
                .map(|outcome| PublishOutcome { mqtt, ..outcome });
        }
        Some((_, Plan::Listed(ids))) => {
            listed = Target::Connections(ids);
            &listed
        }
        Some((_, Plan::Direct)) | None => &request.target,
    };
    match deliver(&**store, gateway, target, payload, &services.fanout).await {
        Ok(counts) => Ok(PublishOutcome {
            id,
            delivered: counts.delivered,
            gone: counts.gone,
            failed: counts.failed,
            offset: position.as_ref().map(|p| p.offset),
            epoch: position.map(|p| p.epoch),
            queued_pages: None,
            mqtt,
        }),
        Err(e) => {
            // Kept in the history already: a client recovering finds it. The key is given
            // back so the caller may retry the recipients this fan-out did not reach.
            error!(notification_id = %id, error = %e, "fan-out interrupted");
            release_key(services, request, &id).await;
            Err(PublishError::Unavailable(error::source(e)))
        }
    }
}

/// Queues the page jobs of a publish above the shard threshold and answers how many.
async fn sharded(
    services: &Services,
    request: &PublishRequest,
    queue: &dyn PageQueue,
    id: String,
    payload: &Bytes,
    position: Option<Position>,
) -> Result<PublishOutcome, PublishError> {
    match shard::enqueue_pages(&*services.store, queue, &request.target, &id, payload).await {
        Ok(pages) => Ok(PublishOutcome {
            id,
            queued_pages: Some(pages),
            offset: position.as_ref().map(|p| p.offset),
            epoch: position.map(|p| p.epoch),
            ..PublishOutcome::default()
        }),
        Err(e) => {
            // As an interrupted fan-out: kept in the history, the key given back; the
            // pages already queued will be delivered, and the error says how many.
            error!(notification_id = %id, error = %e, "sharded publish not wholly queued");
            release_key(services, request, &id).await;
            Err(PublishError::Unavailable(error::source(e)))
        }
    }
}

/// Counts a publish to a room against the room's limit, when one is set.
async fn check_room_limit(services: &Services, target: &Target) -> Result<(), PublishError> {
    let (Target::Room(room), Some(rate)) = (target, services.limits.room_publish) else {
        return Ok(());
    };
    let allowed = services
        .store
        .count_events(
            &format!("room-publish:{room}"),
            rate.window(),
            1,
            rate.burst,
        )
        .await
        .map_err(|e| PublishError::Unavailable(error::source(e)))?;
    if allowed {
        return Ok(());
    }
    Err(PublishError::RateLimited(format!(
        "room {room} takes at most {} publishes a second, in bursts of {}: \
         this one was not published",
        rate.per_second, rate.burst
    )))
}

/// Gives back the idempotency key `id` claimed for `request`, when it has one: the publish
/// did not happen, so a retry with the same key must be able to.
async fn release_key(services: &Services, request: &PublishRequest, id: &str) {
    if let Some(key) = &request.idempotency_key
        && let Err(release) = services.store.release_idempotency_key(key, id).await
    {
        warn!(key = %key, error = %release, "could not release the idempotency key");
    }
}
