//! Logging set-up: structured JSON lines, as CloudWatch Logs Insights reads them, filtered
//! by `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the JSON subscriber for a Lambda function. Calling it twice is harmless.
pub fn init_lambda() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second call fails because a subscriber is already set; that one keeps serving.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .without_time() // CloudWatch stamps every line itself.
        .with_target(false)
        .try_init();
}
