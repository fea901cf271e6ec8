//! Who may read what: the one admission every reader passes, on either host. Input errors
//! come first, as everywhere (a malformed `rooms` list or cursor is 400 whoever asks), then
//! the token (401), then the rooms the token allows (403 naming the room; 400 over the room
//! limit). `herald-local` checks the token at its handshake, through the `authorizer`, so it
//! calls [`parse`] and [`allow`] around it; the `poll` and `stream` functions call
//! [`admit`], which verifies the token itself.

use serde_json::{Value, json};

use crate::auth::{Identity, Verifier, token_from_request};
use crate::protocol::{Cursor, ProtocolError, RoomName};
use crate::store::Channel;

/// A reader refused: the HTTP status, and what its JSON body says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 401, 403 or 503.
    pub status: u16,
    /// Why, for a person.
    pub message: String,
    /// The room it is about, when it is about one (a room the token does not allow).
    pub room: Option<RoomName>,
}

impl Refusal {
    /// A refusal with `status` and `message`, about no room.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            room: None,
        }
    }

    /// The body: `{"message"}`, with the `room` when there is one.
    pub fn body(&self) -> Value {
        let mut body = json!({ "message": self.message });
        if let Some(room) = &self.room {
            body["room"] = json!(room.as_str());
        }
        body
    }
}

impl From<ProtocolError> for Refusal {
    fn from(error: ProtocolError) -> Self {
        Self::new(400, error.message)
    }
}

impl From<RoomRefusal> for Refusal {
    fn from(refusal: RoomRefusal) -> Self {
        let status = match refusal {
            RoomRefusal::TooMany { .. } => 400,
            RoomRefusal::Forbidden(_) => 403,
        };
        Self {
            status,
            message: refusal.to_string(),
            room: refusal.room().cloned(),
        }
    }
}

/// A reader's request, as either host received it.
pub struct ReadRequest<'a> {
    /// `rooms=a,b`, joined again if the event split it.
    pub rooms: &'a str,
    /// The cursor to resume after, if any (`Last-Event-ID` or `?cursor=`).
    pub cursor: Option<&'a str>,
    /// `?token=`.
    pub token: Option<&'a str>,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
}

/// A reader's rooms and cursor, each well formed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The rooms asked for, each once.
    pub rooms: Vec<RoomName>,
    /// The cursor it came with.
    pub since: Option<Cursor>,
}

/// A reader let in: the channels it reads and where it resumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// Its rooms, then its own inbox.
    pub channels: Vec<Channel>,
    /// The cursor it came with.
    pub since: Option<Cursor>,
}

/// Checks the input alone: the rooms list (no longer than `max_rooms` names, counted before
/// any is parsed) and the cursor (an empty cursor is none).
pub fn parse(
    rooms: &str,
    cursor: Option<&str>,
    max_rooms: Option<usize>,
) -> Result<Parsed, Refusal> {
    let listed = rooms.split(',').filter(|n| !n.is_empty()).count();
    let most = max_rooms.unwrap_or(MAX_LISTED_ROOMS).min(MAX_LISTED_ROOMS);
    if listed > most {
        return Err(RoomRefusal::TooMany {
            max: most,
            asked: listed,
        }
        .into());
    }
    let rooms = parse_rooms(rooms)?;
    let since = cursor
        .filter(|c| !c.is_empty())
        .map(Cursor::decode)
        .transpose()?;
    Ok(Parsed { rooms, since })
}

/// Checks the rooms against the identity's token and the room limit (`max` per connection).
pub fn allow(parsed: &Parsed, identity: &Identity, max: Option<usize>) -> Result<(), Refusal> {
    Ok(check_rooms(&parsed.rooms, identity, max)?)
}

