//! The cluster's two Redis connections: a RESP3 subscriber that receives this instance's
//! channel (and resubscribes by itself after Redis restarts), and a publisher.

use herald::error::{self, Described};
use herald::store::{RedisSettings, StoreError};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, ProtocolVersion, PushInfo};
use tokio::sync::mpsc::UnboundedSender;
use tracing::debug;

fn client(url: &str, protocol: ProtocolVersion) -> Result<redis::Client, StoreError> {
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
    /// Connects to the server `redis` names and subscribes `channel`; its messages go to
    /// `pushes`. The connections behave as the store's do.
    pub(super) async fn connect(
        redis: &RedisSettings,
        channel: &str,
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
        subscriber.subscribe(channel).await?;
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
    /// re-established, with its subscription) when it is used, and it is otherwise idle.
    pub(super) async fn keepalive(&self) {
        let mut subscriber = self.subscriber.clone();
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut subscriber).await;
        if let Err(e) = pong {
            debug!(error = %e, "cluster subscription is down; reconnecting");
        }
    }
}
