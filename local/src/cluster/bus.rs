//! The cluster's two Redis connections: a RESP3 subscriber that receives this instance's
//! channel and the cluster's shared one (and resubscribes by itself after Redis restarts),
//! and a publisher, through which the registration markers are also read and written. On a Redis
//! Cluster the channels are shard channels (`SSUBSCRIBE`/`SPUBLISH`), each served by the
//! master that owns its slot.

use herald::store::{RedisLink, RedisSettings, StoreError};
use redis::{ProtocolVersion, PushInfo};
use tokio::sync::mpsc::UnboundedSender;
use tracing::debug;

/// The connections of one instance.
pub(super) struct Bus {
    publisher: RedisLink,
    subscriber: RedisLink,
}

impl Bus {
    /// Connects to the Redis `redis` names and subscribes `channels`; their messages, and
    /// word of the subscription's connection dropping, go to `pushes`. The connections
    /// behave as the store's do.
    pub(super) async fn connect(
        redis: &RedisSettings,
        channels: &[&str],
        pushes: UnboundedSender<PushInfo>,
    ) -> Result<Self, StoreError> {
        let subscriber =
            RedisLink::open(&redis.nodes, ProtocolVersion::RESP3, Some(pushes)).await?;
        subscriber.subscribe(channels).await?;
        let publisher = RedisLink::open(&redis.nodes, ProtocolVersion::RESP2, None).await?;
        Ok(Self {
            publisher,
            subscriber,
        })
    }

    /// Publishes `body`, once more if the first attempt found the connection broken (the
    /// connection reconnects on that error, so the second attempt usually goes through).
    /// Answers how many subscribers received it.
    pub(super) async fn publish(&self, channel: &str, body: &[u8]) -> redis::RedisResult<i64> {
        match self.publisher.publish(channel, body).await {
            Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                self.publisher.publish(channel, body).await
            }
            result => result,
        }
    }

    /// Pings the subscription's connection (on a cluster, every node's): a dropped
    /// connection is only noticed (and re-established, with its subscriptions) when it is
    /// used, and it is otherwise idle.
    pub(super) async fn ping(&self) -> redis::RedisResult<()> {
        let mut subscriber = self.subscriber.clone();
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut subscriber).await;
        if let Err(e) = &pong {
            debug!(error = %e, "cluster subscription is down; reconnecting");
        }
        pong.map(drop)
    }

    /// The publisher's connection, for a caller that reads a key on its own.
    pub(super) fn publisher(&self) -> RedisLink {
        self.publisher.clone()
    }

    /// How many connections subscribe `channel`.
    pub(super) async fn subscribers(&self, channel: &str) -> redis::RedisResult<i64> {
        self.publisher.subscribers(channel).await
    }

    /// The subscribed channels whose names start with `prefix`.
    pub(super) async fn channels(&self, prefix: &str) -> redis::RedisResult<Vec<String>> {
        self.publisher
            .channels(&format!("{}*", glob_escape(prefix)))
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
