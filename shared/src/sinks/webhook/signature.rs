//! Standard Webhooks signatures: the secret is `whsec_` followed by the base64 of its key;
//! each delivery carries `webhook-id`, `webhook-timestamp` (seconds since the epoch) and
//! `webhook-signature: v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, which any
//! Standard Webhooks library verifies.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What a secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of key at least: Standard Webhooks asks for 24 to 64.
pub const MIN_KEY_BYTES: usize = 24;
/// Bytes of key at most.
pub const MAX_KEY_BYTES: usize = 64;
/// The only signature version there is.
const VERSION: &str = "v1";

/// Why a secret is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// It does not start with `whsec_`.
    #[error(
        "a webhook secret starts with whsec_ (e.g. whsec_ and the base64 of 32 random bytes: `echo whsec_$(openssl rand -base64 32)`)"
    )]
    Prefix,
    /// What follows is not base64.
    #[error("what follows whsec_ is not base64: {0}")]
    Base64(String),
    /// The key is shorter or longer than the specification allows.
    #[error("the key is {0} bytes; Standard Webhooks keys are {MIN_KEY_BYTES} to {MAX_KEY_BYTES}")]
    Length(usize),
}

/// A signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Reads `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::Prefix)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|e| SecretError::Base64(e.to_string()))?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Self(key))
    }

    /// The `webhook-signature` header of a delivery.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "{VERSION},{}",
            STANDARD.encode(self.mac(id, timestamp, body))
        )
    }

    /// Whether `header` (space-separated `v1,<base64>` signatures) holds this key's signature
    /// of the delivery.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split(' ').any(|one| {
            one.strip_prefix("v1,")
                .and_then(|sig| STANDARD.decode(sig).ok())
                // In constant time.
                .is_some_and(|sig| self.hmac(id, timestamp, body).verify_slice(&sig).is_ok())
        })
    }

    fn hmac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
        self.hmac(id, timestamp, body)
            .finalize()
            .into_bytes()
            .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_example_signs_as_published() {
        // The example of the Standard Webhooks specification (`spec/standard-webhooks.md`).
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn signatures_verify_and_anything_changed_does_not() {
        let secret = Secret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 32]))).unwrap();
        let header = secret.sign("msg_1", 1_700_000_000, b"{}");
        assert!(secret.verify("msg_1", 1_700_000_000, b"{}", &header));
        assert!(secret.verify(
            "msg_1",
            1_700_000_000,
            b"{}",
            &format!("v1,bm9wZQ== {header}")
        ));
        assert!(!secret.verify("msg_2", 1_700_000_000, b"{}", &header));
        assert!(!secret.verify("msg_1", 1_700_000_001, b"{}", &header));
        assert!(!secret.verify("msg_1", 1_700_000_000, b"{ }", &header));
    }

    #[test]
    fn secrets_are_checked_at_their_bounds() {
        let of = |n: usize| format!("whsec_{}", STANDARD.encode(vec![1u8; n]));
        assert!(Secret::parse(&of(MIN_KEY_BYTES)).is_ok());
        assert!(Secret::parse(&of(MAX_KEY_BYTES)).is_ok());
        assert_eq!(
            Secret::parse(&of(MIN_KEY_BYTES - 1)).unwrap_err(),
            SecretError::Length(MIN_KEY_BYTES - 1)
        );
        assert_eq!(
            Secret::parse(&of(MAX_KEY_BYTES + 1)).unwrap_err(),
            SecretError::Length(MAX_KEY_BYTES + 1)
        );
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjU").unwrap_err(),
            SecretError::Prefix
        );
        assert!(matches!(
            Secret::parse("whsec_!!"),
            Err(SecretError::Base64(_))
        ));
    }
}
