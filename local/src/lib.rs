//! `herald-local`: a WebSocket gateway that behaves like API Gateway WebSocket APIs and runs
//! Herald's handlers in-process.
//!
//! It is a host, not a second implementation: it owns sockets, limits and events, and
//! hands every decision to `herald::handlers`, exactly as the Lambda functions do.
//!
//! # Layout
//!
//! | file | what |
//! |---|---|
//! | `src/main.rs` | flags and environment, signals, then [`run`] |
//! | `src/lib.rs` | [`Settings`], start-up (store, auth or dev mode, push path), [`run`] |
//! | `src/ws.rs` | the handshake (authorizer, then `$connect`) and each connection's reader and writer |
//! | `src/upgrade.rs` | the WebSocket upgrade, and the runtime connections run on, apart from HTTP |
//! | `src/outbox.rs` | a socket's bounded outbound queue, one cache line per push |
//! | `src/wire.rs` | frames to clients as bytes, encoded once per publish |
//! | `src/registry.rs` | live sockets, the in-process `Gateway`, fan-out's pacing |
//! | `src/cluster.rs` | several instances on one Redis: routed posts over pub/sub, the heartbeat |
//! | `src/tracking.rs` | the store with each local socket's rooms mirrored, for re-registration |
//! | `src/events.rs` | events built as API Gateway builds them |
//! | `src/http.rs` | the `@connections` Management API and the Lambda Invoke API |

mod cluster;
mod events;
mod http;
mod outbox;
mod registry;
mod tracking;
mod upgrade;
mod wire;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald::auth::{AuthConfig, JwtKey, Verifier};
use herald::config::{Config, ConfigError, StoreKind};
use herald::gateway::{ApiGatewayManagement, Gateway};
use herald::handlers::Services;
use herald::store::{ConnectionStore, RedisStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use events::{EventFactory, iso8601, request_time, route_key};
pub use registry::{Registry, SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON};

use cluster::Cluster;
use tracking::TrackingStore;
use upgrade::SocketRuntime;

/// API Gateway's per-connection limits, each configurable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketLimits {
    /// Largest message; larger closes with 1009 (AWS: 128 KiB).
    pub max_message_bytes: usize,
    /// Largest single frame; larger closes with 1009 (AWS: 32 KiB).
    pub max_frame_bytes: usize,
    /// A connection with no traffic this long is closed (AWS: 10 minutes).
    pub idle_timeout: Duration,
    /// No connection lives longer (AWS: 2 hours).
    pub max_duration: Duration,
    /// Messages queued for one client before it counts as a slow consumer.
    pub outbound_queue: usize,
    /// Connections from one source IP; `None` for no limit.
    pub max_per_ip: Option<usize>,
    /// Connections in all; `None` for no limit.
    pub max_total: Option<usize>,
}

impl Default for SocketLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 128 * 1024,
            max_frame_bytes: 32 * 1024,
            idle_timeout: Duration::from_secs(600),
            max_duration: Duration::from_secs(7200),
            outbound_queue: 1024,
            max_per_ip: None,
            max_total: None,
        }
    }
}

/// Everything `herald-local` is started with.
#[derive(Clone)]
pub struct Settings {
    /// The stage in every path, e.g. `local`.
    pub stage: String,
    /// Socket limits.
    pub limits: SocketLimits,
    /// Send the handlers' pushes through the real SDK client to this gateway's own
    /// `@connections` endpoint over HTTP, instead of in-process.
    pub push_via_http: bool,
    /// Function names the Invoke API runs `publish` for.
    pub publish_functions: Vec<String>,
    /// Store, JWT, per-user limit and fan-out configuration.
    pub config: Config,
    /// This instance's id among several on one Redis.
    pub instance_id: String,
    /// How often, with a shared store, this instance refreshes its connections' records.
    pub heartbeat: Duration,
    /// A store to use instead of the one `config` names (tests wrap one to observe it).
    pub store: Option<Arc<dyn ConnectionStore>>,
}

impl Settings {
    /// Settings with API Gateway's defaults on `config`.
    pub fn new(config: Config) -> Self {
        Self {
            stage: "local".into(),
            limits: SocketLimits::default(),
            push_via_http: false,
            publish_functions: vec!["publish".into(), "herald-publish".into()],
            config,
            instance_id: random_instance_id(),
            heartbeat: Duration::from_secs(10),
            store: None,
        }
    }
}

/// A fresh instance id: 12 random hex digits.
pub fn random_instance_id() -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(12);
    id
}

