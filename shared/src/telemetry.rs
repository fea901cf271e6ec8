//! Logging set-up, filtered by `RUST_LOG` (default `info`): structured JSON lines for
//! Lambda, as CloudWatch Logs Insights reads them; readable lines on stderr for
//! `herald-local`, whose stdout carries only what a user or a script reads.

use tracing_subscriber::EnvFilter;

/// The level when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info";

/// The filter from `RUST_LOG`, the one place it is read.
fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// Installs the JSON subscriber for a Lambda function. Calling it twice is harmless.
pub fn init_lambda() {
    // A second call fails because a subscriber is already set; that one keeps serving.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter())
        .with_current_span(false)
        .without_time() // CloudWatch stamps every line itself.
        .with_target(false)
        .try_init();
}

/// Installs the subscriber for `herald-local`: text on stderr. Calling it twice is harmless.
pub fn init_local() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .try_init();
}
