//! AWS Signature Version 4, verified: the control plane (`@connections` and the Lambda
//! Invoke API) runs a request only when it is signed with the configured credentials, as
//! AWS runs it only when IAM says so, and refuses any other with AWS's own answers.
//!
//! The signature is recomputed from the request as it arrived: the canonical request
//! (method, path encoded once more as every AWS service but S3 signs it, sorted and
//! re-encoded query, the signed headers with their values trimmed, the body's SHA-256),
//! the string to sign with the credential scope the client named, and the key derived
//! from the secret for that day, region and service. AWS's published test suite
//! (`aws-sig-v4-test-suite`) is the reference the unit tests check against.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// How far a request's `X-Amz-Date` may be from the gateway's clock, either way (AWS's
/// 15 minutes).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// The only algorithm SigV4 names.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The last part of every credential scope.
const TERMINATOR: &str = "aws4_request";
/// `X-Amz-Date`'s format, for messages.
const AMZ_DATE_LEN: usize = "20150830T123600Z".len();

pub use crate::app::Credentials;

/// Why a request was refused, each as AWS answers it (always 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `Authorization` header.
    #[error("Missing Authentication Token")]
    Missing,
    /// An `Authorization` header that is not a SigV4 one, or lacks a part.
    #[error("{0}")]
    Incomplete(String),
    /// Signed with another access key id.
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    /// Signed at a time too far from now.
    #[error("Signature expired: {signed} is now earlier than {earliest} ({earliest} - 15 min.)")]
    Expired {
        /// When the request says it was signed.
        signed: String,
        /// The oldest time still accepted.
        earliest: String,
    },
    /// The signature does not match the request.
    #[error(
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method."
    )]
    Mismatch,
}

impl Refusal {
    /// The error type AWS names in `x-amzn-ErrorType`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Missing => "MissingAuthenticationTokenException",
            Self::Incomplete(_) => "IncompleteSignatureException",
            Self::UnknownKey => "UnrecognizedClientException",
            Self::Expired { .. } | Self::Mismatch => "InvalidSignatureException",
        }
    }
}

/// A request as it arrived: the path and query exactly as sent (still percent-encoded).
pub struct Request<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The path as sent.
    pub path: &'a str,
    /// The query as sent, without `?`.
    pub query: &'a str,
    /// Every header.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
