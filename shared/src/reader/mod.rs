//! Readers of channels: what the fallback transports (SSE, long polling) share.
//!
//! A reader follows several channels (its rooms and its own inbox) with one [`Cursor`].
//! [`catch_up`] answers what it missed since a cursor: every kept notification after it, in
//! order, channel by channel, or a reset when any channel's history no longer covers it
//! (another epoch, or older than what is kept): never a partial catch-up. [`Follow`] then
//! takes live notifications one by one, dropping those the reader already has.
//!
//! Both hosts' readers (`herald-local`'s SSE and polling routes, the `poll` and `stream`
//! functions) admit a reader the same way ([`admission`]) and frame SSE the same way
//! ([`sse`]).
//!
//! # Layout
//!
//! | file | what |
//! |---|---|
//! | `src/reader/mod.rs` | catching up from a cursor, following live notifications, the long poll's answer and `wait` |
//! | `src/reader/admission.rs` | a reader's rooms and cursor checked, its token and rooms allowed: one refusal type with its status |
//! | `src/reader/sse.rs` | Server-Sent Events framing: events, resets, keep-alives, `retry:` |
//! | `src/reader/membership.rs` | a reader on AWS as a member of its rooms while it reads (presence counts it, fan-out skips it) |

pub mod admission;
pub mod membership;
pub mod sse;

use serde::{Deserialize, Serialize};

use crate::protocol::{Cursor, Position, ProtocolError, Stored};
use crate::store::{Channel, ConnectionStore, Entry, Range, Retention, StoreError};

/// The longest a long poll waits, in seconds: under API Gateway's 29 s integration timeout.
pub const MAX_POLL_WAIT_SECS: u64 = 25;

/// A long poll's `wait`: absent is the most, anything but 0 to the most is refused.
pub fn parse_wait(wait: Option<&str>) -> Result<u64, ProtocolError> {
    match wait.map(str::parse::<u64>) {
        None => Ok(MAX_POLL_WAIT_SECS),
        Some(Ok(secs)) if secs <= MAX_POLL_WAIT_SECS => Ok(secs),
        Some(_) => Err(ProtocolError::bad_request(format!(
            "wait is 0 to {MAX_POLL_WAIT_SECS} seconds"
        ))),
    }
}

/// What a reader at a cursor gets first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// The notifications it missed, oldest first per channel, and the cursor after them.
    Replay {
        /// Kept notifications after the cursor.
        entries: Vec<Entry>,
        /// Where the reader stands once it has them.
        cursor: Cursor,
    },
    /// History no longer covers the cursor: the reader must reload, and starts here.
    Reset {
        /// Every channel's current position.
        cursor: Cursor,
    },
}

/// What a reader of `channels` at `since` missed. Without `since` it starts now: nothing
/// to replay, the cursor at every channel's current position. Channels the cursor does not
/// name (a room added since) start now too.
pub async fn catch_up(
    store: &dyn ConnectionStore,
    retention: Option<Retention>,
    channels: &[Channel],
    since: Option<&Cursor>,
) -> Result<CatchUp, StoreError> {
    let Some(retention) = retention else {
        // No history: no positions, nothing to replay, nothing to reset.
        return Ok(CatchUp::Replay {
            entries: Vec::new(),
            cursor: Cursor::new(),
        });
    };
    let mut cursor = Cursor::new();
    let mut entries = Vec::new();
    let mut covered = true;
    for channel in channels {
        let key = channel.key();
        let at = since.and_then(|c| c.get(&key));
        let range = at.map_or(Range::Latest, |p| Range::After(p.offset));
        let limit = if at.is_some() { retention.size } else { 0 };
        let read = store
            .read_history(channel, range, limit, &retention)
            .await?;
        let current = read.position.clone();
        let Some(at) = at else {
            cursor.set(key, current);
            continue;
        };
        match read.replay_after(at) {
            Some(missed) => {
                let last = missed.last().map_or(at.offset, |e| e.offset);
                cursor.set(
                    key,
                    Position {
                        offset: last,
                        epoch: current.epoch,
                    },
                );
                entries.extend(missed);
            }
            None => {
                covered = false;
                cursor.set(key, current);
            }
        }
    }
    if !covered {
        return Ok(CatchUp::Reset { cursor });
    }
    Ok(CatchUp::Replay { entries, cursor })
}

