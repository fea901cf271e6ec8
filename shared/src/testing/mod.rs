//! Real servers for tests (feature `test-support`): each test starts its own on a free
//! loopback port and stops it when dropped, so nothing depends on what the machine runs.
//! The servers that speak TLS only, with a certificate authority of the test's own, are in
//! `tls.rs`.

use std::net::TcpListener;
use std::ops::Deref;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod tls;
mod webhooks;

pub use tls::{TlsMosquitto, TlsRedis};
pub use webhooks::{Deliveries, WebhookReceiver, file_delivery};

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Redis,
    /// A Redis node in cluster mode, keeping its cluster configuration in the directory
    /// its cluster owns (so a restart rejoins with the same id and slots, empty).
    RedisClusterNode,
    DynamoDb,
    /// `moto_server` as users start it: requests handled on concurrent threads.
    PlainMoto,
    /// `mosquitto`, the MQTT broker, in its local-only mode (loopback, anonymous).
    Mosquitto,
}

/// Creates the SQS queue `name` on the server `sdk` points at (`moto_server` serves SQS
/// too), answering its URL.
pub async fn sqs_queue(sdk: &aws_config::SdkConfig, name: &str) -> String {
    aws_sdk_sqs::Client::new(sdk)
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("moto_server serves SQS")
        .queue_url()
        .expect("a queue URL")
        .to_owned()
}

/// A server process of this test's own: `redis-server`, or `moto_server` for DynamoDB.
pub struct Server {
    kind: Kind,
    port: u16,
    child: Option<Child>,
    /// Where a cluster node keeps its configuration.
    dir: Option<PathBuf>,
}

/// Every command a Redis server has run, from the text of its `INFO commandstats` (which
/// counts the `INFO` that asked, too).
pub fn commands_run(info: &str) -> u64 {
    info.lines()
        .filter(|line| line.starts_with("cmdstat_"))
        .filter_map(|line| {
            line.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A loopback port free when asked, as the OS hands them out: only a candidate, since
/// another test's server may bind it next ([`spawn_listening`] checks who got it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free port")
}

/// A loopback port held by a listener that never accepts, and the listener (keep it):
/// a client finds nothing that answers there, and no server a parallel test starts can
/// take the port meanwhile, as it could one from [`free_port`].
pub fn silent_port() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("the OS hands out a free port");
    let port = listener.local_addr().expect("a bound address").port();
    (listener, port)
}

/// A loopback port bound but never listened on, and its socket (keep it): a client is
/// refused at once, as by a stopped server, and no server a parallel test starts can take
/// the port meanwhile.
pub fn refused_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(([127, 0, 0, 1], 0).into())
        .expect("the OS hands out a free port");
    let port = socket.local_addr().expect("a bound address").port();
    (socket, port)
}

/// `moto_server`'s application served with one request handled at a time. DynamoDB
/// applies the writes to one item one after another (a conditional update sees the one
/// before it); `moto_server` handles requests on concurrent threads without that, so two
/// `ADD`s to one counter can both read the old value. Serializing every request gives moto
/// DynamoDB's per-item order (and more), so the store suite's concurrency cases mean the
/// same on every backend. Threads and keep-alive stay on, as with `moto_server`.
const SERIALIZED_MOTO: &str = r#"
import os, sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()
def serialized(environ, start_response):
    with lock:
        return list(app(environ, start_response))
run_simple(host, port, serialized, threaded=True)
"#;

impl Server {
    /// Starts `redis-server` on a free port and waits until it answers.
    pub fn redis() -> Self {
        Self::launch(Kind::Redis)
    }

    /// Starts `moto_server` (a DynamoDB-compatible server with transactions and TTL) on a
    /// free port and waits until it answers.
    pub fn dynamodb() -> Self {
        Self::launch(Kind::DynamoDb)
    }

    /// Starts `moto_server` exactly as a user would (`python3 -m moto.server`), without the
    /// serialization [`Server::dynamodb`] adds for the store suite's concurrency cases.
    pub fn plain_moto() -> Self {
        Self::launch(Kind::PlainMoto)
    }

    /// Starts `mosquitto` on a free port and waits until it listens.
    pub fn mosquitto() -> Self {
        Self::launch(Kind::Mosquitto)
    }

