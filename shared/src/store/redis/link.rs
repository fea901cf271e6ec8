//! [`RedisLink`]: one handle on Redis, a single server or a Redis Cluster, so that the
//! store and the cluster of `herald-local` instances write each command once.
//!
//! On a single server the handle is a connection manager (reconnects in the background); on
//! a cluster it is redis-rs's cluster connection, which routes each command to the master
//! of its key's slot, follows `MOVED`/`ASK` and reconnects to nodes that drop. Either way
//! every script and pipeline Herald sends touches one slot (the hash tags in the key layout
//! see to it), which a cluster requires; commands on keys of different slots are sent
//! concurrently instead of in one pipeline ([`RedisLink::each`]).
//!
//! Pub/sub follows the topology: plain `SUBSCRIBE`/`PUBLISH` on one server, sharded
//! `SSUBSCRIBE`/`SPUBLISH` (Redis 7) on a cluster, so that a message travels to the one
//! node that owns its channel's slot instead of to every node.

use std::fmt;
use std::time::Duration;

use futures::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{
    Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisFuture,
    RedisResult, Value,
};
use tokio::sync::mpsc::UnboundedSender;

use super::{BACKEND, CONNECT_TIMEOUT, MAX_RECONNECT_DELAY, RESPONSE_TIMEOUT};
use crate::error::{self, Described};
use crate::store::StoreError;

/// How many times a cluster command is retried (after `MOVED`, `TRYAGAIN`, a dropped node)
/// within its [`RESPONSE_TIMEOUT`]: enough to follow a resharding, few enough that a dead
/// master is reported within the timeout.
const CLUSTER_RETRIES: u32 = 2;

/// Where Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisNodes {
    /// One server (or a cluster-mode-off endpoint), e.g. `redis://127.0.0.1:6379`.
    Single(String),
    /// A Redis Cluster, by some of its nodes (`redis://h1:p1`, …): the rest are learned.
    Cluster(Vec<String>),
}

impl fmt::Display for RedisNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(url) => write!(f, "Redis at {url}"),
            Self::Cluster(seeds) => write!(f, "Redis Cluster at {}", seeds.join(", ")),
        }
    }
}