/// The whole admission for a host that verifies the token itself: the input, the token,
/// the rooms; and history, without which such a reader would never deliver anything.
pub fn admit(
    verifier: &Verifier,
    max_rooms: Option<usize>,
    history_on: bool,
    request: &ReadRequest<'_>,
) -> Result<Admitted, Refusal> {
    let parsed = parse(request.rooms, request.cursor, max_rooms)?;
    let unauthorized = || Refusal::new(401, "Unauthorized");
    let token =
        token_from_request(request.token, request.authorization).ok_or_else(unauthorized)?;
    let identity = verifier.verify(token).map_err(|_| unauthorized())?;
    allow(&parsed, &identity, max_rooms)?;
    if !history_on {
        let message = "history is off (HERALD_HISTORY_TTL_SECS=0): readers need it";
        return Err(Refusal::new(503, message));
    }
    let mut channels: Vec<Channel> = parsed.rooms.into_iter().map(Channel::Room).collect();
    channels.push(Channel::User(identity.user));
    Ok(Admitted {
        channels,
        since: parsed.since,
    })
}

/// The most names a `rooms=` list may hold even with no room limit configured: the list
/// is read name by name, so its length is bounded before that work starts.
pub const MAX_LISTED_ROOMS: usize = 4096;

/// The rooms of a reader's `rooms=a,b`: each a valid name, none twice, in the order given.
pub fn parse_rooms(list: &str) -> Result<Vec<RoomName>, ProtocolError> {
    let mut rooms: Vec<RoomName> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for name in list.split(',').filter(|n| !n.is_empty()) {
        let room = RoomName::parse(name).map_err(|e| e.within("rooms"))?;
        if seen.insert(room.clone()) {
            rooms.push(room);
        }
    }
    Ok(rooms)
}

/// Why a reader may not read the rooms it asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomRefusal {
    /// More rooms than one connection may join (answered 400).
    TooMany {
        /// The limit.
        max: usize,
        /// How many were asked for.
        asked: usize,
    },
    /// The token does not allow this room (answered 403, naming it).
    Forbidden(RoomName),
}

impl RoomRefusal {
    /// The room it is about, when it is about one.
    pub fn room(&self) -> Option<&RoomName> {
        match self {
            Self::TooMany { .. } => None,
            Self::Forbidden(room) => Some(room),
        }
    }
}

impl std::fmt::Display for RoomRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooMany { max, asked } => {
                write!(f, "at most {max} rooms per connection, not {asked}")
            }
            Self::Forbidden(room) => write!(f, "you may not subscribe to {room}"),
        }
    }
}

