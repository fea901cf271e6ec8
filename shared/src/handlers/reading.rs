//! What the `poll` and `stream` functions check before they read history for a client:
//! its rooms and cursor are well formed (input errors first, as everywhere), its token is
//! valid, and it may read every room it asked for. It then reads those rooms and its own
//! inbox.

use crate::auth::{Verifier, token_from_request};
use crate::protocol::{Cursor, RoomName};
use crate::reader::{RoomRefusal, check_rooms, parse_rooms, refusal};
use crate::store::Channel;

use super::Services;

/// A reader's request, as either function received it.
pub(crate) struct ReadRequest<'a> {
    /// `rooms=a,b`, joined again if the event split it.
    pub rooms: &'a str,
    /// The cursor to resume after, if any (`Last-Event-ID` or `?cursor=`).
    pub cursor: Option<&'a str>,
    /// `?token=`.
    pub token: Option<&'a str>,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
}

/// A reader let in: the channels it reads and where it resumes.
pub(crate) struct Admitted {
    /// Its rooms, then its own inbox.
    pub channels: Vec<Channel>,
    /// The cursor it came with.
    pub since: Option<Cursor>,
}

/// A reader refused: the HTTP status and the JSON body that says why.
#[derive(Debug)]
pub(crate) struct Refused {
    /// 400, 401 or 403.
    pub status: u16,
    /// `{"message"}`, with the `room` when it is about one.
    pub body: serde_json::Value,
}

impl Refused {
    pub(crate) fn new(status: u16, message: &str, room: Option<&RoomName>) -> Self {
        Self {
            status,
            body: refusal(message, room),
        }
    }
}

/// Checks `request` against the token's rooms and the limits.
pub(crate) fn admit(
    services: &Services,
    verifier: &Verifier,
    request: &ReadRequest<'_>,
) -> Result<Admitted, Refused> {
    let bad = |message: &str| Refused::new(400, message, None);
    let rooms = parse_rooms(request.rooms).map_err(|e| bad(&e.message))?;
    let since = request
        .cursor
        .filter(|c| !c.is_empty())
        .map(Cursor::decode)
        .transpose()
        .map_err(|e| bad(&e.message))?;
    let unauthorized = || Refused::new(401, "Unauthorized", None);
    let token =
        token_from_request(request.token, request.authorization).ok_or_else(unauthorized)?;
    let identity = verifier.verify(token).map_err(|_| unauthorized())?;
    let max = services.limits.max_rooms_per_connection;
    check_rooms(&rooms, &identity, max).map_err(|refusal| {
        let status = match refusal {
            RoomRefusal::TooMany { .. } => 400,
            RoomRefusal::Forbidden(_) => 403,
        };
        Refused::new(status, &refusal.to_string(), refusal.room())
    })?;
    if services.limits.history.is_none() {
        // Without history these functions have nothing to read: say so rather than
        // answer a stream that never delivers.
        let message = "history is off (HERALD_HISTORY_TTL_SECS=0): readers need it";
        return Err(Refused::new(503, message, None));
    }
    let mut channels: Vec<Channel> = rooms.into_iter().map(Channel::Room).collect();
    channels.push(Channel::User(identity.user));
    Ok(Admitted { channels, since })
}