impl RedisNodes {
    /// The seed nodes of `HERALD_REDIS_CLUSTER`: comma-separated URLs, blanks ignored.
    pub fn cluster_from_list(list: &str) -> Self {
        Self::Cluster(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
}

/// A connection to Redis, whatever its topology; cheap to clone (clones share it).
#[derive(Clone)]
pub enum RedisLink {
    /// One server.
    Single(ConnectionManager),
    /// A cluster.
    Cluster(ClusterConnection),
}

fn not_a_url(url: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend {
        backend: BACKEND,
        source: error::source(Described::new(
            format!("{url:?} is not a Redis URL: {e}"),
            e,
        )),
    }
}

/// How every single-server connection behaves: fail fast, reconnect in the background.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(MAX_RECONNECT_DELAY)
}

impl RedisLink {
    /// Connects to `nodes` speaking `protocol`. With `pushes`, the connection is a
    /// subscriber: pub/sub messages, and word of a connection dropping, go there, and
    /// subscriptions are renewed after every reconnection.
    pub async fn open(
        nodes: &RedisNodes,
        protocol: ProtocolVersion,
        pushes: Option<UnboundedSender<PushInfo>>,
    ) -> Result<Self, StoreError> {
        match nodes {
            RedisNodes::Single(url) => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| not_a_url(url, e))?;
                let settings = info.redis_settings().clone().set_protocol(protocol);
                let client = redis::Client::open(info.set_redis_settings(settings))?;
                let mut config = manager_config();
                if let Some(pushes) = pushes {
                    config = config
                        .set_push_sender(pushes)
                        .set_automatic_resubscription();
                }
                Ok(Self::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            RedisNodes::Cluster(seeds) => {
                if seeds.is_empty() {
                    return Err(not_a_url(
                        "",
                        std::io::Error::other("a cluster needs at least one seed node"),
                    ));
                }
                for seed in seeds {
                    seed.as_str()
                        .into_connection_info()
                        .map_err(|e| not_a_url(seed, e))?;
                }
                let mut builder = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                    .use_protocol(protocol)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(CLUSTER_RETRIES)
                    .max_retry_wait(millis(MAX_RECONNECT_DELAY));
                if let Some(pushes) = pushes {
                    builder = builder.push_sender(pushes);
                }
                let client = builder.build()?;
                Ok(Self::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Runs `commands`, which may touch keys of different slots, and answers their replies
    /// in order: one pipeline on a single server, concurrent commands on a cluster (which
    /// routes each to its slot's master and pipelines those bound for one node).
    pub async fn each<T: FromRedisValue>(&self, commands: Vec<Cmd>) -> RedisResult<Vec<T>> {
        if commands.is_empty() {
            return Ok(vec![]);
        }
        match self {
            Self::Single(manager) => {
                let mut pipe = redis::pipe();
                for command in commands {
                    pipe.add_command(command);
                }
                pipe.query_async(&mut manager.clone()).await
            }
            Self::Cluster(cluster) => {
                try_join_all(commands.into_iter().map(|command| {
                    let mut cluster = cluster.clone();
                    async move { command.query_async::<T>(&mut cluster).await }
                }))
                .await
            }
        }
    }

    /// Subscribes `channels` (the connection must have been opened with `pushes`); on a
    /// cluster, as shard channels, each on the node that owns its slot.
    pub async fn subscribe(&self, channels: &[&str]) -> RedisResult<()> {
        match self {
            Self::Single(manager) => manager.clone().subscribe(channels).await,
            Self::Cluster(cluster) => {
                for channel in channels {
                    cluster.clone().ssubscribe(*channel).await?;
                }
                Ok(())
            }
        }
    }

    /// Publishes `body` on `channel`; answers how many subscribers received it (on a
    /// cluster, those of the shard that owns the channel, which are all of them).
    pub async fn publish(&self, channel: &str, body: &[u8]) -> RedisResult<i64> {
        let verb = if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        redis::cmd(verb)
            .arg(channel)
            .arg(body)
            .query_async(&mut self.clone())
            .await
    }

    /// How many connections subscribe `channel`.
    pub async fn subscribers(&self, channel: &str) -> RedisResult<i64> {
        let counts: Vec<(String, i64)> = match self {
            Self::Single(manager) => {
                redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(channel)
                    .query_async(&mut manager.clone())
                    .await?
            }
            Self::Cluster(cluster) => {
                // Asked of the master that owns the channel's slot, where its subscribers are.
                let mut command = redis::cmd("PUBSUB");
                command.arg("SHARDNUMSUB").arg(channel);
                let route = Route::with_slot(Slot::for_key(channel), SlotAddr::Master);
                let reply = cluster
                    .clone()
                    .route_command(
                        command,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                FromRedisValue::from_redis_value(reply)?
            }
        };
        Ok(counts.first().map_or(0, |(_, n)| *n))
    }

    /// The subscribed channels whose names match the glob `pattern` (on a cluster, the
    /// shard channels of every master).
    pub async fn channels(&self, pattern: &str) -> RedisResult<Vec<String>> {
        let which = if self.is_cluster() {
            "SHARDCHANNELS"
        } else {
            "CHANNELS"
        };
        redis::cmd("PUBSUB")
            .arg(which)
            .arg(pattern)
            .query_async(&mut self.clone())
            .await
    }

    /// On a cluster, one slot owned by each master (the first of its ranges), in order;
    /// on one server, none.
    pub async fn master_slots(&self) -> RedisResult<Vec<u16>> {
        let Self::Cluster(cluster) = self else {
            return Ok(vec![]);
        };
        // Each range: [start, end, [host, port, id], replicas…].
        let ranges: Vec<Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut cluster.clone())
            .await?;
        let mut first: std::collections::BTreeMap<String, u16> = Default::default();
        for range in ranges {
            let Value::Array(fields) = range else {
                continue;
            };
            let (Some(Value::Int(start)), Some(Value::Array(master))) =
                (fields.first(), fields.get(2))
            else {
                continue;
            };
            let (Ok(start), Some(host), Some(port)) =
                (u16::try_from(*start), master.first(), master.get(1))
            else {
                continue;
            };
            let node = format!("{host:?}:{port:?}");
            let slot = first.entry(node).or_insert(start);
            *slot = (*slot).min(start);
        }
        let mut slots: Vec<u16> = first.into_values().collect();
        slots.sort_unstable();
        Ok(slots)
    }
}

/// How many hash slots a Redis Cluster has.
pub const SLOTS: u16 = 16_384;

/// The hash slot of `key` as Redis Cluster computes it: CRC16 (XMODEM) of the key's hash
/// tag (the text between the first `{` and the next `}`, when not empty) or of the whole
/// key, modulo [`SLOTS`].
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(bytes)) % SLOTS
}

fn crc16(bytes: &[u8]) -> u16 {
    const POLYNOMIAL: u16 = 0x1021;
    let mut crc: u16 = 0;
    for byte in bytes {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ POLYNOMIAL
            };
        }
    }
    crc
}

/// A short hash tag whose slot is `slot` (the smallest decimal number that hashes there),
/// so that a key can be placed on the master that owns a given slot.
pub fn tag_in_slot(slot: u16) -> String {
    static TAGS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; usize::from(SLOTS)];
        let mut missing = usize::from(SLOTS);
        let mut n: u32 = 0;
        // CRC16 spreads decimal numbers over every slot within a few hundred thousand.
        while missing > 0 {
            let tag = &mut tags[usize::from(crc16(n.to_string().as_bytes()) % SLOTS)];
            if *tag == u32::MAX {
                *tag = n;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    tags[usize::from(slot % SLOTS)].to_string()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ConnectionLike for RedisLink {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(manager) => manager.req_packed_command(cmd),
            Self::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(manager) => manager.req_packed_commands(pipeline, offset, count),
            Self::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(manager) => manager.get_db(),
            Self::Cluster(cluster) => cluster.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{RedisNodes, SLOTS, crc16, slot_of, tag_in_slot};

    #[test]
    fn slots_are_computed_as_redis_cluster_does() {
        // The CRC16/XMODEM check value, and examples from the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of("123456789"), 0x31C3 % SLOTS);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        assert_eq!(slot_of("foo{}{bar}"), slot_of("foo{}{bar}"));
        assert_ne!(slot_of("foo{}{bar}"), slot_of("bar"));
        assert_eq!(slot_of("foo{{bar}}zap"), slot_of("{bar"));
        assert_eq!(
            slot_of("herald:conn:{abc}:rooms"),
            slot_of("herald:conn:{abc}")
        );
    }

    #[test]
    fn every_slot_has_a_tag() {
        for slot in [0, 1, 5_460, 5_461, 10_922, 10_923, SLOTS - 1] {
            assert_eq!(slot_of(&format!("x{{{}}}", tag_in_slot(slot))), slot);
        }
    }

    #[test]
    fn a_cluster_list_is_split_on_commas_and_trimmed() {
        assert_eq!(
            RedisNodes::cluster_from_list(" redis://a:1, redis://b:2,,"),
            RedisNodes::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert_eq!(
            RedisNodes::cluster_from_list("redis://a:1").to_string(),
            "Redis Cluster at redis://a:1"
        );
    }
}
