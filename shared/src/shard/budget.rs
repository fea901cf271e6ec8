//! The deployment's `@connections` budget: posts per second shared by every `deliver`
//! worker through the store, so several large publishes at once are delivered more slowly
//! instead of being throttled by API Gateway and lost past their retries.
//!
//! The budget is counted in windows of [`BUDGET_WINDOW`] (a tenth of the per-second
//! budget each), so no second, wherever it starts, holds more than the budget and one
//! window's share. A worker takes [`GRANT`] posts from the store at a time and spends them
//! itself within that window, so the store is asked once per grant, not once per post.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tracing::warn;

use crate::gateway::{ConnectionInfo, Failures, Gateway, PushError};
use crate::ids::{ConnectionId, now_ms};
use crate::store::{ConnectionStore, StoreError, current_window};

/// The store key every worker counts posts under.
const BUDGET_KEY: &str = "post-budget";
/// Budget windows per second: ten, so a burst is at most a tenth of a second's budget
/// above the rate.
const WINDOWS_PER_SECOND: u32 = 10;
/// How long one budget window lasts.
pub const BUDGET_WINDOW: Duration = Duration::from_millis(1_000 / WINDOWS_PER_SECOND as u64);
/// Posts a worker takes from the store at once: fan-out's concurrency, so a worker posting
/// one at a time asks the store about once per round of posts in flight.
pub const GRANT: u32 = 64;

/// Posts per second for every worker sharing a store.
pub struct PostBudget {
    store: Arc<dyn ConnectionStore>,
    window: Duration,
    per_window: u32,
    /// Posts this worker holds for a window: (window index, posts left).
    held: Mutex<(i64, u32)>,
}

impl PostBudget {
    /// A budget of `per_second` posts shared through `store`; `None` for 0 (unpaced).
    pub fn new(store: Arc<dyn ConnectionStore>, per_second: u32) -> Option<Self> {
        if per_second == 0 {
            return None;
        }
        // Windows of a tenth of a second each take a tenth of the budget; a budget under
        // ten a second is counted per second instead, so a window's share is never zero.
        let (window, per_window) = if per_second >= WINDOWS_PER_SECOND {
            (BUDGET_WINDOW, per_second / WINDOWS_PER_SECOND)
        } else {
            (Duration::from_secs(1), per_second)
        };
        Some(Self {
            store,
            window,
            per_window,
            held: Mutex::new((i64::MIN, 0)),
        })
    }

    /// The most posts one window allows.
    pub fn per_window(&self) -> u32 {
        self.per_window
    }

    fn held(&self) -> std::sync::MutexGuard<'_, (i64, u32)> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `posts` (at most [`PostBudget::per_window`]) may be made now, and takes
    /// them from the budget.
    pub async fn take(&self, posts: u32) -> Result<(), StoreError> {
        let posts = posts.clamp(1, self.per_window);
        loop {
            let now = now_ms();
            let (index, ends) = current_window(now, self.window);
            {
                let mut held = self.held();
                if held.0 == index && held.1 >= posts {
                    held.1 -= posts;
                    return Ok(());
                }
            }
            // Ask for a grant; when the window cannot spare one, for just these posts.
            let grant = posts.max(GRANT).min(self.per_window);
            for ask in [grant, posts] {
                if self
                    .store
                    .count_events(BUDGET_KEY, self.window, ask, self.per_window)
                    .await?
                {
                    let mut held = self.held();
                    let kept = if held.0 == index { held.1 } else { 0 };
                    *held = (index, kept + ask - posts);
                    return Ok(());
                }
                if ask == posts {
                    break;
                }
            }
            let wait = u64::try_from(ends - now).unwrap_or(0).max(1);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

/// A gateway whose every post is taken from a [`PostBudget`] first. When the store cannot
/// be asked, posts go ahead unpaced (and are logged): API Gateway's own throttling, which
/// fan-out retries, is better than not delivering.
pub struct BudgetedGateway {
    inner: Arc<dyn Gateway>,
    budget: Arc<PostBudget>,
}

impl BudgetedGateway {
    /// `inner`, paced by `budget`.
    pub fn new(inner: Arc<dyn Gateway>, budget: Arc<PostBudget>) -> Self {
        Self { inner, budget }
    }

    async fn take(&self, posts: usize) {
        let posts = u32::try_from(posts).unwrap_or(u32::MAX);
        if let Err(error) = self.budget.take(posts).await {
            warn!(%error, posts, "the post budget could not be read; posting unpaced");
        }
    }
}

#[async_trait]
impl Gateway for BudgetedGateway {
    async fn post(&self, id: &ConnectionId, payload: Bytes) -> Result<(), PushError> {
        self.take(1).await;
        self.inner.post(id, payload).await
    }

    async fn get(&self, id: &ConnectionId) -> Result<ConnectionInfo, PushError> {
        self.inner.get(id).await
    }

    async fn delete(&self, id: &ConnectionId) -> Result<(), PushError> {
        self.inner.delete(id).await
    }

    fn prefers_batches(&self) -> bool {
        self.inner.prefers_batches()
    }

    /// Posts the ids a window's share at a time, each share taken from the budget first.
    async fn post_many(&self, ids: &[ConnectionId], payload: Bytes) -> Failures {
        let share = self.budget.per_window() as usize;
        let mut failures = Failures::new();
        for (n, chunk) in ids.chunks(share.max(1)).enumerate() {
            self.take(chunk.len()).await;
            let offset = n * share;
            let failed = self.inner.post_many(chunk, payload.clone()).await;
            failures.extend(failed.into_iter().map(|(i, e)| (offset + i, e)));
        }
        failures
    }
}
