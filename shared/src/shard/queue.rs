//! Where page jobs go. [`SqsQueue`] sends them to an SQS queue, ten per `SendMessageBatch`,
//! whose event source runs the `deliver` function; `herald-local` has a queue in its own
//! process with workers of its own.

use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use tracing::warn;

use super::PageJob;
use crate::error::{self, Source};

/// Why jobs were not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue is at its bound and did not make room in time.
    #[error("the delivery queue is full")]
    Full,
    /// The queue could not be reached, or refused the messages.
    #[error("the queue failed: {0}")]
    Unavailable(#[source] Source),
}

/// A queue of page jobs.
#[async_trait]
pub trait PageQueue: Send + Sync + 'static {
    /// Queues `jobs` (at most ten). On error some of them may still have been queued, and
    /// will be delivered: the caller says the publish was not wholly queued.
    async fn enqueue(&self, jobs: Vec<PageJob>) -> Result<(), QueueError>;
}

/// Sends of one batch before its refused entries count as failed: SQS may refuse some
/// entries of a batch for a moment (throttling, an internal error) and take them again.
const SEND_ATTEMPTS: u32 = 3;

/// An SQS queue.
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    /// The queue at `url`, through a client built from `sdk`.
    pub fn new(sdk: &aws_config::SdkConfig, url: impl Into<String>) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(sdk),
            url: url.into(),
        }
    }
}

impl SqsQueue {
    /// Sends `bodies` (at most ten) in one `SendMessageBatch`, sending again the entries SQS
    /// refused. On error some of them may have been sent.
    pub async fn send(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        let mut waiting: Vec<(String, String)> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| (i.to_string(), body))
            .collect();
        for attempt in 1..=SEND_ATTEMPTS {
            let entries = waiting
                .iter()
                .map(|(id, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(id)
                        .message_body(body)
                        .build()
                        .map_err(|e| QueueError::Unavailable(error::source(e)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let sent = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| QueueError::Unavailable(error::source(e)))?;
            let refused: Vec<_> = sent.failed().iter().map(|f| f.id().to_owned()).collect();
            if refused.is_empty() {
                return Ok(());
            }
            warn!(attempt, refused = refused.len(), queue = %self.url, "SQS refused messages");
            waiting.retain(|(id, _)| refused.contains(id));
        }
        Err(QueueError::Unavailable(error::because(format!(
            "SQS refused {} message(s) {SEND_ATTEMPTS} times",
            waiting.len()
        ))))
    }
}

#[async_trait]
impl PageQueue for SqsQueue {
    async fn enqueue(&self, jobs: Vec<PageJob>) -> Result<(), QueueError> {
        self.send(jobs.iter().map(PageJob::to_json).collect()).await
    }
}
