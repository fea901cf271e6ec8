//! MQTT, for devices: every room and user notification is also published, QoS 1, on
//! `PREFIX/rooms/ROOM` and `PREFIX/users/USER` with exactly the JSON a WebSocket client
//! receives; devices may publish to `PREFIX/publish/ROOM` (a JSON body, the notification's
//! `data`), accepted for the rooms the operator allows and nothing else.
//!
//! This file holds what every host shares: the settings ([`MqttSettings`], read from
//! `HERALD_MQTT_URL`, `HERALD_MQTT_PREFIX`, `HERALD_MQTT_PUBLISH_ROOMS`), the topic names
//! ([`Topics`]), the capability the publish handler calls ([`TopicPublisher`]) and what it
//! answers ([`MqttOutcome`]). `broker.rs` (feature `mqtt`, `herald-local`) is the client of
//! a broker; a publish never waits for it.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::RoomPattern;
use crate::protocol::{RoomName, Target};

#[cfg(feature = "mqtt")]
mod broker;
mod iot;

pub use iot::{IOT_TIMEOUT, IotPublisher, PENDING_COPIES};

#[cfg(feature = "mqtt")]
pub use broker::{CONNECT_GRACE, INBOUND_QUEUE, MqttClient, MqttCounts, QUEUE_BYTES};

/// The topic prefix when `HERALD_MQTT_PREFIX` is not set.
pub const DEFAULT_PREFIX: &str = "herald";
/// The broker's port when an `mqtt://` URL names none.
pub const DEFAULT_PORT: u16 = 1883;
/// The broker's port when an `mqtts://` URL names none.
pub const DEFAULT_TLS_PORT: u16 = 8883;
/// The group of the shared subscription every instance takes to `PREFIX/publish/+`, so a
/// device's message is handled by one instance, not by each.
pub const SHARE_GROUP: &str = "herald";

/// What became of a notification's copy for MQTT, as the publish answer says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttOutcome {
    /// Waiting in the bounded queue to the broker (QoS 1 from there).
    Queued,
    /// Not sent: the broker is unreachable or the queue is full (logged and counted).
    Failed,
}

/// Where room and user notifications are published on topics: a broker's client in
/// `herald-local`, the IoT Data Plane on AWS. It never blocks: it queues or refuses at once.
pub trait TopicPublisher: Send + Sync {
    /// Publishes `payload`, the notification as WebSocket clients receive it, on the
    /// target's topic; `None` for targets without one (named connections, broadcasts).
    fn publish(&self, target: &Target, payload: &Bytes) -> Option<MqttOutcome>;

    /// Sends what was queued where a host must before it answers (a Lambda function is
    /// frozen once it has); at once where a task of the host's own sends it.
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// A topic publisher shared by the handlers.
pub type SharedTopicPublisher = Arc<dyn TopicPublisher>;

/// A device's publish, accepted: a room it may publish to and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePublish {
    /// The room.
    pub room: RoomName,
    /// The body, the notification's `data`.
    pub data: Value,
}

/// The broker, the topic prefix and the rooms devices may publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSettings {
    /// `HERALD_MQTT_URL`.
    pub broker: BrokerAddress,
    /// `HERALD_MQTT_PREFIX`.
    pub prefix: String,
    /// `HERALD_MQTT_PUBLISH_ROOMS`: none by default, so no device publish is accepted.
    pub publish_rooms: Vec<RoomPattern>,
}

impl MqttSettings {
    /// The settings from the three variables' values; `url` is required.
    pub fn parse(
        url: &str,
        prefix: Option<&str>,
        publish_rooms: Option<&str>,
    ) -> Result<Self, (&'static str, String)> {
        let broker = BrokerAddress::parse(url).map_err(|e| ("HERALD_MQTT_URL", e))?;
        let rules = DeviceRules::parse(prefix, publish_rooms)?;
        Ok(Self {
            broker,
            prefix: rules.topics.prefix,
            publish_rooms: rules.publish_rooms,
        })
    }

    /// Whether a device may publish to `room`.
    pub fn accepts(&self, room: &RoomName) -> bool {
        self.publish_rooms.iter().any(|p| p.matches(room))
    }

    /// The topics under the prefix.
    pub fn topics(&self) -> Topics {
        Topics {
            prefix: self.prefix.clone(),
        }
    }

    /// What devices may publish.
    pub fn device_rules(&self) -> DeviceRules {
        DeviceRules {
            topics: self.topics(),
            publish_rooms: self.publish_rooms.clone(),
        }
    }
}

/// MQTT on AWS: copies published through the IoT Data Plane (`HERALD_MQTT_URL=iot` for the
/// region's endpoint, or the account's data endpoint as an `https://` URL), and device
/// publishes brought to the `publish` function by an IoT rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IotSettings {
    /// The data endpoint; `None` for the SDK's default in the function's region.
    pub endpoint: Option<String>,
    /// The topics and the rooms devices may publish to.
    pub rules: DeviceRules,
}

