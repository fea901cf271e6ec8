//! Lambda mode: the `herald-local` binary running the eight real function binaries behind
//! its embedded Lambda Runtime API, on a real Redis, with real clients: a WebSocket client
//! connects with a JWT (the `authorizer` and `connect` binaries), subscribes (`message`,
//! whose reply comes back through `@connections`), is published to through the Invoke API
//! (`publish`, directly and, past the shard threshold, in page jobs the `deliver` binary
//! takes from the delivery queue), reads through long polling (`poll`) and a streamed
//! response (`stream`), and disconnects (`disconnect`). A function that fails at init is
//! reported with its output; a missing binary or the memory store is refused at start.
//!
//! The binaries come from `HERALD_TEST_LAMBDA_DIR` (CI sets `target/release`), else the
//! workspace's debug build, which `scripts/test` builds first.

use crate::common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{Gateway, PATIENCE, SharedRedis};
use herald_local::FUNCTIONS;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the function binaries are; fails, saying how to build them, when one is missing.
fn lambda_dir() -> PathBuf {
    let dir = std::env::var_os("HERALD_TEST_LAMBDA_DIR").map_or_else(
        || {
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
                PathBuf::from,
            );
            target.join("debug")
        },
        PathBuf::from,
    );
    for function in FUNCTIONS.iter().map(|f| f.name) {
        assert!(
            dir.join(function).is_file() || dir.join(function).join("bootstrap").is_file(),
            "no {function} binary in {}: build the functions first (`cargo build --workspace \
             --bins`, as scripts/test does), or set HERALD_TEST_LAMBDA_DIR",
            dir.display()
        );
    }
    dir
}

