//! The running gateway's types: the [`Settings`] it starts with and their defaults, its
//! limits, how its control plane is guarded, why it may fail to start, and the state
//! ([`App`]) every route shares. Built by the composition root (`root.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald::config::Config;
use herald::gateway::Gateway;
use herald::handlers::Services;
use herald::store::ConnectionStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::events::EventFactory;
use crate::connection::frame_rate::FrameRate;
use crate::connection::registry::{
    Bounds, DEFAULT_OUTBOUND_QUEUE, DEFAULT_OUTBOUND_QUEUE_BYTES, Registry,
};
use crate::connection::runtime::SocketRuntime;
use crate::control_plane::faults::Faults;
use crate::functions::SharedHandlers;
use crate::functions::lambda::Functions;

/// The address `herald-local` listens on: loopback only, unless told otherwise.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// The port `herald-local` listens on.
pub const DEFAULT_PORT: u16 = 3001;
/// API Gateway's largest message (128 KiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// API Gateway's largest frame (32 KiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 32 * 1024;
/// API Gateway's idle timeout (10 minutes).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// API Gateway's maximum connection duration (2 hours).
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(7200);
/// The stage when none is given.
pub const DEFAULT_STAGE: &str = "local";
/// The function names the Invoke API runs `publish` for, when none are given.
pub const DEFAULT_PUBLISH_FUNCTIONS: [&str; 2] = ["publish", "herald-publish"];
/// How often, with a shared store, an instance refreshes its connections' records.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// A record lives this many heartbeats unless refreshed: a crashed instance's connections
/// vanish that quickly, a live one's never do.
pub const HEARTBEATS_PER_LIFETIME: u32 = 3;

/// How long a client may take to send a request head, unless configured otherwise.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for connections to finish, unless configured otherwise.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);
/// How the HTTP side bounds its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request head must be complete within this long of the connection's start (or of
    /// the previous request's end), else the socket is closed.
    pub head_timeout: Duration,
    /// On shutdown, how long to wait for connections and `$disconnect`s before returning.
    pub drain: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            drain: DEFAULT_DRAIN,
        }
    }
}

/// Invocations waiting at most, unless configured otherwise.
pub const DEFAULT_QUEUED_INVOCATIONS: usize = 1024;

/// The key pair requests must be signed with.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key id (`AKIA…`).
    pub access_key_id: String,
    /// The secret that signs.
    pub secret_access_key: String,
}

impl Credentials {
    /// A key pair from its two parts, as flags and variables give them; `None` unless both
    /// are there and neither is empty or blank (an empty variable is no credential, never
    /// a key pair anyone can sign with).
    pub fn from_parts(access_key_id: Option<String>, secret: Option<String>) -> Option<Self> {
        let credentials = Self {
            access_key_id: access_key_id?,
            secret_access_key: secret?,
        };
        credentials.is_usable().then_some(credentials)
    }

    /// Whether both parts have something besides white space.
    pub fn is_usable(&self) -> bool {
        !self.access_key_id.trim().is_empty() && !self.secret_access_key.trim().is_empty()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

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
    /// What may wait for one client: past it, a notification closes the client as a slow
    /// consumer and a reply waits for room.
    pub outbound_queue: Bounds,
    /// Connections from one source IP; `None` for no limit.
    pub max_per_ip: Option<usize>,
    /// Connections in all; `None` for no limit.
    pub max_total: Option<usize>,
    /// How fast a client may send frames; `None` for no limit.
    pub frame_rate: Option<FrameRate>,
}

impl SocketLimits {
    /// Whether one more connection would take the gateway past a connection limit, with
    /// `open` connections in all and `open_from_ip` from its source address.
    pub(crate) fn full(&self, open: usize, open_from_ip: usize) -> bool {
        self.max_total.is_some_and(|max| open >= max)
            || self.max_per_ip.is_some_and(|max| open_from_ip >= max)
    }
}

impl Default for SocketLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_duration: DEFAULT_MAX_DURATION,
            outbound_queue: Bounds {
                frames: DEFAULT_OUTBOUND_QUEUE,
                bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            },
            max_per_ip: None,
            max_total: None,
            frame_rate: Some(FrameRate::default()),
        }
    }
}

/// Who may use the control plane (`@connections`, the Invoke API), which can publish,
/// read connections and disconnect them.
#[derive(Clone, Debug, Default)]
pub struct ControlPlane {
    /// The key pair every request must be signed with (SigV4); `None`: any signature,
    /// allowed only on loopback unless `insecure_open`.
    pub credentials: Option<Credentials>,
    /// Serve an open control plane beyond loopback (`--insecure-open-control-plane`).
    pub insecure_open: bool,
}