/// The value of `HERALD_MQTT_URL` that names the IoT Data Plane at the region's endpoint.
pub const IOT: &str = "iot";

impl IotSettings {
    /// The settings, when `url` names the IoT Data Plane (`iot`, or an `https://` or, for a
    /// local stand-in, `http://` endpoint); `None` when it names a broker.
    pub fn parse(
        url: &str,
        prefix: Option<&str>,
        publish_rooms: Option<&str>,
    ) -> Option<Result<Self, (&'static str, String)>> {
        let url = url.trim();
        let endpoint = if url == IOT {
            None
        } else if url.starts_with("https://") || url.starts_with("http://") {
            Some(url.trim_end_matches('/').to_owned())
        } else {
            return None;
        };
        Some(DeviceRules::parse(prefix, publish_rooms).map(|rules| Self { endpoint, rules }))
    }
}

/// What devices publish on and may publish to: the topics under the prefix and the rooms
/// allowed (none by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRules {
    /// The topics.
    pub topics: Topics,
    /// `HERALD_MQTT_PUBLISH_ROOMS`.
    pub publish_rooms: Vec<RoomPattern>,
}

impl DeviceRules {
    /// The rules from `HERALD_MQTT_PREFIX` and `HERALD_MQTT_PUBLISH_ROOMS`.
    pub fn parse(
        prefix: Option<&str>,
        publish_rooms: Option<&str>,
    ) -> Result<Self, (&'static str, String)> {
        let prefix = prefix.unwrap_or(DEFAULT_PREFIX).trim().to_owned();
        check_prefix(&prefix).map_err(|e| ("HERALD_MQTT_PREFIX", e))?;
        let publish_rooms = publish_rooms
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                RoomPattern::parse(p).map_err(|_| {
                    (
                        "HERALD_MQTT_PUBLISH_ROOMS",
                        format!(
                            "{p:?} is not a room pattern (a room name, optionally ending in *)"
                        ),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            topics: Topics::new(prefix),
            publish_rooms,
        })
    }

    /// A device's publish on `topic` with `payload`, when it may be taken: a
    /// `PREFIX/publish/ROOM` topic, a room name, an allowed room, a JSON body. The error
    /// says which it is not.
    pub fn check(&self, topic: &str, payload: &[u8]) -> Result<DevicePublish, &'static str> {
        let room = self
            .topics
            .device_room(topic)
            .ok_or("not a PREFIX/publish/ROOM topic")?;
        let room = RoomName::parse(room).map_err(|_| "not a room name")?;
        if !self.publish_rooms.iter().any(|p| p.matches(&room)) {
            return Err("room not in HERALD_MQTT_PUBLISH_ROOMS");
        }
        let data = serde_json::from_slice(payload).map_err(|_| "the body is not JSON")?;
        Ok(DevicePublish { room, data })
    }
}

/// A prefix is one or more topic levels without wildcards, not a `$` system topic.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.starts_with('$') || prefix.ends_with('/') {
        return Err(format!(
            "{prefix:?} is not a topic prefix: give one or more levels (e.g. herald or \
             acme/herald), not starting with $ or ending with /"
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| matches!(c, '+' | '#') || c.is_control())
    {
        return Err(format!("the topic prefix may not contain {c:?}"));
    }
    Ok(())
}

/// Where the broker is: `mqtt://[user[:password]@]host[:port]` or `mqtts://…` (TLS, the
/// system's roots).
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// The host name or address.
    pub host: String,
    /// The port.
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
    /// The user name and password from the URL, percent-decoded.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for BrokerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password: settings are logged.
        write!(f, "{self}")
    }
}

impl std::fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://")?;
        if let Some((user, _)) = &self.credentials {
            write!(f, "{user}:***@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl BrokerAddress {
    /// Parses a broker URL; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else {
            return Err(format!(
                "{url:?} is not an mqtt:// or mqtts:// URL (e.g. mqtt://127.0.0.1:1883)"
            ));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(format!(
                "{url:?}: a broker URL names a host and port only, not a path or query"
            ));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let credentials = userinfo
            .map(|info| {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                Ok::<_, String>((percent_decode(user)?, percent_decode(password)?))
            })
            .transpose()?;
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: an IPv6 address needs its closing ]"))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?} names no host"));
        }
        let port = match port {
            None => {
                if tls {
                    DEFAULT_TLS_PORT
                } else {
                    DEFAULT_PORT
                }
            }
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{url:?}: {port:?} is not a port"))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
            credentials,
        })
    }
}

/// Decodes `%XX` escapes (a password may hold `@` or `:`).
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "a broken %-escape in the URL's user or password".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL's user or password is not UTF-8".to_owned())
}