/// Starts the binary in Lambda mode on `dir` with `env` alone (and the tests' secret); the
/// process, its address, and the line it printed with the cold starts.
async fn start(
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (tokio::process::Child, SocketAddr, String) {
    start_in(dir, env, |_| {}).await
}

/// [`start`], with the command changed by `prepare` first.
async fn start_in(
    dir: &std::path::Path,
    env: &[(&str, &str)],
    prepare: impl FnOnce(&mut tokio::process::Command),
) -> (tokio::process::Child, SocketAddr, String) {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut command = common::binary();
    prepare(&mut command);
    let mut child = command
        .args(["--port", "0", "--lambda-dir"])
        .arg(dir)
        .env_clear()
        .env(
            "HERALD_JWT_SECRET",
            String::from_utf8(common::SECRET.to_vec()).unwrap(),
        )
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut cold_starts = String::new();
    loop {
        let line = tokio::time::timeout(PATIENCE * 3, stdout.next_line())
            .await
            .expect("start-up output in time")
            .unwrap()
            .expect("the address is printed");
        if line.contains("cold starts") {
            cold_starts = line.clone();
        }
        if let Some(rest) = line.strip_prefix("herald-local listening on ws://") {
            let addr = rest.split('/').next().unwrap().parse().unwrap();
            return (child, addr, cold_starts);
        }
    }
}

/// Reads `stream` until `text` has arrived; everything read.
async fn read_until(stream: &mut TcpStream, text: &str) -> String {
    let mut seen = Vec::new();
    let mut buffer = [0; 4096];
    while !String::from_utf8_lossy(&seen).contains(text) {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
            .await
            .unwrap_or_else(|_| {
                panic!("{text:?} in time; read: {}", String::from_utf8_lossy(&seen))
            })
            .unwrap();
        assert!(n > 0, "the stream ended before {text:?}");
        seen.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn the_function_binaries_serve_a_client_from_connect_to_disconnect() {
    serve_a_client(false).await;
}

/// The same with control-plane credentials: the functions sign their `@connections` posts
/// and their page jobs with them, and nothing unsigned is taken.
#[tokio::test]
async fn the_function_binaries_sign_with_the_control_planes_credentials() {
    serve_a_client(true).await;
}

async fn serve_a_client(signed: bool) {
    let dir = lambda_dir();
    let redis = SharedRedis::single();
    let mut env: Vec<(&str, String)> = redis.vars();
    if signed {
        // What the tests' SDK clients sign with.
        env.push(("HERALD_ACCESS_KEY_ID", "test".into()));
        env.push(("HERALD_SECRET_ACCESS_KEY", "test".into()));
    }
    // Past two recipients a publish goes out in page jobs, through `deliver`.
    env.push(("HERALD_SHARD_THRESHOLD", "2".into()));
    env.push(("PATH", std::env::var("PATH").unwrap_or_default()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_child, addr, cold_starts) = start(&dir, &env).await;
    // Each function started as a binary, and its cold start was measured and printed.
    for function in FUNCTIONS.iter().map(|f| f.name) {
        assert!(
            cold_starts.contains(&format!("{function} ")),
            "{function} in {cold_starts}"
        );
    }
    let gw = Gateway::at(addr);

    // `connect` and `authorizer` ran as binaries: a bad token is refused by the authorizer.
    assert_eq!(
        gw.handshake(&format!("{}?token=nonsense", gw.url()), None)
            .await
            .err(),
        Some(401)
    );
    let mut members = Vec::new();
    for user in ["ann", "bob", "cy"] {
        let mut client = gw.connect(user, &["news", "solo"], &[]).await;
        client.subscribe("news").await;
        members.push(client);
    }
    members[0].subscribe("solo").await;

    // A stream through the `stream` binary, open before the publishes.
    let token = gw.token("dee", &["news"], &[]);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET /local/events?rooms=news&token={token} HTTP/1.1\r\nHost: {addr}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let head = read_until(&mut stream, "retry:").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");

    // Directly: one recipient.
    let direct = gw
        .invoke(json!({"room": "solo", "data": "just you"}))
        .await
        .unwrap();
    assert_eq!(direct["delivered"], 1, "{direct}");
    assert_eq!(members[0].recv().await["data"], "just you");

    // In a page job: three recipients, past the threshold.
    let sharded = gw
        .invoke(json!({"room": "news", "data": "everyone"}))
        .await
        .unwrap();
    assert_eq!(sharded["queued_pages"], 1, "{sharded}");
    for member in &mut members {
        assert_eq!(member.recv().await["data"], "everyone");
    }
    for member in &mut members {
        member.expect_nothing(Duration::from_millis(300)).await;
    }
    let streamed = read_until(&mut stream, "everyone").await;
    assert!(streamed.contains("event: notification"), "{streamed}");

    // Long polling through the `poll` binary, from the stream's cursor: what came after.
    let cursor = streamed
        .lines()
        .find_map(|line| line.strip_prefix("id: "))
        .expect("the event's cursor")
        .trim()
        .to_owned();
    gw.invoke(json!({"room": "news", "data": "again"}))
        .await
        .unwrap();
    for member in &mut members {
        assert_eq!(member.recv().await["data"], "again");
    }
    let (status, body) = common::http_get(
        addr,
        &format!("/local/poll?rooms=news&cursor={cursor}&wait=5&token={token}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let answer: Value = serde_json::from_str(json).unwrap();
    let polled: Vec<&Value> = answer["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .map(|n| &n["data"])
        .collect();
    assert_eq!(polled, [&json!("again")], "{answer}");

    // `disconnect` forgets the connection: the next direct publish reaches nobody.
    let leaving = members.remove(0);
    drop(leaving);
    let mut forgotten = Value::Null;
    for _ in 0..50 {
        forgotten = gw
            .invoke(json!({"room": "solo", "data": "anyone?"}))
            .await
            .unwrap();
        if forgotten["delivered"] == 0 && forgotten["gone"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(forgotten["delivered"], 0, "{forgotten}");
}

/// Presence through the function binaries: `message` announces a subscribe, `disconnect`
/// (which then posts through the Management API too) a closed socket, and a `poll` reader
/// is a member while it waits.
#[tokio::test]
async fn the_function_binaries_announce_joins_and_leaves() {
    let dir = lambda_dir();
    let redis = SharedRedis::single();
    let mut env: Vec<(&str, String)> = redis.vars();
    env.push(("HERALD_PRESENCE_EVENTS", "1".into()));
    env.push(("PATH", std::env::var("PATH").unwrap_or_default()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_child, addr, _) = start(&dir, &env).await;
    let gw = Gateway::at(addr);
    let mut ann = gw.connect("ann", &["news"], &[]).await;
    ann.subscribe("news").await;
    let mut bob = gw.connect("bob", &["news"], &[]).await;
    bob.subscribe("news").await;
    let heard = |event: Value| (event["type"].clone(), event["user"].clone());
    assert_eq!(heard(ann.recv().await), (json!("join"), json!("ann")));
    assert_eq!(heard(ann.recv().await), (json!("join"), json!("bob")));
    assert_eq!(heard(bob.recv().await), (json!("join"), json!("bob")));
    drop(bob);
    assert_eq!(heard(ann.recv().await), (json!("leave"), json!("bob")));

    // A long poll through the `poll` binary is a member while it waits (fan-out skips it:
    // it reads history), and no longer once it answered.
    let token = gw.token("dee", &["news"], &[]);
    let reader = tokio::spawn(async move {
        common::http_get(
            addr,
            &format!("/local/poll?rooms=news&wait=3&token={token}"),
        )
        .await
    });
    let count = |answer: Value| answer["count"].as_u64().unwrap();
    let presence = json!({"action": "presence", "room": "news"});
    let deadline = std::time::Instant::now() + PATIENCE;
    while count(ann.ask(presence.clone()).await) != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the poll never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let published = gw.invoke(json!({"room": "news", "data": 1})).await.unwrap();
    assert_eq!(published["delivered"], 1, "ann only: {published}");
    assert_eq!(ann.recv().await["data"], 1);
    let (status, body) = reader.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""data":1"#), "{body}");
    assert_eq!(
        count(ann.ask(presence).await),
        1,
        "the poll left with its answer"
    );
}

#[tokio::test]
async fn ctrl_c_in_a_terminal_leaves_the_functions_to_run_every_disconnect() {
    let dir = lambda_dir();
    let redis = SharedRedis::single();
    let SharedRedis::Single(server) = &redis else {
        unreachable!("one server");
    };
    let env: Vec<(&str, String)> = redis.vars();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // As a shell starts it: the gateway leads a process group of its own.
    let (mut child, addr, _) = start_in(&dir, &env, |command| {
        command
            .process_group(0)
            .stderr(std::process::Stdio::piped());
    })
    .await;
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut log = String::new();
        stderr.read_to_string(&mut log).await.unwrap();
        log
    });
    let gw = Gateway::at(addr);
    let mut client = gw.connect("ann", &["news"], &[]).await;
    client.subscribe("news").await;
    let store = herald::store::RedisStore::connect(&server.url())
        .await
        .unwrap();
    let room = herald::protocol::RoomName::parse("news").unwrap();
    use herald::store::Connections;
    assert_eq!(store.member_count(Some(&room)).await.unwrap(), Some(1));

    // What ctrl-c does: SIGINT to every process of the terminal's foreground group.
    let group = format!("-{}", child.id().unwrap());
    let sent = std::process::Command::new("kill")
        .args(["-INT", "--", &group])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the gateway drains and exits")
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        store.member_count(Some(&room)).await.unwrap(),
        Some(0),
        "the disconnect function ran for the open connection"
    );
    // ...on the instance that was running, not on one started after the signal killed it.
    let log = log.await.unwrap();
    assert!(!log.contains("instance exited"), "{log}");
    assert!(!log.contains("instance started"), "{log}");
    drop(client);
}

#[tokio::test]
async fn a_function_that_fails_at_init_is_reported_with_its_output() {
    let real = lambda_dir();
    let dir = tempdir();
    for function in FUNCTIONS.iter().map(|f| f.name) {
        if function == "publish" {
            let script = dir.join(function);
            std::fs::write(
                &script,
                "#!/bin/sh\necho 'cannot read HERALD_SOMETHING: boom' >&2\nexit 3\n",
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        } else {
            let from = if real.join(function).is_file() {
                real.join(function)
            } else {
                real.join(function).join("bootstrap")
            };
            std::os::unix::fs::symlink(std::fs::canonicalize(from).unwrap(), dir.join(function))
                .unwrap();
        }
    }
    let redis = SharedRedis::single();
    let mut command = common::binary();
    command
        .args(["--port", "0", "--lambda-dir"])
        .arg(&dir)
        .env("HERALD_JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .envs(redis.vars());
    let said = tokio::time::timeout(PATIENCE * 3, common::refused_start(command))
        .await
        .expect("refused in time, not a hang");
    assert!(
        said.contains("the publish function failed to start"),
        "{said}"
    );
    assert!(said.contains("exit status: 3"), "{said}");
    assert!(
        said.contains("cannot read HERALD_SOMETHING: boom"),
        "{said}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn lambda_mode_refuses_the_memory_store_and_a_folder_without_the_binaries() {
    let real = lambda_dir();
    let mut command = common::binary();
    command
        .args(["--port", "0", "--lambda-dir"])
        .arg(&real)
        .env("HERALD_STORE", "memory");
    let said = common::refused_start(command).await;
    assert!(said.contains("HERALD_STORE=redis"), "{said}");

    let empty = tempdir();
    let redis = SharedRedis::single();
    let mut command = common::binary();
    command
        .args(["--port", "0", "--lambda-dir"])
        .arg(&empty)
        .envs(redis.vars());
    let said = common::refused_start(command).await;
    assert!(
        said.contains("no binary for the authorizer function"),
        "{said}"
    );
    assert!(said.contains("cargo build --release"), "{said}");
    std::fs::remove_dir_all(&empty).unwrap();
}

/// A fresh, empty folder of this test's own.
fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-lambda-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
