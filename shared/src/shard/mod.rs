//! Sharded fan-out: a publish to more recipients than one invocation should post to is cut
//! into page jobs ("post this notification to these connections") on a queue, and a
//! `deliver` worker posts each page under a deployment-wide `@connections` budget.
//!
//! On AWS one `publish` invocation lives 15 minutes at most and API Gateway shares one
//! budget of posts per second across the account, so a room of 100,000 members cannot be
//! posted to from one invocation in time, and several big publishes at once would be
//! throttled. Above [`ShardSettings::threshold`] recipients `publish` lists them a page at
//! a time, enqueues one [`PageJob`] per page and answers at once with the number of pages;
//! each page is then posted by whichever `deliver` invocation takes it, with the same 410
//! cleanup and 429 backoff as a direct fan-out, every post paced by [`PostBudget`].
//! `herald-local` runs the same jobs from a queue in its own process.
//!
//! | file | what |
//! |---|---|
//! | `shard/mod.rs` | when a publish is sharded, its pages listed and queued, one page delivered |
//! | `shard/job.rs` | [`PageJob`] and its JSON form, as it travels through SQS |
//! | `shard/queue.rs` | [`PageQueue`]: where page jobs go; [`SqsQueue`] on AWS |
//! | `shard/budget.rs` | [`PostBudget`], the shared posts-per-second budget, and the gateway it paces |

mod budget;
mod job;
mod queue;

use std::sync::Arc;

use bytes::Bytes;

pub use budget::{BUDGET_WINDOW, BudgetedGateway, GRANT, PostBudget};
pub use job::{JobError, PageJob};
pub use queue::{PageQueue, QueueError, SqsQueue};

use crate::fanout::{self, Counts, FanoutConfig, Recipients};
use crate::gateway::Gateway;
use crate::ids::ConnectionId;
use crate::protocol::Target;
use crate::store::{ConnectionStore, StoreError};

/// What a host shards publishes with: the threshold, the queue page jobs go to (none: every
/// publish is delivered directly), and the budget its own deliveries of pages are paced by.
#[derive(Clone, Default)]
pub struct Sharding {
    /// Recipients above which a publish is delivered in page jobs; 0 = never.
    pub threshold: usize,
    /// Where page jobs go.
    pub queue: Option<Arc<dyn PageQueue>>,
    /// The deployment's `@connections` budget, when it has one.
    pub budget: Option<Arc<PostBudget>>,
}

impl Sharding {
    /// The queue publishes above the threshold go to, when sharding is on.
    pub fn queue(&self) -> Option<&dyn PageQueue> {
        self.queue.as_deref().filter(|_| self.threshold > 0)
    }
}

/// Recipients above which a publish is delivered in page jobs, by default: a page of 500
/// posts at API Gateway's pace is a fraction of a second, 2,000 a few seconds of one
/// invocation; beyond that a publish is better spread over many.
pub const DEFAULT_SHARD_THRESHOLD: usize = 2_000;
/// The deployment's `@connections` posts per second, by default: half of API Gateway's
/// account-wide 10,000 requests/s (burst 5,000), leaving room for everything else.
pub const DEFAULT_POST_BUDGET_PER_SECOND: u32 = 5_000;
/// The most connection ids in one page job: a page as fan-out reads it, small enough that
/// the ids and the largest notification fit one SQS message (256 KiB).
pub const MAX_PAGE: usize = 500;

/// When and how publishes are sharded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardSettings {
    /// Recipients above which a publish is delivered in page jobs; 0 = never.
    pub threshold: usize,
    /// `@connections` posts per second for the whole deployment, shared through the store;
    /// 0 = unpaced.
    pub post_budget_per_second: u32,
}

impl Default for ShardSettings {
    fn default() -> Self {
        Self {
            threshold: DEFAULT_SHARD_THRESHOLD,
            post_budget_per_second: DEFAULT_POST_BUDGET_PER_SECOND,
        }
    }
}

/// How a publish reaches its recipients.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Fan-out as usual: at most `threshold` recipients, or sharding is off.
    Direct,
    /// Fan-out to these recipients, read while counting them (a store that cannot count
    /// without reading): reading them again would double the cost.
    Listed(Vec<ConnectionId>),
    /// More than `threshold` recipients: page jobs.
    Sharded,
}

