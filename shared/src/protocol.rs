//! The wire formats of the contract: what clients send over the socket, what Herald sends
//! back, and the `publish` function's input and output.
//!
//! Parsing is strict and total: any input, however malformed, becomes either a typed value
//! or a [`ProtocolError`] carrying the contract's error code, never a panic. Unknown fields
//! are refused so that a typo (`"rom"`) is reported instead of silently ignored.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::ids::ConnectionId;

/// The largest notification, serialized, that API Gateway accepts for one post (128 KiB).
pub const MAX_NOTIFICATION_BYTES: usize = 128 * 1024;
/// The most messages one `{"messages":[...]}` batch may carry.
pub const MAX_BATCH: usize = 100;
/// The most connection ids one publish may name.
pub const MAX_CONNECTIONS_PER_PUBLISH: usize = 1_000;
/// The longest room name.
pub const MAX_ROOM_LEN: usize = 128;
/// The longest user id, idempotency key, connection id or `ref` string.
pub const MAX_ID_LEN: usize = 256;

/// The error codes of the contract's `error` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The input is malformed or breaks a rule.
    BadRequest,
    /// The `action` names no known route.
    UnknownAction,
    /// The token's claims do not allow this.
    Forbidden,
    /// A limit was reached.
    RateLimited,
    /// The message or notification is too large.
    TooLarge,
    /// Herald could not do it (for example, its store is down); the input was fine.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownAction => "unknown_action",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::TooLarge => "too_large",
            Self::Internal => "internal",
        }
    }
}

/// A refused input or request, with the code and message the client is sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ProtocolError {
    /// What kind of refusal.
    pub code: ErrorCode,
    /// A sentence for the developer reading it.
    pub message: String,
}

impl ProtocolError {
    /// A refusal with the given code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A `bad_request` refusal.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// The same error with `context: ` before its message.
    fn within(self, context: &str) -> Self {
        Self {
            code: self.code,
            message: format!("{context}: {}", self.message),
        }
    }
}

/// A valid room name: 1 to 128 characters of `A-Z a-z 0-9 _ . : @ -`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RoomName(String);

