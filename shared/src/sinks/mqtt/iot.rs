//! MQTT copies on AWS: [`IotPublisher`] publishes them through the IoT Data Plane's
//! `Publish` (QoS 1), the broker AWS IoT Core runs. A function is frozen once it answers,
//! so a copy is queued during the invocation (at most [`PENDING_COPIES`]; one more answers
//! `failed`) and sent when the function flushes, before it answers, each within
//! [`IOT_TIMEOUT`]: IoT that is slow or down delays the function's answer by that much at
//! most, never its WebSocket delivery, which is done by then. A copy IoT refuses is logged
//! and counted.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_iotdataplane::primitives::Blob;
use bytes::Bytes;
use futures::future::{BoxFuture, join_all};
use tracing::warn;

use super::{IotSettings, MqttOutcome, TopicPublisher, Topics};
use crate::protocol::Target;

/// Copies one invocation may queue before it flushes.
pub const PENDING_COPIES: usize = 1_000;
/// How long one copy's `Publish` may take.
pub const IOT_TIMEOUT: Duration = Duration::from_secs(2);
/// QoS 1, as every copy is published.
const QOS: i32 = 1;

/// Copies published through the IoT Data Plane.
pub struct IotPublisher {
    client: aws_sdk_iotdataplane::Client,
    topics: Topics,
    pending: Mutex<Vec<(String, Bytes)>>,
    /// Copies not published (over [`PENDING_COPIES`], refused, or not answered in time).
    pub failed: AtomicU64,
}

impl IotPublisher {
    /// A publisher to the endpoint `settings` name, through a client built from `sdk`.
    pub fn new(sdk: &aws_config::SdkConfig, settings: &IotSettings) -> Self {
        let mut config = aws_sdk_iotdataplane::config::Builder::from(sdk);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Self {
            client: aws_sdk_iotdataplane::Client::from_conf(config.build()),
            topics: settings.rules.topics.clone(),
            pending: Mutex::new(Vec::new()),
            failed: AtomicU64::new(0),
        }
    }

    async fn send(&self, topic: String, payload: Bytes) {
        let publish = self
            .client
            .publish()
            .topic(&topic)
            .qos(QOS)
            .payload(Blob::new(payload.to_vec()))
            .send();
        let why = match tokio::time::timeout(IOT_TIMEOUT, publish).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => crate::error::source(e).to_string(),
            Err(_) => format!("no answer within {} ms", IOT_TIMEOUT.as_millis()),
        };
        self.failed.fetch_add(1, Ordering::Relaxed);
        warn!(%topic, why, "MQTT copy not published through IoT");
    }
}

impl TopicPublisher for IotPublisher {
    fn publish(&self, target: &Target, payload: &Bytes) -> Option<MqttOutcome> {
        let topic = self.topics.of(target)?;
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= PENDING_COPIES {
            drop(pending);
            self.failed.fetch_add(1, Ordering::Relaxed);
            warn!(%topic, pending = PENDING_COPIES, "MQTT copy refused: too many in one invocation");
            return Some(MqttOutcome::Failed);
        }
        pending.push((topic, payload.clone()));
        Some(MqttOutcome::Queued)
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let copies =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
            join_all(
                copies
                    .into_iter()
                    .map(|(topic, payload)| self.send(topic, payload)),
            )
            .await;
        })
    }
}