/// A long poll's answer: `{"notifications":[…],"cursor":"…","reset":false}`, the
/// notifications exactly as they were sent.
#[derive(Debug, Serialize)]
pub struct PollAnswer {
    /// What followed the cursor, oldest first per channel.
    pub notifications: Vec<Stored>,
    /// Where the reader stands after them.
    pub cursor: String,
    /// Whether history no longer covered the cursor (then `notifications` is empty).
    pub reset: bool,
}

impl PollAnswer {
    /// The answer as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Raw JSON values, a string and a bool: serializing cannot fail.
        serde_json::to_vec(self).expect("a poll answer serializes")
    }
}

/// The fields of a notification that say where it stands.
#[derive(Deserialize)]
struct Placed {
    room: Option<String>,
    user: Option<String>,
    offset: Option<u64>,
    epoch: Option<String>,
}

/// Follows live notifications from a cursor.
#[derive(Clone, Debug, Default)]
pub struct Follow {
    cursor: Cursor,
}

impl Follow {
    /// Following from `cursor`.
    pub fn from(cursor: Cursor) -> Self {
        Self { cursor }
    }

    /// Where the reader stands.
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// Takes one notification (its JSON bytes): `false` when the reader already has it (a
    /// notification both replayed and delivered live), else the cursor moves past it. A
    /// notification without a position (a broadcast, history off) is always taken.
    pub fn take(&mut self, notification: &[u8]) -> bool {
        let Ok(placed) = serde_json::from_slice::<Placed>(notification) else {
            return true;
        };
        let (Some(offset), Some(epoch)) = (placed.offset, placed.epoch) else {
            return true;
        };
        let key = match (placed.room, placed.user) {
            (Some(room), _) => format!("room:{room}"),
            (None, Some(user)) => format!("user:{user}"),
            (None, None) => return true,
        };
        if self
            .cursor
            .get(&key)
            .is_some_and(|at| at.epoch == epoch && at.offset >= offset)
        {
            return false;
        }
        self.cursor.set(key, Position { offset, epoch });
        true
    }
}

