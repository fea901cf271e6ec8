//! `herald-local`'s composition root: every component built from one [`Settings`] value,
//! before the port opens: auth (or dev mode), the store (through `herald::compose`, as the
//! Lambda functions open theirs), on Redis this instance's place in the cluster, the push
//! path, how the control plane is guarded, and the state the routes share; then the
//! gateway that serves them ([`Ready::serve`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use herald::auth::{AuthConfig, JwtKey, Verifier};
use herald::compose::{self, BuildError, Host};
use herald::config::{Config, ConfigError};
use herald::gateway::{ApiGatewayManagement, Gateway};
use herald::handlers::Services;
use herald::sinks::webhook::{HttpWebhooks, RoomEvents, SharedWebhooks};
use herald::store::{ConnectionStore, StoreSettings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{
    App, AuthMode, ControlPlane, ControlPlaneMode, HEARTBEATS_PER_LIFETIME, Settings, StartError,
};
use crate::cluster::tracking::TrackingStore;
use crate::cluster::{self, Cluster, ClusterSettings, Hosts, Registration};
use crate::connection::events::EventFactory;
use crate::connection::mirror::MirroringStore;
use crate::connection::registry::Registry;
use crate::connection::runtime::SocketRuntime;
use crate::control_plane::async_invoke::AsyncInvokes;
use crate::control_plane::delivery_queue::DeliveryQueue;
use crate::control_plane::faults::FaultyGateway;
use crate::control_plane::metrics;
use crate::control_plane::mqtt::MqttLink;
use crate::control_plane::page_queue::LocalPageQueue;
use crate::functions::lambda::{self, ColdStart, Endpoints, Functions};
use crate::functions::{InProcess, SharedHandlers};
use crate::{routes, serve};

/// How long the dev token is valid.
const DEV_TOKEN_LIFETIME_SECS: i64 = 24 * 3600;
/// The user the dev token names.
const DEV_USER: &str = "dev";
pub use herald::auth::MIN_HS256_SECRET_BYTES;
/// The API id in every event.
const API_ID: &str = "herald-local";

/// What start-up assembles before the port opens.
struct Parts {
    settings: Settings,
    auth: AuthMode,
    verifier: Verifier,
    services: Services,
    registry: Arc<Registry>,
    router: Arc<dyn Gateway>,
    /// With a shared store: the cluster, whose heartbeat keeps this instance registered.
    heartbeat: Option<Arc<Cluster>>,
    /// With MQTT: the broker's client and the devices' publishes.
    mqtt: Option<MqttLink>,
}

/// The configured key, or dev mode: a random secret that lives only in this process, and a
/// token signed with it for user `dev`, who may subscribe and publish to every room.
fn auth(settings: &mut Settings) -> Result<(AuthConfig, AuthMode), StartError> {
    if let Some(auth) = settings.config.auth.clone() {
        return Ok((auth, AuthMode::Configured));
    }
    // 244 random bits from the OS, never written anywhere but this process.
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let token = herald::auth::sign_hs256(
        secret.as_bytes(),
        DEV_USER,
        &["*"],
        &["*"],
        DEV_TOKEN_LIFETIME_SECS,
    )?;
    let config = AuthConfig {
        key: JwtKey::Secret(secret.into_bytes()),
        issuer: None,
        audience: None,
    };
    settings.config.auth = Some(config.clone());
    Ok((config, AuthMode::Dev { token }))
}

/// Sets up auth (or dev mode), the store and, on Redis, this instance's place in the
/// cluster: everything that must be ready before the port opens.
async fn assemble(mut settings: Settings) -> Result<Parts, StartError> {
    let (auth_config, auth) = auth(&mut settings)?;
    let verifier = Verifier::new(&auth_config)?;
    let registry = Arc::new(Registry::new(settings.limits.outbound_queue));
    // Several instances share Redis only when it is the store they were configured with
    // (a store handed in by a test stays this instance's own).
    let (store, redis) = match settings.store.clone() {
        Some(store) => (store, None),
        None => {
            let store_settings = compose::store_settings(&settings.config, Host::Local)?;
            let store = compose::open(&store_settings).await?;
            let redis = match store_settings {
                StoreSettings::Redis(redis) => Some(redis),
                _ => None,
            };
            (store, redis)
        }
    };
    // Webhooks first: room events are reported by the store every path below writes
    // through (handlers, fan-out, the cluster's clean-ups).
    refuse_lambda_only_settings(&settings.config)?;
    let (webhooks, webhook_counts) = match &settings.config.webhook {
        Some(webhook) => {
            let http = HttpWebhooks::start(webhook).map_err(StartError::Webhooks)?;
            let counts = http.counts.clone();
            let webhooks: SharedWebhooks = http;
            (Some(webhooks), Some(counts))
        }
        None => (None, None),
    };
    let store: Arc<dyn ConnectionStore> = match &webhooks {
        Some(webhooks) => Arc::new(RoomEvents::new(store, webhooks.clone())),
        None => store,
    };
    // On a shared store a record lives a few heartbeats: the cluster renews it for that
    // long, and the handlers write it with that lifetime.
    let lifetime = settings.heartbeat * HEARTBEATS_PER_LIFETIME;
    let (store, router, heartbeat): (Arc<dyn ConnectionStore>, Arc<dyn Gateway>, _) =
        if let Some(redis) = redis {
            let cluster_settings = ClusterSettings {
                redis,
                instance: settings.instance_id.clone(),
                heartbeat: settings.heartbeat,
                lifetime,
            };
            let registration = Arc::new(Registration::default());
            let hosts = Arc::new(
                Hosts::connect(&cluster_settings)
                    .await
                    .map_err(StartError::Cluster)?,
            );
            let tracked: Arc<dyn ConnectionStore> = Arc::new(TrackingStore::new(
                store,
                registry.clone(),
                registration.clone(),
                hosts.clone(),
            ));
            let cluster = Cluster::start(
                &cluster_settings,
                registry.clone(),
                tracked.clone(),
                registration,
                hosts,
            )
            .await
            .map_err(StartError::Cluster)?;
            (tracked, cluster.clone(), Some(cluster))
        } else {
            let mirrored: Arc<dyn ConnectionStore> =
                Arc::new(MirroringStore::new(store, registry.clone()));
            (mirrored, registry.clone(), None)
        };
    let mut services = compose::services(store, &settings.config);
    services.webhooks = webhooks;
    if heartbeat.is_some() {
        services.instance = Some(settings.instance_id.clone());
        services.limits.connection_lifetime = lifetime;
    }
    let mqtt = match &settings.config.mqtt {
        Some(mqtt) => {
            let link = MqttLink::start(mqtt, &settings.instance_id).await;
            services.mqtt = Some(link.client.clone());
            Some(link)
        }
        None => None,
    };
    metrics::observe(
        &services.metrics,
        &registry,
        webhook_counts,
        mqtt.as_ref().map(|link| link.client.clone()),
    );
    Ok(Parts {
        settings,
        auth,
        verifier,
        services,
        registry,
        router,
        heartbeat,
        mqtt,
    })
}

/// How the control plane is guarded on `addr`; refused when it would be open beyond
/// loopback without being asked to.
fn control_plane_mode(
    control_plane: &ControlPlane,
    addr: SocketAddr,
) -> Result<ControlPlaneMode, StartError> {
    // Blank credentials (set from empty variables) are none: signing with an empty key
    // must never pass for a guarded control plane.
    let credentials = control_plane.credentials.as_ref().filter(|c| c.is_usable());
    match (credentials, addr.ip().is_loopback()) {
        (Some(_), _) => Ok(ControlPlaneMode::Signed),
        (None, true) => Ok(ControlPlaneMode::OpenOnLoopback),
        (None, false) if control_plane.insecure_open => Ok(ControlPlaneMode::OpenInsecure),
        (None, false) => Err(StartError::OpenControlPlane(addr)),
    }
}

/// Whether the configured HS256 secret is too short to be safe on `addr`: refused beyond
/// loopback, loudly warned about on it (tests and laptops use short ones).
fn check_secret(settings: &Settings, addr: SocketAddr) -> Result<(), StartError> {
    let Some(AuthConfig {
        key: JwtKey::Secret(secret),
        ..
    }) = &settings.config.auth
    else {
        return Ok(());
    };
    if secret.len() >= MIN_HS256_SECRET_BYTES {
        return Ok(());
    }
    if addr.ip().is_loopback() {
        tracing::warn!(
            bytes = secret.len(),
            "HERALD_JWT_SECRET is shorter than {MIN_HS256_SECRET_BYTES} bytes: anyone who \
             guesses it can mint tokens. Fine on loopback for a test; never beyond it"
        );
        return Ok(());
    }
    Err(StartError::WeakJwtSecret(secret.len()))
}

async fn finish(parts: Parts, listener: TcpListener) -> Result<Ready, StartError> {
    let addr = listener.local_addr()?;
    let Parts {
        settings,
        auth,
        verifier,
        services,
        registry,
        router,
        heartbeat,
        mqtt,
    } = parts;
    let control_plane = control_plane_mode(&settings.control_plane, addr)?;
    check_secret(&settings, addr)?;
    let gateway: Arc<dyn Gateway> = if settings.push_via_http {
        // Through the real SDK client, signed as any other caller must sign.
        let endpoint = format!("http://{addr}/{}", settings.stage);
        Arc::new(match &settings.control_plane.credentials {
            Some(keys) => ApiGatewayManagement::new(
                &herald::aws::keyed_sdk_config(
                    &endpoint,
                    &keys.access_key_id,
                    &keys.secret_access_key,
                ),
                &endpoint,
            ),
            None => ApiGatewayManagement::local(&endpoint),
        })
    } else {
        router.clone()
    };
    // Faults meet the control plane's posts: `@connections`, and the publishes of the
    // Invoke API (through `@connections` already when they go over HTTP).
    let faults = settings.faults;
    if !faults.is_off() {
        tracing::warn!(%faults, "fault injection on: control-plane posts fail and lag on purpose");
    }
    let faulty = |inner: &Arc<dyn Gateway>| -> Arc<dyn Gateway> {
        if faults.is_off() {
            inner.clone()
        } else {
            Arc::new(FaultyGateway::new(inner.clone(), faults))
        }
    };
    let control = faulty(&router);
    let publisher = if settings.push_via_http {
        gateway.clone()
    } else {
        faulty(&gateway)
    };
    let events = EventFactory {
        stage: settings.stage.clone(),
        api_id: API_ID.into(),
    };
    let shutdown = CancellationToken::new();
    if let Some(cluster) = heartbeat {
        tokio::spawn(cluster::heartbeat(cluster, shutdown.clone()));
    }
    // Page jobs are delivered as publishes are: through the control plane's gateway.
    let mut services = services;
    let (page_queue, page_jobs) = LocalPageQueue::new();
    services.sharding.queue = Some(page_queue.clone());
    // The functions outlive `shutdown`: the connections' `$disconnect`s run after it.
    let functions_stop = CancellationToken::new();
    let (handlers, functions, delivery_queue): (SharedHandlers, _, _) = match &settings.lambda_dir {
        None => (
            Arc::new(InProcess {
                services: services.clone(),
                verifier,
                gateway: gateway.clone(),
                publisher: publisher.clone(),
            }),
            None,
            None,
        ),
        Some(dir) => {
            let delivery_queue =
                DeliveryQueue::serve(page_queue, settings.control_plane.credentials.clone())
                    .await?;
            let endpoints = Endpoints {
                management: format!("http://{addr}/{}", settings.stage),
                queue: delivery_queue.endpoint.clone(),
            };
            let env = lambda::environment(
                &settings.config,
                &endpoints,
                settings
                    .control_plane
                    .credentials
                    .as_ref()
                    .map(|c| (c.access_key_id.as_str(), c.secret_access_key.as_str())),
                matches!(auth, AuthMode::Dev { .. }),
            );
            let functions = Arc::new(
                Functions::start(dir, &settings.config, env, functions_stop.clone()).await?,
            );
            (functions.clone(), Some(functions), Some(delivery_queue))
        }
    };
    page_jobs.work(handlers.clone(), shutdown.clone());
    if let Some(mqtt) = mqtt {
        mqtt.serve(handlers.clone(), shutdown.clone());
    }
    let async_invokes =
        AsyncInvokes::start(settings.async_queue, handlers.clone(), shutdown.clone());
    let dev_token = match &auth {
        AuthMode::Dev { token } => Some(token.clone()),
        AuthMode::Configured => None,
    };
    let cold_starts = functions
        .as_ref()
        .map(|f| f.cold_starts.clone())
        .unwrap_or_default();
    let app = Arc::new(App {
        dev_token,
        settings,
        services,
        handlers,
        functions,
        registry,
        control,
        events,
        shutdown,
        connections: TaskTracker::new(),
        sockets: SocketRuntime::new()?,
    });
    Ok(Ready {
        addr,
        auth,
        control_plane,
        cold_starts,
        app,
        async_invokes,
        listener,
        lambda: delivery_queue.map(|queue| LambdaMode {
            _delivery_queue: queue,
            stop: functions_stop,
        }),
    })
}

/// Prepares the gateway on an already bound `listener` (tests bind `127.0.0.1:0`).
pub async fn prepare(listener: TcpListener, settings: Settings) -> Result<Ready, StartError> {
    finish(assemble(settings).await?, listener).await
}

/// Prepares everything, then binds `host:port`: the port opens only once the gateway can
/// serve (store reachable, cross-instance subscription in place).
pub async fn bind(host: &str, port: u16, settings: Settings) -> Result<Ready, StartError> {
    let parts = assemble(settings).await?;
    let listener = TcpListener::bind((host, port)).await?;
    finish(parts, listener).await
}

/// A gateway that has bound its port and is ready to serve.
pub struct Ready {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Configured keys, or dev mode.
    pub auth: AuthMode,
    /// How the control plane is guarded.
    pub control_plane: ControlPlaneMode,
    /// In Lambda mode, each function's cold start; otherwise empty.
    pub cold_starts: Vec<ColdStart>,
    pub(crate) app: Arc<App>,
    pub(crate) async_invokes: AsyncInvokes,
    pub(crate) listener: TcpListener,
    pub(crate) lambda: Option<LambdaMode>,
}

/// What Lambda mode keeps running beside the gateway.
pub(crate) struct LambdaMode {
    _delivery_queue: DeliveryQueue,
    /// Stops the functions' instances.
    stop: CancellationToken,
}

impl Drop for LambdaMode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Ready {
    /// Serves until `shutdown` completes, then closes every client with 1001, runs each
    /// one's `$disconnect`, and returns: within the drain time (`HttpLimits::drain`),
    /// whatever the clients do.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let app = self.app;
        let router = routes::router(app.clone(), self.async_invokes);
        let graceful = {
            let app = app.clone();
            async move {
                shutdown.await;
                tracing::info!(connections = app.registry.len(), "shutting down");
                app.shutdown.cancel();
            }
        };
        tokio::spawn(graceful);
        // Connection tasks see the same token, close their sockets and run `$disconnect`;
        // `serve` waits for them, and for HTTP connections, at most the drain time.
        serve::serve(app, self.listener, router).await;
        // Only now, with every `$disconnect` run: the functions' instances stop.
        drop(self.lambda);
        Ok(())
    }
}

/// Prepares and serves in one call (see [`prepare`] and [`Ready::serve`]).
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    prepare(listener, settings).await?.serve(shutdown).await
}

/// The webhook and MQTT settings only the Lambda functions take, refused here with what to
/// set instead: `herald-local` signs and delivers webhooks and talks to a broker itself.
fn refuse_lambda_only_settings(config: &Config) -> Result<(), BuildError> {
    if config.mqtt_iot.is_some() {
        return Err(ConfigError::Invalid {
            var: "HERALD_MQTT_URL",
            reason: "AWS IoT Core is for the Lambda functions; herald-local connects to a \
                     broker: set it to mqtt://HOST:PORT or mqtts://HOST:PORT"
                .into(),
        }
        .into());
    }
    let var = if config.webhook_by_arn.is_some() {
        "HERALD_WEBHOOK_SECRET_ARN"
    } else if config.webhook_queue.is_some() {
        "HERALD_WEBHOOK_QUEUE_URL"
    } else {
        return Ok(());
    };
    Err(ConfigError::Invalid {
        var,
        reason: "it is for the Lambda functions; herald-local delivers webhooks itself: set \
                 HERALD_WEBHOOK_URL and HERALD_WEBHOOK_SECRET"
            .into(),
    }
    .into())
}
