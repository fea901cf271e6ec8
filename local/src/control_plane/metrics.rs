//! `GET /metrics`: the process's metrics in the Prometheus text format, on the control
//! plane (so the credentials rule is the same as for `@connections` and Invoke: open on
//! loopback without credentials, SigV4 otherwise). What the handlers count is in
//! [`Metrics`]; what only the gateway knows (its sockets and readers, its slow consumers,
//! its webhooks and MQTT copies) is read at each scrape from where it is kept, added here.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald::metrics::{CONTENT_TYPE, HostFamily, Kind, Metrics};
use herald::sinks::mqtt::MqttClient;
use herald::sinks::webhook::DeliveryCounts;

use crate::connection::registry::Registry;

/// The path operators scrape.
pub(crate) const PATH: &str = "metrics";

/// Adds what the gateway keeps itself to `metrics`.
pub(crate) fn observe(
    metrics: &Metrics,
    registry: &Arc<Registry>,
    webhooks: Option<Arc<DeliveryCounts>>,
    mqtt: Option<Arc<MqttClient>>,
) {
    let sockets = registry.clone();
    metrics.host.add(HostFamily {
        name: "herald_connections",
        help: "Clients connected to this process, by transport (reader: SSE or long poll)",
        kind: Kind::Gauge,
        label: ("transport", &["websocket", "reader"]),
        read: Box::new(move || {
            let (websockets, readers) = sockets.by_transport();
            vec![websockets as u64, readers as u64]
        }),
    });
    let slow = registry.clone();
    metrics.host.add(HostFamily {
        name: "herald_slow_consumer_drops",
        help: "Connections closed for not reading what they were sent",
        kind: Kind::Counter,
        label: ("reason", &["queue_full"]),
        read: Box::new(move || vec![slow.slow_consumers()]),
    });
    if let Some(counts) = webhooks {
        metrics.host.add(HostFamily {
            name: "herald_webhooks",
            help: "Webhook deliveries, by outcome",
            kind: Kind::Counter,
            label: ("outcome", &["delivered", "dropped", "retried"]),
            read: Box::new(move || {
                [&counts.delivered, &counts.dropped, &counts.retried]
                    .map(|n| n.load(Ordering::Relaxed))
                    .to_vec()
            }),
        });
    }
    if let Some(client) = mqtt {
        metrics.host.add(HostFamily {
            name: "herald_mqtt_copies",
            help: "Copies of notifications for MQTT, by outcome",
            kind: Kind::Counter,
            label: ("outcome", &["queued", "failed"]),
            read: Box::new(move || {
                let counts = &client.counts;
                vec![
                    counts.queued.load(Ordering::Relaxed),
                    counts.failed.load(Ordering::Relaxed),
                ]
            }),
        });
    }
}

/// The answer to a scrape.
pub(crate) fn scrape(metrics: &Metrics) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        metrics.render(),
    )
        .into_response()
}
