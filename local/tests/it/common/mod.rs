//! A `herald-local` started in-process on `127.0.0.1:0`, and real clients for it:
//! tokio-tungstenite for WebSockets, the AWS SDK's Lambda and Management API clients.

#![allow(dead_code)] // Each test file uses its own part of the harness.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_apigatewaymanagement::config::{Credentials, Region};
use futures::{SinkExt, StreamExt};
use herald::config::Config;
use herald_local::Settings;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The HS256 secret every test gateway verifies with.
pub const SECRET: &[u8] = b"herald-local-test-secret-of-at-least-32-bytes";
/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The `herald-local` binary, to be given its arguments and environment.
pub fn binary() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-local"));
    command.kill_on_drop(true);
    command
}

/// Runs `command` (a [`binary`]) and expects it to refuse to start, at once; what it said
/// on stderr.
pub async fn refused_start(mut command: tokio::process::Command) -> String {
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("it exits at once")
        .unwrap();
    assert!(!output.status.success(), "{command:?} must not start");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Starts the `herald-local` binary on a free port with `args` and the environment `env`
/// alone (plus the test secret); the process and the address it printed.
pub async fn spawn_binary(
    args: &[&str],
    env: &[(&str, &str)],
) -> (tokio::process::Child, SocketAddr) {
    spawn_binary_to(args, env, std::process::Stdio::null()).await
}

/// Log lines of a process, each with the instant this test read it.
pub type LogLines = Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>;

/// [`spawn_binary`], keeping its log (stderr) as it is written.
pub async fn spawn_binary_logged(
    args: &[&str],
    env: &[(&str, &str)],
) -> (tokio::process::Child, SocketAddr, LogLines) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let (mut child, addr) = spawn_binary_to(args, env, std::process::Stdio::piped()).await;
    let lines = LogLines::default();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let kept = lines.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            kept.lock().unwrap().push((std::time::Instant::now(), line));
        }
    });
    (child, addr, lines)
}

async fn spawn_binary_to(
    args: &[&str],
    env: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> (tokio::process::Child, SocketAddr) {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-local"))
        .args(["--port", "0"])
        .args(args)
        .env_clear()
        .env(
            "HERALD_JWT_SECRET",
            String::from_utf8(SECRET.to_vec()).unwrap(),
        )
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(PATIENCE, stdout.next_line())
            .await
            .expect("start-up output in time")
            .unwrap()
            .expect("the address is printed");
        if let Some(rest) = line.strip_prefix("herald-local listening on ws://") {
            let addr = rest.split('/').next().unwrap().parse().unwrap();
            return (child, addr);
        }
    }
}

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Settings for a test gateway: the test secret, API Gateway's default limits.
pub fn settings() -> Settings {
    settings_with(&[])
}

/// [`settings`] with more environment variables, as the binary would read them.
pub fn settings_with(vars: &[(&str, &str)]) -> Settings {
    let config = Config::from_lookup(|k| match k {
        "HERALD_JWT_SECRET" => Some(String::from_utf8(SECRET.to_vec()).unwrap()),
        _ => vars
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| (*v).to_owned()),
    })
    .unwrap();
    Settings::new(config)
}

impl Gateway {
    pub async fn start() -> Self {
        Self::start_with(settings()).await
    }

