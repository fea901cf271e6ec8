//! The heartbeat: keeps this instance's connections registered in the shared store, and
//! puts back what an emptied Redis lost.

use std::sync::Arc;
use std::time::Duration;

use herald::ids::now_ms;
use herald::store::{Connection, ConnectionStore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Cluster;

/// Keeps this instance's connections registered: every `interval`, refreshes each live
/// socket's record to expire `ttl` from now, and re-creates the record and its rooms when
/// it is missing (Redis restarted empty, or the record expired during an outage). A
/// crashed instance stops refreshing, so its records vanish within `ttl`.
pub async fn heartbeat(
    cluster: Arc<Cluster>,
    store: Arc<dyn ConnectionStore>,
    interval: Duration,
    ttl: Duration,
    stop: CancellationToken,
) {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let (registry, instance) = (cluster.registry.clone(), cluster.instance.clone());
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        cluster.keepalive().await;
        let mut restored = 0usize;
        for socket in registry.all() {
            if socket.closing.is_cancelled() {
                continue;
            }
            let meta = &socket.meta;
            let expires_at = now_ms() + ttl_ms;
            match store.refresh(&meta.id, expires_at).await {
                Ok(true) => {}
                Ok(false) => {
                    let Some(user) = meta.context.get("sub").and_then(|v| v.as_str()) else {
                        continue;
                    };
                    let record = Connection {
                        id: meta.id.clone(),
                        user: user.to_owned(),
                        source_ip: Some(meta.source_ip.clone()),
                        connected_at: meta.connected_at,
                        expires_at,
                        instance: Some(instance.clone()),
                    };
                    if let Err(e) = store.add(&record).await {
                        debug!(error = %e, "cannot re-register yet");
                        break;
                    }
                    for room in socket.rooms() {
                        if let Err(e) = store.join(&meta.id, &room).await {
                            debug!(error = %e, "cannot re-join yet");
                        }
                    }
                    restored += 1;
                }
                Err(e) => {
                    debug!(error = %e, "heartbeat cannot reach the store");
                    break;
                }
            }
        }
        if restored > 0 {
            info!(restored, "re-registered connections missing from the store");
        }
    }
}
