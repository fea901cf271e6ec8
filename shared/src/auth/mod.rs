//! JWT verification for the `$connect` handshake, room patterns, and the identity that
//! travels from the authorizer to every other route.
//!
//! The algorithm is pinned by the configuration, never read from the token: HS256 when a
//! shared secret is configured, RS256 or ES256 when a public key is (decided by the key's
//! type). A token whose header names another algorithm, `none` included, is refused, which
//! also closes the classic key-confusion attack (an HS256 token signed with the public key
//! as its secret).
//!
//! API Gateway only passes strings, numbers and booleans in an authorizer's context, so the
//! `rooms` and `publish` claims travel as comma-separated patterns (commas cannot appear in
//! room names).

use std::collections::HashMap;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::protocol::{MAX_ROOM_LEN, RoomName, is_room_char};

/// Why a token or an identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the query string or the `Authorization` header.
    #[error("no token: pass ?token=JWT or Authorization: Bearer JWT")]
    MissingToken,
    /// Not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify with the configured key.
    #[error("bad signature")]
    BadSignature,
    /// The token's `alg` is not the configured one.
    #[error("token algorithm is not the configured {0:?}")]
    WrongAlgorithm(Algorithm),
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not include the configured audience.
    #[error("wrong audience")]
    WrongAudience,
    /// A claim is missing or has the wrong shape.
    #[error("invalid claims: {0}")]
    InvalidClaims(String),
    /// The verifier's own configuration is unusable (for example, a bad PEM).
    #[error("auth configuration: {0}")]
    Config(String),
    /// A route event carries no usable authorizer context.
    #[error("no authorizer context: {0}")]
    NoContext(String),
}

/// The shortest HS256 secret accepted where tokens are verified for real (every Lambda,
/// and `herald-local` beyond loopback): HMAC-SHA256's key should be as long as its output
/// (RFC 7518 §3.2), and a shorter one can be guessed offline from any token.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// The key a verifier checks signatures with; its kind pins the algorithm.
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// HS256 with a shared secret (`HERALD_JWT_SECRET`).
    Secret(Vec<u8>),
    /// RS256 or ES256 with a PEM public key (`HERALD_JWT_PUBLIC_KEY`).
    PublicKeyPem(String),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret into logs.
        match self {
            Self::Secret(_) => f.write_str("Secret(..)"),
            Self::PublicKeyPem(_) => f.write_str("PublicKeyPem(..)"),
        }
    }
}

/// What to verify tokens against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// The key, which decides the algorithm.
    pub key: JwtKey,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
}

/// Verifies tokens with one pinned algorithm.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

/// Clock skew tolerated for `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 5;

impl Verifier {
    /// Builds a verifier; fails when the key cannot be used.
    pub fn new(config: &AuthConfig) -> Result<Self, AuthError> {
        let (key, algorithm) = match &config.key {
            JwtKey::Secret(secret) if secret.is_empty() => {
                return Err(AuthError::Config("the JWT secret is empty".into()));
            }
            JwtKey::Secret(secret) => (
                DecodingKey::from_secret(secret).map_err(|e| AuthError::Config(e.to_string()))?,
                Algorithm::HS256,
            ),
            JwtKey::PublicKeyPem(pem) => {
                // Environment variables often carry PEMs with literal `\n`.
                let pem = pem.replace("\\n", "\n");
                if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                    (key, Algorithm::ES256)
                } else {
                    let reason =
                        "HERALD_JWT_PUBLIC_KEY is neither an RSA nor an EC public key in PEM";
                    return Err(AuthError::Config(reason.into()));
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // A configured issuer or audience must also be present: jsonwebtoken only checks
        // the claims a token carries unless they are required.
        let mut required = vec!["exp", "sub"];
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self { key, validation })
    }

    /// The algorithm this verifier accepts.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Checks a token and returns who it names and what they may do.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(|e| self.classify(e))?;
        Identity::from_claims(data.claims)
    }

    fn classify(&self, error: jsonwebtoken::errors::Error) -> AuthError {
        match error.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::MissingAlgorithm
            | ErrorKind::UnsupportedAlgorithm => AuthError::WrongAlgorithm(self.algorithm()),
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) => {
                AuthError::InvalidClaims(format!("missing `{claim}`"))
            }
            ErrorKind::InvalidClaimFormat(claim) => {
                AuthError::InvalidClaims(format!("`{claim}` has the wrong type"))
            }
            ErrorKind::Json(e) => AuthError::InvalidClaims(e.to_string()),
            _ => AuthError::Malformed(error.to_string()),
        }
    }
}

#[derive(Deserialize)]
struct RawClaims {
    sub: String,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// A room pattern from a token: a room name, optionally ending in `*` to match any suffix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomPattern {
    prefix: String,
    wildcard: bool,
}

