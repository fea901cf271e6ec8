//! The client of an MQTT broker (3.1.1, through `rumqttc`), for `herald-local`.
//!
//! Outgoing: [`MqttClient::publish`] never waits. While the broker is unreachable it
//! answers [`MqttOutcome::Failed`] at once; otherwise the notification joins a queue bounded
//! in bytes ([`QUEUE_BYTES`]) and in count ([`QUEUED_MESSAGES`]), which one task hands to
//! the client in order, QoS 1. A full queue answers `Failed` too. Every failure is counted;
//! the log says why the broker is unreachable when the link changes, not once per publish.
//!
//! Incoming: with rooms devices may publish to, the client takes the shared subscription
//! `$share/herald/PREFIX/publish/+` after every (re)connection; each accepted message (an
//! allowed room, a JSON body) is handed on through a queue of [`INBOUND_QUEUE`] messages,
//! which the host drains in order into its publish path. A refused or malformed message is
//! logged and counted; so is one that finds the queue full.
//!
//! The session is clean: what the broker or this client held when the link broke is not
//! sent again (QoS 1 holds while the link does). Worst case held in memory: [`QUEUE_BYTES`]
//! queued, plus [`REQUEST_CAPACITY`] + [`IN_FLIGHT`] notifications of at most
//! [`MAX_NOTIFICATION_BYTES`] inside the client, plus [`INBOUND_QUEUE`] device bodies of at
//! most [`MAX_PACKET_BYTES`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{DevicePublish, MqttOutcome, MqttSettings, TopicPublisher, Topics};
use crate::protocol::{MAX_NOTIFICATION_BYTES, Target};

/// Bytes of notifications waiting for the broker, at most.
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Notifications waiting for the broker, at most.
const QUEUED_MESSAGES: usize = 10_000;
/// Requests the client's own channel holds.
const REQUEST_CAPACITY: usize = 64;
/// QoS 1 publishes sent and not yet acknowledged, at most.
const IN_FLIGHT: u16 = 100;
/// The largest packet sent or accepted: a notification, its topic and the header.
const MAX_PACKET_BYTES: usize = MAX_NOTIFICATION_BYTES + 4 * 1024;
/// Device publishes accepted and waiting for the host's publish path, at most.
pub const INBOUND_QUEUE: usize = 1_024;
/// How long the host waits at start for the broker (and the device subscription) before
/// it opens its port anyway, answering `"mqtt":"failed"` until the broker is there.
pub const CONNECT_GRACE: Duration = Duration::from_secs(3);
/// The keep-alive: a silent broker is noticed within one and a half of these.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The wait before reconnecting after a failure; each later one doubles it.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest wait between two attempts to connect.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// What became of the notifications and the device publishes so far.
#[derive(Debug, Default)]
pub struct MqttCounts {
    /// Notifications queued for the broker.
    pub queued: AtomicU64,
    /// Notifications refused: the broker unreachable, or the queue full.
    pub failed: AtomicU64,
    /// Device publishes handed to the host.
    pub accepted: AtomicU64,
    /// Device publishes refused: a room not allowed, a body not JSON, or a full queue.
    pub refused: AtomicU64,
}

/// The link to the broker, as the event loop last saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Link {
    connected: bool,
    /// The device subscription is acknowledged (or there is none to take).
    subscribed: bool,
}

/// One notification on its way to the broker, holding its share of the byte budget.
struct Outgoing {
    topic: String,
    payload: Bytes,
    _budget: OwnedSemaphorePermit,
}

