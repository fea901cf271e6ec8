//! Webhooks, as the Standard Webhooks specification has them: each event is `POST`ed to the
//! configured URL as JSON (`{"type","timestamp","data"}`), signed (`signature.rs`), and
//! delivered at least once by [`HttpWebhooks`] (`delivery.rs`), off the path of the
//! connection that caused it: a slow or dead receiver never delays a `$connect`.
//!
//! Events: `connection.opened` (a `$connect` stored the connection), `connection.closed`
//! (a `$disconnect` forgot it), `room.occupied` (a room's first member joined) and
//! `room.vacated` (its last one left), the last two as the store counts members, so once
//! per transition across every instance and function.
//!
//! Two ways out: `herald-local` delivers from a task of its own ([`HttpWebhooks`],
//! `delivery.rs`); the Lambda functions put events on an SQS queue before they answer
//! ([`SqsWebhooks`], `queue.rs`) and the `webhook` function delivers them with the same
//! signatures ([`WebhookSender`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::ids::{ConnectionId, iso8601, now_ms};
use crate::protocol::RoomName;

mod delivery;
mod queue;
mod rooms;
mod signature;

pub use delivery::{
    ATTEMPT_TIMEOUT, Attempt, DeliveryCounts, HttpWebhooks, MAX_ATTEMPTS, QUEUED_EVENTS,
    WebhookSender, retry_delay,
};
pub use queue::{PENDING_EVENTS, SqsWebhooks};
pub use rooms::RoomEvents;
pub use signature::{MAX_KEY_BYTES, MIN_KEY_BYTES, SECRET_PREFIX, Secret, SecretError};

/// What happened, by the name receivers see in `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// A connection was opened.
    ConnectionOpened,
    /// A connection was closed.
    ConnectionClosed,
    /// A room got its first member.
    RoomOccupied,
    /// A room lost its last member.
    RoomVacated,
}

impl EventKind {
    /// Every kind, in documentation order.
    pub const ALL: [Self; 4] = [
        Self::ConnectionOpened,
        Self::ConnectionClosed,
        Self::RoomOccupied,
        Self::RoomVacated,
    ];

    /// The name in `type` and in `HERALD_WEBHOOK_EVENTS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionOpened => "connection.opened",
            Self::ConnectionClosed => "connection.closed",
            Self::RoomOccupied => "room.occupied",
            Self::RoomVacated => "room.vacated",
        }
    }

    /// The kinds named in `list` (comma-separated); an unknown name is an error that lists
    /// the known ones.
    pub fn parse_list(list: &str) -> Result<BTreeSet<Self>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| {
                Self::ALL
                    .into_iter()
                    .find(|kind| kind.as_str() == name)
                    .ok_or_else(|| {
                        let known: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
                        format!(
                            "unknown event {name:?}; the events are {}",
                            known.join(", ")
                        )
                    })
            })
            .collect()
    }
}

/// One event: its kind, when, and what a receiver needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its kind.
    pub kind: EventKind,
    /// When it happened, in ms since the epoch.
    pub at_ms: i64,
    /// Its fields (`connectionId`, `user`, …).
    pub data: Map<String, Value>,
}

impl Event {
    /// `connection.opened`.
    pub fn connection_opened(id: &ConnectionId, user: &str) -> Self {
        Self::new(
            EventKind::ConnectionOpened,
            json!({"connectionId": id.as_str(), "user": user}),
        )
    }

    /// `connection.closed`, with API Gateway's close status and reason when known.
    pub fn connection_closed(
        id: &ConnectionId,
        user: &str,
        status: Option<i64>,
        reason: Option<&str>,
    ) -> Self {
        Self::new(
            EventKind::ConnectionClosed,
            json!({
                "connectionId": id.as_str(),
                "user": user,
                "status": status,
                "reason": reason.unwrap_or(""),
            }),
        )
    }

    /// `room.occupied`: `id` of `user` joined `room`, which had no member.
    pub fn room_occupied(room: &RoomName, id: &ConnectionId, user: &str) -> Self {
        Self::new(
            EventKind::RoomOccupied,
            json!({"room": room.as_str(), "connectionId": id.as_str(), "user": user}),
        )
    }

