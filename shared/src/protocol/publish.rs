//! The `publish` function's API: who a publish goes to, single and batch requests, and
//! the answers.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{MAX_BATCH, MAX_CONNECTIONS_PER_PUBLISH, ProtocolError, RoomName, check_id};
use crate::ids::ConnectionId;
use crate::sinks::mqtt::MqttOutcome;

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

/// The answer to one publish. A publish delivered in page jobs answers the pages queued
/// instead of counts, which nobody knows yet: `{"id","offset","epoch","queued_pages"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PublishOutcome {
    /// The notification id (for a repeated idempotency key, the first publish's).
    pub id: String,
    /// Sockets the notification was written to.
    #[serde(default)]
    pub delivered: u64,
    /// Recipients that no longer exist; the store has forgotten them.
    #[serde(default)]
    pub gone: u64,
    /// Recipients that could not be reached (throttled past the retry limit, or errors).
    #[serde(default)]
    pub failed: u64,
    /// The notification's offset in its room's or user's history, with history on (not
    /// for a repeated idempotency key: that publish did not append).
    #[serde(default)]
    pub offset: Option<u64>,
    /// The history's epoch, with `offset`.
    #[serde(default)]
    pub epoch: Option<String>,
    /// Page jobs queued, for a publish above the shard threshold: its recipients are
    /// reached after the answer, and `delivered`, `gone` and `failed` are not given.
    #[serde(default)]
    pub queued_pages: Option<u64>,
    /// With MQTT configured, for a room or a user: whether the copy for the broker was
    /// queued or failed (the broker unreachable or too slow).
    #[serde(default)]
    pub mqtt: Option<MqttOutcome>,
}

impl Serialize for PublishOutcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            delivered: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            gone: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            failed: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            offset: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            epoch: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            queued_pages: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            mqtt: Option<MqttOutcome>,
        }
        let counted = self.queued_pages.is_none();
        Wire {
            id: &self.id,
            delivered: counted.then_some(self.delivered),
            gone: counted.then_some(self.gone),
            failed: counted.then_some(self.failed),
            offset: self.offset,
            epoch: self.epoch.as_deref(),
            queued_pages: self.queued_pages,
            mqtt: self.mqtt,
        }
        .serialize(serializer)
    }
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
    use crate::protocol::ErrorCode;
    use serde_json::json;

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

    #[test]
    fn a_batch_holds_up_to_its_limit_and_nothing_but_messages() {
        let batch =
            |n: usize| -> Vec<Value> { (0..n).map(|i| json!({"room":"a","data":i})).collect() };
        let PublishInput::Batch(full) =
            PublishInput::parse(&json!({"messages": batch(MAX_BATCH)})).unwrap()
        else {
            panic!("expected a batch")
        };
        assert_eq!(full.len(), MAX_BATCH);
        let err = PublishInput::parse(&json!({"messages": batch(MAX_BATCH + 1)})).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        let extra = json!({"messages": batch(1), "note": "x"});
        let err = PublishInput::parse(&extra).unwrap_err();
        assert_eq!(err.message, "a batch has only the field `messages`");
    }

    #[test]
    fn a_publish_names_up_to_its_limit_of_connections() {
        let ids = |n: usize| -> Vec<String> { (0..n).map(|i| format!("c{i}")).collect() };
        let most = json!({"connections": ids(MAX_CONNECTIONS_PER_PUBLISH), "data": 1});
        let Target::Connections(named) = PublishRequest::parse(&most).unwrap().target else {
            panic!("expected connections")
        };
        assert_eq!(named.len(), MAX_CONNECTIONS_PER_PUBLISH);
        let over = json!({"connections": ids(MAX_CONNECTIONS_PER_PUBLISH + 1), "data": 1});
        assert_eq!(
            PublishRequest::parse(&over).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn every_identifier_is_1_to_256_characters_without_control_characters() {
        let longest = "i".repeat(crate::protocol::MAX_ID_LEN);
        let too_long = "i".repeat(crate::protocol::MAX_ID_LEN + 1);
        let with = |field: &str, value: &str| match field {
            "id" => json!({"room":"a","data":1,"id":value}),
            "connections" => json!({"connections":[value],"data":1}),
            _ => json!({"user":value,"data":1}),
        };
        for field in ["user", "id", "connections"] {
            assert!(
                PublishRequest::parse(&with(field, &longest)).is_ok(),
                "{field}"
            );
            for bad in ["", too_long.as_str(), "a\nb", "\u{7f}"] {
                let err = PublishRequest::parse(&with(field, bad)).unwrap_err();
                assert_eq!(err.code, ErrorCode::BadRequest, "{field} {bad:?}");
            }
        }
    }
}