struct Authorization<'a> {
    access_key_id: &'a str,
    /// `DATE/REGION/SERVICE/aws4_request`.
    scope: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, Refusal> {
    let incomplete = |what: &str| Refusal::Incomplete(format!("Authorization header {what}"));
    let rest = value
        .strip_prefix(ALGORITHM)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or_else(|| incomplete("must begin with AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        match part.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => return Err(incomplete(&format!("has an unknown part {part:?}"))),
        }
    }
    let credential = credential.ok_or_else(|| incomplete("lacks Credential"))?;
    let signed = signed.ok_or_else(|| incomplete("lacks SignedHeaders"))?;
    let signature = signature.ok_or_else(|| incomplete("lacks Signature"))?;
    let (access_key_id, scope) = credential
        .split_once('/')
        .ok_or_else(|| incomplete("has a malformed Credential"))?;
    let scope_parts: Vec<&str> = scope.split('/').collect();
    let [date, region, service, TERMINATOR] = scope_parts[..] else {
        return Err(incomplete(
            "has a malformed Credential: KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    let signed_headers: Vec<&str> = signed.split(';').collect();
    // As AWS requires: a signature that does not cover the host could be replayed
    // against another endpoint.
    if !signed_headers.contains(&"host") {
        return Err(Refusal::Incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".into(),
        ));
    }
    Ok(Authorization {
        access_key_id,
        scope,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// What the head alone shows: an `Authorization` header of SigV4's form (covering the host)
/// and an `X-Amz-Date`. A request without them is refused before its body is read.
pub fn check_head(headers: &HeaderMap) -> Result<(), Refusal> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    parse_authorization(header("authorization").ok_or(Refusal::Missing)?)?;
    header("x-amz-date")
        .ok_or_else(|| Refusal::Incomplete("the X-Amz-Date header is missing".into()))?;
    Ok(())
}

/// Checks `request`'s signature against `credentials`, at `now`.
pub fn verify(
    credentials: &Credentials,
    request: &Request<'_>,
    now: SystemTime,
) -> Result<(), Refusal> {
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let authorization = parse_authorization(header("authorization").ok_or(Refusal::Missing)?)?;
    let amz_date = header("x-amz-date")
        .ok_or_else(|| Refusal::Incomplete("the X-Amz-Date header is missing".into()))?;
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
        Refusal::Incomplete(format!("X-Amz-Date {amz_date:?} is not YYYYMMDDTHHMMSSZ"))
    })?;
    if !amz_date.starts_with(authorization.date) {
        return Err(Refusal::Mismatch);
    }
    let skew = now
        .duration_since(signed_at)
        .or_else(|_| signed_at.duration_since(now))
        .unwrap_or_default();
    if skew > MAX_CLOCK_SKEW {
        return Err(Refusal::Expired {
            signed: amz_date.to_owned(),
            earliest: format_amz_date(now.checked_sub(MAX_CLOCK_SKEW).unwrap_or(UNIX_EPOCH)),
        });
    }
    if authorization.access_key_id != credentials.access_key_id {
        return Err(Refusal::UnknownKey);
    }
    let canonical = canonical_request(request, &authorization.signed_headers)?;
    let expected = signature(
        &credentials.secret_access_key,
        &authorization,
        amz_date,
        &canonical,
    );
    if constant_time_eq(expected.as_bytes(), authorization.signature.as_bytes()) {
        Ok(())
    } else {
        Err(Refusal::Mismatch)
    }
}

/// The canonical request: what the client signed, rebuilt from what arrived.
fn canonical_request(request: &Request<'_>, signed_headers: &[&str]) -> Result<String, Refusal> {
    let body_hash = hex::encode(Sha256::digest(request.body));
    if let Some(claimed) = request.headers.get("x-amz-content-sha256")
        && claimed.as_bytes() != body_hash.as_bytes()
    {
        return Err(Refusal::Mismatch);
    }
    let mut headers = String::new();
    for name in signed_headers {
        let mut values = request.headers.get_all(*name).iter().peekable();
        if values.peek().is_none() {
            return Err(Refusal::Mismatch);
        }
        let joined: Vec<String> = values
            .map(|v| collapse_spaces(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&joined.join(","));
        headers.push('\n');
    }
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        encode(request.path, true),
        canonical_query(request.query),
        headers,
        signed_headers.join(";"),
        body_hash
    ))
}

/// The signature of `canonical` with the key derived from `secret` for the scope.
fn signature(
    secret: &str,
    authorization: &Authorization<'_>,
    amz_date: &str,
    canonical: &str,
) -> String {
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{}\n{}",
        authorization.scope,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), authorization.date);
    for part in [authorization.region, authorization.service, TERMINATOR] {
        key = hmac(&key, part);
    }
    hex::encode(hmac(&key, &string_to_sign))
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Compares without stopping at the first difference, so the time taken tells nothing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Trims a header value and folds each run of spaces into one, as SigV4 does.
fn collapse_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Percent-encodes every byte but the unreserved ones (and `/` in a path).
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let unreserved = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~');
        if unreserved || (keep_slash && byte == b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The query's pairs, decoded, encoded again strictly and sorted.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                encode(&crate::http::query::percent_decode(k), false),
                encode(&crate::http::query::percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    let pairs: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join("&")
}

/// `YYYYMMDDTHHMMSSZ` as a time.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if bytes.len() != AMZ_DATE_LEN || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<u32>().ok();
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = (number(9..11)?, number(11..13)?, number(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// A time as `YYYYMMDDTHHMMSSZ`.
fn format_amz_date(time: SystemTime) -> String {
    let secs = i64::try_from(
        time.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    )
    .unwrap_or(i64::MAX);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests;
