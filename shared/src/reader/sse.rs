//! Server-Sent Events framing, shared by `herald-local`'s `GET /{stage}/events` and the
//! `stream` function, so a browser's `EventSource` sees the same stream from both.
//!
//! Each notification is one event: `event: notification`, `id:` the reader's cursor once it
//! has this notification (what the browser sends back as `Last-Event-ID`), `data:` the JSON
//! a WebSocket client gets. A stream opens with `retry:` and what the reader missed since
//! its cursor, or one `event: reset` when history no longer covers the cursor.

use std::time::Duration;

use super::{CatchUp, Follow};
use crate::protocol::Cursor;

/// A comment line this often keeps proxies from closing an idle stream.
pub const SSE_HEARTBEAT: Duration = Duration::from_secs(25);
/// How long a browser waits before reconnecting (the `retry:` field), in ms.
pub const SSE_RETRY_MS: u64 = 1_000;
/// The comment line sent when a stream has been idle for [`SSE_HEARTBEAT`].
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";
/// The media type of an event stream.
pub const CONTENT_TYPE: &str = "text/event-stream";

/// The `retry:` field, on its own.
pub fn retry() -> Vec<u8> {
    format!("retry: {SSE_RETRY_MS}\n\n").into_bytes()
}

/// Appends one event to `out`.
pub fn event(out: &mut Vec<u8>, kind: &str, cursor: &Cursor, data: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\nid: ");
    out.extend_from_slice(cursor.encode().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // The contract's JSON has no raw line breaks (they are escaped inside strings).
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// Appends a `reset` event: history no longer covers the reader's cursor, it starts over at
/// `cursor` (also its data, for clients that read the data rather than the id).
pub fn reset(out: &mut Vec<u8>, cursor: &Cursor) {
    let data = serde_json::json!({ "cursor": cursor.encode() }).to_string();
    event(out, "reset", cursor, data.as_bytes());
}

/// Appends what a catch-up found: each replayed notification (its id the reader's cursor
/// moved past it), or a reset. Returns where the reader then stands, which also names
/// channels `since` did not (a room added since).
pub fn catch_up_events(out: &mut Vec<u8>, first: CatchUp, since: Option<Cursor>) -> Follow {
    match first {
        CatchUp::Replay { entries, cursor } => {
            let mut replayed = Follow::from(since.unwrap_or_default());
            for entry in entries {
                if replayed.take(&entry.bytes) {
                    event(out, "notification", replayed.cursor(), &entry.bytes);
                }
            }
            Follow::from(cursor)
        }
        CatchUp::Reset { cursor } => {
            reset(out, &cursor);
            Follow::from(cursor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Position;
    use crate::store::Entry;
    use bytes::Bytes;

    fn at(offset: u64) -> Cursor {
        let mut cursor = Cursor::new();
        let epoch = "e".to_owned();
        cursor.set("room:a".into(), Position { offset, epoch });
        cursor
    }

    fn entry(offset: u64) -> Entry {
        let json = format!(
            r#"{{"type":"notification","room":"a","offset":{offset},"epoch":"e","data":{offset}}}"#
        );
        Entry {
            offset,
            bytes: Bytes::from(json),
        }
    }

    /// The events in `out`, each as (kind, id, data).
    fn events(out: &[u8]) -> Vec<(String, String, String)> {
        let text = std::str::from_utf8(out).unwrap();
        let field = |block: &str, name: &str| {
            let prefix = format!("{name}: ");
            block
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        text.split_terminator("\n\n")
            .map(|b| (field(b, "event"), field(b, "id"), field(b, "data")))
            .collect()
    }

    #[test]
    fn a_replay_gives_each_event_the_cursor_past_it() {
        let mut out = Vec::new();
        let first = CatchUp::Replay {
            entries: vec![entry(2), entry(3)],
            cursor: at(3),
        };
        let follow = catch_up_events(&mut out, first, Some(at(1)));
        let sent = events(&out);
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].0, "notification");
        assert_eq!(Cursor::decode(&sent[0].1).unwrap(), at(2));
        assert_eq!(Cursor::decode(&sent[1].1).unwrap(), at(3));
        assert_eq!(sent[1].2, std::str::from_utf8(&entry(3).bytes).unwrap());
        assert_eq!(follow.cursor(), &at(3));
    }

    #[test]
    fn a_reset_is_one_event_naming_the_new_cursor() {
        let mut out = Vec::new();
        let follow = catch_up_events(&mut out, CatchUp::Reset { cursor: at(9) }, Some(at(1)));
        let sent = events(&out);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, "reset");
        assert_eq!(Cursor::decode(&sent[0].1).unwrap(), at(9));
        let data: serde_json::Value = serde_json::from_str(&sent[0].2).unwrap();
        assert_eq!(data["cursor"], sent[0].1);
        assert_eq!(follow.cursor(), &at(9));
    }

    #[test]
    fn retry_is_the_browsers_reconnect_delay() {
        assert_eq!(retry(), b"retry: 1000\n\n");
    }
}
