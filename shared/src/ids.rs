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
/// Shared text (`Arc<str>`): fan-out copies ids by the thousand, and a clone is then a
/// reference count, not an allocation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(Arc<str>);

impl Serialize for ConnectionId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ConnectionId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

impl ConnectionId {
    /// Wraps an id received from API Gateway, a client or a store.
    pub fn new(id: impl Into<String>) -> Self {
        Self(Arc::from(id.into()))
    }

    /// A fresh random id in API Gateway's format.
    pub fn generate() -> Self {
        // uuid v4 draws from the operating system's CSPRNG; 11 of its bytes are enough.
        let random = uuid::Uuid::new_v4();
        Self::new(base64::engine::general_purpose::URL_SAFE.encode(&random.as_bytes()[..11]))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ConnectionId {
    fn from(id: &str) -> Self {
        Self::new(id)
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
    fn notification_ids_sort_by_creation_time() {
        let first = notification_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = notification_id();
        assert_eq!(first.len(), 32);
        assert!(first < second, "{first} should sort before {second}");
    }
}
