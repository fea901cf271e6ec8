//! The wire formats of Herald's protocol (`docs/protocol.md` documents it for users): what
//! clients send over the socket, what Herald sends back, and the `publish` function's input
//! and output.
//!
//! Parsing is strict and total: any input, however malformed, becomes either a typed value
//! or a [`ProtocolError`] carrying the protocol's error code, never a panic. Unknown fields
//! are refused so that a typo (`"rom"`) is reported instead of silently ignored.
//!
//! # Layout
//!
//! | file | what |
//! |---|---|
//! | `protocol/mod.rs` | limits, error codes, room names, identifier checks |
//! | `protocol/client.rs` | client → server: the frames a client sends over its socket |
//! | `protocol/server.rs` | server → client: replies and notifications |
//! | `protocol/publish.rs` | the `publish` function's requests and answers |
//! | `protocol/cursor.rs` | the SSE and long-polling cursor: every channel's position |

mod client;
mod cursor;
mod publish;
mod server;

pub use client::*;
pub use cursor::*;
pub use publish::*;
pub use server::*;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

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
/// The longest epoch a client may send back (Herald's own are 12 characters).
pub const MAX_EPOCH_LEN: usize = 64;
/// Notifications a `history` request answers when it names no `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
/// The most notifications one `history` request may ask for.
pub const MAX_HISTORY_LIMIT: usize = 1_000;

/// Where a channel (a room, or a user's inbox) stands: the offset of a notification and
/// the epoch of the channel's history it belongs to. Clients send one back as `since`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// The offset: 1 for a channel's first notification, 0 before it.
    pub offset: u64,
    /// The epoch; another epoch means the history was lost in between.
    pub epoch: String,
}

impl Position {
    /// Checks a position a client sent.
    pub fn check(&self, field: &str) -> Result<(), ProtocolError> {
        if self.epoch.is_empty() || self.epoch.len() > MAX_EPOCH_LEN {
            return Err(ProtocolError::bad_request(format!(
                "{field}.epoch must have 1 to {MAX_EPOCH_LEN} characters"
            )));
        }
        Ok(())
    }
}

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
    /// Too many requests in too short a time.
    RateLimited,
    /// A limit on how much a connection may hold was reached (for example its rooms).
    LimitExceeded,
    /// The message or notification is too large.
    TooLarge,
    /// Herald could not do it (for example, its store is down); the input was fine.
    Internal,
}

impl ErrorCode {
    /// Every code, as `docs/protocol.md` lists them.
    pub const ALL: [Self; 7] = [
        Self::BadRequest,
        Self::UnknownAction,
        Self::Forbidden,
        Self::RateLimited,
        Self::LimitExceeded,
        Self::TooLarge,
        Self::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownAction => "unknown_action",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::LimitExceeded => "limit_exceeded",
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
    pub fn within(self, context: &str) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_follow_the_rules() {
        for ok in ["orders", "a", "user:42@eu-west.1_x", &"r".repeat(128)] {
            assert!(RoomName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "with space", "a/b", "a*", "ü", "x,y", &"r".repeat(129)] {
            let err = RoomName::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{bad}");
        }
        assert_eq!(RoomName::parse("orders:1").unwrap().to_string(), "orders:1");
    }

    #[test]
    fn each_error_code_has_its_contract_name_on_the_wire() {
        let codes = [
            (ErrorCode::BadRequest, "bad_request"),
            (ErrorCode::UnknownAction, "unknown_action"),
            (ErrorCode::Forbidden, "forbidden"),
            (ErrorCode::RateLimited, "rate_limited"),
            (ErrorCode::LimitExceeded, "limit_exceeded"),
            (ErrorCode::TooLarge, "too_large"),
            (ErrorCode::Internal, "internal"),
        ];
        assert_eq!(
            ErrorCode::ALL.to_vec(),
            codes.map(|(code, _)| code).to_vec()
        );
        for (code, name) in codes {
            assert_eq!(code.as_str(), name);
            assert_eq!(serde_json::to_value(code).unwrap(), name);
        }
        let error = ProtocolError::new(ErrorCode::RateLimited, "slow down");
        assert_eq!(error.to_string(), "rate_limited: slow down");
    }
}