/// The presence event a frame of a reader's outbox is (`join` or `leave`, with presence
/// events on), or `None` for a notification. A presence event moves no cursor: SSE sends it
/// as its own event type, a long poll (whose answer holds notifications only) skips it.
pub fn presence_event(frame: &[u8]) -> Option<&'static str> {
    // Server messages are written with their `type` first.
    [
        ("join", &br#"{"type":"join""#[..]),
        ("leave", &br#"{"type":"leave""#[..]),
    ]
    .into_iter()
    .find(|(_, prefix)| frame.starts_with(prefix))
    .map(|(kind, _)| kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RoomName;
    use crate::store::History;
    use crate::store::{Draft, MemoryStore};
    use bytes::Bytes;

    #[test]
    fn presence_events_are_told_from_notifications() {
        let member = crate::protocol::Member {
            user: "ann".into(),
            connection_id: crate::ids::ConnectionId::new("c1"),
        };
        let room = RoomName::parse("orders").unwrap();
        let join = crate::protocol::ServerMessage::Join {
            room: room.clone(),
            member: member.clone(),
        };
        let leave = crate::protocol::ServerMessage::Leave { room, member };
        assert_eq!(
            presence_event(&serde_json::to_vec(&join).unwrap()),
            Some("join")
        );
        assert_eq!(
            presence_event(&serde_json::to_vec(&leave).unwrap()),
            Some("leave")
        );
        let note = br#"{"type":"notification","room":"orders","data":{"type":"join"}}"#;
        assert_eq!(presence_event(note), None);
    }

    fn draft(room: &str, n: u64) -> Draft {
        Draft {
            head: Bytes::from(format!(
                r#"{{"type":"notification","id":"n{n}","room":"{room}""#
            )),
            tail: Bytes::from(format!(r#","data":{n},"ts":0}}"#)),
        }
    }

    fn room(name: &str) -> Channel {
        Channel::Room(RoomName::parse(name).unwrap())
    }

    #[tokio::test]
    async fn a_reader_catches_up_on_every_channel_or_resets() {
        let store = MemoryStore::new();
        let keep = Retention::new(3, std::time::Duration::from_secs(60)).unwrap();
        let (a, b) = (room("a"), room("b"));
        let channels = [a.clone(), b.clone()];
        let CatchUp::Replay { entries, cursor } =
            catch_up(&store, Some(keep), &channels, None).await.unwrap()
        else {
            panic!("no cursor: start now")
        };
        assert!(entries.is_empty());
        for n in 1..=2 {
            store.append(&a, &draft("a", n), &keep).await.unwrap();
        }
        store.append(&b, &draft("b", 1), &keep).await.unwrap();
        let Ok(CatchUp::Replay {
            entries,
            cursor: after,
        }) = catch_up(&store, Some(keep), &channels, Some(&cursor)).await
        else {
            panic!("covered")
        };
        assert_eq!(
            entries.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [1, 2, 1]
        );
        assert_eq!(after.get("room:a").map(|p| p.offset), Some(2));
        assert_eq!(after.get("room:b").map(|p| p.offset), Some(1));
        // Four more in b: its offset 2 is no longer kept, so the cursor cannot be served.
        for n in 2..=5 {
            store.append(&b, &draft("b", n), &keep).await.unwrap();
        }
        let reset = catch_up(&store, Some(keep), &channels, Some(&after))
            .await
            .unwrap();
        let CatchUp::Reset { cursor } = reset else {
            panic!("not covered: {reset:?}")
        };
        assert_eq!(cursor.get("room:b").map(|p| p.offset), Some(5));
    }

    #[test]
    fn a_wait_is_zero_to_the_most_and_absent_is_the_most() {
        assert_eq!(parse_wait(None), Ok(MAX_POLL_WAIT_SECS));
        assert_eq!(parse_wait(Some("0")), Ok(0));
        assert_eq!(parse_wait(Some("7")), Ok(7));
        let most = MAX_POLL_WAIT_SECS.to_string();
        assert_eq!(
            parse_wait(Some(&most)),
            Ok(MAX_POLL_WAIT_SECS),
            "at the bound"
        );
        let past = (MAX_POLL_WAIT_SECS + 1).to_string();
        for bad in [past.as_str(), "-1", "1.5", "soon", ""] {
            let refused = parse_wait(Some(bad)).expect_err(bad);
            assert_eq!(
                refused.code,
                crate::protocol::ErrorCode::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn a_poll_answer_carries_the_notifications_as_they_were_sent() {
        let sent = r#"{"type":"notification","room":"r","data":{"n":1},"offset":3}"#;
        let answer = PollAnswer {
            notifications: vec![Stored::new(sent.as_bytes()).unwrap()],
            cursor: "abc".into(),
            reset: false,
        };
        let json = String::from_utf8(answer.to_json()).unwrap();
        assert_eq!(
            json,
            format!(r#"{{"notifications":[{sent}],"cursor":"abc","reset":false}}"#)
        );
    }

    #[test]
    fn following_drops_what_the_reader_has() {
        let mut cursor = Cursor::new();
        cursor.set(
            "room:a".into(),
            Position {
                offset: 2,
                epoch: "e".into(),
            },
        );
        let mut follow = Follow::from(cursor);
        let note = |offset: u64, epoch: &str| {
            format!(
                r#"{{"type":"notification","room":"a","offset":{offset},"epoch":"{epoch}","data":{{"offset":99}}}}"#
            )
        };
        assert!(!follow.take(note(2, "e").as_bytes()), "had it");
        assert!(follow.take(note(3, "e").as_bytes()));
        assert!(!follow.take(note(3, "e").as_bytes()), "twice");
        assert!(follow.take(note(1, "f").as_bytes()), "another epoch");
        assert!(
            follow.take(br#"{"type":"notification","data":1}"#),
            "no position"
        );
        assert_eq!(follow.cursor().get("room:a").map(|p| p.offset), Some(1));
    }
}
