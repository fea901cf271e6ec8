//! Delivering webhooks: events wait in a bounded queue ([`QUEUED_EVENTS`]; one more is
//! dropped and counted, never waited for), and up to [`IN_FLIGHT`] are delivered at once,
//! each over HTTP(S) with a fresh timestamp and signature per attempt and one `webhook-id`
//! for all of them, so receivers deduplicate. A 2xx delivers; a 5xx, 408, 429, timeout
//! ([`ATTEMPT_TIMEOUT`]) or connection failure is retried after [`retry_delay`] (1 s,
//! doubling, at most [`MAX_DELAY`]), up to [`MAX_ATTEMPTS`] attempts (about four minutes in
//! all); any other answer is final. What is not delivered is counted as dropped and logged
//! with the event's id.
//!
//! Worst case held: [`QUEUED_EVENTS`] events of under 1 KiB each (ids, user names and close
//! reasons are bounded where they are accepted) plus [`IN_FLIGHT`] being delivered.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Semaphore, mpsc};
use tracing::{info, warn};

use super::{Event, EventKind, Secret, WebhookSettings, Webhooks};
use crate::ids::now_ms;

/// Events waiting for delivery, at most.
pub const QUEUED_EVENTS: usize = 10_000;
/// Events being delivered at once (waiting between attempts included).
const IN_FLIGHT: usize = 64;
/// How long one attempt may take, answer included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per event, the first included.
pub const MAX_ATTEMPTS: u32 = 8;
/// The wait before the second attempt; each later wait doubles it.
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// The wait after attempt `attempt` (1-based) failed.
pub fn retry_delay(attempt: u32) -> Duration {
    FIRST_DELAY
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_DELAY)
}

/// What became of the events so far.
#[derive(Debug, Default)]
pub struct DeliveryCounts {
    /// Answered 2xx.
    pub delivered: AtomicU64,
    /// Given up on: a final answer, attempts used up, or a full queue.
    pub dropped: AtomicU64,
    /// Attempts that failed and were tried again.
    pub retried: AtomicU64,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Webhooks delivered over HTTP(S) from this process.
pub struct HttpWebhooks {
    events: BTreeSet<EventKind>,
    queue: mpsc::Sender<Event>,
    /// What became of the events.
    pub counts: Arc<DeliveryCounts>,
}

/// One receiver, signed for: what every attempt needs, in `herald-local`'s deliveries and
/// in the `webhook` function's.
pub struct WebhookSender {
    url: String,
    secret: Secret,
    client: HttpClient,
}

/// What each delivery needs.
struct Target {
    sender: WebhookSender,
    counts: Arc<DeliveryCounts>,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered 2xx.
    Delivered,
    /// Worth another attempt (a 5xx, 408, 429, timeout or connection failure), and why.
    Retry(String),
    /// Any other answer: not retried, and why.
    Final(String),
}

impl WebhookSender {
    /// A sender to `url`, signing with `secret`, over HTTP or HTTPS (the system's roots).
    pub fn new(url: &str, secret: &Secret) -> std::io::Result<Self> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            url: url.to_owned(),
            secret: secret.clone(),
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// One attempt to deliver `body` as webhook `id`, with a fresh timestamp and signature.
    pub async fn attempt(&self, id: &str, body: &Bytes) -> Attempt {
        let timestamp = now_ms() / 1000;
        let signature = self.secret.sign(id, timestamp, body);
        let request = Request::post(&self.url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(body.clone()));
        let request = match request {
            Ok(request) => request,
            Err(e) => return Attempt::Final(format!("cannot build the request: {e}")),
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.client.request(request)).await {
            Err(_) => Attempt::Retry(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())),
            Ok(Err(e)) => Attempt::Retry(format!("cannot reach the receiver: {e}")),
            Ok(Ok(response)) => {
                let status = response.status();
                if status.is_success() {
                    Attempt::Delivered
                } else if status.is_server_error()
                    || status.as_u16() == 408
                    || status.as_u16() == 429
                {
                    Attempt::Retry(format!("answered {status}"))
                } else {
                    Attempt::Final(format!("answered {status}"))
                }
            }
        }
    }
}

impl HttpWebhooks {
    /// Starts delivering to `settings.url`; the deliveries stop with the runtime.
    pub fn start(settings: &WebhookSettings) -> std::io::Result<Arc<Self>> {
        let counts = Arc::new(DeliveryCounts::default());
        let target = Arc::new(Target {
            sender: WebhookSender::new(&settings.url, &settings.secret)?,
            counts: counts.clone(),
        });
        let (queue, mut waiting) = mpsc::channel::<Event>(QUEUED_EVENTS);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(event) = waiting.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let target = target.clone();
                tokio::spawn(async move {
                    target.deliver(&event).await;
                    drop(slot);
                });
            }
        });
        Ok(Arc::new(Self {
            events: settings.events.clone(),
            queue,
            counts,
        }))
    }
}

impl Webhooks for HttpWebhooks {
    fn emit(&self, event: Event) {
        if !self.events.contains(&event.kind) {
            return;
        }
        if self.queue.try_send(event).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            warn!(
                queued = QUEUED_EVENTS,
                "webhook dropped: the queue of events is full (is the receiver down?)"
            );
        }
    }
}

impl Target {
    async fn deliver(&self, event: &Event) {
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let body = Bytes::from(event.body());
        let mut last = String::new();
        for attempt in 1..=MAX_ATTEMPTS {
            match self.sender.attempt(&id, &body).await {
                Attempt::Delivered => {
                    self.counts.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Attempt::Final(why) => {
                    self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                    warn!(webhook_id = %id, kind = event.kind.as_str(), why, "webhook refused: not retried");
                    return;
                }
                Attempt::Retry(why) if attempt < MAX_ATTEMPTS => {
                    self.counts.retried.fetch_add(1, Ordering::Relaxed);
                    let wait = retry_delay(attempt);
                    info!(webhook_id = %id, attempt, why, wait_ms = wait.as_millis() as u64, "webhook attempt failed: retrying");
                    tokio::time::sleep(wait).await;
                }
                Attempt::Retry(why) => last = why,
            }
        }
        self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        warn!(webhook_id = %id, kind = event.kind.as_str(), attempts = MAX_ATTEMPTS, why = last, "webhook dropped after its last attempt");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_one_second_doubling_up_to_a_minute() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(6), Duration::from_secs(32));
        assert_eq!(retry_delay(7), MAX_DELAY);
        assert_eq!(retry_delay(u32::MAX), MAX_DELAY);
        let total: Duration = (1..MAX_ATTEMPTS).map(retry_delay).sum();
        assert_eq!(total, Duration::from_secs(1 + 2 + 4 + 8 + 16 + 32 + 60));
    }
}
