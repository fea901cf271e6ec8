//! JWT verification and room patterns, at and past every rule.

use super::*;
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

const SECRET: &[u8] = b"test-secret-of-reasonable-length";
const RSA_PRIVATE: &str = include_str!("../../testdata/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../../testdata/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("../../testdata/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../../testdata/ec_public.pem");

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
fn sub_is_1_to_256_printable_characters() {
    let verify = |sub: &str| {
        let mut c = claims();
        c["sub"] = json!(sub);
        secret_verifier().verify(&hs256(&c, SECRET))
    };
    assert_eq!(verify(&"u".repeat(256)).unwrap().user, "u".repeat(256));
    assert!(matches!(
        verify(&"u".repeat(257)),
        Err(AuthError::InvalidClaims(_))
    ));
    assert!(verify("ann é").is_ok(), "printable non-ASCII is fine");
    for bad in ["ann\n", "\u{7}bell", "tab\there", "nul\u{0}"] {
        assert!(
            matches!(verify(bad), Err(AuthError::InvalidClaims(_))),
            "{bad:?}"
        );
    }
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
fn a_room_pattern_is_as_long_as_a_room_name_at_most() {
    let longest = "r".repeat(crate::protocol::MAX_ROOM_LEN);
    let too_long = "r".repeat(crate::protocol::MAX_ROOM_LEN + 1);
    assert!(RoomPattern::parse(&longest).is_ok());
    assert!(RoomPattern::parse(&format!("{longest}*")).is_ok());
    for bad in [too_long.clone(), format!("{too_long}*")] {
        assert!(matches!(
            RoomPattern::parse(&bad),
            Err(AuthError::InvalidClaims(_))
        ));
    }
}

#[test]
fn a_claim_of_the_wrong_type_is_an_invalid_claim_not_a_malformed_token() {
    for (claim, value) in [("nbf", json!("soon")), ("nbf", json!(true))] {
        let mut c = claims();
        c[claim] = value;
        let err = secret_verifier().verify(&hs256(&c, SECRET)).unwrap_err();
        assert_eq!(
            err,
            AuthError::InvalidClaims(format!("`{claim}` has the wrong type"))
        );
    }
}

#[test]
fn keys_never_print_their_material() {
    let secret = format!("{:?}", JwtKey::Secret(SECRET.to_vec()));
    assert_eq!(secret, "Secret(..)");
    let pem = format!("{:?}", JwtKey::PublicKeyPem(RSA_PUBLIC.into()));
    assert_eq!(pem, "PublicKeyPem(..)");
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