impl RoomName {
    /// Checks `name` against the room name rules.
    pub fn parse(name: &str) -> Result<Self, ProtocolError> {
        if name.is_empty() || name.len() > MAX_ROOM_LEN {
            return Err(ProtocolError::bad_request(format!(
                "room name must be 1 to {MAX_ROOM_LEN} characters"
            )));
        }
        if let Some(c) = name.chars().find(|c| !is_room_char(*c)) {
            return Err(ProtocolError::bad_request(format!(
                "room name may not contain {c:?}: allowed are A-Z a-z 0-9 _ . : @ -"
            )));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for RoomName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        RoomName::parse(&name).map_err(|e| serde::de::Error::custom(e.message))
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `c` may appear in a room name.
pub(crate) fn is_room_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-')
}

/// Checks a free-form identifier (user id, idempotency key, connection id).
fn check_id(what: &str, value: &str) -> Result<(), ProtocolError> {
    if value.is_empty() || value.len() > MAX_ID_LEN {
        return Err(ProtocolError::bad_request(format!(
            "{what} must be 1 to {MAX_ID_LEN} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ProtocolError::bad_request(format!(
            "{what} may not contain control characters"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Client → server

/// One request a client sent over its socket.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientRequest {
    /// Join a room, optionally recovering what was missed since a notification id.
    Subscribe {
        /// The room.
        room: RoomName,
        /// The id of the last notification the client saw.
        since: Option<String>,
    },
    /// Leave a room.
    Unsubscribe {
        /// The room.
        room: RoomName,
    },
    /// Liveness check.
    Ping,
    /// Ask who this connection is.
    Whoami,
    /// Publish to a room from the socket.
    Publish {
        /// The room.
        room: RoomName,
        /// The payload, any JSON.
        data: Value,
    },
}

/// A parsed client frame: the request and the `ref` to echo in the reply.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientMessage {
    /// The client's correlation value, echoed unchanged.
    pub reference: Option<Value>,
    /// What the client asked for.
    pub request: ClientRequest,
}

/// A client frame that could not be parsed, with the `ref` if one could be read.
#[derive(Clone, Debug, PartialEq)]
pub struct RejectedFrame {
    /// The client's `ref`, when the frame was an object with a valid one.
    pub reference: Option<Value>,
    /// Why the frame was refused.
    pub error: ProtocolError,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeFrame {
    #[serde(rename = "action")]
    _action: String,
    #[serde(rename = "ref", default)]
    _ref: Option<Value>,
    room: RoomName,
    #[serde(default)]
    since: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomFrame {
    #[serde(rename = "action")]
    _action: String,
    #[serde(rename = "ref", default)]
    _ref: Option<Value>,
    room: RoomName,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BareFrame {
    #[serde(rename = "action")]
    _action: String,
    #[serde(rename = "ref", default)]
    _ref: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishFrame {
    #[serde(rename = "action")]
    _action: String,
    #[serde(rename = "ref", default)]
    _ref: Option<Value>,
    room: RoomName,
    #[serde(default, deserialize_with = "present")]
    data: Option<Value>,
}

/// Deserializes a field that must be present but may be `null`: with `#[serde(default)]`,
/// absent gives `None` and any present value, `null` included, gives `Some`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// The client actions the contract defines, which are also API Gateway route keys.
pub const CLIENT_ACTIONS: [&str; 5] = ["subscribe", "unsubscribe", "ping", "whoami", "publish"];

/// Parses one text frame from a client.
pub fn parse_client_frame(text: &str) -> Result<ClientMessage, RejectedFrame> {
    let reject = |reference: Option<Value>, error| RejectedFrame { reference, error };
    let value: Value = serde_json::from_str(text)
        .map_err(|e| reject(None, ProtocolError::bad_request(format!("not JSON: {e}"))))?;
    let Value::Object(object) = value else {
        return Err(reject(
            None,
            ProtocolError::bad_request("a message must be a JSON object"),
        ));
    };
    let reference = match object.get("ref") {
        None => None,
        Some(r) => Some(check_ref(r).map_err(|e| reject(None, e))?),
    };
    parse_action(object)
        .map(|request| ClientMessage {
            reference: reference.clone(),
            request,
        })
        .map_err(|error| reject(reference, error))
}

fn check_ref(value: &Value) -> Result<Value, ProtocolError> {
    match value {
        Value::String(s) if s.len() <= MAX_ID_LEN => Ok(value.clone()),
        Value::Number(_) => Ok(value.clone()),
        _ => Err(ProtocolError::bad_request(format!(
            "ref must be a number or a string of at most {MAX_ID_LEN} characters"
        ))),
    }
}

fn parse_action(object: Map<String, Value>) -> Result<ClientRequest, ProtocolError> {
    let action = match object.get("action") {
        Some(Value::String(action)) => action.clone(),
        Some(_) => return Err(ProtocolError::bad_request("action must be a string")),
        None => return Err(ProtocolError::bad_request("missing field `action`")),
    };
    let value = Value::Object(object);
    let typed = |e: serde_json::Error| ProtocolError::bad_request(e.to_string());
    match action.as_str() {
        "subscribe" => {
            let frame: SubscribeFrame = serde_json::from_value(value).map_err(typed)?;
            if let Some(since) = &frame.since {
                check_id("since", since)?;
            }
            Ok(ClientRequest::Subscribe {
                room: frame.room,
                since: frame.since,
            })
        }
        "unsubscribe" => {
            let frame: RoomFrame = serde_json::from_value(value).map_err(typed)?;
            Ok(ClientRequest::Unsubscribe { room: frame.room })
        }
        "ping" => {
            serde_json::from_value::<BareFrame>(value).map_err(typed)?;
            Ok(ClientRequest::Ping)
        }
        "whoami" => {
            serde_json::from_value::<BareFrame>(value).map_err(typed)?;
            Ok(ClientRequest::Whoami)
        }
        "publish" => {
            let frame: PublishFrame = serde_json::from_value(value).map_err(typed)?;
            let data = frame
                .data
                .ok_or_else(|| ProtocolError::bad_request("missing field `data`"))?;
            Ok(ClientRequest::Publish {
                room: frame.room,
                data,
            })
        }
        other => Err(ProtocolError::new(
            ErrorCode::UnknownAction,
            format!(
                "unknown action {other:?}; known: {}",
                CLIENT_ACTIONS.join(", ")
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Server → client

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

// ---------------------------------------------------------------------------------------
// The publish API

/// Who a publish goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every connection subscribed to the room.
    Room(RoomName),
    /// Every connection of the user.
    User(String),
    /// The given connections, without repeats.
    Connections(Vec<ConnectionId>),
    /// Every connection.
    Broadcast,
}

/// One validated publish request.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishRequest {
    /// The recipients.
    pub target: Target,
    /// The payload.
    pub data: Value,
    /// The caller's idempotency key.
    pub idempotency_key: Option<String>,
}

/// The `publish` function's direct-invoke input: one request or a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum PublishInput {
    /// `{"room"|"user"|"connections"|"broadcast": …, "data": …}`
    Single(PublishRequest),
    /// `{"messages": [...]}`, delivered in list order.
    Batch(Vec<PublishRequest>),
}

impl PublishInput {
    /// Validates a publish payload.
    pub fn parse(value: &Value) -> Result<Self, ProtocolError> {
        let Value::Object(object) = value else {
            return Err(ProtocolError::bad_request(
                "a publish must be a JSON object",
            ));
        };
        let Some(messages) = object.get("messages") else {
            return PublishRequest::parse(value).map(Self::Single);
        };
        if object.len() > 1 {
            return Err(ProtocolError::bad_request(
                "a batch has only the field `messages`",
            ));
        }
        let Value::Array(messages) = messages else {
            return Err(ProtocolError::bad_request("`messages` must be an array"));
        };
        if messages.is_empty() || messages.len() > MAX_BATCH {
            return Err(ProtocolError::bad_request(format!(
                "a batch holds 1 to {MAX_BATCH} messages, not {}",
                messages.len()
            )));
        }
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| PublishRequest::parse(m).map_err(|e| e.within(&format!("messages[{i}]"))))
            .collect::<Result<_, _>>()
            .map(Self::Batch)
    }
}

impl PublishRequest {
    /// A publish of `data` to `target`.
    pub fn new(target: Target, data: Value) -> Self {
        Self {
            target,
            data,
            idempotency_key: None,
        }
    }

    /// The same request with an idempotency key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The request as the `publish` function takes it, for callers that invoke it.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        let (field, value) = match &self.target {
            Target::Room(room) => ("room", Value::String(room.as_str().to_owned())),
            Target::User(user) => ("user", Value::String(user.clone())),
            Target::Connections(ids) => (
                "connections",
                Value::Array(
                    ids.iter()
                        .map(|id| Value::String(id.as_str().to_owned()))
                        .collect(),
                ),
            ),
            Target::Broadcast => ("broadcast", Value::Bool(true)),
        };
        object.insert(field.to_owned(), value);
        object.insert("data".to_owned(), self.data.clone());
        if let Some(key) = &self.idempotency_key {
            object.insert("id".to_owned(), Value::String(key.clone()));
        }
        Value::Object(object)
    }

    /// Validates one publish request: exactly one target, `data` present, sizes in bounds.
    pub fn parse(value: &Value) -> Result<Self, ProtocolError> {
        let Value::Object(object) = value else {
            return Err(ProtocolError::bad_request(
                "a publish must be a JSON object",
            ));
        };
        const FIELDS: [&str; 6] = ["room", "user", "connections", "broadcast", "data", "id"];
        if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ProtocolError::bad_request(format!(
                "unknown field `{unknown}`; expected one of {}",
                FIELDS.join(", ")
            )));
        }
        let targets: Vec<&str> = FIELDS[..4]
            .iter()
            .copied()
            .filter(|f| object.contains_key(*f))
            .collect();
        let target = match targets.as_slice() {
            [one] => parse_target(one, &object[*one])?,
            [] => {
                return Err(ProtocolError::bad_request(
                    "a publish needs one target: room, user, connections or broadcast",
                ));
            }
            many => {
                return Err(ProtocolError::bad_request(format!(
                    "a publish has exactly one target, not {}",
                    many.join(" and ")
                )));
            }
        };
        let data = object
            .get("data")
            .cloned()
            .ok_or_else(|| ProtocolError::bad_request("missing field `data`"))?;
        let idempotency_key = match object.get("id") {
            None => None,
            Some(Value::String(key)) => {
                check_id("id", key)?;
                Some(key.clone())
            }
            Some(_) => return Err(ProtocolError::bad_request("id must be a string")),
        };
        Ok(Self {
            target,
            data,
            idempotency_key,
        })
    }
}

fn parse_target(field: &str, value: &Value) -> Result<Target, ProtocolError> {
    match (field, value) {
        ("room", Value::String(room)) => RoomName::parse(room).map(Target::Room),
        ("user", Value::String(user)) => {
            check_id("user", user)?;
            Ok(Target::User(user.clone()))
        }
        ("connections", Value::Array(ids)) => {
            if ids.is_empty() || ids.len() > MAX_CONNECTIONS_PER_PUBLISH {
                return Err(ProtocolError::bad_request(format!(
                    "connections holds 1 to {MAX_CONNECTIONS_PER_PUBLISH} ids, not {}",
                    ids.len()
                )));
            }
            let mut seen = HashSet::new();
            let mut unique = Vec::with_capacity(ids.len());
            for id in ids {
                let Value::String(id) = id else {
                    return Err(ProtocolError::bad_request(
                        "connections must be an array of strings",
                    ));
                };
                check_id("a connection id", id)?;
                if seen.insert(id.as_str()) {
                    unique.push(ConnectionId::new(id.as_str()));
                }
            }
            Ok(Target::Connections(unique))
        }
        ("broadcast", Value::Bool(true)) => Ok(Target::Broadcast),
        ("broadcast", _) => Err(ProtocolError::bad_request("broadcast must be true")),
        (field, _) => Err(ProtocolError::bad_request(format!(
            "{field} must be a string"
        ))),
    }
}

/// The answer to one publish.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishOutcome {
    /// The notification id (for a repeated idempotency key, the first publish's).
    pub id: String,
    /// Sockets the notification was written to.
    pub delivered: u64,
    /// Recipients that no longer exist; the store has forgotten them.
    pub gone: u64,
    /// Recipients that could not be reached (throttled past the retry limit, or errors).
    pub failed: u64,
}

/// The answer to a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    /// One outcome per message, in order.
    pub results: Vec<PublishOutcome>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<ClientRequest, ProtocolError> {
        parse_client_frame(text)
            .map(|m| m.request)
            .map_err(|r| r.error)
    }

    #[test]
    fn room_names_follow_the_rules() {
        for ok in ["orders", "a", "user:42@eu-west.1_x", &"r".repeat(128)] {
            assert!(RoomName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "with space", "a/b", "a*", "ü", "x,y", &"r".repeat(129)] {
            let err = RoomName::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn every_client_action_parses() {
        assert_eq!(
            parse(r#"{"action":"subscribe","room":"orders"}"#),
            Ok(ClientRequest::Subscribe {
                room: RoomName::parse("orders").unwrap(),
                since: None
            })
        );
        assert_eq!(
            parse(r#"{"action":"subscribe","room":"orders","since":"abc"}"#),
            Ok(ClientRequest::Subscribe {
                room: RoomName::parse("orders").unwrap(),
                since: Some("abc".into())
            })
        );
        assert_eq!(
            parse(r#"{"action":"unsubscribe","room":"o"}"#),
            Ok(ClientRequest::Unsubscribe {
                room: RoomName::parse("o").unwrap()
            })
        );
        assert_eq!(parse(r#"{"action":"ping"}"#), Ok(ClientRequest::Ping));
        assert_eq!(parse(r#"{"action":"whoami"}"#), Ok(ClientRequest::Whoami));
        assert_eq!(
            parse(r#"{"action":"publish","room":"o","data":null}"#),
            Ok(ClientRequest::Publish {
                room: RoomName::parse("o").unwrap(),
                data: Value::Null
            })
        );
    }

    #[test]
    fn ref_is_kept_even_when_the_request_is_refused() {
        let ok = parse_client_frame(r#"{"action":"ping","ref":7}"#).unwrap();
        assert_eq!(ok.reference, Some(json!(7)));
        let rejected = parse_client_frame(r#"{"action":"subscribe","ref":"r1"}"#).unwrap_err();
        assert_eq!(rejected.reference, Some(json!("r1")));
        assert_eq!(rejected.error.code, ErrorCode::BadRequest);
    }

    #[test]
    fn malformed_frames_are_errors_with_the_right_code() {
        let cases = [
            ("", ErrorCode::BadRequest),
            ("not json", ErrorCode::BadRequest),
            ("[1,2]", ErrorCode::BadRequest),
            ("\"ping\"", ErrorCode::BadRequest),
            ("{}", ErrorCode::BadRequest),
            (r#"{"action":5}"#, ErrorCode::BadRequest),
            (r#"{"action":"dance"}"#, ErrorCode::UnknownAction),
            (r#"{"action":"subscribe"}"#, ErrorCode::BadRequest),
            (r#"{"action":"subscribe","room":""}"#, ErrorCode::BadRequest),
            (
                r#"{"action":"subscribe","room":"a b"}"#,
                ErrorCode::BadRequest,
            ),
            (r#"{"action":"subscribe","room":7}"#, ErrorCode::BadRequest),
            (r#"{"action":"subscribe","rom":"a"}"#, ErrorCode::BadRequest),
            (r#"{"action":"ping","extra":1}"#, ErrorCode::BadRequest),
            (r#"{"action":"ping","ref":{"a":1}}"#, ErrorCode::BadRequest),
            (r#"{"action":"publish","room":"a"}"#, ErrorCode::BadRequest),
            (
                r#"{"action":"subscribe","room":"a","since":""}"#,
                ErrorCode::BadRequest,
            ),
        ];
        for (text, code) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.code, code, "{text}: {}", err.message);
            assert!(!err.message.is_empty());
        }
    }

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
    fn oversized_notifications_are_too_large() {
        let data = json!("x".repeat(MAX_NOTIFICATION_BYTES));
        let err = Notification::new("id", &Target::Broadcast, &data, 0)
            .encode()
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
    }

    #[test]
    fn publish_requests_need_exactly_one_target() {
        let ok = PublishInput::parse(&json!({"room":"orders","data":{"a":1},"id":"k1"})).unwrap();
        assert_eq!(
            ok,
            PublishInput::Single(PublishRequest {
                target: Target::Room(RoomName::parse("orders").unwrap()),
                data: json!({"a":1}),
                idempotency_key: Some("k1".into()),
            })
        );
        let user = PublishRequest::parse(&json!({"user":"alice","data":1})).unwrap();
        assert_eq!(user.target, Target::User("alice".into()));
        let conns = PublishRequest::parse(&json!({"connections":["a","b","a"],"data":1})).unwrap();
        assert_eq!(
            conns.target,
            Target::Connections(vec!["a".into(), "b".into()])
        );
        let all = PublishRequest::parse(&json!({"broadcast":true,"data":1})).unwrap();
        assert_eq!(all.target, Target::Broadcast);

        let bad = [
            json!({"data":1}),
            json!({"room":"a","user":"b","data":1}),
            json!({"room":"a"}),
            json!({"room":"a b","data":1}),
            json!({"room":5,"data":1}),
            json!({"broadcast":false,"data":1}),
            json!({"connections":[],"data":1}),
            json!({"connections":[1],"data":1}),
            json!({"connections":[""],"data":1}),
            json!({"connections":"a","data":1}),
            json!({"user":"","data":1}),
            json!({"room":"a","data":1,"id":7}),
            json!({"room":"a","data":1,"extra":true}),
            json!([1]),
            json!(null),
        ];
        for input in bad {
            let err = PublishInput::parse(&input).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{input}");
        }
    }

    #[test]
    fn requests_round_trip_through_their_json() {
        let targets = [
            Target::Room(RoomName::parse("orders").unwrap()),
            Target::User("alice".into()),
            Target::Connections(vec!["a".into(), "b".into()]),
            Target::Broadcast,
        ];
        for target in targets {
            let request = PublishRequest::new(target, json!({"n": 1})).with_idempotency_key("k");
            assert_eq!(PublishRequest::parse(&request.to_json()), Ok(request));
        }
    }

    #[test]
    fn batches_are_bounded_and_name_the_bad_message() {
        let batch = PublishInput::parse(&json!({"messages":[
            {"room":"a","data":1},{"user":"u","data":2}
        ]}))
        .unwrap();
        let PublishInput::Batch(items) = batch else {
            panic!("expected a batch")
        };
        assert_eq!(items.len(), 2);

        let err = PublishInput::parse(&json!({"messages":[{"room":"a","data":1},{"room":"a"}]}))
            .unwrap_err();
        assert!(err.message.starts_with("messages[1]:"), "{}", err.message);
        assert!(PublishInput::parse(&json!({"messages":[]})).is_err());
        assert!(PublishInput::parse(&json!({"messages":{}})).is_err());
        assert!(PublishInput::parse(&json!({"messages":[], "room":"a"})).is_err());
        let too_many: Vec<Value> = (0..=MAX_BATCH)
            .map(|_| json!({"room":"a","data":1}))
            .collect();
        assert!(PublishInput::parse(&json!({ "messages": too_many })).is_err());
    }
}