    fn launch(kind: Kind) -> Self {
        Self::launch_in(kind, None)
    }

    fn launch_in(kind: Kind, dir: Option<PathBuf>) -> Self {
        let mut server = Self {
            kind,
            port: 0,
            child: None,
            dir,
        };
        server.start(Port::Any);
        server
    }

    /// The URL to connect to: `redis://…` or `http://…`.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis | Kind::RedisClusterNode => format!("redis://127.0.0.1:{}", self.port),
            Kind::DynamoDb | Kind::PlainMoto => format!("http://127.0.0.1:{}", self.port),
            Kind::Mosquitto => format!("mqtt://127.0.0.1:{}", self.port),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.start(Port::Fixed(self.port));
    }

    /// Starts the server on `port` and waits until this very process listens there.
    fn start(&mut self, port: Port) {
        let kind = self.kind;
        let dir = self.dir.clone();
        let (child, port) = spawn_listening(port, |port| Self::command(kind, dir.as_ref(), port));
        self.child = Some(child);
        self.port = port;
    }

    /// The command that starts a server of `kind` on `port`, and how to install it.
    fn command(kind: Kind, dir: Option<&PathBuf>, port: u16) -> Launch {
        let port = port.to_string();
        let redis = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        let config = dir
            .map(|dir| dir.join(format!("nodes-{port}.conf")).display().to_string())
            .unwrap_or_default();
        let (program, args, install): (&str, Vec<&str>, &str) = match kind {
            Kind::Redis => ("redis-server", redis, "apt-get install redis-server"),
            Kind::RedisClusterNode => (
                "redis-server",
                [
                    redis,
                    vec![
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &config,
                        "--cluster-node-timeout",
                        CLUSTER_NODE_TIMEOUT_MS,
                    ],
                ]
                .concat(),
                "apt-get install redis-server",
            ),
            Kind::DynamoDb => (
                "python3",
                vec!["-c", SERIALIZED_MOTO, "127.0.0.1", &port],
                "pip install 'moto[server]'",
            ),
            Kind::PlainMoto => (
                "python3",
                vec!["-m", "moto.server", "-H", "127.0.0.1", "-p", &port],
                "pip install 'moto[server]'",
            ),
            Kind::Mosquitto => (
                mosquitto_program(),
                vec!["-p", &port],
                "apt-get install mosquitto mosquitto-clients",
            ),
        };
        let mut command = Command::new(program);
        command.args(&args);
        Launch { command, install }
    }
}

/// Where Debian's `mosquitto` package puts the broker.
const MOSQUITTO_SBIN: &str = "/usr/sbin/mosquitto";

/// Debian's `mosquitto`, in `/usr/sbin` (which a user's `PATH` may not hold), else the
/// one on the `PATH`.
fn mosquitto_program() -> &'static str {
    if std::path::Path::new(MOSQUITTO_SBIN).exists() {
        MOSQUITTO_SBIN
    } else {
        "mosquitto"
    }
}

/// A server's command line and how to install its program.
struct Launch {
    command: Command,
    install: &'static str,
}

/// Which port a server starts on.
#[derive(Clone, Copy)]
enum Port {
    /// Any free one: a fresh one for each attempt.
    Any,
    /// This one, which clients already know (a restart).
    Fixed(u16),
}

/// How long a server a test started has to listen.
const LISTEN_PATIENCE: Duration = Duration::from_secs(20);

/// How often a starting server is looked at.
const LISTEN_POLL: Duration = Duration::from_millis(10);

/// Starts the server `launch` describes for a port until the process itself listens
/// there, and returns it with its port. A free port is only free when asked: another test's
/// server may bind it first, and then this one exits (address in use) while the port
/// answers for the other, so what is checked is that the child holds the listening socket,
/// and a lost port is retried on a new one (or, when fixed, again until the patience ends).
fn spawn_listening(port: Port, launch: impl Fn(u16) -> Launch) -> (Child, u16) {
    let deadline = Instant::now() + LISTEN_PATIENCE;
    loop {
        let port = match port {
            Port::Any => free_port(),
            Port::Fixed(port) => port,
        };
        let Launch {
            mut command,
            install,
        } = launch(port);
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program} ({e}): install it ({install}) or run scripts/test, which does")
            });
        loop {
            if listens(child.id(), port) {
                return (child, port);
            }
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{program} did not listen on port {port} within {LISTEN_PATIENCE:?}");
            }
            std::thread::sleep(LISTEN_POLL);
        }
        assert!(
            Instant::now() < deadline,
            "{program} exited without listening on port {port} within {LISTEN_PATIENCE:?}"
        );
        std::thread::sleep(LISTEN_POLL);
    }
}

