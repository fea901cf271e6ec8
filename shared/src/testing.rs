//! Real servers for tests (feature `test-support`): each test starts its own on a free
//! loopback port and stops it when dropped, so nothing depends on what the machine runs.

use std::net::TcpListener;
use std::ops::Deref;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Redis,
    DynamoDb,
}

/// A server process of this test's own: `redis-server`, or `moto_server` for DynamoDB.
pub struct Server {
    kind: Kind,
    port: u16,
    child: Option<Child>,
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

/// A free loopback port, as the OS hands them out.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free port")
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

    fn launch(kind: Kind) -> Self {
        let mut server = Self {
            kind,
            port: free_port(),
            child: None,
        };
        server.restart();
        server
    }

    /// The URL to connect to: `redis://…` or `http://…`.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::DynamoDb => format!("http://127.0.0.1:{}", self.port),
        }
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
        let port = self.port.to_string();
        let (program, args, install): (&str, Vec<&str>, &str) = match self.kind {
            Kind::Redis => (
                "redis-server",
                vec![
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                "apt-get install redis-server",
            ),
            Kind::DynamoDb => (
                "python3",
                vec!["-c", SERIALIZED_MOTO, "127.0.0.1", &port],
                "pip install 'moto[server]'",
            ),
        };
        let child = Command::new(program)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program} ({e}): install it ({install}) or run scripts/test, which does")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{program} did not listen on port {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A value that keeps the server behind it alive as long as itself.
pub struct Guarded<T> {
    value: T,
    _server: Server,
}

impl<T> Guarded<T> {
    /// Ties `value` to `server`.
    pub fn new(value: T, server: Server) -> Self {
        Self {
            value,
            _server: server,
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
