//! Sinks beyond sockets: where Herald tells other systems what happened, off the critical
//! path of connections and publishes. Each sink is built at a host's composition root from
//! the configuration and handed to the handlers in [`Services`](crate::handlers::Services).
//!
//! # Layout
//!
//! | file | what |
//! |---|---|
//! | `webhook/` | Standard Webhooks: events, signatures, delivery with retries |
//! | `mqtt/` | MQTT: topics, settings, the publish path's capability; `broker.rs` a broker's client, `iot.rs` AWS IoT Core's |

pub mod mqtt;
pub mod webhook;
