//! The handlers every host runs: the Lambda functions call them with API Gateway's events,
//! `herald-local` calls them with the same events built in-process.
//!
//! Each takes its dependencies as arguments ([`Services`], a [`Gateway`](crate::gateway::Gateway))
//! and returns what API Gateway expects back, so tests drive them directly with recorded
//! events and in-memory doubles.

mod authorize;
mod connect;
mod deliver;
mod disconnect;
mod message;
mod poll;
mod publish;
mod stream;
mod webhook;

use std::sync::Arc;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;

pub use authorize::authorize;
pub use connect::connect;
pub use deliver::{deliver, deliver_job};
pub use disconnect::disconnect;
pub use message::message;
pub use poll::{POLL_INTERVAL, poll};
pub use publish::{DEVICE_PAYLOAD, DEVICE_TOPIC, PublishError, publish, publish_one};
pub use stream::{Chunks, STREAM_END_MARGIN, Streamed, stream, time_left};
pub use webhook::{WebhookRetries, webhook, webhook_id};

use crate::fanout::FanoutConfig;
use crate::gateway::Gateway;
use crate::ids::ConnectionId;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::presence_events::{Announcer, Change};
use crate::protocol::RoomName;
use crate::shard::Sharding;
use crate::sinks::mqtt::{DeviceRules, SharedTopicPublisher};
use crate::sinks::webhook::SharedWebhooks;
use crate::store::ConnectionStore;

/// What the handlers that touch the store share: connect, disconnect, message, publish, poll
/// and stream (the authorizer needs only its verifier).
#[derive(Clone)]
pub struct Services {
    /// Connection state.
    pub store: Arc<dyn ConnectionStore>,
    /// Limits to enforce.
    pub limits: Limits,
    /// Fan-out pacing.
    pub fanout: FanoutConfig,
    /// The instance id stamped on new connection records (`herald-local` with a shared
    /// store); `None` on Lambda.
    pub instance: Option<String>,
    /// Sharded fan-out: off unless a host gives it a queue.
    pub sharding: Sharding,
    /// Where `connection.opened` and `connection.closed` go, when a host sends webhooks.
    pub webhooks: Option<SharedWebhooks>,
    /// Where room and user notifications are also published, when a host mirrors them to
    /// MQTT.
    pub mqtt: Option<SharedTopicPublisher>,
    /// What devices may publish, when device publishes reach the publish handler (an IoT
    /// rule on AWS; `herald-local` checks them at its broker's client).
    pub devices: Option<DeviceRules>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// On Lambda, the function's name: each [`Services::flush`] then writes the
    /// invocation's counts as one CloudWatch EMF line.
    pub emf_function: Option<String>,
}

impl Services {
    /// Tells `room`'s members that `user`'s connection `id` joined or left it, when
    /// presence events are on (`presence_events.rs`).
    pub async fn announce(
        &self,
        gateway: &dyn Gateway,
        change: Change,
        room: &RoomName,
        user: &str,
        id: &ConnectionId,
    ) {
        if let Some(rate) = self.limits.presence_events {
            let announcer = Announcer {
                store: &*self.store,
                gateway,
                fanout: &self.fanout,
                rate,
            };
            announcer.announce(change, room, user, id).await;
        }
    }

    /// Services on `store` with these limits and this pacing.
    pub fn new(store: Arc<dyn ConnectionStore>, limits: Limits, fanout: FanoutConfig) -> Self {
        Self {
            store,
            limits,
            fanout,
            instance: None,
            sharding: Sharding::default(),
            webhooks: None,
            mqtt: None,
            devices: None,
            metrics: Arc::new(Metrics::new()),
            emf_function: None,
        }
    }

    /// Hands on what the handlers emitted where a host must before it answers, and on
    /// Lambda writes the invocation's metrics: the Lambda functions call it after each
    /// invocation (they are frozen once they answer).
    pub async fn flush(&self) {
        let webhooks = async {
            if let Some(webhooks) = &self.webhooks {
                webhooks.flush().await;
            }
        };
        let mqtt = async {
            if let Some(mqtt) = &self.mqtt {
                mqtt.flush().await;
            }
        };
        futures::join!(webhooks, mqtt);
        if let Some(line) = self.emf_line() {
            // Standard output is the function's log: CloudWatch turns the line into metrics.
            println!("{line}");
        }
    }

    /// On Lambda, the EMF line of what was counted since the last one.
    pub fn emf_line(&self) -> Option<String> {
        let function = self.emf_function.as_deref()?;
        Some(self.metrics.emf_line(function, crate::ids::now_ms()))
    }
}

/// The answer to an SQS event: the records that failed, by message id, for SQS to retry
/// (or move to the dead-letter queue); every other record is done.
fn sqs_answer(failed: Vec<String>) -> aws_lambda_events::sqs::SqsBatchResponse {
    let mut response = aws_lambda_events::sqs::SqsBatchResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .map(|id| {
            let mut failure = aws_lambda_events::sqs::BatchItemFailure::default();
            failure.item_identifier = id;
            failure
        })
        .collect();
    response
}

/// The event's connection id, if it has one.
fn connection_id(event: &ApiGatewayWebsocketProxyRequest) -> Option<ConnectionId> {
    event
        .request_context
        .connection_id
        .as_deref()
        .filter(|id| !id.is_empty())
        .map(ConnectionId::from)
}

/// What a route answers to an event without a connection id.
fn no_connection_id() -> ApiGatewayProxyResponse {
    response(400, "no connectionId in the event")
}

/// A route response with a status and a short text body.
fn response(status: i64, body: &str) -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = status;
    if !body.is_empty() {
        response.body = Some(Body::Text(body.to_owned()));
    }
    response
}