/// What every reader's rooms pass once they parse: at most `max` of them, each one the
/// identity may subscribe to.
pub fn check_rooms(
    rooms: &[RoomName],
    identity: &Identity,
    max: Option<usize>,
) -> Result<(), RoomRefusal> {
    if let Some(max) = max
        && rooms.len() > max
    {
        let asked = rooms.len();
        return Err(RoomRefusal::TooMany { max, asked });
    }
    match rooms.iter().find(|r| !identity.can_subscribe(r)) {
        Some(room) => Err(RoomRefusal::Forbidden(room.clone())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, JwtKey, sign_hs256};

    const TTL_SECS: i64 = 600;

    const SECRET: &[u8] = b"admission-test-secret-admission-test";

    fn verifier() -> Verifier {
        let config = AuthConfig {
            key: JwtKey::Secret(SECRET.to_vec()),
            issuer: None,
            audience: None,
        };
        Verifier::new(&config).unwrap()
    }

    fn token(rooms: &[&str]) -> String {
        sign_hs256(SECRET, "alice", rooms, &[], TTL_SECS).unwrap()
    }

    fn request<'a>(
        rooms: &'a str,
        cursor: Option<&'a str>,
        token: Option<&'a str>,
    ) -> ReadRequest<'a> {
        ReadRequest {
            rooms,
            cursor,
            token,
            authorization: None,
        }
    }

    #[test]
    fn input_errors_come_before_the_token() {
        let refused = admit(&verifier(), None, true, &request("bad room!", None, None));
        assert_eq!(refused.unwrap_err().status, 400);
        let refused = admit(&verifier(), None, true, &request("a", Some("%%%"), None));
        assert_eq!(refused.unwrap_err().status, 400);
        let refused = admit(&verifier(), None, true, &request("a", None, None));
        assert_eq!(refused.unwrap_err().status, 401);
        let refused = admit(&verifier(), None, true, &request("a", None, Some("x.y.z")));
        assert_eq!(refused.unwrap_err().status, 401);
    }

    #[test]
    fn a_room_the_token_does_not_allow_is_403_and_named() {
        let token = token(&["team:*"]);
        let refused = admit(
            &verifier(),
            None,
            true,
            &request("team:a,ops", None, Some(&token)),
        )
        .unwrap_err();
        assert_eq!(refused.status, 403);
        assert_eq!(
            refused.body(),
            json!({"message": "you may not subscribe to ops", "room": "ops"})
        );
    }

    #[test]
    fn the_room_limit_admits_its_value_and_refuses_one_more() {
        let token = token(&["*"]);
        let at = admit(
            &verifier(),
            Some(2),
            true,
            &request("a,b", None, Some(&token)),
        )
        .unwrap();
        assert_eq!(at.channels.len(), 3, "two rooms and the inbox");
        let over = admit(
            &verifier(),
            Some(2),
            true,
            &request("a,b,c", None, Some(&token)),
        );
        let over = over.unwrap_err();
        assert_eq!((over.status, over.room), (400, None));
        // The cap is on the list as sent, before duplicates are dropped: a long list of one
        // name costs the same to read as a long list of many.
        let repeated = admit(
            &verifier(),
            Some(2),
            true,
            &request("a,b,a", None, Some(&token)),
        );
        assert_eq!(repeated.unwrap_err().status, 400);
        let once = admit(
            &verifier(),
            Some(2),
            true,
            &request("a,a", None, Some(&token)),
        );
        assert_eq!(once.unwrap().channels.len(), 2, "one room and the inbox");
    }

    #[test]
    fn a_long_list_is_refused_by_its_length_before_any_name_is_read() {
        // Names that would each be refused: the length is what answers.
        let at = ["bad name!"; 3].join(",");
        let refused = parse(&at, None, Some(2)).unwrap_err();
        assert_eq!(
            (refused.status, refused.message.contains("at most 2 rooms")),
            (400, true)
        );
        let huge = vec!["bad name!"; MAX_LISTED_ROOMS + 1].join(",");
        let refused = parse(&huge, None, None).unwrap_err();
        assert!(
            refused
                .message
                .contains(&format!("at most {MAX_LISTED_ROOMS} rooms"))
        );
        let listed = vec!["r"; MAX_LISTED_ROOMS].join(",");
        assert_eq!(
            parse(&listed, None, None).unwrap().rooms.len(),
            1,
            "at the bound, once"
        );
        // At the limit the names are read (and this one is refused for itself).
        let named = parse("ok,bad name!", None, Some(2)).unwrap_err();
        assert!(named.message.contains("rooms"), "{}", named.message);
    }

    #[test]
    fn without_history_a_reader_is_refused_rather_than_left_silent() {
        let token = token(&["*"]);
        let refused = admit(&verifier(), None, false, &request("a", None, Some(&token)));
        assert_eq!(refused.unwrap_err().status, 503);
    }

    #[test]
    fn an_admitted_reader_reads_its_rooms_then_its_inbox_from_its_cursor() {
        let token = token(&["*"]);
        let cursor = Cursor::default().encode();
        let admitted = admit(
            &verifier(),
            None,
            true,
            &request("a,b", Some(&cursor), Some(&token)),
        )
        .unwrap();
        assert_eq!(
            admitted.channels,
            vec![
                Channel::Room(RoomName::parse("a").unwrap()),
                Channel::Room(RoomName::parse("b").unwrap()),
                Channel::User("alice".into()),
            ]
        );
        assert_eq!(admitted.since, Some(Cursor::default()));
        let empty = parse("a", Some(""), None).unwrap();
        assert_eq!(empty.since, None, "an empty cursor is none");
    }
}