    /// `room.vacated`: `id` (of `user`, when known) left `room`, its last member, for
    /// `reason`: `unsubscribed` or `disconnected` (closed, or found gone).
    pub fn room_vacated(
        room: &RoomName,
        id: &ConnectionId,
        user: Option<&str>,
        reason: VacatedBy,
    ) -> Self {
        Self::new(
            EventKind::RoomVacated,
            json!({
                "room": room.as_str(),
                "connectionId": id.as_str(),
                "user": user,
                "reason": reason.as_str(),
            }),
        )
    }

    fn new(kind: EventKind, data: Value) -> Self {
        let Value::Object(data) = data else {
            unreachable!("built from an object literal")
        };
        Self {
            kind,
            at_ms: now_ms(),
            data,
        }
    }

    /// The JSON body receivers get.
    pub fn body(&self) -> String {
        json!({
            "type": self.kind.as_str(),
            "timestamp": iso8601(self.at_ms),
            "data": self.data,
        })
        .to_string()
    }
}

/// Why a room's last member left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VacatedBy {
    /// It unsubscribed.
    Unsubscribed,
    /// Its connection closed, or was found gone (by a delivery, or with its instance).
    Disconnected,
}

impl VacatedBy {
    /// The name in `data.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unsubscribed => "unsubscribed",
            Self::Disconnected => "disconnected",
        }
    }
}

/// Where webhooks go and which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// `HERALD_WEBHOOK_URL`: `http://` or `https://`.
    pub url: String,
    /// `HERALD_WEBHOOK_SECRET`.
    pub secret: Secret,
    /// `HERALD_WEBHOOK_EVENTS`: the kinds sent (default all).
    pub events: BTreeSet<EventKind>,
}

/// Where the `webhook` function on AWS sends webhooks, its secret in Secrets Manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSecretByArn {
    /// `HERALD_WEBHOOK_URL`.
    pub url: String,
    /// `HERALD_WEBHOOK_SECRET_ARN`: a string secret holding the `whsec_` key.
    pub secret_arn: String,
    /// `HERALD_WEBHOOK_EVENTS`.
    pub events: BTreeSet<EventKind>,
}

/// The SQS queue the Lambda functions put webhook events on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookQueueSettings {
    /// `HERALD_WEBHOOK_QUEUE_URL`.
    pub url: String,
    /// `HERALD_WEBHOOK_EVENTS`: the kinds put on it (default all).
    pub events: BTreeSet<EventKind>,
}

/// Something that sends events on. Never waits: an event it cannot take is counted and
/// dropped.
pub trait Webhooks: Send + Sync + 'static {
    /// Sends `event` on, if its kind is wanted.
    fn emit(&self, event: Event);

    /// Hands on the events emitted so far where a host must before it answers (a Lambda
    /// function is frozen once it has); at once where a task of the host's own delivers
    /// them.
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Webhooks shared by the handlers.
pub type SharedWebhooks = Arc<dyn Webhooks>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lists_parse_and_unknown_names_are_refused() {
        assert_eq!(
            EventKind::parse_list(
                "connection.closed, connection.opened,room.occupied,room.vacated"
            )
            .unwrap(),
            BTreeSet::from(EventKind::ALL)
        );
        let refused = EventKind::parse_list("connection.opened,room.full").unwrap_err();
        assert!(refused.contains("\"room.full\""), "{refused}");
        assert!(refused.contains("connection.closed"), "{refused}");
    }

    #[test]
    fn bodies_carry_type_timestamp_and_data() {
        let mut event = Event::connection_closed(
            &ConnectionId::new("abc="),
            "ann",
            Some(1001),
            Some("Going away"),
        );
        event.at_ms = 1_796_031_660_500;
        let body: Value = serde_json::from_str(&event.body()).unwrap();
        assert_eq!(
            body,
            json!({
                "type": "connection.closed",
                "timestamp": "2026-11-30T09:41:00.500Z",
                "data": {"connectionId": "abc=", "user": "ann", "status": 1001, "reason": "Going away"},
            })
        );
    }
}
