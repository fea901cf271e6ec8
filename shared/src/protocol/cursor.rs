//! Cursors of the fallback transports (SSE and long polling): where a reader of several
//! channels stands in each, as one opaque string.
//!
//! A cursor maps each channel's key (`room:NAME`, `user:NAME`) to the offset and epoch of
//! the last notification the reader got from it. It travels as an SSE event's `id:` (and
//! comes back as `Last-Event-ID`) and as long polling's `cursor`, so it is URL-safe base64
//! of a small JSON object, and bounded: a cursor names at most [`MAX_CURSOR_CHANNELS`]
//! channels and is at most [`MAX_CURSOR_LEN`] characters.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{MAX_EPOCH_LEN, Position, ProtocolError};

/// Channels one cursor may name: a connection's rooms at most, and its inbox.
pub const MAX_CURSOR_CHANNELS: usize = 257;
/// The longest cursor accepted (a `Last-Event-ID` header of all those channels).
pub const MAX_CURSOR_LEN: usize = 64 * 1024;

/// Where a reader stands in each channel it reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(BTreeMap<String, Position>);

impl Cursor {
    /// An empty cursor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where the reader stands in the channel `key`, if the cursor says.
    pub fn get(&self, key: &str) -> Option<&Position> {
        self.0.get(key)
    }

    /// Every channel the cursor names, with its position.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Position)> {
        self.0.iter()
    }

    /// Records that the reader got the channel `key`'s notification at `position`.
    pub fn set(&mut self, key: String, position: Position) {
        self.0.insert(key, position);
    }

    /// The cursor as it travels.
    pub fn encode(&self) -> String {
        let pairs: BTreeMap<&str, (u64, &str)> = self
            .0
            .iter()
            .map(|(k, p)| (k.as_str(), (p.offset, p.epoch.as_str())))
            .collect();
        // Strings and numbers only: serializing cannot fail.
        let json = serde_json::to_vec(&pairs).expect("a cursor serializes");
        URL_SAFE_NO_PAD.encode(json)
    }

    /// A cursor a client sent back; `bad_request` when it is not one Herald made.
    pub fn decode(text: &str) -> Result<Self, ProtocolError> {
        let bad = |why: &str| ProtocolError::bad_request(format!("invalid cursor: {why}"));
        if text.len() > MAX_CURSOR_LEN {
            return Err(bad("too long"));
        }
        let json = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| bad("not base64url"))?;
        let pairs: BTreeMap<String, (u64, String)> =
            serde_json::from_slice(&json).map_err(|_| bad("not a cursor"))?;
        if pairs.len() > MAX_CURSOR_CHANNELS {
            return Err(bad("too many channels"));
        }
        if pairs
            .values()
            .any(|(_, epoch)| epoch.is_empty() || epoch.len() > MAX_EPOCH_LEN)
        {
            return Err(bad("an epoch out of bounds"));
        }
        Ok(Self(
            pairs
                .into_iter()
                .map(|(k, (offset, epoch))| (k, Position { offset, epoch }))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn a_cursor_comes_back_as_it_went() {
        let mut cursor = Cursor::new();
        cursor.set("room:orders".into(), at(17, "e1"));
        cursor.set("user:alice".into(), at(3, "e2"));
        let text = cursor.encode();
        assert!(
            text.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{text}"
        );
        let back = Cursor::decode(&text).unwrap();
        assert_eq!(back, cursor);
        assert_eq!(back.get("room:orders"), Some(&at(17, "e1")));
        assert_eq!(back.get("room:other"), None);
        let entries: Vec<_> = back.entries().collect();
        assert_eq!(
            entries,
            [
                (&"room:orders".to_owned(), &at(17, "e1")),
                (&"user:alice".to_owned(), &at(3, "e2"))
            ]
        );
    }

    #[test]
    fn the_length_bound_counts_what_was_sent_at_and_one_past_it() {
        let mut cursor = Cursor::new();
        cursor.set("room:orders".into(), at(17, "e1"));
        let text = cursor.encode();
        // Spaces around a cursor are forgiven, but count toward its length.
        let at_bound = text.clone() + &" ".repeat(MAX_CURSOR_LEN - text.len());
        assert_eq!(at_bound.len(), MAX_CURSOR_LEN);
        assert_eq!(Cursor::decode(&at_bound), Ok(cursor));
        let past = format!("{at_bound} ");
        assert!(Cursor::decode(&past).is_err(), "one past the bound");
    }

    #[test]
    fn anything_else_is_a_bad_request() {
        for text in ["", "!!", "e30x", &URL_SAFE_NO_PAD.encode(b"[1,2]")] {
            assert!(Cursor::decode(text).is_err(), "{text:?}");
        }
        let empty_epoch = URL_SAFE_NO_PAD.encode(br#"{"room:a":[1,""]}"#);
        assert!(Cursor::decode(&empty_epoch).is_err());
        assert!(Cursor::decode(&"A".repeat(MAX_CURSOR_LEN + 1)).is_err());
        let mut full = Cursor::new();
        for i in 0..MAX_CURSOR_CHANNELS {
            full.set(format!("room:r{i}"), at(1, "e"));
        }
        assert!(Cursor::decode(&full.encode()).is_ok(), "at the bound");
        full.set("room:one-more".into(), at(1, "e"));
        assert!(Cursor::decode(&full.encode()).is_err(), "one past it");
        assert_eq!(Cursor::decode(&Cursor::new().encode()), Ok(Cursor::new()));
    }

    /// Property tests: any text a client sends back is a cursor or a `bad_request`, never a
    /// panic; any cursor Herald writes reads back as it was.
    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Cases per property: each decodes a few kilobytes at most.
        const CASES: u32 = 500;

        fn position() -> impl Strategy<Value = Position> {
            (any::<u64>(), "\\PC{1,64}").prop_filter_map(
                "an epoch within bounds",
                |(offset, epoch)| {
                    (epoch.len() <= MAX_EPOCH_LEN).then_some(Position { offset, epoch })
                },
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(CASES))]

            #[test]
            fn any_text_decodes_or_is_a_bad_request(text in "\\PC{0,400}") {
                if let Err(e) = Cursor::decode(&text) {
                    prop_assert_eq!(e.code, crate::protocol::ErrorCode::BadRequest);
                }
            }

            #[test]
            fn any_base64_of_any_json_decodes_or_is_a_bad_request(json in "[\\[\\]{}:,\"0-9a-z -]{0,200}") {
                let text = URL_SAFE_NO_PAD.encode(json.as_bytes());
                if let Ok(cursor) = Cursor::decode(&text) {
                    prop_assert!(cursor.entries().count() <= MAX_CURSOR_CHANNELS);
                }
            }

            #[test]
            fn any_cursor_reads_back_as_it_was(
                entries in proptest::collection::btree_map("\\PC{0,40}", position(), 0..20),
            ) {
                let mut cursor = Cursor::new();
                for (key, at) in entries {
                    cursor.set(key, at);
                }
                prop_assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
            }
        }
    }
}
