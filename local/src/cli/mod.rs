//! `herald-local`'s subcommands for shells and scripts: `token` mints a token, `listen`
//! prints a room's notifications as JSON lines (recovering what it missed across
//! reconnects), `publish` publishes through the Lambda Invoke API, to `herald-local` or,
//! with a function name, to the deployed `publish` function through the real AWS SDK.

mod listen;
mod publish;
mod token;

pub use listen::{ListenOptions, listen};
pub use publish::{PublishOptions, Target, publish};
pub use token::{TokenRequest, mint};

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// What was asked for cannot be done as asked.
    #[error("{0}")]
    Usage(String),
    /// The token could not be signed.
    #[error("cannot sign the token: {0}")]
    Sign(#[from] herald::auth::AuthError),
    /// The WebSocket failed in a way retrying cannot mend (a refused token).
    #[error("the gateway refused the connection: {0}")]
    Refused(String),
    /// The Lambda Invoke API failed.
    #[error("invoke failed: {0}")]
    Invoke(String),
    /// The function ran and reported an error.
    #[error("the publish function failed: {0}")]
    Function(String),
    /// Writing the output failed (a closed pipe).
    #[error("cannot write: {0}")]
    Output(#[from] std::io::Error),
}
