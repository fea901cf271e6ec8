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

use crate::protocol::{RoomName, is_room_char};

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
        if !valid_chars || (!wildcard && prefix.is_empty()) || prefix.len() > 128 {
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
    let claims = serde_json::json!({
        "sub": user,
        "exp": crate::ids::now_ms() / 1000 + ttl_secs,
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
mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret-of-reasonable-length";
    const RSA_PRIVATE: &str = include_str!("../testdata/rsa_private.pem");
    const RSA_PUBLIC: &str = include_str!("../testdata/rsa_public.pem");
    const EC_PRIVATE: &str = include_str!("../testdata/ec_private.pem");
    const EC_PUBLIC: &str = include_str!("../testdata/ec_public.pem");

    fn now() -> i64 {
        crate::ids::now_ms() / 1000
    }

    fn claims() -> Value {
        json!({"sub":"alice","exp":now() + 600,"rooms":["orders","team:*"],"publish":["chat:*"]})
    }

    fn hs256(claims: &Value, secret: &[u8]) -> String {
        encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    }

    fn secret_verifier() -> Verifier {
        Verifier::new(&AuthConfig {
            key: JwtKey::Secret(SECRET.to_vec()),
            issuer: None,
            audience: None,
        })
        .unwrap()
    }

    fn pem_verifier(pem: &str) -> Verifier {
        Verifier::new(&AuthConfig {
            key: JwtKey::PublicKeyPem(pem.into()),
            issuer: None,
            audience: None,
        })
        .unwrap()
    }

    #[test]
    fn a_valid_hs256_token_gives_the_identity() {
        let identity = secret_verifier().verify(&hs256(&claims(), SECRET)).unwrap();
        assert_eq!(identity.user, "alice");
        let room = |r| RoomName::parse(r).unwrap();
        assert!(identity.can_subscribe(&room("orders")));
        assert!(identity.can_subscribe(&room("team:blue")));
        assert!(!identity.can_subscribe(&room("orders2")));
        assert!(!identity.can_subscribe(&room("chat:x")));
        assert!(identity.can_publish(&room("chat:x")));
        assert!(!identity.can_publish(&room("orders")));
    }

    #[test]
    fn rs256_and_es256_keys_pin_their_algorithms() {
        let rsa = pem_verifier(RSA_PUBLIC);
        assert_eq!(rsa.algorithm(), Algorithm::RS256);
        let token = encode(
            &Header::new(Algorithm::RS256),
            &claims(),
            &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(rsa.verify(&token).unwrap().user, "alice");

        let ec = pem_verifier(&EC_PUBLIC.replace('\n', "\\n"));
        assert_eq!(ec.algorithm(), Algorithm::ES256);
        let es_token = encode(
            &Header::new(Algorithm::ES256),
            &claims(),
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(ec.verify(&es_token).unwrap().user, "alice");
        // Each key accepts only its own algorithm.
        assert!(matches!(
            rsa.verify(&es_token),
            Err(AuthError::WrongAlgorithm(_))
        ));
        assert!(matches!(
            ec.verify(&token),
            Err(AuthError::WrongAlgorithm(_))
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let unsigned = format!(
            "{}.{}.",
            b64(&json!({"alg":"none","typ":"JWT"})),
            b64(&claims())
        );
        assert!(secret_verifier().verify(&unsigned).is_err());
        assert!(pem_verifier(RSA_PUBLIC).verify(&unsigned).is_err());
        // Also with an arbitrary signature part.
        let forged = format!("{unsigned}c2ln");
        assert!(secret_verifier().verify(&forged).is_err());
    }

    #[test]
    fn another_algorithm_is_refused_even_with_the_right_secret() {
        let token = encode(
            &Header::new(Algorithm::HS384),
            &claims(),
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap();
        assert_eq!(
            secret_verifier().verify(&token),
            Err(AuthError::WrongAlgorithm(Algorithm::HS256))
        );
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        let token = hs256(&claims(), RSA_PUBLIC.as_bytes());
        assert_eq!(
            pem_verifier(RSA_PUBLIC).verify(&token),
            Err(AuthError::WrongAlgorithm(Algorithm::RS256))
        );
        let token = hs256(&claims(), EC_PUBLIC.as_bytes());
        assert!(pem_verifier(EC_PUBLIC).verify(&token).is_err());
    }

    #[test]
    fn bad_signature_is_refused() {
        let token = hs256(&claims(), b"another-secret");
        assert_eq!(
            secret_verifier().verify(&token),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn time_claims_are_enforced() {
        let mut expired = claims();
        expired["exp"] = json!(now() - 60);
        assert_eq!(
            secret_verifier().verify(&hs256(&expired, SECRET)),
            Err(AuthError::Expired)
        );
        let mut early = claims();
        early["nbf"] = json!(now() + 600);
        assert_eq!(
            secret_verifier().verify(&hs256(&early, SECRET)),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn sub_and_exp_are_required() {
        for missing in ["sub", "exp"] {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(missing);
            let err = secret_verifier().verify(&hs256(&c, SECRET)).unwrap_err();
            assert!(
                matches!(err, AuthError::InvalidClaims(_)),
                "{missing}: {err}"
            );
        }
        let mut empty_sub = claims();
        empty_sub["sub"] = json!("");
        assert!(
            secret_verifier()
                .verify(&hs256(&empty_sub, SECRET))
                .is_err()
        );
        let mut bad_rooms = claims();
        bad_rooms["rooms"] = json!(["a b"]);
        assert!(
            secret_verifier()
                .verify(&hs256(&bad_rooms, SECRET))
                .is_err()
        );
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let verifier = Verifier::new(&AuthConfig {
            key: JwtKey::Secret(SECRET.to_vec()),
            issuer: Some("https://issuer.example".into()),
            audience: Some("herald".into()),
        })
        .unwrap();
        let mut good = claims();
        good["iss"] = json!("https://issuer.example");
        good["aud"] = json!("herald");
        assert!(verifier.verify(&hs256(&good, SECRET)).is_ok());

        let mut wrong_iss = good.clone();
        wrong_iss["iss"] = json!("https://evil.example");
        assert_eq!(
            verifier.verify(&hs256(&wrong_iss, SECRET)),
            Err(AuthError::WrongIssuer)
        );
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = json!("other");
        assert_eq!(
            verifier.verify(&hs256(&wrong_aud, SECRET)),
            Err(AuthError::WrongAudience)
        );
        for claim in ["iss", "aud"] {
            let mut missing = good.clone();
            missing.as_object_mut().unwrap().remove(claim);
            assert!(
                verifier.verify(&hs256(&missing, SECRET)).is_err(),
                "{claim}"
            );
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for token in ["", "a", "a.b", "a.b.c", "....", "ä.ö.ü"] {
            assert!(secret_verifier().verify(token).is_err(), "{token}");
        }
    }

    #[test]
    fn unusable_keys_are_configuration_errors() {
        let empty = AuthConfig {
            key: JwtKey::Secret(vec![]),
            issuer: None,
            audience: None,
        };
        assert!(matches!(Verifier::new(&empty), Err(AuthError::Config(_))));
        let junk = AuthConfig {
            key: JwtKey::PublicKeyPem("not a pem".into()),
            issuer: None,
            audience: None,
        };
        assert!(matches!(Verifier::new(&junk), Err(AuthError::Config(_))));
    }

    #[test]
    fn room_patterns_match_exactly_or_by_prefix() {
        let room = |r| RoomName::parse(r).unwrap();
        let star = RoomPattern::parse("*").unwrap();
        assert!(star.matches(&room("anything")));
        let prefix = RoomPattern::parse("team:*").unwrap();
        assert!(prefix.matches(&room("team:")));
        assert!(!prefix.matches(&room("team")));
        assert!(prefix.matches(&room("team:a")));
        assert!(!prefix.matches(&room("tea")));
        let exact = RoomPattern::parse("orders").unwrap();
        assert!(exact.matches(&room("orders")));
        assert!(!exact.matches(&room("orders:1")));
        for bad in ["", "a*b", "**", "a b", "a,b"] {
            assert!(RoomPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_identity_survives_the_authorizer_context() {
        let identity = secret_verifier().verify(&hs256(&claims(), SECRET)).unwrap();
        let context = identity.to_context();
        assert_eq!(context["rooms"], json!("orders,team:*"));
        assert_eq!(Identity::from_context(&context).unwrap(), identity);
        assert!(matches!(
            Identity::from_context(&HashMap::new()),
            Err(AuthError::NoContext(_))
        ));
    }

    #[test]
    fn signed_tokens_verify() {
        let token = sign_hs256(SECRET, "dev", &["*"], &["a"], 60).unwrap();
        let identity = secret_verifier().verify(&token).unwrap();
        assert_eq!(identity.user, "dev");
        assert!(identity.can_subscribe(&RoomName::parse("x").unwrap()));
        assert!(identity.can_publish(&RoomName::parse("a").unwrap()));
        let expired = sign_hs256(SECRET, "dev", &[], &[], -60).unwrap();
        assert_eq!(secret_verifier().verify(&expired), Err(AuthError::Expired));
    }

    #[test]
    fn tokens_come_from_the_query_or_a_bearer_header() {
        assert_eq!(token_from_request(Some("q"), Some("Bearer h")), Some("q"));
        assert_eq!(token_from_request(None, Some("bearer  h ")), Some("h"));
        assert_eq!(token_from_request(Some(""), Some("Basic x")), None);
        assert_eq!(token_from_request(None, Some("Bearer")), None);
        assert_eq!(token_from_request(None, None), None);
    }
}
