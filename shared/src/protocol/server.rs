//! Server → client: replies to a client's requests, and notifications, serialized once.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{ErrorCode, MAX_NOTIFICATION_BYTES, Position, ProtocolError, RoomName, Target};
use crate::ids::ConnectionId;

/// A reply or push to one client.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The subscription is in place.
    Subscribed {
        /// The room.
        room: RoomName,
        /// With `since`: whether every notification missed follows this reply.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// The room's position, with history on.
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        position: Option<Position>,
    },
    /// Answer to `recover`: the user's own inbox.
    Recovered {
        /// Whether every notification missed follows this reply.
        recovered: bool,
        /// The inbox's position, with history on.
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        position: Option<Position>,
    },
    /// Answer to `history`.
    History {
        /// The room.
        room: RoomName,
        /// Kept notifications, oldest first, each exactly as it was sent.
        notifications: Vec<Stored>,
        /// The room's position, with history on.
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        position: Option<Position>,
        /// Set when more were asked for than fit in one frame.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
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
        /// Its position in the room, with history on.
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        position: Option<Position>,
    },
    /// Answer to `presence`: who is in a room.
    Presence(Presence),
    /// A member joined a room (with presence events on, to the room's members).
    Join {
        /// The room.
        room: RoomName,
        /// Who joined.
        #[serde(flatten)]
        member: Member,
    },
    /// A member left a room (with presence events on, to the room's members).
    Leave {
        /// The room.
        room: RoomName,
        /// Who left.
        #[serde(flatten)]
        member: Member,
    },
    /// A refusal.
    Error {
        /// The contract's code.
        code: ErrorCode,
        /// What went wrong.
        message: String,
    },
}

/// Who is in a room: how many members (connections, readers included) and the first
/// [`MAX_PRESENCE_MEMBERS`] of them. The socket's reply carries `"type":"presence"`; the
/// Invoke API answers the same fields without it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The room.
    pub room: RoomName,
    /// Its members, all of them.
    pub count: u64,
    /// At most [`MAX_PRESENCE_MEMBERS`] of them.
    pub members: Vec<Member>,
}

/// One member of a room, as presence lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its user.
    pub user: String,
    /// Its connection (or reader).
    #[serde(rename = "connectionId")]
    pub connection_id: ConnectionId,
}

/// Members a presence answer lists at most (its `count` is always all of them).
pub const MAX_PRESENCE_MEMBERS: usize = 100;

/// A notification as it was kept: JSON text, written into a reply unchanged.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct Stored(Box<RawValue>);

impl Stored {
    /// Wraps a kept notification's bytes; `None` if they are not JSON.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        RawValue::from_string(text.to_owned()).ok().map(Self)
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Whether it is empty (never, for a notification).
    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }
}

impl PartialEq for Stored {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
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

/// What a client receives, read back: any reply or notification, as one flat value whose
/// fields are those its `type` carries. Lenient where [`ServerMessage`] is exact, so that a
/// client (the CLI, the load generator, a test) reads what a newer server sends too.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Received {
    /// `notification`, `subscribed`, `recovered`, `history`, `unsubscribed`, `pong`,
    /// `whoami`, `published` or `error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request's `ref`, on a reply to one that had it.
    #[serde(rename = "ref")]
    pub reference: Option<Value>,
    /// The notification's id, or a publish's.
    pub id: Option<String>,
    /// The room a notification, reply or publish is about.
    pub room: Option<String>,
    /// The user a notification was published to.
    pub user: Option<String>,
    /// The position's offset.
    pub offset: Option<u64>,
    /// The position's epoch.
    pub epoch: Option<String>,
    /// Whether a recovery replays every missed notification.
    pub recovered: Option<bool>,
    /// A notification's payload.
    pub data: Option<Value>,
    /// When a notification was published, in ms since the epoch.
    pub ts: Option<i64>,
    /// A `history` reply's notifications, each as sent.
    pub notifications: Option<Vec<Value>>,
    /// Set when a `history` reply holds fewer than were asked for.
    pub truncated: Option<bool>,
    /// An `error`'s code.
    pub code: Option<ErrorCode>,
    /// An `error`'s message.
    pub message: Option<String>,
    /// `whoami`'s connection id.
    #[serde(rename = "connectionId")]
    pub connection_id: Option<String>,
}