    pub async fn start_with(settings: Settings) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(herald_local::prepare(listener, settings).await.unwrap())
    }

    /// Serves a prepared gateway until dropped.
    pub fn serve(ready: herald_local::Ready) -> Self {
        let addr = ready.addr;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            ready
                .serve(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A handle on a gateway running elsewhere (another process) at `addr`.
    pub fn at(addr: SocketAddr) -> Self {
        Self {
            addr,
            stop: None,
            task: None,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/local", self.addr)
    }

    pub fn token(&self, user: &str, rooms: &[&str], publish: &[&str]) -> String {
        herald::auth::sign_hs256(SECRET, user, rooms, publish, 3600).unwrap()
    }

    /// Connects `user` with the given rights and learns its connection id.
    pub async fn connect(&self, user: &str, rooms: &[&str], publish: &[&str]) -> Client {
        let url = format!("{}?token={}", self.url(), self.token(user, rooms, publish));
        let mut client = Client::open(&url).await.expect("handshake");
        client.id = client.whoami().await;
        client
    }

    /// Connects `n` users (`member0`, `member1`, …), each subscribed to `room`.
    pub async fn members(&self, n: usize, room: &str) -> Vec<Client> {
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            let mut client = self.connect(&format!("member{i}"), &[room], &[]).await;
            client.subscribe(room).await;
            clients.push(client);
        }
        clients
    }

    /// Tries a handshake; the HTTP status on refusal.
    pub async fn handshake(&self, url: &str, bearer: Option<&str>) -> Result<Client, u16> {
        let mut request = url.into_client_request().unwrap();
        if let Some(token) = bearer {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(Client {
                ws,
                id: String::new(),
            }),
            Err(WsError::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
        }
    }

    pub fn lambda(&self) -> aws_sdk_lambda::Client {
        let config = aws_sdk_lambda::Config::builder()
            .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(format!("http://{}", self.addr))
            .build();
        aws_sdk_lambda::Client::from_conf(config)
    }

    pub fn management(&self) -> aws_sdk_apigatewaymanagement::Client {
        let config = aws_sdk_apigatewaymanagement::Config::builder()
            .behavior_version(aws_sdk_apigatewaymanagement::config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(format!("http://{}/local", self.addr))
            .build();
        aws_sdk_apigatewaymanagement::Client::from_conf(config)
    }

    /// Invokes `publish` through the Lambda Invoke API; the answer, or the function error.
    pub async fn invoke(&self, payload: Value) -> Result<Value, Value> {
        let out = self
            .lambda()
            .invoke()
            .function_name("publish")
            .payload(aws_sdk_lambda::primitives::Blob::new(payload.to_string()))
            .send()
            .await
            .expect("the Invoke API answers");
        let body: Value = serde_json::from_slice(out.payload().unwrap().as_ref()).unwrap();
        match out.function_error() {
            Some(_) => Err(body),
            None => Ok(body),
        }
    }

    /// Stops the gateway as SIGTERM would, and waits for it to finish.
    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let task = self.task.take().unwrap();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the gateway stops promptly")
            .unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub id: String,
}

impl Client {
    pub async fn open(url: &str) -> Result<Self, WsError> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Self {
            ws,
            id: String::new(),
        })
    }

    pub async fn send(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Sends `text` as one message split into frames of at most `frame` bytes, as browsers
    /// and careful clients do for large messages.
    pub async fn send_fragmented(&mut self, text: &str, frame: usize) {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(frame).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let opcode = OpCode::Data(if i == 0 { Data::Text } else { Data::Continue });
            let last = i + 1 == chunks.len();
            let frame = Frame::message(chunk.to_vec(), opcode, last);
            self.ws.feed(Message::Frame(frame)).await.unwrap();
        }
        self.ws.flush().await.unwrap();
    }

    /// The next JSON message; panics after [`PATIENCE`].
    pub async fn recv(&mut self) -> Value {
        self.recv_within(PATIENCE).await
    }

    /// The next JSON message; panics after `patience`.
    pub async fn recv_within(&mut self, patience: Duration) -> Value {
        loop {
            let message = tokio::time::timeout(patience, self.ws.next())
                .await
                .expect("a message in time")
                .expect("the socket is open")
                .expect("a readable frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_nothing(&mut self, wait: Duration) {
        if let Ok(Some(Ok(message))) = tokio::time::timeout(wait, self.ws.next()).await {
            panic!("expected nothing, got {message:?}");
        }
    }

    /// Sends `request` and returns the next message.
    pub async fn ask(&mut self, request: Value) -> Value {
        self.send(request).await;
        self.recv().await
    }

    pub async fn whoami(&mut self) -> String {
        let reply = self.ask(json!({"action":"whoami"})).await;
        reply["connectionId"].as_str().unwrap().to_owned()
    }

    pub async fn subscribe(&mut self, room: &str) {
        let reply = self.ask(json!({"action":"subscribe","room":room})).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }

    /// Waits for the server's close frame; its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return (code.into(), reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("socket failed before a close frame: {e}"),
                None => panic!("socket ended without a close frame"),
            }
        }
    }
}