/// Whether process `pid` holds a TCP socket listening on `port` (read from `/proc`: which
/// process answers on a port is what a test needs to know, not only that one does). Where
/// there is no `/proc` (macOS), whether anything answers there.
fn listens(pid: u32, port: u16) -> bool {
    /// The state `/proc/net/tcp` gives a listening socket.
    const LISTEN: &str = "0A";
    if !std::path::Path::new("/proc/net/tcp").exists() {
        return std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    }
    let wanted = format!(":{port:04X}");
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
                    (local.ends_with(&wanted) && *state == LISTEN)
                        .then(|| format!("socket:[{inode}]"))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| {
            inodes
                .iter()
                .any(|inode| target.as_os_str() == inode.as_str())
        })
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `program` with `args` to its end; panics, with how to install it, when it is
/// missing, and with what it said when it fails.
fn run_tool(program: &str, args: &[&str], install: &str) {
    let done = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program} ({e}): install it ({install}) or run scripts/test, which does"
            )
        });
    assert!(
        done.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
}

/// How long a cluster node may be silent before the others mark it failed (ms): short, so
/// that a test that kills a master sees the cluster react within seconds.
const CLUSTER_NODE_TIMEOUT_MS: &str = "1000";

/// How many masters a test cluster has: the fewest Redis Cluster accepts.
pub const CLUSTER_MASTERS: usize = 3;

/// A Redis Cluster of this test's own: [`CLUSTER_MASTERS`] masters, no replicas, on free
/// loopback ports, created with `redis-cli --cluster create` as an operator would.
pub struct RedisCluster {
    nodes: Vec<Server>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts the nodes, joins them into one cluster covering every slot, and waits until
    /// every node says the cluster is ok.
    pub fn start() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-cluster-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory for the cluster");
        let nodes: Vec<Server> = (0..CLUSTER_MASTERS)
            .map(|_| Server::launch_in(Kind::RedisClusterNode, Some(dir.clone())))
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        run_tool("redis-cli", &create, "apt-get install redis-tools");
        let cluster = Self { nodes, dir };
        cluster.wait_until_ok();
        cluster
    }

    /// The seed list, as `HERALD_REDIS_CLUSTER` takes it.
    pub fn list(&self) -> String {
        self.urls().join(",")
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Server::url).collect()
    }

    /// Kills node `i` (as a crash would).
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again on its port, empty, with its old identity and slots, and waits
    /// until the cluster is ok again.
    pub fn restart(&mut self, i: usize) {
        self.start_again(i);
        self.wait_until_ok();
    }

    /// Starts node `i` again on its port, empty, with its old identity and slots, without
    /// waiting for the cluster.
    pub fn start_again(&mut self, i: usize) {
        self.nodes[i].restart();
    }

    /// Waits until every running node reports `cluster_state:ok`.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the Redis Cluster on {:?} was not ok within 30 s: {info}",
                    self.urls()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A value that keeps the server behind it alive as long as itself.
pub struct Guarded<T> {
    value: T,
    _server: Box<dyn Send + Sync>,
}

impl<T> Guarded<T> {
    /// Ties `value` to `server` (a [`Server`] or a [`RedisCluster`]).
    pub fn new(value: T, server: impl Send + Sync + 'static) -> Self {
        Self {
            value,
            _server: Box::new(server),
        }
    }

    /// The value changed by `f`, tied to the same server.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Guarded<U> {
        Guarded {
            value: f(self.value),
            _server: self._server,
        }
    }
}

impl<T> Deref for Guarded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::commands_run;

    #[test]
    fn commands_run_adds_up_every_commands_calls() {
        let info = "# Commandstats\r\ncmdstat_get:calls=3,usec=5,usec_per_call=1.67\r\n\
                    cmdstat_publish:calls=4,usec=9\r\nother:calls=100\r\n";
        assert_eq!(commands_run(info), 7);
    }
}
