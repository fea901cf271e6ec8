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
    use std::io::IsTerminal;
    let colour = colour_wanted(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .try_init();
}

/// Colour codes only for a person at a terminal: a file or a pipe gets plain text, and so
/// does anyone who set `NO_COLOR` to anything but the empty string (<https://no-color.org>).
fn colour_wanted(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::colour_wanted;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None));
        assert!(
            colour_wanted(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None), "a file or a pipe");
        assert!(!colour_wanted(false, Some(OsStr::new("1"))));
    }
}
