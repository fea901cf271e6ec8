//! Identifiers: connection ids shaped like API Gateway's, time-ordered notification ids, and
//! the clock every record is stamped with.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};

/// An API Gateway connection id: opaque to Herald, compared and stored as given.
///
/// API Gateway's ids are 16 characters of base64 (11 random bytes, one `=`), for example
/// `L0SM9cOFvHcCIhw=`; [`ConnectionId::generate`] makes ids of that shape so clients
/// written against AWS see what they expect from `herald-local`. It uses the URL-safe
/// alphabet, so an id pasted into an `@connections` URL by hand needs no escaping.
///
/// Ids of that size are held inline, not behind a pointer: fan-out copies, hashes and
/// compares ids by the thousand, and an inline id is copied without an allocation or a
/// reference count and compared without a cache miss. Longer ids (never API Gateway's)
/// are shared text.
#[derive(Clone)]
pub struct ConnectionId(Repr);

/// Bytes an id may have and still be held inline (the enum is then 24 bytes).
const INLINE: usize = 22;

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<str>),
}

impl Serialize for ConnectionId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ConnectionId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConnectionId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a connection id")
            }
            fn visit_str<E: serde::de::Error>(self, id: &str) -> Result<ConnectionId, E> {
                Ok(ConnectionId::from(id))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// How the ids of readers on AWS begin (see [`ConnectionId::reader`]).
pub const READER_PREFIX: &str = "reader.";

impl ConnectionId {
    /// Wraps an id received from API Gateway, a client or a store.
    pub fn new(id: impl AsRef<str>) -> Self {
        // Borrowed, not converted to a `String`: an inline id is copied from the text.
        Self::from(id.as_ref())
    }

    /// A fresh random id in API Gateway's format.
    pub fn generate() -> Self {
        // uuid v4 draws from the operating system's CSPRNG; 11 of its bytes are enough.
        let random = uuid::Uuid::new_v4();
        let mut text = [0u8; 16];
        let written = base64::engine::general_purpose::URL_SAFE
            .encode_slice(&random.as_bytes()[..11], &mut text)
            .expect("11 bytes are 16 characters of base64");
        Self::from(std::str::from_utf8(&text[..written]).expect("base64 is ASCII"))
    }

    /// A fresh id for a reader on AWS (`stream`, `poll`): a member with no socket, which
    /// fan-out knows by [`READER_PREFIX`] and skips.
    pub fn reader() -> Self {
        Self::new(format!("{READER_PREFIX}{}", Self::generate().as_str()))
    }

    /// Whether this is a reader's id from [`ConnectionId::reader`]: API Gateway's ids are
    /// base64, which has no `.`.
    pub fn is_reader(&self) -> bool {
        self.as_str().starts_with(READER_PREFIX)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)])
                .expect("inline ids are copied from a str, whole"),
            Repr::Shared(text) => text,
        }
    }

    /// The id's bytes, without the UTF-8 check of [`as_str`](Self::as_str): comparing and
    /// hashing run once per recipient of a publish.
    fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(text) => text.as_bytes(),
        }
    }
}

impl From<&str> for ConnectionId {
    fn from(id: &str) -> Self {
        match u8::try_from(id.len()) {
            Ok(len) if id.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                Self(Repr::Inline { len, bytes })
            }
            _ => Self(Repr::Shared(Arc::from(id))),
        }
    }
}

// Equality, order and hash are the text's, whichever way it is held.
impl PartialEq for ConnectionId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ConnectionId {}

impl PartialOrd for ConnectionId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ConnectionId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // UTF-8 orders bytewise as text does.
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for ConnectionId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes: the bytes, then a byte no UTF-8 text holds.
        state.write(self.as_bytes());
        state.write_u8(0xff);
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A new notification id: a UUIDv7 in its 32-character simple form. Ids sort by creation
/// time, which is what a client's `since` needs to say "everything after this one".
pub fn notification_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Milliseconds since the Unix epoch, the unit API Gateway uses for `connectedAt`.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// ISO 8601 (RFC 3339) with milliseconds in UTC, as the Management API's `GET` answers times
/// and webhooks stamp their events.
pub fn iso8601(ms: i64) -> String {
    let (y, m, d, hh, mm, ss) = civil(ms);
    format!(
        "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:03}Z",
        ms.rem_euclid(1000)
    )
}

/// Splits ms since the epoch into UTC year, month, day, hour, minute, second (the
/// days-to-civil algorithm of Howard Hinnant's date library, proleptic Gregorian).
pub fn civil(ms: i64) -> (i64, i64, i64, i64, i64, i64) {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_connection_ids_look_like_api_gateway_ids() {
        let id = ConnectionId::generate();
        assert_eq!(id.as_str().len(), 16);
        assert!(id.as_str().ends_with('='));
        assert!(!id.as_str()[..15].contains('='));
        assert_ne!(id, ConnectionId::generate());
    }

    #[test]
    fn ids_of_any_length_compare_hash_and_serialize_as_their_text() {
        use std::collections::HashSet;
        let short = ConnectionId::new("L0SM9cOFvHcCIhw=");
        let long = ConnectionId::new("a".repeat(40));
        let edge = ConnectionId::new("b".repeat(INLINE));
        for id in [&short, &long, &edge] {
            assert_eq!(id, &ConnectionId::from(id.as_str()));
            assert_eq!(id.to_string(), id.as_str());
            let json = serde_json::to_string(id).unwrap();
            assert_eq!(json, format!("\"{}\"", id.as_str()));
            assert_eq!(&serde_json::from_str::<ConnectionId>(&json).unwrap(), id);
        }
        assert_eq!(long.as_str().len(), 40);
        assert!(short < long && long < edge, "ordered as text");
        let set: HashSet<_> = [short.clone(), long.clone(), short].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert_eq!(format!("{long:?}"), format!("{:?}", "a".repeat(40)));
    }

    #[test]
    fn notification_ids_sort_by_creation_time() {
        let first = notification_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = notification_id();
        assert_eq!(first.len(), 32);
        assert!(first < second, "{first} should sort before {second}");
    }
}
