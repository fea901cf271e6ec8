//! One function's instances, as Lambda keeps them: child processes of the function's binary,
//! each polling a Runtime API of its own (`runtime_api.rs`), all taking invocations from the
//! function's one queue.
//!
//! An instance starts (cold start: spawn to its first `/next`) when an invocation finds
//! every instance busy, up to [`MAX_INSTANCES`]; one that reports an init error, exits or
//! does not ask for work within [`INIT_TIMEOUT`] is stopped and reported with its reason
//! and its last lines of output. A running invocation past the function's timeout stops its
//! instance (`Sandbox.Timedout`); an instance that exits fails its invocation
//! (`Runtime.ExitError`). Output goes to the gateway's stderr, each line prefixed with the
//! function's name.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::FunctionError;
pub(crate) use super::runtime_api::INIT_TIMEOUT;
use super::runtime_api::{InstanceApi, Invocation, Invocations, Outcome, Started, lock, router};

/// Instances of one function at most: the local stand-in for reserved concurrency.
pub const MAX_INSTANCES: usize = 10;
/// Invocations waiting for an instance, per function; one more is refused with
/// `TooManyRequestsException`, as Lambda refuses one over its concurrency.
pub const QUEUED_INVOCATIONS: usize = 1024;
/// Lines of an instance's output kept to explain a failed start.
const OUTPUT_LINES_KEPT: usize = 20;
/// Bytes of one line of output, at most (longer lines are cut).
const MAX_LINE_BYTES: usize = 16 * 1024;

