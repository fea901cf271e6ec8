//! The `authorizer` handler on recorded REQUEST authorizer events.

use super::*;

fn authorizer_event(edit: impl FnOnce(&mut Value)) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
    let mut event = fixture(AUTHORIZER);
    edit(&mut event);
    serde_json::from_value(event).expect("an authorizer event")
}

#[test]
fn authorizer_allows_the_method_arn_with_the_identity_as_context() {
    let response = handlers::authorize(&fixture_verifier(), &authorizer_event(|_| {})).unwrap();
    assert_eq!(response.principal_id.as_deref(), Some("alice"));
    let policy = &response.policy_document;
    assert_eq!(policy.version.as_deref(), Some("2012-10-17"));
    assert_eq!(policy.statement.len(), 1);
    assert_eq!(policy.statement[0].effect, IamPolicyEffect::Allow);
    assert_eq!(policy.statement[0].action, vec!["execute-api:Invoke"]);
    assert_eq!(
        policy.statement[0].resource,
        vec!["arn:aws:execute-api:eu-west-1:123456789012:k3lzx8qv2d/prod/$connect"]
    );
    assert_eq!(
        response.context,
        json!({"sub":"alice","rooms":"orders,team:*","publish":"chat:*"})
    );
    // Serialized as API Gateway reads it.
    let wire = serde_json::to_value(&response).unwrap();
    assert_eq!(wire["principalId"], "alice");
    assert_eq!(wire["policyDocument"]["Statement"][0]["Effect"], "Allow");
}

#[test]
fn authorizer_takes_a_bearer_header_when_there_is_no_query_token() {
    let event = authorizer_event(|e| {
        let token = e["queryStringParameters"]["token"].clone();
        e["queryStringParameters"] = json!({});
        e["multiValueQueryStringParameters"] = json!({});
        e["headers"]["Authorization"] = json!(format!("Bearer {}", token.as_str().unwrap()));
    });
    let response = handlers::authorize(&fixture_verifier(), &event).unwrap();
    assert_eq!(response.principal_id.as_deref(), Some("alice"));
}

#[test]
fn authorizer_refuses_missing_and_bad_tokens() {
    let no_token = authorizer_event(|e| {
        e["queryStringParameters"] = json!({});
        e["multiValueQueryStringParameters"] = json!({});
    });
    assert_eq!(
        handlers::authorize(&fixture_verifier(), &no_token).unwrap_err(),
        AuthError::MissingToken
    );
    let other_secret = Verifier::new(&AuthConfig {
        key: JwtKey::Secret(b"another-secret".to_vec()),
        issuer: None,
        audience: None,
    })
    .unwrap();
    assert_eq!(
        handlers::authorize(&other_secret, &authorizer_event(|_| {})).unwrap_err(),
        AuthError::BadSignature
    );
}
