//! The cluster's two Redis connections: a RESP3 subscriber that receives this instance's
//! channel and the cluster's shared one (and resubscribes by itself after Redis restarts),
//! and a publisher, which also reads and writes the registration markers.

use std::time::Duration;

use herald::error::{self, Described};
use herald::store::{RedisSettings, StoreError};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, ProtocolVersion, PushInfo};
use tokio::sync::mpsc::UnboundedSender;
use tracing::debug;

/// A client of the server at `url`, speaking `protocol`.
pub(super) fn client(url: &str, protocol: ProtocolVersion) -> Result<redis::Client, StoreError> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(|e| StoreError::Backend {
            backend: "redis",
            source: error::source(Described::new(
                format!("{url:?} is not a Redis URL: {e}"),
                e,
            )),
        })?;
    let settings = info.redis_settings().clone().set_protocol(protocol);
    Ok(redis::Client::open(info.set_redis_settings(settings))?)
}

/// The connections of one instance.
pub(super) struct Bus {
    publisher: ConnectionManager,
    subscriber: ConnectionManager,
}

impl Bus {
    /// Connects to the server `redis` names and subscribes `channels`; their messages, and
    /// word of the subscription's connection dropping, go to `pushes`. The connections
    /// behave as the store's do.
    pub(super) async fn connect(
        redis: &RedisSettings,
        channels: &[&str],
        pushes: UnboundedSender<PushInfo>,
    ) -> Result<Self, StoreError> {
        let url = redis.url.as_str();
        let config = redis
            .manager_config()
            .set_push_sender(pushes)
            .set_automatic_resubscription();
        let mut subscriber =
            ConnectionManager::new_with_config(client(url, ProtocolVersion::RESP3)?, config)
                .await?;
        subscriber.subscribe(channels).await?;
        let publisher = ConnectionManager::new_with_config(
            client(url, ProtocolVersion::RESP2)?,
            redis.manager_config(),
        )
        .await?;
        Ok(Self {
            publisher,
            subscriber,
        })
    }

    /// Publishes `body`, once more if the first attempt found the connection broken (the
    /// manager reconnects on that error, so the second attempt usually goes through).
    /// Answers how many subscribers received it.
    pub(super) async fn publish(&self, channel: &str, body: &[u8]) -> redis::RedisResult<i64> {
        let mut publisher = self.publisher.clone();
        match publisher.publish(channel, body).await {
            Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                publisher.publish(channel, body).await
            }
            result => result,
        }
    }

    /// Pings the subscription's connection: a dropped connection is only noticed (and
    /// re-established, with its subscriptions) when it is used, and it is otherwise idle.
    pub(super) async fn ping(&self) -> redis::RedisResult<()> {
        let mut subscriber = self.subscriber.clone();
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut subscriber).await;
        if let Err(e) = &pong {
            debug!(error = %e, "cluster subscription is down; reconnecting");
        }
        pong.map(drop)
    }

    /// The publisher's connection, for a caller that reads a key on its own.
    pub(super) fn publisher(&self) -> ConnectionManager {
        self.publisher.clone()
    }

    /// Sets `key`, to expire after `ttl`.
    pub(super) async fn mark(&self, key: &str, ttl: Duration) -> redis::RedisResult<()> {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.publisher.clone().pset_ex(key, 1, millis).await
    }

    /// Whether `key` exists.
    pub(super) async fn marked(&self, key: &str) -> redis::RedisResult<bool> {
        self.publisher.clone().exists(key).await
    }

    /// How many connections subscribe `channel`.
    pub(super) async fn subscribers(&self, channel: &str) -> redis::RedisResult<i64> {
        let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut self.publisher.clone())
            .await?;
        Ok(counts.first().map_or(0, |(_, n)| *n))
    }

    /// The subscribed channels whose names start with `prefix`.
    pub(super) async fn channels(&self, prefix: &str) -> redis::RedisResult<Vec<String>> {
        redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(format!("{}*", glob_escape(prefix)))
            .query_async(&mut self.publisher.clone())
            .await
    }
}

/// `text` with Redis's glob characters escaped, to match only itself in a pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(super::glob_escape("herald:"), "herald:");
        assert_eq!(super::glob_escape(r"a*b?[c]\\"), r"a\*b\?\[c\]\\\\");
    }
}