impl Received {
    /// Reads one text frame from the server.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The position it carries, when it has one.
    pub fn position(&self) -> Option<Position> {
        Some(Position {
            offset: self.offset?,
            epoch: self.epoch.clone()?,
        })
    }

    /// The key of the channel a notification belongs to, as cursors name channels
    /// (`room:NAME`, `user:ID`); `None` for a broadcast or a publish to connection ids.
    pub fn channel_key(&self) -> Option<String> {
        match (&self.room, &self.user) {
            (Some(room), _) => Some(format!("room:{room}")),
            (None, Some(user)) => Some(format!("user:{user}")),
            (None, None) => None,
        }
    }
}

/// A notification pushed to recipients, serialized once per publish.
#[derive(Clone, Debug)]
pub struct Notification<'a> {
    /// The notification id.
    pub id: &'a str,
    /// Set when the publish targeted a room.
    pub room: Option<&'a RoomName>,
    /// Set when the publish targeted a user.
    pub user: Option<&'a str>,
    /// The payload.
    pub data: &'a Value,
    /// When it was published, in ms since the epoch.
    pub ts: i64,
}

/// The fields before a notification's position.
#[derive(Serialize)]
struct Head<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a RoomName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
}

/// The fields after it.
#[derive(Serialize)]
struct Tail<'a> {
    data: &'a Value,
    ts: i64,
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
            id,
            room,
            user,
            data,
            ts,
        }
    }

    /// The JSON object split where a history position goes: the text before it (no
    /// closing brace) and after it (from a comma on). The two joined are the notification
    /// without a position; a store writes `"offset"` and `"epoch"` in between.
    pub fn split(&self) -> (Bytes, Bytes) {
        // Plain strings, numbers and an already valid `Value`: serializing cannot fail.
        let mut head = serde_json::to_vec(&Head {
            kind: "notification",
            id: self.id,
            room: self.room,
            user: self.user,
        })
        .expect("a notification always serializes");
        head.pop();
        let mut tail = serde_json::to_vec(&Tail {
            data: self.data,
            ts: self.ts,
        })
        .expect("a notification always serializes");
        tail[0] = b',';
        (head.into(), tail.into())
    }
}

