//! SigV4 verification against AWS's published test suite (`aws-sig-v4-test-suite`: the
//! credentials, date and expected signatures are AWS's), and every way a request is refused.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::*;

const KEY_ID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const DATE: &str = "20150830T123600Z";
const SCOPE: &str = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";

fn credentials() -> Credentials {
    Credentials {
        access_key_id: KEY_ID.into(),
        secret_access_key: SECRET.into(),
    }
}

/// When the suite's requests were signed.
fn signed_at() -> SystemTime {
    parse_amz_date(DATE).unwrap()
}

/// One case of the suite: the request, and the signature AWS computed for it.
struct Case {
    name: &'static str,
    method: &'static str,
    query: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    signed_headers: &'static str,
    signature: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "get-vanilla",
        method: "GET",
        query: "",
        headers: &[],
        body: "",
        signed_headers: "host;x-amz-date",
        signature: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    },
    Case {
        name: "post-vanilla",
        method: "POST",
        query: "",
        headers: &[],
        body: "",
        signed_headers: "host;x-amz-date",
        signature: "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
    },
    Case {
        name: "post-vanilla-query",
        method: "POST",
        query: "Param1=value1",
        headers: &[],
        body: "",
        signed_headers: "host;x-amz-date",
        signature: "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
    },
    Case {
        name: "post-x-www-form-urlencoded",
        method: "POST",
        query: "",
        headers: &[("Content-Type", "application/x-www-form-urlencoded")],
        body: "Param1=value1",
        signed_headers: "content-type;host;x-amz-date",
        signature: "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
    },
    Case {
        name: "post-header-key-case",
        method: "POST",
        query: "",
        headers: &[("MY-HEADER1", "value1")],
        body: "",
        signed_headers: "host;my-header1;x-amz-date",
        signature: "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c",
    },
    Case {
        name: "post-header-value-case",
        method: "POST",
        query: "",
        headers: &[("My-Header1", "VALUE1")],
        body: "",
        signed_headers: "host;my-header1;x-amz-date",
        signature: "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
    },
    Case {
        name: "get-header-key-duplicate",
        method: "GET",
        query: "",
        headers: &[
            ("My-Header1", "value2"),
            ("My-Header1", "value2"),
            ("My-Header1", "value1"),
        ],
        body: "",
        signed_headers: "host;my-header1;x-amz-date",
        signature: "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
    },
    Case {
        name: "session token",
        method: "GET",
        query: "",
        headers: &[(
            "X-Amz-Security-Token",
            "AQoDYXdzEPT//////////wEXAMPLEtEXAMPLE",
        )],
        body: "",
        signed_headers: "host;x-amz-date;x-amz-security-token",
        signature: "edaa8d606468f4d6bcd2ed19b063100237fc7c92517ce3ef0bfb21177c74ac5d",
    },
];

fn headers_of(case: &Case, signature: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("example.amazonaws.com"));
    headers.insert("x-amz-date", HeaderValue::from_static(DATE));
    for (name, value) in case.headers {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static(value),
        );
    }
    let authorization = format!(
        "{ALGORITHM} Credential={SCOPE}, SignedHeaders={}, Signature={signature}",
        case.signed_headers
    );
    headers.insert("authorization", authorization.parse().unwrap());
    headers
}

fn check(case: &Case, headers: &HeaderMap, body: &str, now: SystemTime) -> Result<(), Refusal> {
    let request = Request {
        method: case.method,
        path: "/",
        query: case.query,
        headers,
        body: body.as_bytes(),
    };
    verify(&credentials(), &request, now)
}

#[test]
fn every_case_of_the_aws_suite_verifies() {
    for case in CASES {
        let headers = headers_of(case, case.signature);
        assert_eq!(
            check(case, &headers, case.body, signed_at()),
            Ok(()),
            "{}",
            case.name
        );
    }
}

#[test]
fn the_canonical_request_is_the_published_one() {
    let headers = headers_of(&CASES[3], "x");
    let request = Request {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
        body: b"Param1=value1",
    };
    let signed: Vec<&str> = CASES[3].signed_headers.split(';').collect();
    assert_eq!(
        canonical_request(&request, &signed).unwrap(),
        "POST\n/\n\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\n\
         x-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n\
         9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"
    );
}