/// What a function is and how it runs.
pub struct Spec {
    /// Its name, as in the SAM template and `functions/`.
    pub name: &'static str,
    /// Its timeout, as in the SAM template.
    pub timeout: Duration,
    /// Its memory in MB, as in the SAM template (given to it as
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`).
    pub memory_mb: u32,
}

/// A function whose instances failed to start, and why.
#[derive(Debug, thiserror::Error)]
#[error("the {function} function failed to start: {reason}{}", output_tail(.output))]
pub struct InitFailure {
    /// The function.
    pub function: String,
    /// What happened: its init error, its exit status, or the wait that ran out.
    pub reason: String,
    /// Its last lines of output.
    pub output: Vec<String>,
}

fn output_tail(output: &[String]) -> String {
    if output.is_empty() {
        return String::new();
    }
    format!("\n  its last output:\n    {}", output.join("\n    "))
}

/// Instances alive and starting.
#[derive(Default)]
struct Pool {
    live: usize,
    starting: usize,
}

/// One function: its binary, its environment, its queue and its instances.
pub(crate) struct Function {
    pub spec: &'static Spec,
    binary: PathBuf,
    env: Vec<(String, String)>,
    region: String,
    pub timeout: Duration,
    /// Its invocations waiting for an instance; every instance's API takes from them.
    invocations: Arc<Invocations>,
    pool: Mutex<Pool>,
    stop: CancellationToken,
}

impl Function {
    /// `spec`'s function, run from `binary` with `env` on top of the gateway's own.
    pub(crate) fn new(
        spec: &'static Spec,
        binary: PathBuf,
        env: Vec<(String, String)>,
        region: String,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            spec,
            binary,
            env,
            region,
            timeout: spec.timeout,
            invocations: Arc::new(Invocations::new(QUEUED_INVOCATIONS, stop.clone())),
            pool: Mutex::default(),
            stop,
        })
    }

    /// The ARN the function is invoked as.
    fn arn(&self) -> String {
        format!(
            "arn:aws:lambda:{}:000000000000:function:{}",
            self.region, self.spec.name
        )
    }

    /// Invokes the function with `event` (JSON) and waits for what it comes to.
    pub(crate) async fn invoke(self: &Arc<Self>, event: Bytes) -> Outcome {
        let (answer, outcome) = oneshot::channel();
        let invocation = Invocation {
            id: uuid::Uuid::new_v4().to_string(),
            event,
            answer,
        };
        if !self.invocations.offer(invocation) {
            return Outcome::Failed(FunctionError::new(
                "TooManyRequestsException",
                format!(
                    "Rate Exceeded: {} invocations of {} are waiting for an instance",
                    QUEUED_INVOCATIONS, self.spec.name
                ),
            ));
        }
        self.scale();
        // An instance stops an invocation at the function's timeout; this bounds the wait
        // for an instance too.
        match tokio::time::timeout(self.timeout + INIT_TIMEOUT, outcome).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Outcome::Failed(FunctionError::new(
                "ServiceException",
                "the gateway stopped before the invocation ran",
            )),
            Err(_) => Outcome::Failed(FunctionError::timed_out(self.timeout)),
        }
    }

    /// Starts an instance when invocations wait and no instance is free to take them.
    fn scale(self: &Arc<Self>) {
        if self.stop.is_cancelled() {
            return;
        }
        let waiting = self.invocations.waiting();
        let mut pool = lock(&self.pool);
        let free = self.invocations.idle() + pool.starting;
        if waiting <= free || pool.live + pool.starting >= MAX_INSTANCES {
            return;
        }
        pool.starting += 1;
        drop(pool);
        let function = self.clone();
        tokio::spawn(async move {
            let started = function.start_instance().await;
            lock(&function.pool).starting -= 1;
            match started {
                Ok(cold) => tracing::info!(
                    function = function.spec.name,
                    cold_start_ms = cold.as_secs_f64() * 1e3,
                    "instance started"
                ),
                Err(failure) => {
                    tracing::error!(error = %failure, "instance failed to start");
                    // The invocation that asked for the instance gets the init error, as
                    // on Lambda, rather than waiting for one that will not come.
                    if let Some(invocation) = function.invocations.try_take() {
                        let _ = invocation.answer.send(Outcome::Failed(FunctionError::new(
                            "Runtime.InitError",
                            failure.reason,
                        )));
                    }
                }
            }
            function.scale();
        });
    }

    /// Starts one instance and waits for its first `/next`: its cold start.
    pub(crate) async fn start_instance(self: &Arc<Self>) -> Result<Duration, InitFailure> {
        let failed = |reason: String, output: Vec<String>| InitFailure {
            function: self.spec.name.to_owned(),
            reason,
            output,
        };
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| failed(format!("cannot open its Runtime API: {e}"), Vec::new()))?;
        let api_addr = listener
            .local_addr()
            .map_err(|e| failed(format!("cannot open its Runtime API: {e}"), Vec::new()))?;
        let (started, first_poll) = oneshot::channel();
        let api = Arc::new(InstanceApi {
            invocations: self.invocations.clone(),
            function: self.spec.name,
            arn: self.arn(),
            timeout: self.timeout,
            started: Mutex::new(Some(started)),
            running: Mutex::new(None),
            changed: Notify::new(),
        });
        let server = tokio::spawn(axum::serve(listener, router(api.clone())).into_future());
        let server = AbortOnDrop(server);
        let began = Instant::now();
        let mut child = Command::new(&self.binary)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("AWS_LAMBDA_RUNTIME_API", api_addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", self.spec.name)
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                self.spec.memory_mb.to_string(),
            )
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", self.spec.name),
            )
            .env(
                "AWS_LAMBDA_LOG_STREAM_NAME",
                uuid::Uuid::new_v4().simple().to_string(),
            )
            .env("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // A group of its own: ctrl-c in a terminal signals the whole foreground group,
            // and the instances must outlive the gateway's drain, which runs `$disconnect`
            // through them; the gateway stops them after.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                failed(
                    format!("cannot run {}: {e}", self.binary.display()),
                    Vec::new(),
                )
            })?;
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let forwarders = [
            child
                .stdout
                .take()
                .map(|out| forward(self.spec.name, out, output.clone())),
            child
                .stderr
                .take()
                .map(|err| forward(self.spec.name, err, output.clone())),
        ];
        let tail = |output: &Mutex<VecDeque<String>>| -> Vec<String> {
            lock(output).iter().cloned().collect()
        };
        let reason = tokio::select! {
            how = first_poll => match how {
                Ok(Started::Polling) => None,
                Ok(Started::InitError(e)) => Some(format!("it reported an init error: {e}")),
                Err(_) => Some("its Runtime API stopped".to_owned()),
            },
            status = child.wait() => Some(match status {
                Ok(status) => format!("it exited ({status}) before asking for an invocation"),
                Err(e) => format!("cannot wait for it: {e}"),
            }),
            () = tokio::time::sleep(INIT_TIMEOUT) => Some(format!(
                "it did not ask for an invocation within {} s",
                INIT_TIMEOUT.as_secs()
            )),
        };
        let cold = began.elapsed();
        if let Some(reason) = reason {
            stop_group(&mut child).await;
            // What it printed last, once its pipes are drained.
            for forwarder in forwarders.into_iter().flatten() {
                let _ = tokio::time::timeout(Duration::from_secs(1), forwarder).await;
            }
            return Err(failed(reason, tail(&output)));
        }
        lock(&self.pool).live += 1;
        tokio::spawn(self.clone().watch(child, api, server));
        Ok(cold)
    }

    /// Watches a started instance: stops it at its invocation's deadline, fails its
    /// invocation when it exits, and stops it with the gateway.
    async fn watch(self: Arc<Self>, mut child: Child, api: Arc<InstanceApi>, _server: AbortOnDrop) {
        loop {
            let deadline = lock(&api.running).as_ref().map(|r| r.deadline);
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    tracing::warn!(function = self.spec.name, %status, "instance exited");
                    api.fail_running(FunctionError::new(
                        "Runtime.ExitError",
                        format!("Runtime exited with error: {status}"),
                    ));
                    break;
                }
                () = api.changed.notified() => {}
                () = sleep_until(deadline) => {
                    tracing::warn!(function = self.spec.name, "invocation timed out: stopping its instance");
                    stop_group(&mut child).await;
                    api.fail_running(FunctionError::timed_out(self.timeout));
                }
                () = self.stop.cancelled() => {
                    stop_group(&mut child).await;
                    api.fail_running(FunctionError::new("ServiceException", "the gateway is stopping"));
                    break;
                }
            }
        }
        lock(&self.pool).live -= 1;
        self.scale();
    }
}

/// Stops an instance and whatever it started: its process group, which it leads.
async fn stop_group(child: &mut Child) {
    #[cfg(target_os = "linux")]
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?))
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill().await;
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Copies an instance's output to the gateway's stderr line by line, keeping the last
/// lines in `kept`.
fn forward(
    function: &'static str,
    from: impl AsyncRead + Unpin + Send + 'static,
    kept: Arc<Mutex<VecDeque<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut lines)
                .take(MAX_LINE_BYTES as u64)
                .read_until(b'\n', &mut line)
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            eprintln!("{function} | {text}");
            let mut kept = lock(&kept);
            if kept.len() == OUTPUT_LINES_KEPT {
                kept.pop_front();
            }
            kept.push_back(text);
        }
    })
}

/// A task stopped when its handle is dropped: an instance's Runtime API server.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<Result<(), std::io::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function with a one-second timeout, for runtimes written here in bash.
    static QUICK: Spec = Spec {
        name: "quick",
        timeout: Duration::from_secs(1),
        memory_mb: 128,
    };

    /// A runtime in bash (its `/dev/tcp`): `body` runs with `api` opening a connection to
    /// the Runtime API on descriptor 3.
    fn runtime(body: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("herald-runtime-{}", uuid::Uuid::new_v4()));
        let script = format!(
            "#!/bin/bash\napi() {{ exec 3<>/dev/tcp/${{AWS_LAMBDA_RUNTIME_API%:*}}/${{AWS_LAMBDA_RUNTIME_API#*:}}; }}\n{body}\n"
        );
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Takes invocations one after another, answering each `"done"` after `delay`.
    const ANSWERING: &str = r#"
while true; do
  api
  printf 'GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
  id=$(tr -d '\r' <&3 | sed -n 's/^lambda-runtime-aws-request-id: //Ip' | head -1)
  exec 3>&-
  sleep "$DELAY"
  api
  printf 'POST /2018-06-01/runtime/invocation/%s/response HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nConnection: close\r\n\r\n"done"' "$id" >&3
  cat <&3 >/dev/null
  exec 3>&-
done"#;

    fn quick(script: &std::path::Path, delay: &str, stop: &CancellationToken) -> Arc<Function> {
        Function::new(
            &QUICK,
            script.to_path_buf(),
            vec![("DELAY".into(), delay.into())],
            "us-east-1".into(),
            stop.clone(),
        )
    }

    #[tokio::test]
    async fn invocations_that_find_every_instance_busy_start_another() {
        let script = runtime(ANSWERING);
        let stop = CancellationToken::new();
        let function = quick(&script, "0.5", &stop);
        function.start_instance().await.unwrap();
        let started = Instant::now();
        let outcomes =
            futures::future::join_all((0..3).map(|_| function.invoke(Bytes::from_static(b"{}"))))
                .await;
        for outcome in outcomes {
            assert!(
                matches!(&outcome, Outcome::Response(body) if body.as_ref() == b"\"done\""),
                "each answered"
            );
        }
        // One after another would take 1.5 s.
        assert!(
            started.elapsed() < Duration::from_millis(1200),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(lock(&function.pool).live, 3);
        stop.cancel();
        std::fs::remove_file(script).unwrap();
    }

    #[tokio::test]
    async fn an_invocation_past_its_timeout_stops_its_instance() {
        let script = runtime(ANSWERING);
        let stop = CancellationToken::new();
        let function = quick(&script, "30", &stop);
        function.start_instance().await.unwrap();
        let started = Instant::now();
        let Outcome::Failed(error) = function.invoke(Bytes::from_static(b"{}")).await else {
            panic!("a timeout is an error");
        };
        assert_eq!(error.error_type, "Sandbox.Timedout");
        assert!(started.elapsed() >= QUICK.timeout);
        assert!(
            started.elapsed() < QUICK.timeout * 2,
            "{:?}",
            started.elapsed()
        );
        // The instance is gone, not left running the invocation.
        tokio::time::timeout(Duration::from_secs(5), async {
            while lock(&function.pool).live > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the instance stops");
        stop.cancel();
        std::fs::remove_file(script).unwrap();
    }

    #[tokio::test]
    async fn an_init_error_and_an_exit_at_init_are_reported_not_waited_for() {
        let stop = CancellationToken::new();
        let script = runtime(
            r#"api
body='{"errorType":"Config","errorMessage":"no key"}'
printf 'POST /2018-06-01/runtime/init/error HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' "${#body}" "$body" >&3
sleep 30"#,
        );
        let failure = quick(&script, "0", &stop)
            .start_instance()
            .await
            .unwrap_err();
        assert!(
            failure.reason.contains("init error: Config: no key"),
            "{}",
            failure.reason
        );
        std::fs::remove_file(script).unwrap();

        let script = runtime("echo 'missing HERALD_TABLE' >&2\nexit 4");
        let started = Instant::now();
        let failure = quick(&script, "0", &stop)
            .start_instance()
            .await
            .unwrap_err();
        assert!(
            failure.reason.contains("exit status: 4"),
            "{}",
            failure.reason
        );
        assert_eq!(failure.output, ["missing HERALD_TABLE"]);
        assert!(started.elapsed() < INIT_TIMEOUT);
        std::fs::remove_file(script).unwrap();
        stop.cancel();
    }
}