/// The topic names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// The topics under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// Where a notification to `target` is published: `PREFIX/rooms/ROOM` or
    /// `PREFIX/users/USER` (a user id's `/`, `+`, `#` and `%` written `%2F`, `%2B`, `%23`,
    /// `%25`, so one user is one topic level); none for other targets.
    pub fn of(&self, target: &Target) -> Option<String> {
        match target {
            Target::Room(room) => Some(format!("{}/rooms/{}", self.prefix, room.as_str())),
            Target::User(user) => Some(format!("{}/users/{}", self.prefix, escape_level(user))),
            Target::Connections(_) | Target::Broadcast => None,
        }
    }

    /// The filter devices' publishes arrive on, shared by every instance.
    pub fn device_filter(&self) -> String {
        format!("$share/{SHARE_GROUP}/{}/publish/+", self.prefix)
    }

    /// The room a device published to, from the topic `PREFIX/publish/ROOM`.
    pub fn device_room<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("/publish/")
            .filter(|room| !room.contains('/'))
    }
}

/// A user id as one topic level.
fn escape_level(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '+' => out.push_str("%2B"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_name_scheme_host_port_and_credentials() {
        let plain = BrokerAddress::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!(
            plain,
            BrokerAddress {
                host: "127.0.0.1".into(),
                port: 1884,
                tls: false,
                credentials: None
            }
        );
        let defaults = BrokerAddress::parse("mqtts://broker.example.com/").unwrap();
        assert_eq!((defaults.port, defaults.tls), (DEFAULT_TLS_PORT, true));
        assert_eq!(BrokerAddress::parse("mqtt://h").unwrap().port, DEFAULT_PORT);
        let keyed = BrokerAddress::parse("mqtt://dev%40acme:p%3Ass@[::1]:1883").unwrap();
        assert_eq!(keyed.host, "::1");
        assert_eq!(keyed.credentials, Some(("dev@acme".into(), "p:ss".into())));
        assert_eq!(keyed.to_string(), "mqtt://dev@acme:***@[::1]:1883");
        assert!(!format!("{keyed:?}").contains("p:ss"), "never the password");
        for bad in [
            "http://h:1883",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://h:x",
            "mqtt://h:1883/path",
            "mqtt://h?x=1",
            "mqtt://u:%zz@h",
            "mqtt://[::1:1883",
        ] {
            assert!(BrokerAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topics_put_rooms_and_users_under_the_prefix() {
        let topics = Topics::new("acme/herald");
        let room = Target::Room(RoomName::parse("orders:1").unwrap());
        assert_eq!(
            topics.of(&room).as_deref(),
            Some("acme/herald/rooms/orders:1")
        );
        let user = Target::User("a/b+c#d%e".into());
        assert_eq!(
            topics.of(&user).as_deref(),
            Some("acme/herald/users/a%2Fb%2Bc%23d%25e")
        );
        assert_eq!(topics.of(&Target::Broadcast), None);
        assert_eq!(topics.of(&Target::Connections(vec!["c".into()])), None);
        assert_eq!(
            topics.device_filter(),
            "$share/herald/acme/herald/publish/+"
        );
        assert_eq!(
            topics.device_room("acme/herald/publish/orders"),
            Some("orders")
        );
        for other in [
            "acme/herald/rooms/orders",
            "acme/herald/publish/a/b",
            "acme/heraldx/publish/a",
            "other/publish/a",
        ] {
            assert_eq!(topics.device_room(other), None, "{other}");
        }
    }

    #[test]
    fn settings_check_the_prefix_and_the_rooms_devices_may_publish_to() {
        let none = MqttSettings::parse("mqtt://h", None, None).unwrap();
        assert_eq!(none.prefix, DEFAULT_PREFIX);
        let room = |name: &str| RoomName::parse(name).unwrap();
        assert!(!none.accepts(&room("orders")), "nothing by default");
        let some = MqttSettings::parse("mqtt://h", Some("x/y"), Some("devices:*, alerts")).unwrap();
        assert!(some.accepts(&room("devices:42")));
        assert!(some.accepts(&room("alerts")));
        assert!(!some.accepts(&room("alerts2")));
        for prefix in ["", "$SYS", "a/", "a/+", "a/#"] {
            let err = MqttSettings::parse("mqtt://h", Some(prefix), None).unwrap_err();
            assert_eq!(err.0, "HERALD_MQTT_PREFIX", "{prefix:?}");
        }
        let err = MqttSettings::parse("mqtt://h", None, Some("ok, bad room")).unwrap_err();
        assert_eq!(err.0, "HERALD_MQTT_PUBLISH_ROOMS");
        let err = MqttSettings::parse("tcp://h", None, None).unwrap_err();
        assert_eq!(err.0, "HERALD_MQTT_URL");
    }

    #[test]
    fn the_outcome_is_written_as_the_answer_says_it() {
        assert_eq!(serde_json::to_value(MqttOutcome::Queued).unwrap(), "queued");
        assert_eq!(serde_json::to_value(MqttOutcome::Failed).unwrap(), "failed");
    }
}
