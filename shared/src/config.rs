//! Configuration from the environment, read once at start-up by every host.
//!
//! Reading goes through a lookup function rather than `std::env` directly, so tests can
//! give any environment without mutating the process's own (which is `unsafe` in Rust 2024).

use std::str::FromStr;
use std::time::Duration;

use crate::auth::{AuthConfig, JwtKey};
use crate::fanout::FanoutConfig;
use crate::limits::{DEFAULT_PRESENCE_EVENTS_PER_SECOND, Limits, ROOM_PUBLISH_BURST_FACTOR, Rate};
use crate::shard::{DEFAULT_POST_BUDGET_PER_SECOND, DEFAULT_SHARD_THRESHOLD, ShardSettings};
use crate::sinks::mqtt::{IotSettings, MqttSettings};
use crate::sinks::webhook::{
    EventKind, Secret, WebhookQueueSettings, WebhookSecretByArn, WebhookSettings,
};
use crate::store::history::{DEFAULT_HISTORY_AGE, DEFAULT_HISTORY_SIZE};
use crate::store::{
    DynamoSettings, DynamoTimeouts, RedisNodes, RedisSettings, Retention, StoreSettings,
};

/// A configuration problem, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A variable has a value that cannot be used.
    #[error("{var}: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A variable this host needs is not set.
    #[error("{0} is not set")]
    Missing(&'static str),
}

/// Where connection state lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// In this process only (`herald-local`'s default, and tests).
    Memory,
    /// A Redis server, shared by several hosts.
    Redis,
    /// A DynamoDB table (the default choice on AWS).
    DynamoDb,
}

impl FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            "dynamodb" => Ok(Self::DynamoDb),
            other => Err(format!("{other:?} is not one of memory, redis, dynamodb")),
        }
    }
}

/// Everything a host reads from its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `HERALD_STORE`.
    pub store: StoreKind,
    /// `HERALD_REDIS_URL`.
    pub redis_url: Option<String>,
    /// `HERALD_REDIS_CLUSTER`: a Redis Cluster's seed nodes, comma-separated; when set, the
    /// Redis store runs in cluster mode and `HERALD_REDIS_URL` is not used.
    pub redis_cluster: Option<String>,
    /// `HERALD_TABLE`.
    pub table: Option<String>,
    /// `AWS_ENDPOINT_URL_DYNAMODB`: DynamoDB Local, or a test server.
    pub dynamodb_endpoint: Option<String>,
    /// `HERALD_ROOM_SHARDS`: partitions each room's members are spread over in DynamoDB.
    pub room_shards: u32,
    /// `HERALD_DYNAMODB_ATTEMPT_TIMEOUT_MS`, `HERALD_DYNAMODB_TIMEOUT_MS`: how long one
    /// attempt of a DynamoDB call, and a call with its retries, may take.
    pub dynamodb_timeouts: DynamoTimeouts,
    /// `HERALD_WS_ENDPOINT`: the management API endpoint to post to.
    pub ws_endpoint: Option<String>,
    /// `HERALD_SHARD_THRESHOLD` and `HERALD_POST_BUDGET_PER_SECOND`: when a publish is
    /// delivered in page jobs, and the deployment's `@connections` budget.
    pub shards: ShardSettings,
    /// `HERALD_DELIVERY_QUEUE_URL`: the SQS queue page jobs go to (on AWS; without it the
    /// Lambda functions deliver every publish themselves).
    pub delivery_queue_url: Option<String>,
    /// The JWT configuration, when a key is set.
    pub auth: Option<AuthConfig>,
    /// `HERALD_JWT_SECRET_ARN`: a Secrets Manager secret holding the HS256 secret, read at
    /// cold start (on AWS, so no secret sits in plain text in the function's settings).
    pub jwt_secret_arn: Option<String>,
    /// `HERALD_JWT_ISSUER`.
    pub jwt_issuer: Option<String>,
    /// `HERALD_JWT_AUDIENCE`.
    pub jwt_audience: Option<String>,
    /// Limits.
    pub limits: Limits,
    /// Fan-out pacing.
    pub fanout: FanoutConfig,
    /// `HERALD_WEBHOOK_URL`, `HERALD_WEBHOOK_SECRET`, `HERALD_WEBHOOK_EVENTS`: where
    /// webhooks go, when set.
    pub webhook: Option<WebhookSettings>,
    /// `HERALD_WEBHOOK_URL` with `HERALD_WEBHOOK_SECRET_ARN` (the `webhook` function on
    /// AWS): where webhooks go, their secret read from Secrets Manager at cold start.
    pub webhook_by_arn: Option<WebhookSecretByArn>,
    /// `HERALD_WEBHOOK_QUEUE_URL` (with `HERALD_WEBHOOK_EVENTS`): on AWS, the SQS queue the
    /// functions put webhook events on, for the `webhook` function to deliver.
    pub webhook_queue: Option<WebhookQueueSettings>,
    /// `HERALD_MQTT_URL`, `HERALD_MQTT_PREFIX`, `HERALD_MQTT_PUBLISH_ROOMS`: the broker
    /// notifications are mirrored to and devices publish through, when set.
    pub mqtt: Option<MqttSettings>,
    /// `HERALD_MQTT_URL=iot` (or an `https://` IoT data endpoint), with the prefix and the
    /// rooms devices may publish to: MQTT through AWS IoT Core, for the Lambda functions.
    pub mqtt_iot: Option<IotSettings>,
    /// `AWS_LAMBDA_FUNCTION_NAME`, set by Lambda: the dimension of the functions' metrics.
    pub function_name: Option<String>,
}