/// `too_large` for a notification of `len` bytes past API Gateway's post limit.
pub fn check_size(len: usize) -> Result<(), ProtocolError> {
    if len > MAX_NOTIFICATION_BYTES {
        return Err(ProtocolError::new(
            ErrorCode::TooLarge,
            format!("notification is {len} bytes; the limit is {MAX_NOTIFICATION_BYTES}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The notification without a position, as publish sends a broadcast: its two halves
    /// joined, `too_large` past the limit.
    fn encode(notification: &Notification) -> Result<Bytes, ProtocolError> {
        let (head, tail) = notification.split();
        check_size(head.len() + tail.len())?;
        Ok([head, tail].concat().into())
    }

    #[test]
    fn a_stored_notification_keeps_its_text_and_length() {
        let text = br#"{"type":"notification","data":1}"#;
        let stored = Stored::new(text).unwrap();
        assert_eq!(stored.len(), text.len());
        assert!(!stored.is_empty());
        assert_eq!(stored, Stored::new(text).unwrap());
        assert_ne!(
            stored,
            Stored::new(br#"{"type":"notification","data":2}"#).unwrap()
        );
        assert_eq!(Stored::new(b"not json"), None);
    }

    #[test]
    fn replies_serialize_as_the_contract_shows() {
        let reply = Reply {
            message: ServerMessage::Subscribed {
                room: RoomName::parse("orders").unwrap(),
                recovered: None,
                position: None,
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
    fn what_the_server_sends_reads_back_as_received() {
        let room = RoomName::parse("orders").unwrap();
        let at = Position {
            offset: 18,
            epoch: "E".into(),
        };
        let subscribed = Reply {
            message: ServerMessage::Subscribed {
                room: room.clone(),
                recovered: Some(false),
                position: Some(at.clone()),
            },
            reference: Some(json!("room:orders")),
        };
        let read = Received::parse(&subscribed.to_json()).unwrap();
        assert_eq!(read.kind, "subscribed");
        assert_eq!(read.reference, Some(json!("room:orders")));
        assert_eq!(
            (read.recovered, read.position()),
            (Some(false), Some(at.clone()))
        );
        let error = Reply {
            message: ProtocolError::new(ErrorCode::RateLimited, "slow down").into(),
            reference: None,
        };
        let read = Received::parse(&error.to_json()).unwrap();
        assert_eq!(read.code, Some(ErrorCode::RateLimited));
        assert_eq!(read.message.as_deref(), Some("slow down"));
        let data = json!({"n": 1});
        let target = Target::Room(room);
        let (head, tail) = Notification::new("id1", &target, &data, 5).split();
        let text = format!(
            "{},\"offset\":18,\"epoch\":\"E\"{}",
            std::str::from_utf8(&head).unwrap(),
            std::str::from_utf8(&tail).unwrap()
        );
        let note = Received::parse(&text).unwrap();
        assert_eq!(note.kind, "notification");
        assert_eq!(note.channel_key().as_deref(), Some("room:orders"));
        assert_eq!(
            (note.position(), note.data, note.ts),
            (Some(at), Some(data), Some(5))
        );
        let broadcast = Received::parse(r#"{"type":"notification","id":"x","data":1,"ts":2}"#);
        assert_eq!(broadcast.unwrap().channel_key(), None);
    }

    #[test]
    fn positions_and_kept_notifications_serialize_as_the_contract_shows() {
        let room = RoomName::parse("orders").unwrap();
        let at = Some(Position {
            offset: 18,
            epoch: "E".into(),
        });
        let json = |message| {
            serde_json::from_str::<Value>(
                &Reply {
                    message,
                    reference: None,
                }
                .to_json(),
            )
            .unwrap()
        };
        assert_eq!(
            json(ServerMessage::Subscribed {
                room: room.clone(),
                recovered: Some(true),
                position: at.clone(),
            }),
            json!({"type":"subscribed","room":"orders","recovered":true,"offset":18,"epoch":"E"})
        );
        assert_eq!(
            json(ServerMessage::Recovered {
                recovered: false,
                position: at.clone(),
            }),
            json!({"type":"recovered","recovered":false,"offset":18,"epoch":"E"})
        );
        let kept = Stored::new(br#"{"type":"notification","offset":18}"#).unwrap();
        assert_eq!(
            json(ServerMessage::History {
                room: room.clone(),
                notifications: vec![kept],
                position: at,
                truncated: false,
            }),
            json!({"type":"history","room":"orders","notifications":[{"type":"notification","offset":18}],"offset":18,"epoch":"E"})
        );
        assert_eq!(Stored::new(b"not json"), None);
    }

    #[test]
    fn notifications_name_their_target() {
        let data = json!({"n": 1});
        let room = Target::Room(RoomName::parse("orders").unwrap());
        let bytes = encode(&Notification::new("id1", &room, &data, 5)).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            json!({"type":"notification","id":"id1","room":"orders","data":{"n":1},"ts":5})
        );
        let user = Target::User("alice".into());
        let bytes = encode(&Notification::new("id2", &user, &data, 5)).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            json!({"type":"notification","id":"id2","user":"alice","data":{"n":1},"ts":5})
        );
        let bytes = encode(&Notification::new("id3", &Target::Broadcast, &data, 5)).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            json!({"type":"notification","id":"id3","data":{"n":1},"ts":5})
        );
    }

    #[test]
    fn a_notification_may_be_exactly_the_limit_and_not_a_byte_more() {
        let sized = |len: usize| {
            let data = json!("x".repeat(len));
            encode(&Notification::new("id", &Target::Broadcast, &data, 0))
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
        let err = encode(&Notification::new("id", &Target::Broadcast, &data, 0)).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
    }
}
