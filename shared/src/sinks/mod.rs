//! Sinks beyond sockets: where Herald tells other systems what happened, off the critical
//! path of connections and publishes. Each sink is built at a host's composition root from
//! the configuration and handed to the handlers in [`Services`](crate::handlers::Services).
//!
//! # Layout
//!
//! | file | what |
//! |---|---|
//! | `webhook/` | Standard Webhooks: events, signatures, delivery with retries |

pub mod webhook;