#[test]
fn a_changed_request_or_secret_does_not_verify() {
    let case = &CASES[3];
    let headers = headers_of(case, case.signature);
    assert_eq!(
        check(case, &headers, "Param1=value2", signed_at()),
        Err(Refusal::Mismatch),
        "another body"
    );
    let mut other_value = headers.clone();
    other_value.insert("content-type", HeaderValue::from_static("text/plain"));
    assert_eq!(
        check(case, &other_value, case.body, signed_at()),
        Err(Refusal::Mismatch),
        "another signed header value"
    );
    let wrong_secret = Credentials {
        secret_access_key: "not-the-secret".into(),
        ..credentials()
    };
    let request = Request {
        method: case.method,
        path: "/",
        query: "",
        headers: &headers,
        body: case.body.as_bytes(),
    };
    assert_eq!(
        verify(&wrong_secret, &request, signed_at()),
        Err(Refusal::Mismatch)
    );
    let tampered = headers_of(case, &case.signature.replace('f', "e"));
    assert_eq!(
        check(case, &tampered, case.body, signed_at()),
        Err(Refusal::Mismatch)
    );
    let mut lying_hash = headers.clone();
    lying_hash.insert("x-amz-content-sha256", HeaderValue::from_static("00"));
    assert_eq!(
        check(case, &lying_hash, case.body, signed_at()),
        Err(Refusal::Mismatch),
        "a payload hash that is not the body's"
    );
}

#[test]
fn another_access_key_is_unrecognized() {
    let case = &CASES[0];
    let headers = headers_of(case, case.signature);
    let other = Credentials {
        access_key_id: "AKIDOTHER".into(),
        ..credentials()
    };
    let request = Request {
        method: "GET",
        path: "/",
        query: "",
        headers: &headers,
        body: b"",
    };
    let refusal = verify(&other, &request, signed_at()).unwrap_err();
    assert_eq!(refusal, Refusal::UnknownKey);
    assert_eq!(refusal.kind(), "UnrecognizedClientException");
}

#[test]
fn a_signature_is_valid_for_fifteen_minutes_either_way() {
    let case = &CASES[0];
    let headers = headers_of(case, case.signature);
    for offset in [Duration::ZERO, MAX_CLOCK_SKEW] {
        assert_eq!(check(case, &headers, "", signed_at() + offset), Ok(()));
        assert_eq!(check(case, &headers, "", signed_at() - offset), Ok(()));
    }
    let late = check(
        case,
        &headers,
        "",
        signed_at() + MAX_CLOCK_SKEW + Duration::from_secs(1),
    );
    let Err(refusal @ Refusal::Expired { .. }) = late else {
        panic!("a stale signature is refused: {late:?}");
    };
    assert_eq!(refusal.kind(), "InvalidSignatureException");
    assert!(matches!(
        check(
            case,
            &headers,
            "",
            signed_at() - MAX_CLOCK_SKEW - Duration::from_secs(1)
        ),
        Err(Refusal::Expired { .. })
    ));
}

#[test]
fn unsigned_and_malformed_requests_are_told_apart() {
    let case = &CASES[0];
    let mut headers = headers_of(case, case.signature);
    headers.remove("authorization");
    let refusal = check(case, &headers, "", signed_at()).unwrap_err();
    assert_eq!(refusal, Refusal::Missing);
    assert_eq!(refusal.kind(), "MissingAuthenticationTokenException");
    for bad in [
        "Basic dXNlcjpwYXNz",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE, SignedHeaders=host, Signature=00",
    ] {
        headers.insert("authorization", bad.parse().unwrap());
        let refusal = check(case, &headers, "", signed_at()).unwrap_err();
        assert_eq!(refusal.kind(), "IncompleteSignatureException", "{bad}");
    }
    let mut no_date = headers_of(case, case.signature);
    no_date.remove("x-amz-date");
    assert!(matches!(
        check(case, &no_date, "", signed_at()),
        Err(Refusal::Incomplete(_))
    ));
    let mut other_day = headers_of(case, case.signature);
    other_day.insert("x-amz-date", HeaderValue::from_static("20150831T123600Z"));
    assert_eq!(
        check(
            case,
            &other_day,
            "",
            parse_amz_date("20150831T123600Z").unwrap()
        ),
        Err(Refusal::Mismatch),
        "the date must be the scope's"
    );
}

#[test]
fn a_signature_that_does_not_cover_the_host_is_incomplete() {
    let case = &CASES[0];
    let mut headers = headers_of(case, case.signature);
    let authorization = headers["authorization"].to_str().unwrap().to_owned();
    assert!(
        authorization.contains("SignedHeaders=host;x-amz-date"),
        "{authorization}"
    );
    let without_host =
        authorization.replace("SignedHeaders=host;x-amz-date", "SignedHeaders=x-amz-date");
    headers.insert("authorization", without_host.parse().unwrap());
    let refusal = check(case, &headers, "", signed_at()).unwrap_err();
    assert_eq!(refusal.kind(), "IncompleteSignatureException");
    assert!(refusal.to_string().contains("'Host'"), "{refusal}");
}