/// Whether `target` has more than `threshold` recipients. Counted without listing where
/// the store can ([`crate::store::Connections::member_count`]); otherwise by reading at
/// most `threshold + 1` of them, which are kept when they are all. A user's connections
/// are bounded by the per-user limit and never sharded. Callers plan after keeping the
/// notification in the history, so that whoever joins meanwhile is listed or finds it there.
pub async fn plan(
    store: &dyn ConnectionStore,
    target: &Target,
    threshold: usize,
) -> Result<Plan, StoreError> {
    let over = |n: usize| {
        if n > threshold {
            Plan::Sharded
        } else {
            Plan::Direct
        }
    };
    if threshold == 0 {
        return Ok(Plan::Direct);
    }
    let room = match target {
        Target::Connections(ids) => return Ok(over(ids.len())),
        Target::User(_) => return Ok(Plan::Direct),
        Target::Room(room) => Some(room),
        Target::Broadcast => None,
    };
    if let Some(count) = store.member_count(room).await? {
        return Ok(over(usize::try_from(count).unwrap_or(usize::MAX)));
    }
    let mut recipients = Recipients::new(store, target).await?;
    let mut seen = Vec::new();
    while seen.len() <= threshold {
        let page = recipients
            .next_page(MAX_PAGE.min(threshold + 1 - seen.len()))
            .await?;
        if page.is_empty() {
            return Ok(Plan::Listed(seen));
        }
        seen.extend(page);
    }
    Ok(Plan::Sharded)
}

/// Why a sharded publish was not wholly queued.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The store could not list the recipients.
    #[error("listing the recipients after {queued} page(s) were queued: {source}")]
    Store {
        /// Pages queued before the failure: they will be delivered.
        queued: u64,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The queue refused a job.
    #[error("queueing page jobs after {queued} page(s) were queued: {source}")]
    Queue {
        /// Pages queued before the failure: they will be delivered.
        queued: u64,
        /// The queue's error.
        #[source]
        source: QueueError,
    },
}

/// Jobs sent to the queue at once: SQS takes at most ten messages per batch.
const JOBS_PER_SEND: usize = 10;

/// Lists `target`'s recipients a page at a time and queues one job per page carrying
/// `payload`; answers the number of pages queued.
pub async fn enqueue_pages(
    store: &dyn ConnectionStore,
    queue: &dyn PageQueue,
    target: &Target,
    notification: &str,
    payload: &Bytes,
) -> Result<u64, ShardError> {
    let mut queued = 0u64;
    let mut recipients = Recipients::new(store, target)
        .await
        .map_err(|source| ShardError::Store { queued, source })?;
    let mut jobs = Vec::with_capacity(JOBS_PER_SEND);
    loop {
        let page = recipients
            .next_page(MAX_PAGE)
            .await
            .map_err(|source| ShardError::Store { queued, source })?;
        let last = page.is_empty();
        if !last {
            jobs.push(PageJob {
                notification: notification.to_owned(),
                page: queued + jobs.len() as u64,
                connections: page,
                payload: payload.clone(),
            });
        }
        if (last || jobs.len() == JOBS_PER_SEND) && !jobs.is_empty() {
            let sent = jobs.len() as u64;
            queue
                .enqueue(std::mem::take(&mut jobs))
                .await
                .map_err(|source| ShardError::Queue { queued, source })?;
            queued += sent;
        }
        if last {
            return Ok(queued);
        }
    }
}

/// Posts one page job's notification to its connections, each post paced by `budget`
/// when there is one, with fan-out's 410 cleanup and 429 backoff.
pub async fn deliver_page(
    store: &dyn ConnectionStore,
    gateway: &Arc<dyn Gateway>,
    budget: Option<&Arc<PostBudget>>,
    job: PageJob,
    config: &FanoutConfig,
) -> Counts {
    let target = Target::Connections(job.connections);
    let delivered = match budget {
        Some(budget) => {
            let paced = BudgetedGateway::new(gateway.clone(), budget.clone());
            fanout::deliver(store, &paced, &target, job.payload, config).await
        }
        None => fanout::deliver(store, &**gateway, &target, job.payload, config).await,
    };
    // A page names its recipients: fan-out reads nothing from the store for it, so it
    // cannot be interrupted; what it did is in the counts either way.
    delivered.unwrap_or_else(|interrupted| interrupted.counts)
}

#[cfg(test)]
mod tests;
