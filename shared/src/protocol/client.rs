//! Client → server: the frames a client sends over its socket, parsed strictly.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::{
    DEFAULT_HISTORY_LIMIT, ErrorCode, MAX_HISTORY_LIMIT, MAX_ID_LEN, Position, ProtocolError,
    RoomName,
};

/// One request a client sent over its socket; serialized as a client sends it (the CLI and
/// the load generator speak through it), parsed by [`parse_client_frame`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ClientRequest {
    /// Join a room, optionally recovering what was missed after a position.
    Subscribe {
        /// The room.
        room: RoomName,
        /// The position of the last notification the client saw.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
    },
    /// Replay what the caller's own inbox received after a position.
    Recover {
        /// The position of the last inbox notification the client saw.
        since: Position,
    },
    /// Read a room's kept notifications.
    History {
        /// The room.
        room: RoomName,
        /// The most notifications to answer.
        limit: usize,
        /// Only those after this position (the newest ones without it).
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
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
    /// Ask who is in a room.
    Presence {
        /// The room.
        room: RoomName,
    },
    /// Publish to a room from the socket.
    Publish {
        /// The room.
        room: RoomName,
        /// The payload, any JSON.
        data: Value,
    },
}

impl ClientRequest {
    /// The text frame a client sends for this request, with `reference` as its `ref`.
    pub fn to_frame(&self, reference: Option<&str>) -> String {
        // A tagged enum of strings, numbers and `Value`s: serializing cannot fail.
        let mut frame = serde_json::to_value(self).expect("a request always serializes");
        if let (Some(reference), Value::Object(fields)) = (reference, &mut frame) {
            fields.insert("ref".into(), Value::String(reference.into()));
        }
        frame.to_string()
    }
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
    since: Option<Position>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverFrame {
    #[serde(rename = "action")]
    _action: String,
    #[serde(rename = "ref", default)]
    _ref: Option<Value>,
    since: Position,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryFrame {
    #[serde(rename = "action")]
    _action: String,
    #[serde(rename = "ref", default)]
    _ref: Option<Value>,
    room: RoomName,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    since: Option<Position>,
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
pub const CLIENT_ACTIONS: [&str; 8] = [
    "subscribe",
    "unsubscribe",
    "ping",
    "whoami",
    "publish",
    "recover",
    "history",
    "presence",
];

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

/// A `ref` is echoed exactly as sent, so it must be a value that JSON reads back as the
/// same text: a string of at most [`MAX_ID_LEN`] bytes or an integer that fits 64 bits (a
/// larger number would come back rounded, as a float).
fn check_ref(value: &Value) -> Result<Value, ProtocolError> {
    match value {
        Value::String(s) if s.len() <= MAX_ID_LEN => Ok(value.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(value.clone()),
        _ => Err(ProtocolError::bad_request(format!(
            "ref must be a string of at most {MAX_ID_LEN} characters or an integer of at \
             most 64 bits"
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
                since.check("since")?;
            }
            Ok(ClientRequest::Subscribe {
                room: frame.room,
                since: frame.since,
            })
        }
        "recover" => {
            let frame: RecoverFrame = serde_json::from_value(value).map_err(typed)?;
            frame.since.check("since")?;
            Ok(ClientRequest::Recover { since: frame.since })
        }
        "history" => {
            let frame: HistoryFrame = serde_json::from_value(value).map_err(typed)?;
            if let Some(since) = &frame.since {
                since.check("since")?;
            }
            let limit = frame.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
            if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
                return Err(ProtocolError::bad_request(format!(
                    "limit must be 1 to {MAX_HISTORY_LIMIT}, not {limit}"
                )));
            }
            Ok(ClientRequest::History {
                room: frame.room,
                limit,
                since: frame.since,
            })
        }
        "unsubscribe" => {
            let frame: RoomFrame = serde_json::from_value(value).map_err(typed)?;
            Ok(ClientRequest::Unsubscribe { room: frame.room })
        }
        "presence" => {
            let frame: RoomFrame = serde_json::from_value(value).map_err(typed)?;
            Ok(ClientRequest::Presence { room: frame.room })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_EPOCH_LEN;

    use serde_json::json;

    fn parse(text: &str) -> Result<ClientRequest, ProtocolError> {
        parse_client_frame(text)
            .map(|m| m.request)
            .map_err(|r| r.error)
    }

    #[test]
    fn every_request_a_client_serializes_parses_back_the_same() {
        let room = RoomName::parse("orders").unwrap();
        let since = Position {
            offset: 7,
            epoch: "E".into(),
        };
        let requests = [
            ClientRequest::Subscribe {
                room: room.clone(),
                since: None,
            },
            ClientRequest::Subscribe {
                room: room.clone(),
                since: Some(since.clone()),
            },
            ClientRequest::Recover {
                since: since.clone(),
            },
            ClientRequest::History {
                room: room.clone(),
                limit: 5,
                since: Some(since),
            },
            ClientRequest::Unsubscribe { room: room.clone() },
            ClientRequest::Ping,
            ClientRequest::Whoami,
            ClientRequest::Presence { room: room.clone() },
            ClientRequest::Publish {
                room,
                data: serde_json::json!({"n": 1}),
            },
        ];
        for request in requests {
            let frame = request.to_frame(Some("r1"));
            let parsed = parse_client_frame(&frame).unwrap();
            assert_eq!(parsed.request, request, "{frame}");
            assert_eq!(parsed.reference, Some(Value::String("r1".into())));
            let bare = parse_client_frame(&request.to_frame(None)).unwrap();
            assert_eq!((bare.request, bare.reference), (request, None));
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
        let at = |offset, epoch: &str| Position {
            offset,
            epoch: epoch.into(),
        };
        assert_eq!(
            parse(r#"{"action":"subscribe","room":"orders","since":{"offset":17,"epoch":"e"}}"#),
            Ok(ClientRequest::Subscribe {
                room: RoomName::parse("orders").unwrap(),
                since: Some(at(17, "e"))
            })
        );
        assert_eq!(
            parse(r#"{"action":"recover","since":{"offset":0,"epoch":"e"}}"#),
            Ok(ClientRequest::Recover { since: at(0, "e") })
        );
        assert_eq!(
            parse(r#"{"action":"history","room":"o"}"#),
            Ok(ClientRequest::History {
                room: RoomName::parse("o").unwrap(),
                limit: DEFAULT_HISTORY_LIMIT,
                since: None
            })
        );
        assert_eq!(
            parse(r#"{"action":"history","room":"o","limit":5,"since":{"offset":3,"epoch":"e"}}"#),
            Ok(ClientRequest::History {
                room: RoomName::parse("o").unwrap(),
                limit: 5,
                since: Some(at(3, "e"))
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
    fn a_published_payload_is_kept_as_sent() {
        assert_eq!(
            parse(r#"{"action":"publish","room":"o","data":{"n":[1,"two"]}}"#),
            Ok(ClientRequest::Publish {
                room: RoomName::parse("o").unwrap(),
                data: json!({"n":[1,"two"]})
            })
        );
    }

    #[test]
    fn an_epoch_and_a_history_limit_are_checked_at_and_past_their_bounds() {
        let since = |epoch: &str| {
            json!({"action":"recover","since":{"offset":1,"epoch":epoch}}).to_string()
        };
        assert!(parse(&since(&"e".repeat(MAX_EPOCH_LEN))).is_ok());
        assert!(parse(&since(&"e".repeat(MAX_EPOCH_LEN + 1))).is_err());
        let limit = |n: usize| json!({"action":"history","room":"a","limit":n}).to_string();
        assert!(parse(&limit(1)).is_ok());
        assert!(parse(&limit(MAX_HISTORY_LIMIT)).is_ok());
        assert!(parse(&limit(MAX_HISTORY_LIMIT + 1)).is_err());
    }

    #[test]
    fn a_ref_string_is_at_most_256_characters() {
        let frame = |reference: &str| json!({"action":"ping","ref":reference}).to_string();
        let longest = "r".repeat(MAX_ID_LEN);
        let kept = parse_client_frame(&frame(&longest)).unwrap();
        assert_eq!(kept.reference, Some(json!(longest)));
        let rejected = parse_client_frame(&frame(&"r".repeat(MAX_ID_LEN + 1))).unwrap_err();
        assert_eq!(rejected.error.code, ErrorCode::BadRequest);
        assert_eq!(rejected.reference, None, "an unusable ref is not echoed");
    }

    #[test]
    fn a_ref_number_is_an_integer_echoed_exactly_or_refused() {
        for exact in ["7", "-9223372036854775808", "18446744073709551615"] {
            let text = format!(r#"{{"action":"ping","ref":{exact}}}"#);
            let kept = parse_client_frame(&text).unwrap();
            assert_eq!(kept.reference.unwrap().to_string(), exact);
        }
        for rounded in [
            "123456789012345678901234567890",
            "18446744073709551616",
            "1.5",
            "1e3",
        ] {
            let text = format!(r#"{{"action":"ping","ref":{rounded}}}"#);
            let rejected = parse_client_frame(&text).unwrap_err();
            assert_eq!(rejected.error.code, ErrorCode::BadRequest, "{rounded}");
            assert_eq!(rejected.reference, None, "{rounded}: never echoed changed");
        }
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
            (
                r#"{"action":"subscribe","room":"a","since":{"offset":-1,"epoch":"e"}}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"action":"subscribe","room":"a","since":{"offset":1,"epoch":""}}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"action":"subscribe","room":"a","since":{"offset":1}}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"action":"subscribe","room":"a","since":{"offset":1,"epoch":"e","x":1}}"#,
                ErrorCode::BadRequest,
            ),
            (r#"{"action":"recover"}"#, ErrorCode::BadRequest),
            (r#"{"action":"history"}"#, ErrorCode::BadRequest),
            (
                r#"{"action":"history","room":"a","limit":0}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"action":"history","room":"a","limit":1001}"#,
                ErrorCode::BadRequest,
            ),
        ];
        for (text, code) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.code, code, "{text}: {}", err.message);
            assert!(!err.message.is_empty());
        }
    }
}
