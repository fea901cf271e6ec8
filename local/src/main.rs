//! `herald-local`: flags (each with an environment fallback), logging, signals; then the
//! gateway library does the rest.

use std::time::Duration;

use clap::{Parser, Subcommand};
use herald::config::Config;
use herald::limits::{DEFAULT_MAX_CONNECTIONS_PER_USER, DEFAULT_MAX_ROOMS_PER_CONNECTION};
use herald::shard::{DEFAULT_POST_BUDGET_PER_SECOND, DEFAULT_SHARD_THRESHOLD};
use herald::store::history::{DEFAULT_HISTORY_AGE, DEFAULT_HISTORY_SIZE};
use herald_local::{
    AuthMode, ControlPlane, ControlPlaneMode, Credentials, DEFAULT_DRAIN, DEFAULT_FRAME_BURST,
    DEFAULT_FRAMES_PER_SECOND, DEFAULT_HEAD_TIMEOUT, DEFAULT_HEARTBEAT, DEFAULT_HOST,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_DURATION, DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_OUTBOUND_QUEUE, DEFAULT_OUTBOUND_QUEUE_BYTES, DEFAULT_PORT, DEFAULT_PUBLISH_FUNCTIONS,
    DEFAULT_QUEUED_INVOCATIONS, DEFAULT_STAGE, Faults, FrameRate, HttpLimits,
    MAX_OUTBOUND_QUEUE_BYTES, OutboundBounds, Settings, SocketLimits, cli,
};

