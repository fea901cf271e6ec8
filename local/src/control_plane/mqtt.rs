//! MQTT for `herald-local`: the broker's client, started at the root before the port opens
//! (waiting up to [`CONNECT_GRACE`] for the broker, then opening anyway: a broker that is
//! down costs WebSocket delivery nothing, and publishes answer `"mqtt":"failed"` until it
//! is there), and the task that turns devices' publishes into publishes to their rooms,
//! in the order the broker gave them, through the same handler the Invoke API calls (so the
//! same limits and the same history apply, and Lambda mode runs them in the binary).

use std::sync::Arc;

use herald::protocol::{PublishRequest, Target};
use herald::sinks::mqtt::{CONNECT_GRACE, DevicePublish, MqttClient, MqttSettings};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::functions::SharedHandlers;

/// The broker's client and, until [`MqttLink::serve`] takes them, the devices' publishes.
pub(crate) struct MqttLink {
    /// The client, for the handlers' `Services`.
    pub(crate) client: Arc<MqttClient>,
    devices: mpsc::Receiver<DevicePublish>,
}

impl MqttLink {
    /// Connects to the broker as `herald-local-INSTANCE`.
    pub(crate) async fn start(settings: &MqttSettings, instance: &str) -> Self {
        let (client, devices) = MqttClient::start(settings, &format!("herald-local-{instance}"));
        if client.ready_within(CONNECT_GRACE).await {
            tracing::info!(broker = %settings.broker, prefix = %settings.prefix, "MQTT on");
        } else {
            tracing::warn!(
                broker = %settings.broker,
                "MQTT broker not ready after {CONNECT_GRACE:?}: starting without it; \
                 publishes answer \"mqtt\":\"failed\" until it is"
            );
        }
        Self { client, devices }
    }

    /// Publishes each device's message to its room through `handlers`, one at a time,
    /// until `stop`.
    pub(crate) fn serve(self, handlers: SharedHandlers, stop: CancellationToken) {
        let mut devices = self.devices;
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => break,
                    next = devices.recv() => next,
                };
                let Some(DevicePublish { room, data }) = next else {
                    break;
                };
                let request = PublishRequest::new(Target::Room(room.clone()), data);
                if let Err(e) = handlers.publish(request.to_json()).await {
                    tracing::warn!(room = %room.as_str(), error = %e, "device publish failed");
                }
            }
        });
    }
}
