//! Metrics: what operators scrape and alert on, counted where it happens and written in
//! the Prometheus text format by `prometheus-client` (never by hand). One [`Metrics`] per
//! process, built at the composition root and shared by the handlers (publishes,
//! deliveries, refusals, history) and the host (connections by transport, slow consumers,
//! and what its sinks report: webhooks and MQTT copies, read at each scrape).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `herald_connections` | `transport`: `websocket`, `reader` (SSE or long poll) | open now, on this process (`herald-local`) |
//! | `herald_publishes_total` | `target`: `room`, `user`, `connections`, `broadcast` | publishes taken (Invoke, socket, device) |
//! | `herald_deliveries_total` | `outcome`: `delivered`, `gone`, `failed` | posts of those publishes' notifications |
//! | `herald_publish_duration_seconds` | | from a publish taken to its answer |
//! | `herald_refusals_total` | `reason`: `rate_limited`, `limit_exceeded`, `forbidden` | client requests refused |
//! | `herald_history_reads_total` | | history reads (`history`, and recoveries) |
//! | `herald_recoveries_total` | `recovered`: `true`, `false` | subscribes and recovers with `since` |
//! | `herald_store_errors_total` | | store calls that failed |
//! | `herald_slow_consumer_drops_total` | | connections closed for not reading (`herald-local`) |
//! | `herald_webhooks_total` | `outcome`: `delivered`, `dropped`, `retried` | webhook deliveries (`herald-local`) |
//! | `herald_mqtt_copies_total` | `outcome`: `queued`, `failed` | copies for MQTT (`herald-local`) |
//!
//! The first counts, and what the host adds ([`HostFamily`]: read at each scrape from
//! where the host keeps them), are written by one `prometheus-client` registry.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::protocol::Target;

/// The `Content-Type` of what [`Metrics::render`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One label: its name and value.
type Labels = Vec<(&'static str, &'static str)>;

/// Publish durations' buckets: 0.5 ms doubling to about 16 s.
const DURATION_BUCKETS: (f64, f64, u16) = (0.000_5, 2.0, 16);

/// `herald_publishes_total`'s `target` values.
const TARGETS: [&str; 4] = ["room", "user", "connections", "broadcast"];
/// `herald_refusals_total`'s `reason` values, by refusal.
const REASONS: [(Refusal, &str); 3] = [
    (Refusal::RateLimited, "rate_limited"),
    (Refusal::LimitExceeded, "limit_exceeded"),
    (Refusal::Forbidden, "forbidden"),
];
/// `herald_deliveries_total`'s `outcome` values.
const OUTCOMES: [&str; 3] = ["delivered", "gone", "failed"];
/// `herald_recoveries_total`'s `recovered` values.
const RECOVERED: [&str; 2] = ["true", "false"];

/// A client request refused, by the reason the client was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over a rate limit.
    RateLimited,
    /// Over a limit of rooms, connections or size.
    LimitExceeded,
    /// Not allowed by the token.
    Forbidden,
}

/// How a count read at each scrape is exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only ever grows (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Counts the host keeps where they happen (its sockets, its sinks), read at each scrape:
/// one family, a label and its values, and what reads them, in that order.
pub struct HostFamily {
    /// The metric's name (without `_total`).
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// The label's name, and its values in the order `read` answers.
    pub label: (&'static str, &'static [&'static str]),
    /// Reads the current values.
    pub read: Box<dyn Fn() -> Vec<u64> + Send + Sync>,
}

/// The families the host added.
#[derive(Default)]
pub struct HostCounts {
    families: std::sync::Mutex<Vec<HostFamily>>,
}

impl std::fmt::Debug for HostCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostCounts")
    }
}

impl HostCounts {
    /// Adds `family`, read at each scrape from now on.
    pub fn add(&self, family: HostFamily) {
        self.families
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(family);
    }
}

