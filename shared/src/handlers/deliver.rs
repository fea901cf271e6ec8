//! The `deliver` function: page jobs from the SQS queue a sharded publish filled, each
//! posted to its connections under the deployment's `@connections` budget.
//!
//! A record is a `batchItemFailure` only when it is not a page job (it then reaches the
//! dead-letter queue after its receives, for someone to look at). Recipients that are
//! gone or fail are counted and logged, never retried through SQS: a page re-delivered
//! would reach its other recipients twice.

use std::sync::Arc;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use tracing::{info, warn};

use super::Services;
use crate::fanout::Counts;
use crate::gateway::Gateway;
use crate::shard::{self, PageJob};

/// Handles one invocation of the `deliver` function: delivers each record's page job in
/// turn and reports the records that were not page jobs.
pub async fn deliver(
    services: &Services,
    gateway: &Arc<dyn Gateway>,
    event: SqsEvent,
) -> SqsBatchResponse {
    let mut failures = Vec::new();
    for record in event.records {
        let message_id = record.message_id.unwrap_or_default();
        match PageJob::from_json(record.body.as_deref().unwrap_or("")) {
            Ok(job) => {
                deliver_job(services, gateway, job).await;
            }
            Err(error) => {
                warn!(message_id = %message_id, %error, "SQS record is not a page job");
                failures.push(message_id);
            }
        }
    }
    super::sqs_answer(failures)
}

/// Delivers one page job under the services' budget and logs what it did: what every host
/// runs for a page, whichever queue it came from.
pub async fn deliver_job(services: &Services, gateway: &Arc<dyn Gateway>, job: PageJob) -> Counts {
    let (notification, page) = (job.notification.clone(), job.page);
    let counts = shard::deliver_page(
        &*services.store,
        gateway,
        services.sharding.budget.as_ref(),
        job,
        &services.fanout,
    )
    .await;
    info!(
        notification_id = %notification,
        page,
        delivered = counts.delivered,
        gone = counts.gone,
        failed = counts.failed,
        "page delivered"
    );
    counts
}