impl RoomPattern {
    /// Parses `orders`, `orders:*` or `*`.
    pub fn parse(pattern: &str) -> Result<Self, AuthError> {
        let (prefix, wildcard) = match pattern.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (pattern, false),
        };
        let valid_chars = prefix.chars().all(is_room_char);
        if !valid_chars || (!wildcard && prefix.is_empty()) || prefix.len() > MAX_ROOM_LEN {
            return Err(AuthError::InvalidClaims(format!(
                "{pattern:?} is not a room pattern"
            )));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            wildcard,
        })
    }

    /// Whether `room` matches.
    pub fn matches(&self, room: &RoomName) -> bool {
        if self.wildcard {
            room.as_str().starts_with(&self.prefix)
        } else {
            room.as_str() == self.prefix
        }
    }
}

impl std::fmt::Display for RoomPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix)?;
        if self.wildcard {
            f.write_str("*")?;
        }
        Ok(())
    }
}

/// Who a connection belongs to and what it may do, from the token's claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim.
    pub user: String,
    /// Rooms the user may subscribe to.
    pub rooms: Vec<RoomPattern>,
    /// Rooms the user may publish to from the socket.
    pub publish: Vec<RoomPattern>,
}

impl Identity {
    fn from_claims(claims: RawClaims) -> Result<Self, AuthError> {
        if claims.sub.is_empty() || claims.sub.len() > crate::protocol::MAX_ID_LEN {
            return Err(AuthError::InvalidClaims(
                "`sub` must be 1 to 256 characters".into(),
            ));
        }
        // A publish names a user by `sub`, and a user id may not hold control characters:
        // a `sub` with one could connect but never be reached.
        if claims.sub.chars().any(char::is_control) {
            return Err(AuthError::InvalidClaims(
                "`sub` may not contain control characters".into(),
            ));
        }
        let patterns = |list: &[String]| -> Result<Vec<RoomPattern>, AuthError> {
            list.iter().map(|p| RoomPattern::parse(p)).collect()
        };
        Ok(Self {
            rooms: patterns(&claims.rooms)?,
            publish: patterns(&claims.publish)?,
            user: claims.sub,
        })
    }

    /// Whether the user may subscribe to `room`.
    pub fn can_subscribe(&self, room: &RoomName) -> bool {
        self.rooms.iter().any(|p| p.matches(room))
    }

    /// Whether the user may publish to `room` from the socket.
    pub fn can_publish(&self, room: &RoomName) -> bool {
        self.publish.iter().any(|p| p.matches(room))
    }

    /// The authorizer context API Gateway passes to every route of the connection.
    pub fn to_context(&self) -> HashMap<String, Value> {
        let join = |list: &[RoomPattern]| {
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        HashMap::from([
            ("sub".to_owned(), Value::String(self.user.clone())),
            ("rooms".to_owned(), Value::String(join(&self.rooms))),
            ("publish".to_owned(), Value::String(join(&self.publish))),
        ])
    }

    /// Reads the identity back from a route event's authorizer context.
    pub fn from_context(context: &HashMap<String, Value>) -> Result<Self, AuthError> {
        let text = |key: &str| match context.get(key) {
            None | Some(Value::Null) => Ok(""),
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(AuthError::NoContext(format!("`{key}` is not a string"))),
        };
        let user = text("sub")?;
        if user.is_empty() {
            return Err(AuthError::NoContext(
                "no `sub`: is the $connect route using Herald's authorizer?".into(),
            ));
        }
        let patterns = |list: &str| -> Result<Vec<RoomPattern>, AuthError> {
            list.split(',')
                .filter(|p| !p.is_empty())
                .map(RoomPattern::parse)
                .collect()
        };
        Ok(Self {
            user: user.to_owned(),
            rooms: patterns(text("rooms")?)?,
            publish: patterns(text("publish")?)?,
        })
    }
}

/// Signs an HS256 token for `user` valid for `ttl_secs`, with the given room patterns: what
/// `herald-local` prints in dev mode, and what tests connect with.
pub fn sign_hs256(
    secret: &[u8],
    user: &str,
    rooms: &[&str],
    publish: &[&str],
    ttl_secs: i64,
) -> Result<String, AuthError> {
    let exp = (crate::ids::now_ms() / 1000)
        .checked_add(ttl_secs)
        .ok_or_else(|| AuthError::Config(format!("a lifetime of {ttl_secs} s is too long")))?;
    let claims = serde_json::json!({
        "sub": user,
        "exp": exp,
        "rooms": rooms,
        "publish": publish,
    });
    let key = jsonwebtoken::EncodingKey::from_secret(secret)
        .map_err(|e| AuthError::Config(e.to_string()))?;
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| AuthError::Config(e.to_string()))
}

/// Finds the token of a handshake: the `token` query parameter, else the token of a
/// Bearer `Authorization` header.
pub fn token_from_request<'a>(
    query_token: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(token) = query_token.filter(|t| !t.is_empty()) {
        return Some(token);
    }
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests;