/// A local API Gateway for WebSockets running Herald's handlers.
///
/// The store and the JWT key come from the environment (README: Configuration):
/// HERALD_STORE (memory, redis or dynamodb), HERALD_REDIS_URL, HERALD_REDIS_CLUSTER, HERALD_TABLE,
/// HERALD_JWT_SECRET, HERALD_JWT_PUBLIC_KEY, HERALD_JWT_ISSUER, HERALD_JWT_AUDIENCE,
/// HERALD_IDEMPOTENCY_WINDOW_SECS, HERALD_FANOUT_CONCURRENCY. With no JWT key it runs in
/// dev mode and prints a token. Each flag below can be set by the variable it names.
#[derive(Parser, Debug)]
#[command(name = "herald-local", version, args_conflicts_with_subcommands = true)]
struct Flags {
    /// Without a subcommand, herald-local serves.
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(long, env = "HERALD_HOST", default_value = DEFAULT_HOST)]
    host: String,
    /// Port to listen on; 0 picks a free one (the bound address is printed).
    #[arg(long, env = "HERALD_PORT", default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Stage name, the first path segment of every endpoint.
    #[arg(long, env = "HERALD_STAGE", default_value = DEFAULT_STAGE)]
    stage: String,
    /// Push through the real AWS SDK client to this gateway's own @connections endpoint.
    #[arg(long, env = "HERALD_PUSH_VIA_HTTP")]
    push_via_http: bool,
    /// Largest message in bytes (larger closes with 1009).
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Largest frame in bytes (larger closes with 1009).
    #[arg(long, env = "HERALD_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// Seconds without client traffic before a connection is closed.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT_SECS", default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs())]
    idle_timeout_secs: u64,
    /// Seconds a connection may live.
    #[arg(long, env = "HERALD_MAX_CONNECTION_SECS", default_value_t = DEFAULT_MAX_DURATION.as_secs())]
    max_connection_secs: u64,
    /// Messages queued per client before it is closed as a slow consumer (1008).
    #[arg(long, env = "HERALD_OUTBOUND_QUEUE", default_value_t = DEFAULT_OUTBOUND_QUEUE)]
    outbound_queue: usize,
    /// Bytes queued per client: past them a notification closes it as a slow consumer
    /// (1008) and a reply waits for room.
    #[arg(
        long,
        env = "HERALD_OUTBOUND_QUEUE_BYTES",
        default_value_t = DEFAULT_OUTBOUND_QUEUE_BYTES as u64,
        value_parser = clap::value_parser!(u64).range(1..=MAX_OUTBOUND_QUEUE_BYTES),
    )]
    outbound_queue_bytes: u64,
    /// Connections one user may hold at once (0: no limit); one more is refused with 429.
    #[arg(
        long,
        env = "HERALD_MAX_CONNECTIONS_PER_USER",
        default_value_t = DEFAULT_MAX_CONNECTIONS_PER_USER
    )]
    max_connections_per_user: usize,
    /// Rooms one connection may join (0: no limit); one more is answered limit_exceeded.
    #[arg(
        long,
        env = "HERALD_MAX_ROOMS_PER_CONNECTION",
        default_value_t = DEFAULT_MAX_ROOMS_PER_CONNECTION
    )]
    max_rooms_per_connection: usize,
    /// Notifications kept per room and per user, so that clients can recover what they
    /// missed (0: no history).
    #[arg(long, env = "HERALD_HISTORY_SIZE", default_value_t = DEFAULT_HISTORY_SIZE)]
    history_size: usize,
    /// Seconds a kept notification stays (0: no history).
    #[arg(long, env = "HERALD_HISTORY_TTL_SECS", default_value_t = DEFAULT_HISTORY_AGE.as_secs())]
    history_ttl_secs: u64,
    /// Recipients above which a publish is delivered in page jobs from an in-process queue,
    /// answering at once with `queued_pages`, as on AWS (0: never).
    #[arg(long, env = "HERALD_SHARD_THRESHOLD", default_value_t = DEFAULT_SHARD_THRESHOLD)]
    shard_threshold: usize,
    /// Posts a second the page jobs may make, shared by every instance on the store, as
    /// the deployment's `@connections` budget on AWS (0: unpaced).
    #[arg(long, env = "HERALD_POST_BUDGET_PER_SECOND", default_value_t = DEFAULT_POST_BUDGET_PER_SECOND)]
    post_budget_per_second: u32,
    /// Frames a second each client may send (0: no limit); over it a frame is dropped and
    /// answered rate_limited, and ten times over it for ten seconds closes with 1008.
    #[arg(long, env = "HERALD_FRAMES_PER_SECOND", default_value_t = DEFAULT_FRAMES_PER_SECOND)]
    frames_per_second: u32,
    /// Frames a client may send at once after resting.
    #[arg(long, env = "HERALD_FRAME_BURST", default_value_t = DEFAULT_FRAME_BURST)]
    frame_burst: u32,
    /// Connections per source IP (0: no limit).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    max_connections_per_ip: usize,
    /// Connections in all (0: no limit).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 0)]
    max_connections: usize,
    /// Function names the Lambda Invoke API runs `publish` for (comma-separated).
    #[arg(
        long,
        env = "HERALD_PUBLISH_FUNCTIONS",
        default_values_t = DEFAULT_PUBLISH_FUNCTIONS.map(String::from),
        value_delimiter = ','
    )]
    publish_functions: Vec<String>,
    /// This instance's id when several share one Redis (default: a random one).
    #[arg(long, env = "HERALD_INSTANCE_ID")]
    instance_id: Option<String>,
    /// With Redis: how often this instance refreshes its connections' records (they
    /// expire after three missed heartbeats).
    #[arg(long, env = "HERALD_HEARTBEAT_MS", default_value_t = heartbeat_ms(DEFAULT_HEARTBEAT))]
    heartbeat_ms: u64,
    /// Seconds a client may take to send a request head before its socket is closed.
    #[arg(long, env = "HERALD_HEAD_TIMEOUT_SECS", default_value_t = DEFAULT_HEAD_TIMEOUT.as_secs())]
    head_timeout_secs: u64,
    /// Seconds shutdown waits for connections to finish (a second signal exits at once).
    #[arg(long, env = "HERALD_DRAIN_SECS", default_value_t = DEFAULT_DRAIN.as_secs())]
    drain_secs: u64,
    /// Asynchronous invocations (X-Amz-Invocation-Type: Event) that may wait to run, one
    /// after another; one more is answered 429 TooManyRequestsException.
    #[arg(long, env = "HERALD_ASYNC_QUEUE", default_value_t = DEFAULT_QUEUED_INVOCATIONS)]
    async_queue: usize,
    /// The share of @connections posts (0 to 1) answered 429 LimitExceededException, as API
    /// Gateway throttles under load: for trying retry code locally. Off by default.
    #[arg(long, env = "HERALD_FAULT_THROTTLE", default_value_t = 0.0)]
    fault_throttle: f64,
    /// The share of @connections posts (0 to 1) answered 403 ForbiddenException.
    #[arg(long, env = "HERALD_FAULT_FORBIDDEN", default_value_t = 0.0)]
    fault_forbidden: f64,
    /// Milliseconds added to every @connections post before it is answered.
    #[arg(long, env = "HERALD_FAULT_LATENCY_MS", default_value_t = 0)]
    fault_latency_ms: u64,
    /// The access key id control-plane requests (@connections, Lambda Invoke) must be
    /// signed with (SigV4, as AWS's SDKs sign); with --secret-access-key.
    #[arg(long, env = "HERALD_ACCESS_KEY_ID", requires = "secret_access_key")]
    access_key_id: Option<String>,
    /// The secret that goes with --access-key-id.
    #[arg(
        long,
        env = "HERALD_SECRET_ACCESS_KEY",
        requires = "access_key_id",
        hide_env_values = true
    )]
    secret_access_key: Option<String>,
    /// Serve the control plane without credentials on an address beyond loopback: anyone
    /// who reaches the port can then publish and disconnect. Never on a shared network.
    #[arg(long, env = "HERALD_INSECURE_OPEN_CONTROL_PLANE")]
    insecure_open_control_plane: bool,
    /// Lambda mode: run the eight function binaries in this folder (DIR/<name>/bootstrap
    /// as `cargo lambda build` writes them, or DIR/<name> as `cargo build --release` does,
    /// e.g. target/release) behind an embedded Lambda Runtime API, instead of the handlers
    /// in process. Needs HERALD_STORE=redis or dynamodb.
    #[arg(long, env = "HERALD_LAMBDA_DIR")]
    lambda_dir: Option<std::path::PathBuf>,
}

