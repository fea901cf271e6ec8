//! Every route of the gateway: the demo page, the WebSocket handshake, the fallback
//! readers (with CORS; through the `poll` and `stream` functions in Lambda mode), and the
//! control plane for every other path.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tower::util::MapResponseLayer;

use crate::app::App;
use crate::control_plane::{self, async_invoke::AsyncInvokes};
use crate::readers::lambda as lambda_readers;
use crate::readers::{cors, poll, sse};
use crate::{demo, ws};

/// Every route of the gateway.
pub(crate) fn router(app: Arc<App>, async_invokes: AsyncInvokes) -> Router {
    let control_plane = control_plane::router(app.clone(), async_invokes);
    // In Lambda mode the `poll` and `stream` functions answer the readers, as on AWS.
    let readers = if app.functions.is_some() {
        Router::new()
            .route(
                "/{stage}/events",
                get(lambda_readers::events).options(cors::preflight),
            )
            .route(
                "/{stage}/poll",
                get(lambda_readers::poll).options(cors::preflight),
            )
    } else {
        Router::new()
            .route("/{stage}/events", get(sse::events).options(cors::preflight))
            .route("/{stage}/poll", get(poll::poll).options(cors::preflight))
    }
    .layer(MapResponseLayer::new(cors::allow_any_origin));
    Router::new()
        .route("/", get(demo::page))
        .route(demo::CLIENT_PATH, get(demo::client))
        .route(demo::STATS_PATH, get(demo::stats))
        // Before `/{stage}`: a scrape is the control plane's, never a handshake.
        .route_service(
            &format!("/{}", control_plane::metrics::PATH),
            control_plane.clone(),
        )
        .route("/{stage}", get(ws::handshake::handshake))
        .merge(readers)
        .with_state(app)
        .fallback_service(control_plane)
}