impl Config {
    /// The JWT configuration for an HS256 `secret` fetched from `jwt_secret_arn`.
    pub fn auth_with_secret(&self, secret: Vec<u8>) -> AuthConfig {
        AuthConfig {
            key: JwtKey::Secret(secret),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
        }
    }

    /// The store's settings; `create_table` as the host wants it (`herald-local` creates a
    /// missing DynamoDB table, the Lambda functions leave that to the template).
    pub fn store_settings(&self, create_table: bool) -> Result<StoreSettings, ConfigError> {
        Ok(match self.store {
            StoreKind::Memory => StoreSettings::Memory,
            StoreKind::Redis => {
                StoreSettings::Redis(RedisSettings::on(match &self.redis_cluster {
                    Some(list) => match RedisNodes::cluster_from_list(list) {
                        RedisNodes::Cluster(seeds) if seeds.is_empty() => {
                            return Err(ConfigError::Invalid {
                                var: "HERALD_REDIS_CLUSTER",
                                reason: "name at least one node, e.g. redis://127.0.0.1:7000"
                                    .into(),
                            });
                        }
                        nodes => nodes,
                    },
                    None => RedisNodes::Single(
                        self.redis_url
                            .clone()
                            .ok_or(ConfigError::Missing("HERALD_REDIS_URL"))?,
                    ),
                }))
            }
            StoreKind::DynamoDb => StoreSettings::Dynamo(DynamoSettings {
                table: self
                    .table
                    .clone()
                    .ok_or(ConfigError::Missing("HERALD_TABLE"))?,
                endpoint: self.dynamodb_endpoint.clone(),
                room_shards: self.room_shards,
                create_table,
                timeouts: self.dynamodb_timeouts,
                count_rooms: self.wants_room_events(),
            }),
        })
    }

