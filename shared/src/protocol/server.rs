//! Server → client: replies to a client's requests, and notifications, serialized once.

use serde::Serialize;
use serde_json::Value;

use super::{ErrorCode, MAX_NOTIFICATION_BYTES, ProtocolError, RoomName, Target};
use crate::ids::ConnectionId;

/// A reply or push to one client.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The subscription is in place.
    Subscribed {
        /// The room.
        room: RoomName,
        /// With `since`: whether everything missed was sent before this reply.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    /// The subscription is gone (or never was).
    Unsubscribed {
        /// The room.
        room: RoomName,
    },
    /// Answer to `ping`.
    Pong,
    /// Answer to `whoami`.
    Whoami {
        /// This connection's id.
        #[serde(rename = "connectionId")]
        connection_id: ConnectionId,
        /// The token's `sub`.
        user: String,
    },
    /// The socket publish was fanned out.
    Published {
        /// The room.
        room: RoomName,
        /// The notification's id.
        id: String,
    },
    /// A refusal.
    Error {
        /// The contract's code.
        code: ErrorCode,
        /// What went wrong.
        message: String,
    },
}

/// A [`ServerMessage`] with the `ref` of the request it answers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reply {
    /// The message.
    #[serde(flatten)]
    pub message: ServerMessage,
    /// The request's `ref`, if it had one.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<Value>,
}

impl Reply {
    /// Serializes the reply as the text frame sent to the client.
    pub fn to_json(&self) -> String {
        // Every field is a string, number, bool or an already-valid `Value`: serializing
        // cannot fail.
        serde_json::to_string(self).expect("a reply always serializes")
    }
}

impl From<ProtocolError> for ServerMessage {
    fn from(error: ProtocolError) -> Self {
        Self::Error {
            code: error.code,
            message: error.message,
        }
    }
}

/// A notification pushed to recipients, serialized once per publish.
#[derive(Clone, Debug, Serialize)]
pub struct Notification<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    /// The notification id.
    pub id: &'a str,
    /// Set when the publish targeted a room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a RoomName>,
    /// Set when the publish targeted a user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// The payload.
    pub data: &'a Value,
    /// When it was published, in ms since the epoch.
    pub ts: i64,
}

impl<'a> Notification<'a> {
    /// The notification for a publish of `data` to `target`.
    pub fn new(id: &'a str, target: &'a Target, data: &'a Value, ts: i64) -> Self {
        let (room, user) = match target {
            Target::Room(room) => (Some(room), None),
            Target::User(user) => (None, Some(user.as_str())),
            Target::Connections(_) | Target::Broadcast => (None, None),
        };
        Self {
            kind: "notification",
            id,
            room,
            user,
            data,
            ts,
        }
    }

    /// The bytes every recipient receives, or `too_large` past API Gateway's post limit.
    pub fn encode(&self) -> Result<bytes::Bytes, ProtocolError> {
        let bytes = serde_json::to_vec(self).expect("a notification always serializes");
        if bytes.len() > MAX_NOTIFICATION_BYTES {
            return Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!(
                    "notification is {} bytes; the limit is {MAX_NOTIFICATION_BYTES}",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_serialize_as_the_contract_shows() {
        let reply = Reply {
            message: ServerMessage::Subscribed {
                room: RoomName::parse("orders").unwrap(),
                recovered: None,
            },
            reference: Some(json!("r")),
        };
        assert_eq!(
            serde_json::from_str::<Value>(&reply.to_json()).unwrap(),
            json!({"type":"subscribed","room":"orders","ref":"r"})
        );
        let whoami = Reply {
            message: ServerMessage::Whoami {
                connection_id: ConnectionId::new("abc="),
                user: "alice".into(),
            },
            reference: None,
        };
        assert_eq!(
            serde_json::from_str::<Value>(&whoami.to_json()).unwrap(),
            json!({"type":"whoami","connectionId":"abc=","user":"alice"})
        );
        let error = Reply {
            message: ProtocolError::new(ErrorCode::Forbidden, "no").into(),
            reference: None,
        };
        assert_eq!(
            serde_json::from_str::<Value>(&error.to_json()).unwrap(),
            json!({"type":"error","code":"forbidden","message":"no"})
        );
    }

    #[test]
    fn notifications_name_their_target() {
        let data = json!({"n": 1});
        let room = Target::Room(RoomName::parse("orders").unwrap());
        let bytes = Notification::new("id1", &room, &data, 5).encode().unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            json!({"type":"notification","id":"id1","room":"orders","data":{"n":1},"ts":5})
        );
        let user = Target::User("alice".into());
        let bytes = Notification::new("id2", &user, &data, 5).encode().unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            json!({"type":"notification","id":"id2","user":"alice","data":{"n":1},"ts":5})
        );
        let bytes = Notification::new("id3", &Target::Broadcast, &data, 5)
            .encode()
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            json!({"type":"notification","id":"id3","data":{"n":1},"ts":5})
        );
    }

    #[test]
    fn a_notification_may_be_exactly_the_limit_and_not_a_byte_more() {
        let sized = |len: usize| {
            let data = json!("x".repeat(len));
            Notification::new("id", &Target::Broadcast, &data, 0).encode()
        };
        let overhead = sized(0).unwrap().len();
        let largest = sized(MAX_NOTIFICATION_BYTES - overhead).unwrap();
        assert_eq!(largest.len(), MAX_NOTIFICATION_BYTES);
        let err = sized(MAX_NOTIFICATION_BYTES - overhead + 1).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert_eq!(
            MAX_NOTIFICATION_BYTES, 131_072,
            "API Gateway's 128 KiB frame"
        );
    }

    #[test]
    fn oversized_notifications_are_too_large() {
        let data = json!("x".repeat(MAX_NOTIFICATION_BYTES));
        let err = Notification::new("id", &Target::Broadcast, &data, 0)
            .encode()
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
    }
}
