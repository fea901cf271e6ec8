//! Page jobs in this process: what SQS and the `deliver` function are on AWS. A publish
//! above the shard threshold queues one job per page of recipients here and answers at
//! once; [`DELIVER_WORKERS`] workers deliver the pages through the same handler the
//! `deliver` function runs (through `functions/`: in process, or the `deliver` binary), posting through the control
//! plane's gateway (so injected faults meet them as API Gateway's would) under the shared
//! `@connections` budget.
//!
//! The queue is bounded in bytes ([`QUEUED_PAGE_BYTES`]): a publish that finds it full waits
//! up to [`ENQUEUE_PATIENCE`] for room, then fails with "the delivery queue is full"
//! (pages it queued before are delivered, and the error says how many).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald::shard::{PageJob, PageQueue, QueueError};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::functions::SharedHandlers;

/// Bytes of page jobs (notifications and ids) waiting at most.
pub(crate) const QUEUED_PAGE_BYTES: usize = 64 * 1024 * 1024;
/// The queue counts bytes in units of this many, so that a semaphore's permits cover it.
const UNIT: usize = 1024;
/// How long a publish waits for room in a full queue.
pub(crate) const ENQUEUE_PATIENCE: Duration = Duration::from_secs(10);
/// Pages delivered at once: as a few `deliver` invocations would on AWS, each posting with
/// fan-out's own concurrency.
pub(crate) const DELIVER_WORKERS: usize = 4;

type Waiting = (PageJob, OwnedSemaphorePermit);

/// The in-process queue of page jobs.
pub(crate) struct LocalPageQueue {
    jobs: mpsc::UnboundedSender<Waiting>,
    room: Arc<Semaphore>,
}

impl LocalPageQueue {
    /// An empty queue, and its jobs for [`PageJobs::work`].
    pub(crate) fn new() -> (Arc<Self>, PageJobs) {
        let (jobs, waiting) = mpsc::unbounded_channel::<Waiting>();
        let queue = Arc::new(Self {
            jobs,
            room: Arc::new(Semaphore::new(QUEUED_PAGE_BYTES / UNIT)),
        });
        (queue, PageJobs(waiting))
    }

    /// Units of the queue's bound `job` takes: at least one, at most the whole bound.
    fn units(job: &PageJob) -> u32 {
        let units = (job.weight() / UNIT + 1).min(QUEUED_PAGE_BYTES / UNIT);
        u32::try_from(units).expect("the bound's units fit in u32")
    }
}

/// The queue's jobs, before its workers take them.
pub(crate) struct PageJobs(mpsc::UnboundedReceiver<Waiting>);

impl PageJobs {
    /// Starts the workers, delivering each job through `handlers` (the `deliver` handler,
    /// in process or as the function); they stop when `stop` is cancelled, dropping what
    /// is still queued (the sockets are closing).
    pub(crate) fn work(self, handlers: SharedHandlers, stop: CancellationToken) {
        let waiting = Arc::new(Mutex::new(self.0));
        for _ in 0..DELIVER_WORKERS {
            let (handlers, waiting, stop) = (handlers.clone(), waiting.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let next = tokio::select! {
                        () = stop.cancelled() => break,
                        next = async { waiting.lock().await.recv().await } => next,
                    };
                    let Some((job, held)) = next else {
                        break;
                    };
                    handlers.deliver(job).await;
                    drop(held);
                }
            });
        }
    }
}

#[async_trait]
impl PageQueue for LocalPageQueue {
    async fn enqueue(&self, jobs: Vec<PageJob>) -> Result<(), QueueError> {
        for job in jobs {
            let room = self.room.clone().acquire_many_owned(Self::units(&job));
            let held = match tokio::time::timeout(ENQUEUE_PATIENCE, room).await {
                Ok(Ok(held)) => held,
                Ok(Err(_)) | Err(_) => return Err(QueueError::Full),
            };
            // The workers stopped: the gateway is shutting down.
            self.jobs
                .send((job, held))
                .map_err(|_| QueueError::Unavailable(herald::error::because("shutting down")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use herald::fanout::FanoutConfig;
    use herald::gateway::RecordingGateway;
    use herald::handlers::Services;
    use herald::ids::ConnectionId;
    use herald::limits::Limits;
    use herald::store::MemoryStore;

    use super::*;

    fn job(page: u64, payload: &Bytes) -> PageJob {
        PageJob {
            notification: "n".into(),
            page,
            connections: vec![ConnectionId::new(format!("c{page}"))],
            payload: payload.clone(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_holds_its_bytes_and_no_more_then_says_it_is_full() {
        let gateway = Arc::new(RecordingGateway::new());
        // Workers that take a job never finish it within the test.
        gateway.set_delay(Duration::from_secs(24 * 3600));
        let services = Services::new(
            Arc::new(MemoryStore::new()),
            Limits::default(),
            FanoutConfig::default(),
        );
        let stop = CancellationToken::new();
        let (queue, jobs) = LocalPageQueue::new();
        let handlers = Arc::new(crate::functions::InProcess {
            services,
            verifier: herald::auth::Verifier::new(&herald::auth::AuthConfig {
                key: herald::auth::JwtKey::Secret(vec![7; 32]),
                issuer: None,
                audience: None,
            })
            .unwrap(),
            gateway: gateway.clone(),
            publisher: gateway.clone(),
        });
        jobs.work(handlers, stop.clone());
        let payload = Bytes::from(vec![b'7'; 1024 * 1024]);
        let units = LocalPageQueue::units(&job(0, &payload)) as usize;
        let fit = QUEUED_PAGE_BYTES / UNIT / units;
        for page in 0..fit as u64 {
            queue.enqueue(vec![job(page, &payload)]).await.unwrap();
        }
        let started = tokio::time::Instant::now();
        let refused = queue.enqueue(vec![job(fit as u64, &payload)]).await;
        assert!(
            matches!(refused, Err(QueueError::Full)),
            "one past the bound"
        );
        assert_eq!(
            started.elapsed(),
            ENQUEUE_PATIENCE,
            "after waiting for room"
        );
        stop.cancel();
    }
}