    /// Whether this host reports rooms' first and last members (`room.occupied`,
    /// `room.vacated`), so a DynamoDB store must count rooms' members (one more write unit
    /// per join and leave; presence then reads the count instead of the room's items).
    pub fn wants_room_events(&self) -> bool {
        let wanted = |events: &std::collections::BTreeSet<EventKind>| {
            events.contains(&EventKind::RoomOccupied) || events.contains(&EventKind::RoomVacated)
        };
        self.webhook.as_ref().is_some_and(|w| wanted(&w.events))
            || self
                .webhook_queue
                .as_ref()
                .is_some_and(|q| wanted(&q.events))
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup`; empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let store = match get("HERALD_STORE") {
            Some(s) => s.parse().map_err(|reason| ConfigError::Invalid {
                var: "HERALD_STORE",
                reason,
            })?,
            // Naming a cluster says where the store is.
            None if get("HERALD_REDIS_CLUSTER").is_some() => StoreKind::Redis,
            None => StoreKind::Memory,
        };
        let auth = match (get("HERALD_JWT_SECRET"), get("HERALD_JWT_PUBLIC_KEY")) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    var: "HERALD_JWT_PUBLIC_KEY",
                    reason: "set HERALD_JWT_SECRET or HERALD_JWT_PUBLIC_KEY, not both".into(),
                });
            }
            (Some(secret), None) => Some(JwtKey::Secret(secret.into_bytes())),
            (None, Some(pem)) => Some(JwtKey::PublicKeyPem(pem)),
            (None, None) => None,
        }
        .map(|key| AuthConfig {
            key,
            issuer: get("HERALD_JWT_ISSUER"),
            audience: get("HERALD_JWT_AUDIENCE"),
        });
        if auth.is_some() && get("HERALD_JWT_SECRET_ARN").is_some() {
            return Err(ConfigError::Invalid {
                var: "HERALD_JWT_SECRET_ARN",
                reason: "set one source for the JWT key, not two".into(),
            });
        }

        let defaults = Limits::default();
        let max_per_user = number(&get, "HERALD_MAX_CONNECTIONS_PER_USER")?
            .map_or(defaults.max_connections_per_user, |n: usize| {
                (n > 0).then_some(n)
            });
        let secs = |var: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            Ok(number(&get, var)?.map_or(default, Duration::from_secs))
        };
        let max_rooms = number(&get, "HERALD_MAX_ROOMS_PER_CONNECTION")?
            .map_or(defaults.max_rooms_per_connection, |n: usize| {
                (n > 0).then_some(n)
            });
        let publish_burst: Option<u32> = number(&get, "HERALD_SOCKET_PUBLISH_BURST")?;
        let socket_publish = match number(&get, "HERALD_SOCKET_PUBLISH_PER_SECOND")? {
            Some(0) => None,
            rate => defaults.socket_publish.map(|default| Rate {
                per_second: rate.unwrap_or(default.per_second),
                burst: publish_burst.filter(|b| *b > 0).unwrap_or(default.burst),
            }),
        };
        let room_burst: Option<u32> = number(&get, "HERALD_ROOM_PUBLISH_BURST")?;
        let room_publish = number(&get, "HERALD_ROOM_PUBLISH_PER_SECOND")?
            .filter(|rate: &u32| *rate > 0)
            .map(|per_second| Rate {
                per_second,
                burst: room_burst
                    .filter(|b| *b > 0)
                    .unwrap_or(per_second.saturating_mul(ROOM_PUBLISH_BURST_FACTOR)),
            });
        let presence_events = presence_events(&get)?;
        let limits = Limits {
            max_connections_per_user: max_per_user,
            max_rooms_per_connection: max_rooms,
            socket_publish,
            room_publish,
            presence_events,
            connection_lifetime: secs(
                "HERALD_CONNECTION_LIFETIME_SECS",
                defaults.connection_lifetime,
            )?,
            idempotency_window: secs(
                "HERALD_IDEMPOTENCY_WINDOW_SECS",
                defaults.idempotency_window,
            )?,
            history: Retention::new(
                number(&get, "HERALD_HISTORY_SIZE")?.unwrap_or(DEFAULT_HISTORY_SIZE),
                secs("HERALD_HISTORY_TTL_SECS", DEFAULT_HISTORY_AGE)?,
            ),
        };

        let fanout_defaults = FanoutConfig::default();
        let fanout = FanoutConfig {
            concurrency: positive(&get, "HERALD_FANOUT_CONCURRENCY")?
                .unwrap_or(fanout_defaults.concurrency),
            max_retries: number(&get, "HERALD_FANOUT_MAX_RETRIES")?
                .unwrap_or(fanout_defaults.max_retries),
            ..fanout_defaults
        };

        // Read (and checked) whether or not webhooks are on, so a typo never waits.
        let events = webhook_events(&get)?;
        let (webhook, webhook_by_arn) = webhook(&get, &events)?;
        let webhook_queue =
            get("HERALD_WEBHOOK_QUEUE_URL").map(|url| WebhookQueueSettings { url, events });
        let (mqtt, mqtt_iot) = mqtt(&get)?;
        Ok(Self {
            store,
            redis_url: get("HERALD_REDIS_URL"),
            redis_cluster: get("HERALD_REDIS_CLUSTER"),
            table: get("HERALD_TABLE"),
            dynamodb_endpoint: get("AWS_ENDPOINT_URL_DYNAMODB"),
            room_shards: positive(&get, "HERALD_ROOM_SHARDS")?
                .map_or(Ok(1), u32::try_from)
                .map_err(|_| ConfigError::Invalid {
                    var: "HERALD_ROOM_SHARDS",
                    reason: "too large".into(),
                })?,
            dynamodb_timeouts: dynamodb_timeouts(&get)?,
            ws_endpoint: get("HERALD_WS_ENDPOINT"),
            shards: ShardSettings {
                threshold: number(&get, "HERALD_SHARD_THRESHOLD")?
                    .unwrap_or(DEFAULT_SHARD_THRESHOLD),
                post_budget_per_second: number(&get, "HERALD_POST_BUDGET_PER_SECOND")?
                    .unwrap_or(DEFAULT_POST_BUDGET_PER_SECOND),
            },
            delivery_queue_url: get("HERALD_DELIVERY_QUEUE_URL"),
            auth,
            jwt_secret_arn: get("HERALD_JWT_SECRET_ARN"),
            jwt_issuer: get("HERALD_JWT_ISSUER"),
            jwt_audience: get("HERALD_JWT_AUDIENCE"),
            limits,
            fanout,
            webhook,
            webhook_by_arn,
            webhook_queue,
            mqtt,
            mqtt_iot,
            function_name: get("AWS_LAMBDA_FUNCTION_NAME"),
        })
    }
}

/// The webhook settings: a URL and a secret (or, for the `webhook` function on AWS, a
/// Secrets Manager secret's ARN) together, or neither.
fn webhook(
    get: &impl Fn(&str) -> Option<String>,
    events: &std::collections::BTreeSet<EventKind>,
) -> Result<(Option<WebhookSettings>, Option<WebhookSecretByArn>), ConfigError> {
    let url = get("HERALD_WEBHOOK_URL");
    let (secret, arn) = (
        get("HERALD_WEBHOOK_SECRET"),
        get("HERALD_WEBHOOK_SECRET_ARN"),
    );
    let url = match (url, secret.is_some() || arn.is_some()) {
        (None, false) => return Ok((None, None)),
        (Some(_), false) => {
            return Err(ConfigError::Invalid {
                var: "HERALD_WEBHOOK_URL",
                reason: "set HERALD_WEBHOOK_SECRET (whsec_…) too: it signs every webhook".into(),
            });
        }
        (None, true) => {
            return Err(ConfigError::Invalid {
                var: if secret.is_some() {
                    "HERALD_WEBHOOK_SECRET"
                } else {
                    "HERALD_WEBHOOK_SECRET_ARN"
                },
                reason: "set HERALD_WEBHOOK_URL too: where the webhooks go".into(),
            });
        }
        (Some(url), true) => url,
    };
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    if !scheme_ok || url.parse::<hyper::Uri>().is_err() {
        return Err(ConfigError::Invalid {
            var: "HERALD_WEBHOOK_URL",
            reason: format!("{url:?} is not an http:// or https:// URL"),
        });
    }
    let events = events.clone();
    match (secret, arn) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid {
            var: "HERALD_WEBHOOK_SECRET_ARN",
            reason: "set one source for the webhook secret, not two".into(),
        }),
        (Some(secret), None) => {
            let secret = Secret::parse(&secret).map_err(|e| ConfigError::Invalid {
                var: "HERALD_WEBHOOK_SECRET",
                reason: e.to_string(),
            })?;
            Ok((
                Some(WebhookSettings {
                    url,
                    secret,
                    events,
                }),
                None,
            ))
        }
        (None, arn) => Ok((
            None,
            Some(WebhookSecretByArn {
                url,
                secret_arn: arn.expect("one of the two is set"),
                events,
            }),
        )),
    }
}

/// `HERALD_WEBHOOK_EVENTS`: the kinds sent (default all).
fn webhook_events(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<std::collections::BTreeSet<EventKind>, ConfigError> {
    match get("HERALD_WEBHOOK_EVENTS") {
        None => Ok(EventKind::ALL.into_iter().collect()),
        Some(list) => EventKind::parse_list(&list).map_err(|reason| ConfigError::Invalid {
            var: "HERALD_WEBHOOK_EVENTS",
            reason,
        }),
    }
}

/// The MQTT settings: a broker URL, and with it optionally a prefix and the rooms devices
/// may publish to (either without a URL is an error, not ignored).
fn mqtt(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(Option<MqttSettings>, Option<IotSettings>), ConfigError> {
    let prefix = get("HERALD_MQTT_PREFIX");
    let rooms = get("HERALD_MQTT_PUBLISH_ROOMS");
    let Some(url) = get("HERALD_MQTT_URL") else {
        return match (prefix, rooms) {
            (None, None) => Ok((None, None)),
            (Some(_), _) => Err(ConfigError::Invalid {
                var: "HERALD_MQTT_PREFIX",
                reason: "set HERALD_MQTT_URL too: the broker the topics are on".into(),
            }),
            (None, Some(_)) => Err(ConfigError::Invalid {
                var: "HERALD_MQTT_PUBLISH_ROOMS",
                reason: "set HERALD_MQTT_URL too: the broker devices publish through".into(),
            }),
        };
    };
    let invalid = |(var, reason)| ConfigError::Invalid { var, reason };
    if let Some(iot) = IotSettings::parse(&url, prefix.as_deref(), rooms.as_deref()) {
        return iot.map(|iot| (None, Some(iot))).map_err(invalid);
    }
    MqttSettings::parse(&url, prefix.as_deref(), rooms.as_deref())
        .map(|mqtt| (Some(mqtt), None))
        .map_err(invalid)
}

/// `HERALD_PRESENCE_EVENTS` (`1` or `true` on, `0` or `false` off, the default) at
/// `HERALD_PRESENCE_EVENTS_PER_SECOND` per room (bursts of twice that).
fn presence_events(get: &impl Fn(&str) -> Option<String>) -> Result<Option<Rate>, ConfigError> {
    let on = match get("HERALD_PRESENCE_EVENTS").as_deref().map(str::trim) {
        None | Some("" | "0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(ConfigError::Invalid {
                var: "HERALD_PRESENCE_EVENTS",
                reason: format!(
                    "{other:?}: 1 or true turns join and leave events on, 0 or false off"
                ),
            });
        }
    };
    let per_second = match positive(get, "HERALD_PRESENCE_EVENTS_PER_SECOND")? {
        Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
        None => DEFAULT_PRESENCE_EVENTS_PER_SECOND,
    };
    Ok(on.then_some(Rate {
        per_second,
        burst: per_second.saturating_mul(ROOM_PUBLISH_BURST_FACTOR),
    }))
}

fn number<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    get(var)
        .map(|v| {
            v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
                var,
                reason: format!("{v:?}: {e}"),
            })
        })
        .transpose()
}

/// The DynamoDB store's timeouts: each at least 1 ms, and a call at least as long as one
/// of its attempts.
fn dynamodb_timeouts(get: &impl Fn(&str) -> Option<String>) -> Result<DynamoTimeouts, ConfigError> {
    let millis = |var| -> Result<Option<Duration>, ConfigError> {
        Ok(positive(get, var)?.map(|ms| Duration::from_millis(ms as u64)))
    };
    let defaults = DynamoTimeouts::default();
    let timeouts = DynamoTimeouts {
        attempt: millis("HERALD_DYNAMODB_ATTEMPT_TIMEOUT_MS")?.unwrap_or(defaults.attempt),
        call: millis("HERALD_DYNAMODB_TIMEOUT_MS")?.unwrap_or(defaults.call),
    };
    if timeouts.call < timeouts.attempt {
        return Err(ConfigError::Invalid {
            var: "HERALD_DYNAMODB_TIMEOUT_MS",
            reason: format!(
                "a call ({} ms) must be allowed at least one attempt's time \
                 (HERALD_DYNAMODB_ATTEMPT_TIMEOUT_MS, {} ms)",
                timeouts.call.as_millis(),
                timeouts.attempt.as_millis()
            ),
        });
    }
    Ok(timeouts)
}

fn positive(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<usize>, ConfigError> {
    match number::<usize>(get, var)? {
        Some(0) => Err(ConfigError::Invalid {
            var,
            reason: "must be at least 1".into(),
        }),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn presence_events_are_off_unless_turned_on_and_run_at_their_rate() {
        assert_eq!(config(&[]).unwrap().limits.presence_events, None);
        for off in ["0", "false", ""] {
            let c = config(&[("HERALD_PRESENCE_EVENTS", off)]).unwrap();
            assert_eq!(c.limits.presence_events, None, "{off:?}");
        }
        let on = |value| config(&[("HERALD_PRESENCE_EVENTS", value)]).unwrap();
        let default = Rate {
            per_second: DEFAULT_PRESENCE_EVENTS_PER_SECOND,
            burst: DEFAULT_PRESENCE_EVENTS_PER_SECOND * ROOM_PUBLISH_BURST_FACTOR,
        };
        assert_eq!(on("1").limits.presence_events, Some(default));
        assert_eq!(on("true").limits.presence_events, Some(default));
        let slow = config(&[
            ("HERALD_PRESENCE_EVENTS", "1"),
            ("HERALD_PRESENCE_EVENTS_PER_SECOND", "3"),
        ])
        .unwrap();
        assert_eq!(
            slow.limits.presence_events,
            Some(Rate {
                per_second: 3,
                burst: 6
            })
        );
        for (var, bad) in [
            ("HERALD_PRESENCE_EVENTS", "yes please"),
            ("HERALD_PRESENCE_EVENTS_PER_SECOND", "0"),
        ] {
            let mut vars = vec![("HERALD_PRESENCE_EVENTS", "1")];
            vars.retain(|(v, _)| *v != var);
            vars.push((var, bad));
            let err = config(&vars).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { var: v, .. } if v == var),
                "{err}"
            );
        }
    }

    #[test]
    fn defaults_need_no_variables() {
        let c = config(&[]).unwrap();
        assert_eq!(c.store, StoreKind::Memory);
        assert_eq!(c.auth, None);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.fanout, FanoutConfig::default());
        assert_eq!(c.shards, ShardSettings::default());
        assert_eq!(c.delivery_queue_url, None);
    }

    #[test]
    fn webhooks_take_a_secret_or_its_arn_and_a_queue_for_the_functions() {
        let url = ("HERALD_WEBHOOK_URL", "https://example.com/hooks");
        let arn = (
            "HERALD_WEBHOOK_SECRET_ARN",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:w",
        );
        let c = config(&[url, arn]).unwrap();
        assert_eq!(c.webhook, None);
        let by_arn = c.webhook_by_arn.unwrap();
        assert_eq!(by_arn.secret_arn, arn.1);
        assert_eq!(by_arn.events.len(), EventKind::ALL.len());

        let secret = (
            "HERALD_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        let both = config(&[url, arn, secret]).unwrap_err();
        assert!(
            matches!(
                both,
                ConfigError::Invalid {
                    var: "HERALD_WEBHOOK_SECRET_ARN",
                    ..
                }
            ),
            "{both}"
        );
        let alone = config(&[arn]).unwrap_err();
        assert!(matches!(
            alone,
            ConfigError::Invalid {
                var: "HERALD_WEBHOOK_SECRET_ARN",
                ..
            }
        ));

        let queue = ("HERALD_WEBHOOK_QUEUE_URL", "https://sqs.example/1/webhooks");
        let c = config(&[queue, ("HERALD_WEBHOOK_EVENTS", "connection.opened")]).unwrap();
        let settings = c.webhook_queue.clone().unwrap();
        assert_eq!(settings.url, queue.1);
        assert_eq!(settings.events.len(), 1);
        let StoreSettings::Dynamo(dynamo) = config(&[
            queue,
            ("HERALD_STORE", "dynamodb"),
            ("HERALD_TABLE", "herald"),
        ])
        .unwrap()
        .store_settings(false)
        .unwrap() else {
            panic!("dynamodb")
        };
        assert!(dynamo.count_rooms, "room events are wanted by default");
        let c = config(&[queue, ("HERALD_WEBHOOK_EVENTS", "connection.opened")]).unwrap();
        assert!(!c.wants_room_events());
        let refused = config(&[queue, ("HERALD_WEBHOOK_EVENTS", "room.full")]).unwrap_err();
        assert!(matches!(
            refused,
            ConfigError::Invalid {
                var: "HERALD_WEBHOOK_EVENTS",
                ..
            }
        ));
    }

    #[test]
    fn sharding_is_read_and_zero_turns_each_part_off() {
        let c = config(&[
            ("HERALD_SHARD_THRESHOLD", "10"),
            ("HERALD_POST_BUDGET_PER_SECOND", "250"),
            ("HERALD_DELIVERY_QUEUE_URL", "http://127.0.0.1:9/q"),
        ])
        .unwrap();
        assert_eq!(
            c.shards,
            ShardSettings {
                threshold: 10,
                post_budget_per_second: 250
            }
        );
        assert_eq!(
            c.delivery_queue_url.as_deref(),
            Some("http://127.0.0.1:9/q")
        );
        let off = config(&[
            ("HERALD_SHARD_THRESHOLD", "0"),
            ("HERALD_POST_BUDGET_PER_SECOND", "0"),
        ])
        .unwrap();
        assert_eq!(off.shards.threshold, 0);
        assert_eq!(off.shards.post_budget_per_second, 0);
        for var in ["HERALD_SHARD_THRESHOLD", "HERALD_POST_BUDGET_PER_SECOND"] {
            let err = config(&[(var, "-1")]).unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { var: v, .. } if v == var));
        }
    }

    #[test]
    fn every_variable_is_read() {
        let c = config(&[
            ("HERALD_STORE", "DynamoDB"),
            ("HERALD_TABLE", "herald"),
            ("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:8000"),
            ("HERALD_ROOM_SHARDS", "4"),
            ("HERALD_REDIS_URL", "redis://127.0.0.1:1"),
            ("HERALD_WS_ENDPOINT", "http://127.0.0.1:3001/local"),
            ("HERALD_JWT_SECRET", "s3cret"),
            ("HERALD_JWT_ISSUER", "iss"),
            ("HERALD_JWT_AUDIENCE", "aud"),
            ("HERALD_MAX_CONNECTIONS_PER_USER", "0"),
            ("HERALD_MAX_ROOMS_PER_CONNECTION", "3"),
            ("HERALD_SOCKET_PUBLISH_PER_SECOND", "4"),
            ("HERALD_SOCKET_PUBLISH_BURST", "8"),
            ("HERALD_CONNECTION_LIFETIME_SECS", "60"),
            ("HERALD_IDEMPOTENCY_WINDOW_SECS", "10"),
            ("HERALD_FANOUT_CONCURRENCY", "8"),
            ("HERALD_FANOUT_MAX_RETRIES", "1"),
        ])
        .unwrap();
        assert_eq!(c.store, StoreKind::DynamoDb);
        assert_eq!(c.table.as_deref(), Some("herald"));
        assert_eq!(
            c.dynamodb_endpoint.as_deref(),
            Some("http://127.0.0.1:8000")
        );
        assert_eq!(c.room_shards, 4);
        assert_eq!(c.redis_url.as_deref(), Some("redis://127.0.0.1:1"));
        assert_eq!(
            c.ws_endpoint.as_deref(),
            Some("http://127.0.0.1:3001/local")
        );
        let auth = c.auth.unwrap();
        assert_eq!(auth.key, JwtKey::Secret(b"s3cret".to_vec()));
        assert_eq!(auth.issuer.as_deref(), Some("iss"));
        assert_eq!(auth.audience.as_deref(), Some("aud"));
        assert_eq!(
            c.limits.max_connections_per_user, None,
            "0 turns the limit off"
        );
        assert_eq!(c.limits.max_rooms_per_connection, Some(3));
        assert_eq!(
            c.limits.socket_publish,
            Some(Rate {
                per_second: 4,
                burst: 8
            })
        );
        let off = config(&[("HERALD_SOCKET_PUBLISH_PER_SECOND", "0")]).unwrap();
        assert_eq!(off.limits.socket_publish, None, "0 turns it off");
        assert_eq!(c.limits.room_publish, None, "no room limit unless asked");
        let rooms = config(&[("HERALD_ROOM_PUBLISH_PER_SECOND", "5")]).unwrap();
        assert_eq!(
            rooms.limits.room_publish,
            Some(Rate {
                per_second: 5,
                burst: 10
            })
        );
        let rooms = config(&[
            ("HERALD_ROOM_PUBLISH_PER_SECOND", "5"),
            ("HERALD_ROOM_PUBLISH_BURST", "7"),
        ])
        .unwrap();
        assert_eq!(rooms.limits.room_publish.map(|r| r.burst), Some(7));
        assert_eq!(c.limits.connection_lifetime, Duration::from_secs(60));
        assert_eq!(c.limits.idempotency_window, Duration::from_secs(10));
        assert_eq!(c.limits.history, Some(Retention::default()));
        let kept = config(&[
            ("HERALD_HISTORY_SIZE", "5"),
            ("HERALD_HISTORY_TTL_SECS", "30"),
        ])
        .unwrap();
        assert_eq!(
            kept.limits.history.map(|r| (r.size, r.age)),
            Some((5, Duration::from_secs(30)))
        );
        for off in ["HERALD_HISTORY_SIZE", "HERALD_HISTORY_TTL_SECS"] {
            let off = config(&[(off, "0")]).unwrap();
            assert_eq!(off.limits.history, None, "0 turns history off");
        }
        assert!(config(&[("HERALD_HISTORY_SIZE", "-1")]).is_err());
        assert_eq!(c.fanout.concurrency, 8);
        assert_eq!(c.fanout.max_retries, 1);
    }

    #[test]
    fn a_redis_cluster_wins_over_the_url_and_implies_redis() {
        let nodes = "redis://127.0.0.1:7000, redis://127.0.0.1:7001";
        let expected = Ok(StoreSettings::Redis(RedisSettings::on(
            RedisNodes::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into(),
            ]),
        )));
        let both = config(&[
            ("HERALD_STORE", "redis"),
            ("HERALD_REDIS_URL", "redis://127.0.0.1:6379"),
            ("HERALD_REDIS_CLUSTER", nodes),
        ])
        .unwrap();
        assert_eq!(both.store_settings(true), expected);
        let alone = config(&[("HERALD_REDIS_CLUSTER", nodes)]).unwrap();
        assert_eq!(alone.store, StoreKind::Redis);
        assert_eq!(alone.store_settings(true), expected);
        // An explicit store is not overridden.
        let memory = config(&[("HERALD_STORE", "memory"), ("HERALD_REDIS_CLUSTER", nodes)]);
        assert_eq!(memory.unwrap().store, StoreKind::Memory);
    }

    #[test]
    fn store_settings_name_what_is_missing() {
        assert_eq!(
            config(&[]).unwrap().store_settings(true),
            Ok(StoreSettings::Memory)
        );
        let redis = config(&[("HERALD_STORE", "redis")]).unwrap();
        assert_eq!(
            redis.store_settings(true),
            Err(ConfigError::Missing("HERALD_REDIS_URL"))
        );
        let dynamo = config(&[("HERALD_STORE", "dynamodb")]).unwrap();
        assert_eq!(
            dynamo.store_settings(true),
            Err(ConfigError::Missing("HERALD_TABLE"))
        );
        let blank = config(&[("HERALD_STORE", "redis"), ("HERALD_REDIS_CLUSTER", " , ")]).unwrap();
        assert!(matches!(
            blank.store_settings(true),
            Err(ConfigError::Invalid {
                var: "HERALD_REDIS_CLUSTER",
                ..
            })
        ));
        let dynamo = config(&[
            ("HERALD_STORE", "dynamodb"),
            ("HERALD_TABLE", "t"),
            ("HERALD_ROOM_SHARDS", "3"),
        ])
        .unwrap();
        let Ok(StoreSettings::Dynamo(settings)) = dynamo.store_settings(false) else {
            panic!("a DynamoDB store");
        };
        assert_eq!((settings.table.as_str(), settings.room_shards), ("t", 3));
        assert!(!settings.create_table);
        assert_eq!(settings.timeouts, DynamoTimeouts::default());
    }

    #[test]
    fn dynamodb_timeouts_are_read_and_checked_against_each_other() {
        let set = config(&[
            ("HERALD_DYNAMODB_ATTEMPT_TIMEOUT_MS", "1"),
            ("HERALD_DYNAMODB_TIMEOUT_MS", "1"),
        ])
        .unwrap();
        let one = Duration::from_millis(1);
        assert_eq!(
            set.dynamodb_timeouts,
            DynamoTimeouts {
                attempt: one,
                call: one
            },
            "a call as long as one attempt"
        );
        let err = config(&[
            ("HERALD_DYNAMODB_ATTEMPT_TIMEOUT_MS", "2"),
            ("HERALD_DYNAMODB_TIMEOUT_MS", "1"),
        ])
        .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    var: "HERALD_DYNAMODB_TIMEOUT_MS",
                    ..
                }
            ),
            "{err}"
        );
        // Against the default attempt (3 s), a call of 2 s is too short.
        assert!(config(&[("HERALD_DYNAMODB_TIMEOUT_MS", "2000")]).is_err());
        for var in [
            "HERALD_DYNAMODB_ATTEMPT_TIMEOUT_MS",
            "HERALD_DYNAMODB_TIMEOUT_MS",
        ] {
            let err = config(&[(var, "0")]).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { var: v, .. } if v == var),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("HERALD_STORE", "postgres"),
            ("HERALD_MAX_CONNECTIONS_PER_USER", "-1"),
            ("HERALD_MAX_ROOMS_PER_CONNECTION", "many"),
            ("HERALD_FANOUT_CONCURRENCY", "0"),
            ("HERALD_FANOUT_CONCURRENCY", "many"),
            ("HERALD_IDEMPOTENCY_WINDOW_SECS", "1.5"),
        ] {
            let err = config(&[(var, value)]).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { var: named, .. } if *named == var),
                "{var}={value}: {err}"
            );
        }
        let both = config(&[("HERALD_JWT_SECRET", "a"), ("HERALD_JWT_PUBLIC_KEY", "b")]);
        assert!(matches!(
            both,
            Err(ConfigError::Invalid {
                var: "HERALD_JWT_PUBLIC_KEY",
                ..
            })
        ));
    }
}