/// A store that counts removals per connection, to prove `$disconnect` runs once.
pub struct CountingStore {
    pub inner: herald::store::MemoryStore,
    pub removals: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl CountingStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: herald::store::MemoryStore::new(),
            removals: Default::default(),
        })
    }

    pub fn removals(&self, id: &str) -> usize {
        self.removals.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl herald::store::ForwardingStore for CountingStore {
    fn inner(&self) -> &dyn herald::store::ConnectionStore {
        &self.inner
    }

    async fn remove(
        &self,
        id: &herald::ids::ConnectionId,
    ) -> Result<herald::store::Removed, herald::store::StoreError> {
        *self
            .removals
            .lock()
            .unwrap()
            .entry(id.as_str().to_owned())
            .or_default() += 1;
        herald::store::Connections::remove(&self.inner, id).await
    }
}

/// Runs `python3 args…` with `input` on its standard input; what it wrote and how it ended.
pub fn python(args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("python3")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test needs it)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// One raw HTTP/1.1 request to `addr` (it should say `connection: close`); the whole answer.
pub async fn raw_http(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// `GET path` on a connection of its own, waiting as long as a long poll may: the status and
/// the body (as sent: a chunked one keeps its chunk lines).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE * 4, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8(answer).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// The Redis that gateways share in a test: one server, or a 3-master Redis Cluster, each
/// started by the test on free ports.
pub enum SharedRedis {
    /// `redis-server`.
    Single(herald::testing::Server),
    /// Three `redis-server --cluster-enabled yes` joined by `redis-cli --cluster create`.
    Cluster(herald::testing::RedisCluster),
}

impl SharedRedis {
    /// One server.
    pub fn single() -> Self {
        Self::Single(herald::testing::Server::redis())
    }

    /// A 3-master cluster.
    pub fn cluster() -> Self {
        Self::Cluster(herald::testing::RedisCluster::start())
    }

    /// The variables that put a gateway's store on it.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Single(server) => vec![
                ("HERALD_STORE", "redis".into()),
                ("HERALD_REDIS_URL", server.url()),
            ],
            Self::Cluster(cluster) => vec![
                ("HERALD_STORE", "redis".into()),
                ("HERALD_REDIS_CLUSTER", cluster.list()),
            ],
        }
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        match self {
            Self::Single(server) => vec![server.url()],
            Self::Cluster(cluster) => cluster.urls(),
        }
    }

    /// Kills every node (as a crash would).
    pub fn stop(&mut self) {
        match self {
            Self::Single(server) => server.stop(),
            Self::Cluster(cluster) => {
                for i in 0..herald::testing::CLUSTER_MASTERS {
                    cluster.stop(i);
                }
            }
        }
    }

    /// Starts every node again, empty (a cluster with its old identities and slots).
    pub fn restart(&mut self) {
        self.stop();
        match self {
            Self::Single(server) => server.restart(),
            Self::Cluster(cluster) => {
                for i in 0..herald::testing::CLUSTER_MASTERS {
                    cluster.start_again(i);
                }
                cluster.wait_until_ok();
            }
        }
    }

    /// Every command the nodes have run, by `INFO commandstats` (which counts each asking
    /// too: one per node).
    pub async fn commands_run(&self) -> u64 {
        let mut total = 0;
        for url in self.urls() {
            total += herald::testing::commands_run(&self.info(&url, "commandstats").await);
        }
        total
    }

    /// `INFO section` of the node at `url`.
    pub async fn info(&self, url: &str, section: &str) -> String {
        let mut info = redis::cmd("INFO");
        info.arg(section);
        node_runs(url, info).await
    }

    /// Deletes every key on every node.
    pub async fn flush(&self) {
        for url in self.urls() {
            let () = node_runs(&url, redis::cmd("FLUSHALL")).await;
        }
    }
}

/// Runs `command` on the one node at `url` (not through a cluster's routing).
async fn node_runs<T: redis::FromRedisValue>(url: &str, command: redis::Cmd) -> T {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    command.query_async(&mut conn).await.unwrap()
}
