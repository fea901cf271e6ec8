//! The `webhook` function: the webhook events the other functions put on the webhook
//! queue (`sinks/webhook/queue.rs`), each delivered to the receiver signed as Standard
//! Webhooks say, with the SQS message id as its `webhook-id` (the same on every
//! redelivery, so receivers deduplicate).
//!
//! One attempt per receive. A 2xx delivers; an answer that is final (another 4xx) is
//! logged as dropped and not retried; one worth retrying (5xx, 408, 429, timeout, no
//! connection) is a `batchItemFailure`, made visible again after [`retry_delay`] of its
//! receive count (1 s doubling to a minute, as `herald-local` waits), so SQS redelivers
//! it; after [`MAX_ATTEMPTS`] receives the queue's redrive policy moves it to the
//! dead-letter queue (the template sets `maxReceiveCount` to the same number).

use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use bytes::Bytes;
use futures::future::join_all;
use tracing::{info, warn};

use crate::sinks::webhook::{Attempt, MAX_ATTEMPTS, WebhookSender, retry_delay};

/// The record attribute SQS counts receives in.
const RECEIVE_COUNT: &str = "ApproximateReceiveCount";

/// Makes a record visible again later, so the next attempt waits its backoff.
pub struct WebhookRetries {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl WebhookRetries {
    /// Retries through the queue at `queue_url` (the one the records come from).
    pub fn new(sdk: &aws_config::SdkConfig, queue_url: &str) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(sdk),
            queue_url: queue_url.to_owned(),
        }
    }

    async fn later(&self, receipt: &str, after: Duration) {
        let seconds = i32::try_from(after.as_secs()).unwrap_or(i32::MAX);
        let changed = self
            .client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds)
            .send()
            .await;
        if let Err(e) = changed {
            // The queue's visibility timeout applies instead: retried, only sooner or later.
            warn!(error = %crate::error::source(e), "cannot delay the webhook's next attempt");
        }
    }
}

/// Handles one invocation of the `webhook` function: one attempt per record, at once,
/// answering the records to receive again.
pub async fn webhook(
    sender: &WebhookSender,
    retries: Option<&WebhookRetries>,
    event: SqsEvent,
) -> SqsBatchResponse {
    let attempts = event
        .records
        .into_iter()
        .map(|record| attempt(sender, retries, record));
    let failed = join_all(attempts).await.into_iter().flatten().collect();
    super::sqs_answer(failed)
}

/// One record's attempt: its message id when it is to be received again.
async fn attempt(
    sender: &WebhookSender,
    retries: Option<&WebhookRetries>,
    record: SqsMessage,
) -> Option<String> {
    let message_id = record.message_id.clone().unwrap_or_default();
    let id = webhook_id(&message_id);
    let receives: u32 = record
        .attributes
        .get(RECEIVE_COUNT)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let body = Bytes::from(record.body.unwrap_or_default());
    match sender.attempt(&id, &body).await {
        Attempt::Delivered => None,
        Attempt::Final(why) => {
            warn!(webhook_id = %id, why, "webhook refused: dropped, not retried");
            None
        }
        Attempt::Retry(why) if receives >= MAX_ATTEMPTS => {
            warn!(webhook_id = %id, attempts = receives, why, "webhook's last attempt failed: to the dead-letter queue");
            Some(message_id)
        }
        Attempt::Retry(why) => {
            let wait = retry_delay(receives);
            info!(webhook_id = %id, attempt = receives, why, wait_ms = wait.as_millis() as u64, "webhook attempt failed: retrying");
            if let (Some(retries), Some(receipt)) = (retries, record.receipt_handle.as_deref()) {
                retries.later(receipt, wait).await;
            }
            Some(message_id)
        }
    }
}

/// The `webhook-id` of the SQS message `message_id`: stable across its redeliveries.
pub fn webhook_id(message_id: &str) -> String {
    format!("msg_{}", message_id.replace('-', ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_ids_come_from_the_message_id() {
        assert_eq!(
            webhook_id("0b6a5c8e-1f0e-4d5e-9d2a-6f1f3c2b9a01"),
            "msg_0b6a5c8e1f0e4d5e9d2a6f1f3c2b9a01"
        );
    }
}
