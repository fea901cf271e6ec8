//! The processes a run measures: `herald-local`, the baseline server and the seed's Node
//! server (each its own
//! process, so their CPU and memory can be read apart from the load generator's), and
//! what `/proc` says about them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The HS256 secret the benchmark's gateways verify with: 32 bytes or more, as a gateway
/// beyond loopback requires (on loopback a shorter one is only warned about).
pub const SECRET: &str = "herald-bench-secret-of-at-least-32-bytes";

/// A child process serving on `addr`.
pub struct Proc {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// A binary built next to this one (`target/{debug,release}/NAME`).
fn sibling(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("the benchmark knows where it runs from");
    let dir = me.parent().expect("the executable is in a folder");
    let candidate = dir.join(name);
    if candidate.exists() {
        return candidate;
    }
    // Run from target/{profile}/deps by a test harness.
    dir.parent().map(|d| d.join(name)).unwrap_or(candidate)
}

/// `program`, run on the placement's server CPUs when it names some.
fn placed(program: PathBuf) -> Command {
    match crate::placement::get().server_cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpus).arg(program);
            command
        }
        None => Command::new(program),
    }
}

async fn spawn(mut command: Command, marker: &str) -> Proc {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {command:?}: {e} (build it first: see BENCHMARKS.md)")
        });
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the server starts within 30 s")
            .expect("its stdout is readable")
            .expect("it prints where it listens");
        if let Some(rest) = line.split(marker).nth(1) {
            let addr = rest.split('/').next().unwrap_or(rest).trim();
            break addr.parse().expect("a socket address");
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Proc { child, addr }
}

/// Starts `herald-local` (release or debug, next to this binary) on a free port with the
/// benchmark's secret, no per-user limit and no sharding (the fan-out figures are of an
/// instance delivering a room itself; page jobs are paced by the post budget, on purpose);
/// `env` adds variables (a Redis store, say).
pub async fn gateway(env: &[(&str, &str)]) -> Proc {
    gateway_with(
        &["--max-connections-per-user", "0", "--shard-threshold", "0"],
        env,
    )
    .await
}

/// Starts `herald-local` on a free port with the benchmark's secret, `args` and `env`.
pub async fn gateway_with(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut command = placed(sibling("herald-local"));
    command
        .args(["--port", "0"])
        .args(args)
        .env_clear()
        .env("HERALD_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    spawn(command, "listening on ws://").await
}

/// The seed's reference server (`bench/seed/server.js`, Node with `ws` and `ioredis`).
const SEED_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/seed");

/// Starts one instance of the seed's Node server on a free port, on the Redis at
/// `redis_url`; installs its locked packages first if they are missing.
pub async fn seed(redis_url: &str) -> Proc {
    let dir = std::path::Path::new(SEED_DIR);
    if !dir.join("node_modules").exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .status()
            .expect("npm runs (the seed's server needs Node 20 and npm)");
        assert!(status.success(), "npm ci in {SEED_DIR} failed");
    }
    let mut command = placed(PathBuf::from("node"));
    command
        .arg(dir.join("server.js"))
        .env("REDIS_URL", redis_url)
        .env("PORT", "0");
    spawn(command, "seed listening on ").await
}

/// Starts the bare broadcast server (this binary's `baseline-server`) on a free port.
pub async fn baseline() -> Proc {
    let mut command = placed(std::env::current_exe().expect("this binary"));
    command.args(["baseline-server", "--port", "0"]);
    spawn(command, "baseline listening on ").await
}

/// Resident memory of `pid` ("self" for this process), in KiB.
pub fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time used by `pid` ("self" for this process), user plus system, in seconds.
pub fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Linux reports in clock ticks of 1/100 s (USER_HZ) on every common platform.
    (ticks(11) + ticks(12)) / 100.0
}