/// The subcommands for shells and scripts.
#[derive(Subcommand, Debug)]
enum Command {
    /// Print a token signed with HERALD_JWT_SECRET, for a gateway started with the same
    /// secret (a gateway in dev mode signs with a secret only it knows: use the token it
    /// printed, or start it with HERALD_JWT_SECRET set).
    Token {
        /// The user.
        #[arg(long, default_value = "dev")]
        sub: String,
        /// Room patterns the user may subscribe to (comma-separated; `*` ends a prefix).
        #[arg(long, value_delimiter = ',', default_value = "*")]
        rooms: Vec<String>,
        /// Room patterns the user may publish to from a socket (comma-separated).
        #[arg(long, value_delimiter = ',')]
        publish: Vec<String>,
        /// Seconds until it expires.
        #[arg(long, default_value_t = 3600)]
        exp_secs: u64,
        /// The HS256 secret the gateway verifies tokens with (at least 32 bytes).
        #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// Print the rooms' notifications as JSON lines, recovering what a reconnect missed.
    Listen {
        /// The rooms.
        #[arg(required = true)]
        rooms: Vec<String>,
        /// The gateway's WebSocket URL [default: ws://127.0.0.1:PORT/STAGE].
        #[arg(long, env = "HERALD_URL")]
        url: Option<String>,
        /// The token to connect with.
        #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
        token: String,
        /// Stop after this many notifications.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Publish DATA (JSON) to ROOM through the Invoke API: herald-local's, or the deployed
    /// function's with --function-name (the usual AWS environment).
    Publish {
        /// The room to publish to.
        room: String,
        /// The notification's data, as JSON (e.g. '{"order":42}').
        data: String,
        /// The deployed publish function (name or ARN) instead of herald-local.
        #[arg(long)]
        function_name: Option<String>,
        /// herald-local's HTTP address [default: http://127.0.0.1:PORT].
        #[arg(long, env = "HERALD_ENDPOINT")]
        endpoint: Option<String>,
        /// Publish this many times, with a progress bar.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// The access key id herald-local's control plane requires, if it was started with one.
        #[arg(long, env = "HERALD_ACCESS_KEY_ID", hide_env_values = true)]
        access_key_id: Option<String>,
        /// The secret that goes with --access-key-id.
        #[arg(long, env = "HERALD_SECRET_ACCESS_KEY", hide_env_values = true)]
        secret_access_key: Option<String>,
    },
}

/// Runs a subcommand.
async fn command(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    let mut out = std::io::stdout();
    match command {
        Command::Token {
            sub,
            rooms,
            publish,
            exp_secs,
            secret,
        } => {
            let request = cli::TokenRequest {
                sub,
                rooms,
                publish,
                ttl: Duration::from_secs(exp_secs),
            };
            println!("{}", cli::mint(secret.as_deref(), &request)?);
        }
        Command::Listen {
            rooms,
            url,
            token,
            count,
        } => {
            let url = url
                .unwrap_or_else(|| format!("ws://{DEFAULT_HOST}:{DEFAULT_PORT}/{DEFAULT_STAGE}"));
            let options = cli::ListenOptions {
                url,
                token,
                rooms,
                count,
            };
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            cli::listen(&options, &mut out, stop).await?;
        }
        Command::Publish {
            room,
            data,
            function_name,
            endpoint,
            count,
            access_key_id,
            secret_access_key,
        } => {
            let target = match function_name {
                Some(function_name) => cli::Target::Aws { function_name },
                None => cli::Target::Local {
                    endpoint: endpoint
                        .unwrap_or_else(|| format!("http://{DEFAULT_HOST}:{DEFAULT_PORT}")),
                    keys: Credentials::from_parts(access_key_id, secret_access_key)
                        .map(|keys| (keys.access_key_id, keys.secret_access_key)),
                },
            };
            let options = cli::PublishOptions {
                target,
                room,
                data,
                count,
            };
            cli::publish(&options, &mut out).await?;
        }
    }
    Ok(())
}

fn non_zero(n: usize) -> Option<usize> {
    (n > 0).then_some(n)
}

fn heartbeat_ms(interval: Duration) -> u64 {
    u64::try_from(interval.as_millis()).unwrap_or(u64::MAX)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut flags = Flags::parse();
    let done = match flags.command.take() {
        Some(subcommand) => command(subcommand).await,
        None => run(flags).await,
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The reason as a sentence, not as a debug dump.
            eprintln!("herald-local: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags) -> Result<(), Box<dyn std::error::Error>> {
    // Logs go to stderr; stdout carries only what a user or script reads: the address
    // and, in dev mode, the token.
    herald::telemetry::init_local();

    // The flags read these variables themselves (clap's `env`) and stand in for them, so
    // that each is parsed (and each 0 turns its limit or history off) as the variable would be.
    let flagged = [
        ("HERALD_HISTORY_SIZE", flags.history_size.to_string()),
        (
            "HERALD_HISTORY_TTL_SECS",
            flags.history_ttl_secs.to_string(),
        ),
        (
            "HERALD_MAX_CONNECTIONS_PER_USER",
            flags.max_connections_per_user.to_string(),
        ),
        (
            "HERALD_MAX_ROOMS_PER_CONNECTION",
            flags.max_rooms_per_connection.to_string(),
        ),
        ("HERALD_SHARD_THRESHOLD", flags.shard_threshold.to_string()),
        (
            "HERALD_POST_BUDGET_PER_SECOND",
            flags.post_budget_per_second.to_string(),
        ),
    ];
    let config = Config::from_lookup(|name| {
        flagged
            .iter()
            .find(|(flagged, _)| *flagged == name)
            .map_or_else(
                || std::env::var(name).ok(),
                |(_, value)| Some(value.clone()),
            )
    })?;
    let settings = Settings {
        stage: flags.stage,
        limits: SocketLimits {
            max_message_bytes: flags.max_message_bytes,
            max_frame_bytes: flags.max_frame_bytes,
            idle_timeout: Duration::from_secs(flags.idle_timeout_secs),
            max_duration: Duration::from_secs(flags.max_connection_secs),
            outbound_queue: OutboundBounds {
                frames: flags.outbound_queue,
                // In range by the flag's parser, so it fits.
                bytes: usize::try_from(flags.outbound_queue_bytes).unwrap_or(usize::MAX),
            },
            max_per_ip: non_zero(flags.max_connections_per_ip),
            max_total: non_zero(flags.max_connections),
            frame_rate: (flags.frames_per_second > 0).then(|| FrameRate {
                per_second: flags.frames_per_second,
                burst: flags.frame_burst,
                ..FrameRate::default()
            }),
        },
        push_via_http: flags.push_via_http,
        publish_functions: flags.publish_functions,
        config,
        instance_id: flags
            .instance_id
            .unwrap_or_else(herald_local::random_instance_id),
        heartbeat: Duration::from_millis(flags.heartbeat_ms),
        store: None,
        control_plane: ControlPlane {
            credentials: Credentials::from_parts(flags.access_key_id, flags.secret_access_key),
            insecure_open: flags.insecure_open_control_plane,
        },
        async_queue: flags.async_queue,
        faults: Faults::new(
            flags.fault_throttle,
            flags.fault_forbidden,
            Duration::from_millis(flags.fault_latency_ms),
        )?,
        http: HttpLimits {
            head_timeout: Duration::from_secs(flags.head_timeout_secs),
            drain: Duration::from_secs(flags.drain_secs),
        },
        lambda_dir: flags.lambda_dir,
    };
    let stage = settings.stage.clone();
    // The port opens only once the gateway can serve.
    let ready = herald_local::bind(&flags.host, flags.port, settings).await?;
    let addr = ready.addr;
    if !ready.cold_starts.is_empty() {
        let starts: Vec<String> = ready
            .cold_starts
            .iter()
            .map(|c| format!("{} {:.1} ms", c.function, c.took.as_secs_f64() * 1e3))
            .collect();
        say(&format!(
            "Lambda mode: the function binaries run behind the Runtime API; cold starts \
             (spawn to first /next): {}",
            starts.join(", ")
        ));
    }
    if let AuthMode::Dev { token } = &ready.auth {
        tracing::warn!(
            "DEV MODE: no HERALD_JWT_SECRET or HERALD_JWT_PUBLIC_KEY is set, so tokens are \
             signed with a random secret that lives only in this process. Never expose this."
        );
        say(&format!(
            "dev token (user `dev`, every room, 24 h): {token}"
        ));
    }
    match ready.control_plane {
        ControlPlaneMode::Signed => tracing::info!(
            "control plane: every @connections and Invoke request must be signed (SigV4) \
             with HERALD_ACCESS_KEY_ID"
        ),
        ControlPlaneMode::OpenOnLoopback => tracing::warn!(
            "control plane open on loopback: any signature is accepted. Set \
             HERALD_ACCESS_KEY_ID and HERALD_SECRET_ACCESS_KEY to require one"
        ),
        ControlPlaneMode::OpenInsecure => tracing::warn!(
            "INSECURE: control plane open on {addr} without credentials: anyone who reaches \
             this port can publish to every room and disconnect anyone"
        ),
    }
    say(&format!(
        "herald-local listening on ws://{addr}/{stage}\n  \
         demo page: http://{addr}/\n  \
         @connections: http://{addr}/{stage}/@connections/{{connectionId}}\n  \
         Lambda Invoke: http://{addr}/2015-03-31/functions/publish/invocations"
    ));
    ready.serve(shutdown_signal()).await?;
    Ok(())
}

/// Prints a line for the user; a closed stdout (a script that read what it needed) is
/// no reason to stop serving.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// Completes on ctrl-c or SIGTERM; a second one exits at once, without waiting for the
/// drain.
async fn shutdown_signal() {
    next_signal().await;
    tokio::spawn(async {
        next_signal().await;
        tracing::warn!("second signal: exiting without waiting for connections");
        std::process::exit(SECOND_SIGNAL_EXIT);
    });
}

/// The exit status after a second signal, as a shell reports an interrupted command.
const SECOND_SIGNAL_EXIT: i32 = 130;

/// Completes on the next ctrl-c or SIGTERM.
async fn next_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
