//! The runtime connections run on, apart from the one that serves HTTP.
//!
//! A publish wakes one writer per recipient; on a shared runtime the next publish request
//! (or `@connections` call) would wait in the run queue behind thousands of those writers,
//! so publishes could never overlap the writes of the previous one. On separate threads the
//! operating system shares the cores between the two, the way API Gateway's control plane
//! is apart from its connections.
//!
//! The connections' threads also run at a lower priority (nice 10, on Linux): with both
//! cores busy, a publish otherwise waited for a core as long as it ran, and the writers it
//! woke each sent one or two notifications per `send(2)`. Yielding to the HTTP side lets
//! the publish finish at once and the writers find more queued per write, which is cheaper
//! for the gateway and the clients alike (BENCHMARKS.md has the measured effect). The
//! publish is then faster than the writers can drain under a flood, so fan-out paces
//! itself on their queues (`Registry::pace`) instead of letting them overflow.

use std::io;

/// The runtime connections run on; shut down (without blocking) when dropped.
pub(crate) struct SocketRuntime(Option<tokio::runtime::Runtime>);

impl SocketRuntime {
    /// A multi-threaded runtime with one worker per core.
    pub(crate) fn new() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("herald-sockets")
            .on_thread_start(yield_to_http)
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    /// Where connection tasks are spawned.
    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime is only taken when dropped")
            .handle()
    }
}

/// How much lower the connections' threads run than the HTTP side's, as a nice value: low
/// enough that a publish gets a core at once, high enough that the writers still run
/// whenever the HTTP side is idle (BENCHMARKS.md compares values).
pub(crate) const CONNECTIONS_NICE: i32 = 10;

/// Lowers the calling thread's priority (see the module header). Linux keeps a nice value
/// per thread; elsewhere it is per process, so this does nothing there.
fn yield_to_http() {
    #[cfg(target_os = "linux")]
    if let Err(error) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), CONNECTIONS_NICE)
    {
        tracing::debug!(%error, "could not lower the connections' thread priority");
    }
}

impl Drop for SocketRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks stop, which is not allowed inside
        // another runtime, where the gateway's last reference usually goes.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_connections_threads_yield_to_the_http_side() {
        let nice = || {
            rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                .expect("a thread's own nice value")
        };
        let here = nice();
        let runtime = SocketRuntime::new().unwrap();
        // Run on one of the runtime's workers, not on this thread.
        let there = runtime
            .handle()
            .block_on(async { tokio::spawn(async move { nice() }).await.unwrap() });
        // An unprivileged process cannot go back below its own nice value.
        assert_eq!(there, CONNECTIONS_NICE.max(here));
        assert_eq!(nice(), here, "the calling thread keeps its priority");
    }
}