/// How the running gateway guards its control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlPlaneMode {
    /// Every request must carry a SigV4 signature made with the configured credentials.
    Signed,
    /// No credentials, on a loopback address: any signature is accepted.
    OpenOnLoopback,
    /// No credentials beyond loopback, because `--insecure-open-control-plane` said so.
    OpenInsecure,
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
    /// Who may use the control plane.
    pub control_plane: ControlPlane,
    /// Asynchronous invocations that may wait to run; one more is answered 429.
    pub async_queue: usize,
    /// How the HTTP side bounds its connections (head timeout, shutdown drain).
    pub http: HttpLimits,
    /// Faults `@connections` posts meet (none by default).
    pub faults: Faults,
    /// Lambda mode: run the function binaries in this folder behind the Lambda Runtime
    /// API instead of calling the handlers in process (`functions/lambda.rs`).
    pub lambda_dir: Option<std::path::PathBuf>,
}

impl Settings {
    /// Settings with API Gateway's defaults on `config`.
    pub fn new(config: Config) -> Self {
        Self {
            stage: DEFAULT_STAGE.into(),
            limits: SocketLimits::default(),
            push_via_http: false,
            publish_functions: DEFAULT_PUBLISH_FUNCTIONS.map(String::from).to_vec(),
            config,
            instance_id: random_instance_id(),
            heartbeat: DEFAULT_HEARTBEAT,
            store: None,
            control_plane: ControlPlane::default(),
            async_queue: DEFAULT_QUEUED_INVOCATIONS,
            http: HttpLimits::default(),
            faults: Faults::default(),
            lambda_dir: None,
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
    /// A component could not be built from the settings.
    #[error(transparent)]
    Build(#[from] herald::compose::BuildError),
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] herald::config::ConfigError),
    /// The JWT key is unusable.
    #[error(transparent)]
    Auth(#[from] herald::auth::AuthError),
    /// The cluster could not be joined.
    #[error("cannot join the cluster: {0}")]
    Cluster(#[source] herald::store::StoreError),
    /// No control-plane credentials on an address beyond loopback.
    #[error(
        "herald-local listens on {0}, beyond loopback, without control-plane credentials: \
         anyone who reaches the port could publish to every room and disconnect anyone. Set \
         HERALD_ACCESS_KEY_ID and HERALD_SECRET_ACCESS_KEY (clients sign with them, as with \
         AWS), or pass --insecure-open-control-plane"
    )]
    OpenControlPlane(SocketAddr),
    /// An HS256 secret too short to serve beyond loopback.
    #[error(
        "HERALD_JWT_SECRET is {0} bytes: beyond loopback it must be at least {min} bytes \
         (e.g. `openssl rand -base64 48`), or anyone could guess it and mint tokens",
        min = herald::auth::MIN_HS256_SECRET_BYTES
    )]
    WeakJwtSecret(usize),
    /// Webhooks are configured and cannot be sent.
    #[error("cannot set up webhook delivery: {0}")]
    Webhooks(#[source] std::io::Error),
    /// Lambda mode could not start its functions.
    #[error(transparent)]
    Lambda(#[from] crate::functions::lambda::LambdaError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// The running gateway's shared state.
pub(crate) struct App {
    pub settings: Settings,
    pub services: Services,
    /// What runs the handlers: in process, or the function binaries (`functions/`).
    pub handlers: SharedHandlers,
    /// In Lambda mode, the function binaries (the readers invoke `poll` and `stream`).
    pub functions: Option<Arc<Functions>>,
    pub registry: Arc<Registry>,
    /// Where `@connections` posts for any connection go: this instance's sockets, or the
    /// cluster, through the injected faults if any (`control_plane/faults.rs`).
    pub control: Arc<dyn Gateway>,
    pub events: EventFactory,
    /// Cancelled when the gateway shuts down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for their `$disconnect`s.
    pub connections: TaskTracker,
    /// Where connection tasks run (see `connection/runtime.rs`).
    pub sockets: SocketRuntime,
    /// Dev mode's token, which the demo page fills in for loopback visitors.
    pub dev_token: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_are_full_at_their_value() {
        let limits = SocketLimits {
            max_total: Some(3),
            max_per_ip: Some(2),
            ..SocketLimits::default()
        };
        assert!(!limits.full(2, 1));
        assert!(limits.full(3, 0), "in all");
        assert!(limits.full(0, 2), "from one address");
        assert!(!SocketLimits::default().full(usize::MAX - 1, usize::MAX - 1));
    }
}