/// Errors that stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] herald::config::ConfigError),
    /// The JWT key is unusable.
    #[error(transparent)]
    Auth(#[from] herald::auth::AuthError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// The running gateway's shared state.
pub(crate) struct App {
    pub settings: Settings,
    pub services: Services,
    pub verifier: Verifier,
    pub registry: Arc<Registry>,
    /// Where posts for any connection go: this instance's sockets, or the cluster.
    pub router: Arc<dyn Gateway>,
    /// Where the handlers' pushes go: the router, or the SDK client over HTTP.
    pub gateway: Arc<dyn Gateway>,
    pub events: EventFactory,
    /// Cancelled when the gateway shuts down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for their `$disconnect`s.
    pub connections: TaskTracker,
    /// Where connection tasks run (see `upgrade.rs`).
    pub sockets: SocketRuntime,
}

/// How the gateway authenticates: the configured key, or dev mode's generated secret.
pub enum AuthMode {
    /// A key from `HERALD_JWT_SECRET` / `HERALD_JWT_PUBLIC_KEY`.
    Configured,
    /// No key was configured: a random secret, and a token signed with it.
    Dev {
        /// A token for user `dev` that may subscribe and publish to every room.
        token: String,
    },
}

/// A gateway that has bound its port and is ready to serve.
pub struct Ready {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Configured keys, or dev mode.
    pub auth: AuthMode,
    app: Arc<App>,
    listener: TcpListener,
}

/// What start-up assembles before the port opens.
struct Parts {
    settings: Settings,
    auth: AuthMode,
    verifier: Verifier,
    services: Services,
    registry: Arc<Registry>,
    router: Arc<dyn Gateway>,
    /// With a shared store: the cluster and the store its heartbeat refreshes.
    heartbeat: Option<(Arc<Cluster>, Arc<dyn ConnectionStore>)>,
}

/// Sets up auth (or dev mode), the store and, on Redis, this instance's place in the
/// cluster: everything that must be ready before the port opens.
async fn assemble(mut settings: Settings) -> Result<Parts, StartError> {
    let (auth_config, auth) = match settings.config.auth.clone() {
        Some(auth) => (auth, AuthMode::Configured),
        None => {
            // 244 random bits from the OS, never written anywhere but this process.
            let secret = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            let token = herald::auth::sign_hs256(secret.as_bytes(), "dev", &["*"], &["*"], 86_400)?;
            let config = AuthConfig {
                key: JwtKey::Secret(secret.into_bytes()),
                issuer: None,
                audience: None,
            };
            settings.config.auth = Some(config.clone());
            (config, AuthMode::Dev { token })
        }
    };
    let verifier = Verifier::new(&auth_config)?;
    let registry = Arc::new(Registry::default());
    let shared = settings.store.is_none() && settings.config.store == StoreKind::Redis;
    let (store, router, heartbeat): (Arc<dyn ConnectionStore>, Arc<dyn Gateway>, _) = if shared {
        let url = settings
            .config
            .redis_url
            .clone()
            .ok_or(ConfigError::Missing("HERALD_REDIS_URL"))?;
        let unreachable = |e: herald::store::StoreError| ConfigError::Invalid {
            var: "HERALD_REDIS_URL",
            reason: format!("cannot reach Redis at {url}: {e}"),
        };
        let redis = RedisStore::connect(&url).await.map_err(unreachable)?;
        let instance = settings.instance_id.clone();
        let cluster = Cluster::start(&url, &instance, registry.clone(), redis.clone())
            .await
            .map_err(unreachable)?;
        let store: Arc<dyn ConnectionStore> =
            Arc::new(TrackingStore::new(Arc::new(redis), registry.clone()));
        (store.clone(), cluster.clone(), Some((cluster, store)))
    } else {
        let store = match settings.store.clone() {
            Some(store) => store,
            None => herald::store::open(&settings.config).await?,
        };
        (store, registry.clone(), None)
    };
    let mut services = Services::new(store, &settings.config);
    if heartbeat.is_some() {
        services.instance = Some(settings.instance_id.clone());
        // A record lives three heartbeats unless refreshed: a crashed instance's
        // connections vanish that quickly, a live one's never do.
        services.limits.connection_lifetime = settings.heartbeat * 3;
    }
    Ok(Parts {
        settings,
        auth,
        verifier,
        services,
        registry,
        router,
        heartbeat,
    })
}

fn finish(parts: Parts, listener: TcpListener) -> Result<Ready, StartError> {
    let addr = listener.local_addr()?;
    let Parts {
        settings,
        auth,
        verifier,
        services,
        registry,
        router,
        heartbeat,
    } = parts;
    let gateway: Arc<dyn Gateway> = if settings.push_via_http {
        Arc::new(ApiGatewayManagement::local(&format!(
            "http://{addr}/{}",
            settings.stage
        )))
    } else {
        router.clone()
    };
    let events = EventFactory {
        stage: settings.stage.clone(),
        api_id: "herald-local".into(),
    };
    let shutdown = CancellationToken::new();
    if let Some((cluster, store)) = heartbeat {
        let ttl = services.limits.connection_lifetime;
        tokio::spawn(cluster::heartbeat(
            cluster,
            store,
            settings.heartbeat,
            ttl,
            shutdown.clone(),
        ));
    }
    let app = Arc::new(App {
        settings,
        services,
        verifier,
        registry,
        router,
        gateway,
        events,
        shutdown,
        connections: TaskTracker::new(),
        sockets: SocketRuntime::new()?,
    });
    Ok(Ready {
        addr,
        auth,
        app,
        listener,
    })
}

/// Prepares the gateway on an already bound `listener` (tests bind `127.0.0.1:0`).
pub async fn prepare(listener: TcpListener, settings: Settings) -> Result<Ready, StartError> {
    finish(assemble(settings).await?, listener)
}

/// Prepares everything, then binds `host:port`: the port opens only once the gateway can
/// serve (store reachable, cross-instance subscription in place).
pub async fn bind(host: &str, port: u16, settings: Settings) -> Result<Ready, StartError> {
    let parts = assemble(settings).await?;
    let listener = TcpListener::bind((host, port)).await?;
    finish(parts, listener)
}

impl Ready {
    /// Serves until `shutdown` completes, then closes every client with 1001, runs each
    /// one's `$disconnect`, and returns.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let app = self.app;
        let router = http::router(app.clone());
        let stop = app.shutdown.clone();
        let graceful = {
            let app = app.clone();
            async move {
                shutdown.await;
                tracing::info!(connections = app.registry.len(), "shutting down");
                app.shutdown.cancel();
            }
        };
        tokio::spawn(graceful);
        let server = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await });
        server.await?;
        // Connection tasks see the same token, close their sockets and run `$disconnect`.
        app.connections.close();
        app.connections.wait().await;
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
