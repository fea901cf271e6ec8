//! The heartbeat: keeps this instance's records and marker alive, and catches a loss of
//! them that the subscription's connection did not see (a flush, expiry in a partition).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Cluster;
use super::registration::{Pass, register_all};

/// Keeps this instance's connections registered: every heartbeat, renews each live socket's
/// record and this instance's marker for one record lifetime, re-creating a record (and its
/// rooms) that is missing, and relearns the cluster's instances. A missing marker means the
/// store lost this instance's records: the restorer takes over. A crashed instance stops
/// renewing, so its records vanish within one lifetime.
pub async fn heartbeat(cluster: Arc<Cluster>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(cluster.heartbeat) => {}
        }
        if cluster.bus.ping().await.is_err() || cluster.registration.is_restoring() {
            continue;
        }
        match cluster.is_marked().await {
            Ok(true) => {}
            Ok(false) => {
                cluster.registration.lost_marker();
                continue;
            }
            Err(e) => {
                debug!(error = %e, "heartbeat cannot reach the store");
                continue;
            }
        }
        let registered = register_all(
            &cluster.registry,
            &*cluster.store,
            &cluster.instance,
            cluster.lifetime,
            Pass::Renew,
        )
        .await;
        match registered {
            Ok(0) => {}
            Ok(restored) => info!(restored, "re-registered connections missing from the store"),
            Err(e) => debug!(error = %e, "heartbeat cannot reach the store"),
        }
        // The marker says every record and claim of this instance is in the store: it is
        // renewed only when the claims were, or a lapsed claim would go unnoticed.
        if let Err(e) = cluster.renew_claims().await {
            debug!(error = %e, "heartbeat cannot renew the rooms' claims");
            continue;
        }
        if let Err(e) = cluster.mark_registered().await {
            debug!(error = %e, "heartbeat cannot renew the marker");
        }
        cluster.refresh_peers().await;
        // After a resharding the markers go where the masters are now, at once, before a
        // look for them there takes their absence for a loss.
        match cluster.markers.learn().await {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = cluster.mark_registered().await {
                    debug!(error = %e, "heartbeat cannot move the marker");
                }
            }
            Err(e) => debug!(error = %e, "heartbeat cannot learn the cluster's masters"),
        }
    }
}