/// A broker's client: publishes notifications on their topics, hands devices' publishes to
/// the host. Its tasks end when it is dropped.
pub struct MqttClient {
    topics: Topics,
    link: watch::Receiver<Link>,
    budget: Arc<Semaphore>,
    queue: mpsc::Sender<Outgoing>,
    tasks: Vec<JoinHandle<()>>,
    /// What became of the notifications and device publishes.
    pub counts: Arc<MqttCounts>,
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl MqttClient {
    /// Connects to the broker in the background (`client_id` must be unique among the
    /// broker's clients: one per instance). The receiver yields the devices' accepted
    /// publishes, in the order the broker gave them.
    pub fn start(
        settings: &MqttSettings,
        client_id: &str,
    ) -> (Arc<Self>, mpsc::Receiver<DevicePublish>) {
        let broker = &settings.broker;
        let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
            .set_inflight(IN_FLIGHT)
            .set_request_channel_capacity(REQUEST_CAPACITY);
        if let Some((user, password)) = &broker.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        if broker.tls {
            options.set_transport(Transport::tls_with_config(tls_config()));
        }
        let (client, events) = AsyncClient::new(options, REQUEST_CAPACITY);
        let counts = Arc::new(MqttCounts::default());
        let subscribing = !settings.publish_rooms.is_empty();
        let (link_tx, link) = watch::channel(Link::default());
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        let (queue, waiting) = mpsc::channel(QUEUED_MESSAGES);
        let event_loop = EventLoop {
            settings: settings.clone(),
            client: client.clone(),
            link: link_tx,
            inbound: inbound_tx,
            counts: counts.clone(),
            subscribing,
        };
        let tasks = vec![
            tokio::spawn(event_loop.run(events)),
            tokio::spawn(forward(client, waiting)),
        ];
        let this = Arc::new(Self {
            topics: settings.topics(),
            link,
            budget: Arc::new(Semaphore::new(QUEUE_BYTES)),
            queue,
            tasks,
            counts,
        });
        (this, inbound)
    }

    /// Waits up to `patience` for the broker to accept the connection and, with rooms
    /// devices may publish to, the subscription; whether it did.
    pub async fn ready_within(&self, patience: Duration) -> bool {
        let mut link = self.link.clone();
        tokio::time::timeout(patience, link.wait_for(|l| l.connected && l.subscribed))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// Whether the broker is connected now.
    pub fn connected(&self) -> bool {
        self.link.borrow().connected
    }

    fn refuse(&self) -> Option<MqttOutcome> {
        self.counts.failed.fetch_add(1, Ordering::Relaxed);
        Some(MqttOutcome::Failed)
    }
}

impl TopicPublisher for MqttClient {
    fn publish(&self, target: &Target, payload: &Bytes) -> Option<MqttOutcome> {
        let topic = self.topics.of(target)?;
        if !self.connected() {
            return self.refuse();
        }
        // A notification is at most MAX_NOTIFICATION_BYTES, far below u32::MAX.
        let bytes = u32::try_from(payload.len().max(1)).unwrap_or(u32::MAX);
        let Ok(budget) = self.budget.clone().try_acquire_many_owned(bytes) else {
            warn!(%topic, "MQTT queue full (the broker is slow): notification not sent");
            return self.refuse();
        };
        let outgoing = Outgoing {
            topic,
            payload: payload.clone(),
            _budget: budget,
        };
        if let Err(full) = self.queue.try_send(outgoing) {
            let topic = match &full {
                mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o) => {
                    &o.topic
                }
            };
            warn!(%topic, "MQTT queue full (the broker is slow): notification not sent");
            return self.refuse();
        }
        self.counts.queued.fetch_add(1, Ordering::Relaxed);
        Some(MqttOutcome::Queued)
    }
}

/// Hands queued notifications to the client in order; each gives its bytes back once the
/// client holds it.
async fn forward(client: AsyncClient, mut waiting: mpsc::Receiver<Outgoing>) {
    while let Some(outgoing) = waiting.recv().await {
        let Outgoing { topic, payload, .. } = &outgoing;
        if let Err(e) = client
            .publish_bytes(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .await
        {
            warn!(%topic, error = %e, "MQTT client refused a notification");
        }
    }
}

/// The rustls configuration of an `mqtts://` broker: the system's roots, as the webhooks
/// and the AWS SDK use them.
fn tls_config() -> TlsConfiguration {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        warn!(error = %error, "a system root certificate could not be read");
    }
    roots.add_parsable_certificates(found.certs);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    // The provider is rustls's own, which supports its default versions.
    .expect("aws-lc-rs supports TLS 1.2 and 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConfiguration::Rustls(Arc::new(config))
}

/// The task that drives the connection: reconnects with backoff, renews the device
/// subscription, and sorts devices' publishes.
struct EventLoop {
    settings: MqttSettings,
    client: AsyncClient,
    link: watch::Sender<Link>,
    inbound: mpsc::Sender<DevicePublish>,
    counts: Arc<MqttCounts>,
    subscribing: bool,
}

impl EventLoop {
    async fn run(self, mut events: rumqttc::EventLoop) {
        let broker = self.settings.broker.to_string();
        let mut retry = FIRST_RETRY;
        let mut last_error: Option<String> = None;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    info!(%broker, "MQTT broker connected");
                    retry = FIRST_RETRY;
                    last_error = None;
                    self.link.send_replace(Link {
                        connected: true,
                        subscribed: !self.subscribing,
                    });
                    if self.subscribing {
                        // Through the client's channel, which this loop drains: from a task
                        // of its own, so the loop is never the one waiting on it.
                        let client = self.client.clone();
                        let filter = self.settings.topics().device_filter();
                        tokio::spawn(async move {
                            if let Err(e) = client.subscribe(filter, QoS::AtLeastOnce).await {
                                warn!(error = %e, "MQTT device subscription not sent");
                            }
                        });
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let granted = ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                    if granted {
                        self.link.send_modify(|l| l.subscribed = true);
                    } else {
                        warn!(
                            %broker,
                            filter = %self.settings.topics().device_filter(),
                            "the broker refused the device subscription: no device publish \
                             will arrive (does its ACL allow it?)"
                        );
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    self.device_publish(&publish.topic, &publish.payload);
                }
                Ok(_) => {}
                Err(e) => {
                    let reason = describe(&e);
                    if self.link.borrow().connected {
                        warn!(%broker, error = %reason, "MQTT broker lost: publishes answer \
                              \"mqtt\":\"failed\" until it is back");
                    } else if last_error.as_deref() != Some(reason.as_str()) {
                        warn!(%broker, error = %reason, "MQTT broker unreachable: publishes \
                              answer \"mqtt\":\"failed\" until it is there");
                    }
                    last_error = Some(reason);
                    self.link.send_replace(Link::default());
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// Hands on a device's publish to an allowed room with a JSON body; refuses the rest.
    fn device_publish(&self, topic: &str, payload: &[u8]) {
        let refuse = |reason: &str| {
            self.counts.refused.fetch_add(1, Ordering::Relaxed);
            warn!(%topic, reason, "device publish refused");
        };
        let device = match self.settings.device_rules().check(topic, payload) {
            Ok(device) => device,
            Err(reason) => return refuse(reason),
        };
        match self.inbound.try_send(device) {
            Ok(()) => {
                self.counts.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => refuse("too many device publishes waiting"),
        }
    }
}

/// A connection error as one line.
fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => format!("the broker refused: {code:?}"),
        other => other.to_string(),
    }
}
