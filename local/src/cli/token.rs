//! `herald-local token`: an HS256 token signed with `HERALD_JWT_SECRET`, for a gateway
//! started with the same secret (dev mode's secret lives only in its process, so its own
//! printed token is the one to use there).

use std::time::Duration;

use super::CliError;

/// The longest lifetime `token` signs: ten years.
pub const MAX_TOKEN_LIFETIME_SECS: i64 = 10 * 365 * 24 * 3600;

/// What the token says.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The user (`sub`).
    pub sub: String,
    /// Room patterns the user may subscribe to.
    pub rooms: Vec<String>,
    /// Room patterns the user may publish to from a socket.
    pub publish: Vec<String>,
    /// How long it is valid.
    pub ttl: Duration,
}

/// Signs `request` with `secret`.
pub fn mint(secret: Option<&str>, request: &TokenRequest) -> Result<String, CliError> {
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return Err(CliError::Usage(
            "set HERALD_JWT_SECRET to the secret the gateway verifies with (a gateway in dev \
             mode has a secret only it knows: start it with HERALD_JWT_SECRET set, or use the \
             token it printed)"
                .into(),
        ));
    };
    if request.sub.is_empty() {
        return Err(CliError::Usage("--sub must name a user".into()));
    }
    let ttl = i64::try_from(request.ttl.as_secs())
        .ok()
        .filter(|t| (1..=MAX_TOKEN_LIFETIME_SECS).contains(t))
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--exp-secs must be 1 to {MAX_TOKEN_LIFETIME_SECS} (ten years)"
            ))
        })?;
    if secret.len() < herald::auth::MIN_HS256_SECRET_BYTES {
        eprintln!(
            "warning: HERALD_JWT_SECRET is {} bytes; a gateway beyond loopback refuses \
             secrets under {} bytes",
            secret.len(),
            herald::auth::MIN_HS256_SECRET_BYTES
        );
    }
    let rooms: Vec<&str> = request.rooms.iter().map(String::as_str).collect();
    let publish: Vec<&str> = request.publish.iter().map(String::as_str).collect();
    Ok(herald::auth::sign_hs256(
        secret.as_bytes(),
        &request.sub,
        &rooms,
        &publish,
        ttl,
    )?)
}