impl Collector for HostCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        for family in families.iter() {
            let values = (family.read)();
            let (key, names) = family.label;
            match family.kind {
                Kind::Counter => {
                    let kind = ConstCounter::new(0u64).metric_type();
                    let mut out =
                        encoder.encode_descriptor(family.name, family.help, None, kind)?;
                    for (value_name, value) in names.iter().zip(values) {
                        let labels: Labels = vec![(key, value_name)];
                        ConstCounter::new(value).encode(out.encode_family(&labels)?)?;
                    }
                }
                Kind::Gauge => {
                    let kind = ConstGauge::new(0i64).metric_type();
                    let mut out =
                        encoder.encode_descriptor(family.name, family.help, None, kind)?;
                    for (value_name, value) in names.iter().zip(values) {
                        let labels: Labels = vec![(key, value_name)];
                        let value = i64::try_from(value).unwrap_or(i64::MAX);
                        ConstGauge::new(value).encode(out.encode_family(&labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    publishes: Family<Labels, Counter>,
    deliveries: Family<Labels, Counter>,
    publish_seconds: Histogram,
    refusals: Family<Labels, Counter>,
    history_reads: Counter,
    recoveries: Family<Labels, Counter>,
    store_errors: Counter,
    /// What the host counts itself: its connections, its slow consumers, its sinks.
    pub host: Arc<HostCounts>,
    /// Publishes' durations in all, in microseconds (the histogram's sum, readable).
    publish_micros: std::sync::atomic::AtomicU64,
    /// The counts the last EMF line was written at.
    last_emf: std::sync::Mutex<Snapshot>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Every metric, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let publishes = Family::<Labels, Counter>::default();
        registry.register(
            "herald_publishes",
            "Publishes taken, by target",
            publishes.clone(),
        );
        let deliveries = Family::<Labels, Counter>::default();
        registry.register(
            "herald_deliveries",
            "Posts of published notifications, by outcome",
            deliveries.clone(),
        );
        let (start, factor, length) = DURATION_BUCKETS;
        let publish_seconds = Histogram::new(exponential_buckets(start, factor, length));
        registry.register(
            "herald_publish_duration_seconds",
            "From a publish taken to its answer",
            publish_seconds.clone(),
        );
        let refusals = Family::<Labels, Counter>::default();
        registry.register(
            "herald_refusals",
            "Client requests refused, by reason",
            refusals.clone(),
        );
        let history_reads = Counter::default();
        registry.register(
            "herald_history_reads",
            "History reads",
            history_reads.clone(),
        );
        let recoveries = Family::<Labels, Counter>::default();
        registry.register(
            "herald_recoveries",
            "Subscribes and recovers after a position, by whether all was recovered",
            recoveries.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "herald_store_errors",
            "Store calls that failed",
            store_errors.clone(),
        );
        let host = Arc::new(HostCounts::default());
        registry.register_collector(Box::new(host.clone()));
        Self {
            registry,
            publishes,
            deliveries,
            publish_seconds,
            refusals,
            history_reads,
            recoveries,
            store_errors,
            host,
            publish_micros: std::sync::atomic::AtomicU64::new(0),
            last_emf: std::sync::Mutex::new(Snapshot::default()),
        }
    }

    /// A publish to `target` was answered after `took`, with these posts' outcomes.
    pub fn published(
        &self,
        target: &Target,
        took: Duration,
        delivered: u64,
        gone: u64,
        failed: u64,
    ) {
        let target = match target {
            Target::Room(_) => TARGETS[0],
            Target::User(_) => TARGETS[1],
            Target::Connections(_) => TARGETS[2],
            Target::Broadcast => TARGETS[3],
        };
        self.publishes
            .get_or_create(&vec![("target", target)])
            .inc();
        for (outcome, n) in OUTCOMES.into_iter().zip([delivered, gone, failed]) {
            self.deliveries
                .get_or_create(&vec![("outcome", outcome)])
                .inc_by(n);
        }
        self.publish_seconds.observe(took.as_secs_f64());
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.publish_micros
            .fetch_add(micros, std::sync::atomic::Ordering::Relaxed);
    }

    /// A client request was refused.
    pub fn refused(&self, refusal: Refusal) {
        let (_, reason) = REASONS
            .into_iter()
            .find(|(r, _)| *r == refusal)
            .expect("every refusal has its reason");
        self.refusals.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// History was read.
    pub fn history_read(&self) {
        self.history_reads.inc();
    }

    /// A recovery after a position: everything missed was there, or not.
    pub fn recovered(&self, all: bool) {
        let recovered = RECOVERED[usize::from(!all)];
        self.recoveries
            .get_or_create(&vec![("recovered", recovered)])
            .inc();
    }

    /// A store call failed.
    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// Every metric, in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("metrics encode into a String");
        text
    }
}

/// The CloudWatch namespace the Lambda functions' metrics go to.
pub const EMF_NAMESPACE: &str = "Herald";
/// The dimension every EMF metric carries: the function's name.
pub const EMF_DIMENSION: &str = "Function";

/// The cumulative counts one EMF line is the difference of: [`EMF_COUNTS`] in order, and
/// the publishes' time in all.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Snapshot {
    counts: [u64; EMF_COUNTS.len()],
    publish_seconds: f64,
}

/// The EMF metrics that are counts (unit `Count`), by their name in CloudWatch, in the
/// order [`Metrics::snapshot`] reads them.
const EMF_COUNTS: [&str; 8] = [
    "Publishes",
    "Delivered",
    "Gone",
    "Failed",
    "Refused",
    "HistoryReads",
    "Recoveries",
    "StoreErrors",
];
/// The EMF metric of the publishes' time, in milliseconds.
const EMF_PUBLISH_MS: &str = "PublishMilliseconds";

/// What publishes have done since the process started, as `/metrics` counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// `herald_publishes_total`, every target.
    pub publishes: u64,
    /// `herald_deliveries_total{outcome="delivered"}`.
    pub delivered: u64,
    /// `herald_deliveries_total{outcome="gone"}`.
    pub gone: u64,
    /// `herald_deliveries_total{outcome="failed"}`.
    pub failed: u64,
}

impl Metrics {
    /// The publish and delivery counts, for a reader that wants numbers, not the text format.
    pub fn totals(&self) -> Totals {
        let [publishes, delivered, gone, failed, ..] = self.snapshot().counts;
        Totals {
            publishes,
            delivered,
            gone,
            failed,
        }
    }

    fn snapshot(&self) -> Snapshot {
        let sum = |family: &Family<Labels, Counter>, key: &'static str, values: &[&'static str]| {
            values
                .iter()
                .map(|value| family.get_or_create(&vec![(key, *value)]).get())
                .sum::<u64>()
        };
        let [delivered, gone, failed] = OUTCOMES.map(|o| sum(&self.deliveries, "outcome", &[o]));
        Snapshot {
            counts: [
                sum(&self.publishes, "target", &TARGETS),
                delivered,
                gone,
                failed,
                sum(&self.refusals, "reason", &REASONS.map(|(_, reason)| reason)),
                self.history_reads.get(),
                sum(&self.recoveries, "recovered", &RECOVERED),
                self.store_errors.get(),
            ],
            publish_seconds: self
                .publish_micros
                .load(std::sync::atomic::Ordering::Relaxed) as f64
                / 1e6,
        }
    }

    /// One CloudWatch Embedded Metric Format line with what happened since the last one
    /// (the Lambda functions write one per invocation): namespace [`EMF_NAMESPACE`], one
    /// dimension, [`EMF_DIMENSION`] = `function`.
    pub fn emf_line(&self, function: &str, at_ms: i64) -> String {
        let now = self.snapshot();
        let mut last = self.last_emf.lock().unwrap_or_else(|e| e.into_inner());
        let mut line = serde_json::Map::new();
        let metrics: Vec<serde_json::Value> = EMF_COUNTS
            .iter()
            .map(|name| serde_json::json!({"Name": name, "Unit": "Count"}))
            .chain([serde_json::json!({"Name": EMF_PUBLISH_MS, "Unit": "Milliseconds"})])
            .collect();
        line.insert(
            "_aws".into(),
            serde_json::json!({
                "Timestamp": at_ms,
                "CloudWatchMetrics": [{
                    "Namespace": EMF_NAMESPACE,
                    "Dimensions": [[EMF_DIMENSION]],
                    "Metrics": metrics,
                }],
            }),
        );
        line.insert(EMF_DIMENSION.into(), function.into());
        for ((name, count), before) in EMF_COUNTS.iter().zip(now.counts).zip(last.counts) {
            line.insert((*name).into(), count.saturating_sub(before).into());
        }
        let publish_ms = ((now.publish_seconds - last.publish_seconds) * 1000.0).max(0.0);
        line.insert(EMF_PUBLISH_MS.into(), publish_ms.into());
        *last = now;
        serde_json::Value::Object(line).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RoomName;

    #[test]
    fn counts_move_and_render_in_the_text_format() {
        let metrics = Metrics::new();
        let room = Target::Room(RoomName::parse("orders").unwrap());
        metrics.published(&room, Duration::from_millis(3), 5, 1, 0);
        metrics.refused(Refusal::Forbidden);
        metrics.recovered(false);
        metrics.host.add(HostFamily {
            name: "herald_connections",
            help: "Clients connected",
            kind: Kind::Gauge,
            label: ("transport", &["websocket", "reader"]),
            read: Box::new(|| vec![2, 1]),
        });
        metrics.host.add(HostFamily {
            name: "herald_webhooks",
            help: "Webhook deliveries",
            kind: Kind::Counter,
            label: ("outcome", &["delivered", "dropped", "retried"]),
            read: Box::new(|| vec![7, 0, 2]),
        });
        let text = metrics.render();
        for line in [
            "herald_connections{transport=\"websocket\"} 2",
            "herald_connections{transport=\"reader\"} 1",
            "herald_publishes_total{target=\"room\"} 1",
            "herald_deliveries_total{outcome=\"delivered\"} 5",
            "herald_deliveries_total{outcome=\"gone\"} 1",
            "herald_publish_duration_seconds_count 1",
            "herald_refusals_total{reason=\"forbidden\"} 1",
            "herald_recoveries_total{recovered=\"false\"} 1",
            "herald_store_errors_total 0",
            "herald_webhooks_total{outcome=\"delivered\"} 7",
            "herald_webhooks_total{outcome=\"retried\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn an_emf_line_carries_what_happened_since_the_last() {
        let metrics = Metrics::new();
        let room = Target::Room(RoomName::parse("orders").unwrap());
        metrics.published(&room, Duration::from_millis(4), 3, 1, 0);
        metrics.refused(Refusal::RateLimited);
        let first: serde_json::Value =
            serde_json::from_str(&metrics.emf_line("publish", 1_796_000_000_000)).unwrap();
        let aws = &first["_aws"];
        assert_eq!(aws["Timestamp"], 1_796_000_000_000i64);
        let directive = &aws["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], EMF_NAMESPACE);
        assert_eq!(
            directive["Dimensions"],
            serde_json::json!([[EMF_DIMENSION]])
        );
        let names: Vec<&str> = directive["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        let mut expected = EMF_COUNTS.to_vec();
        expected.push(EMF_PUBLISH_MS);
        assert_eq!(names, expected);
        // Every metric a directive names is a member of the line, as EMF requires.
        for name in names {
            assert!(first.get(name).is_some(), "{name}");
        }
        assert_eq!(first[EMF_DIMENSION], "publish");
        assert_eq!(
            (
                &first["Publishes"],
                &first["Delivered"],
                &first["Gone"],
                &first["Refused"]
            ),
            (
                &serde_json::json!(1),
                &serde_json::json!(3),
                &serde_json::json!(1),
                &serde_json::json!(1)
            )
        );
        assert!((first["PublishMilliseconds"].as_f64().unwrap() - 4.0).abs() < 0.01);

        let second: serde_json::Value =
            serde_json::from_str(&metrics.emf_line("publish", 1_796_000_000_100)).unwrap();
        assert_eq!(second["Publishes"], 0, "nothing happened since: {second}");
        assert_eq!(second["PublishMilliseconds"], 0.0);
    }
}