#[test]
fn a_signed_header_that_is_missing_does_not_verify() {
    let case = &CASES[4];
    let mut headers = headers_of(case, case.signature);
    headers.remove("my-header1");
    assert_eq!(
        check(case, &headers, "", signed_at()),
        Err(Refusal::Mismatch)
    );
}

#[test]
fn paths_are_encoded_once_more_and_queries_sorted() {
    assert_eq!(
        encode("/local/%40connections/abc%3D", true),
        "/local/%2540connections/abc%253D"
    );
    assert_eq!(encode("a b/~", false), "a%20b%2F~");
    assert_eq!(canonical_query("b=2&a=%7e&a=1&c"), "a=1&a=~&b=2&c=");
    assert_eq!(collapse_spaces("  a   b  c "), "a b c");
}

#[test]
fn dates_read_and_write_back() {
    for text in [
        "20150830T123600Z",
        "20000229T000000Z",
        "19700101T000000Z",
        "20261202T235959Z",
    ] {
        assert_eq!(format_amz_date(parse_amz_date(text).unwrap()), text);
    }
    assert_eq!(
        parse_amz_date("19700102T000001Z"),
        Some(UNIX_EPOCH + Duration::from_secs(86_401))
    );
    for bad in [
        "2015-08-30T12:36:00Z",
        "20151330T123600Z",
        "20150830T246000Z",
        "20150830T123600",
        "",
    ] {
        assert_eq!(parse_amz_date(bad), None, "{bad}");
    }
}

#[test]
fn the_secret_never_shows_in_debug_output() {
    assert!(!format!("{:?}", credentials()).contains(SECRET));
}

/// Property tests: whatever a client sends as its `Authorization` and `X-Amz-Date`, the
/// verifier answers a refusal or a verdict, never a panic; what it writes, it reads back.
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Cases per property: each is microseconds, so the suite spends well under a second.
    const CASES: u32 = 2_000;

    /// A header value as a client might send one: printable ASCII, with the separators the
    /// parser splits on more likely than chance would make them.
    fn header_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                4 => proptest::char::range(' ', '~'),
                1 => prop_oneof![Just(','), Just('='), Just('/'), Just(';'), Just(' ')],
            ],
            0..200,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-]{1,24}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn any_authorization_is_refused_or_parsed_never_a_panic(
            text in header_text(),
            prefixed in any::<bool>(),
        ) {
            let value = if prefixed { format!("{ALGORITHM} {text}") } else { text };
            let _ = parse_authorization(&value);
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert("authorization", value);
                headers.insert("x-amz-date", HeaderValue::from_static(DATE));
            }
            let _ = check_head(&headers);
            let request = Request {
                method: "POST",
                path: "/",
                query: "",
                headers: &headers,
                body: b"",
            };
            prop_assert!(verify(&credentials(), &request, signed_at()).is_err());
        }

        #[test]
        fn a_well_formed_authorization_reads_back_its_parts(
            key in token(),
            date in "[0-9]{8}",
            region in token(),
            service in token(),
            extra in proptest::collection::vec("[a-z-]{1,12}", 0..4),
            signature in "[0-9a-f]{64}",
        ) {
            let mut signed = extra.clone();
            signed.push("host".into());
            signed.sort();
            let value = format!(
                "{ALGORITHM} Credential={key}/{date}/{region}/{service}/aws4_request, \
                 SignedHeaders={}, Signature={signature}",
                signed.join(";")
            );
            let parsed = parse_authorization(&value).expect("well formed");
            prop_assert_eq!(parsed.access_key_id, key.as_str());
            prop_assert_eq!(parsed.date, date.as_str());
            prop_assert_eq!(parsed.region, region.as_str());
            prop_assert_eq!(parsed.service, service.as_str());
            prop_assert_eq!(parsed.signed_headers, signed.iter().map(String::as_str).collect::<Vec<_>>());
            prop_assert_eq!(parsed.signature, signature.as_str());
        }

        #[test]
        fn any_date_text_is_read_or_refused_and_any_time_reads_back(
            text in "[0-9T Z+-]{0,20}",
            secs in 0u64..4_102_444_800,
        ) {
            let _ = parse_amz_date(&text);
            let time = UNIX_EPOCH + Duration::from_secs(secs);
            prop_assert_eq!(parse_amz_date(&format_amz_date(time)), Some(time));
        }
    }
}
