//! The `$connect` REQUEST authorizer: verify the token, allow the connection, and hand the
//! identity to every later route through the authorizer context.

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerPolicy, ApiGatewayCustomAuthorizerRequestTypeRequest,
    ApiGatewayCustomAuthorizerResponse,
};
use aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};
use serde_json::Value;

use crate::auth::{AuthError, Verifier, token_from_request};

/// Verifies the handshake's token (query `token`, else `Authorization: Bearer`) and answers
/// an Allow policy for the `methodArn` with the context `{sub, rooms, publish}`.
///
/// Every refusal is an error: the `authorizer` function turns it into the Lambda error
/// `Unauthorized`, which API Gateway answers with 401.
pub fn authorize(
    verifier: &Verifier,
    request: &ApiGatewayCustomAuthorizerRequestTypeRequest,
) -> Result<ApiGatewayCustomAuthorizerResponse, AuthError> {
    let authorization = request
        .headers
        .get(aws_lambda_events::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = token_from_request(
        request.query_string_parameters.first("token"),
        authorization,
    )
    .ok_or(AuthError::MissingToken)?;
    let identity = verifier.verify(token)?;
    let method_arn = request
        .method_arn
        .clone()
        .filter(|arn| !arn.is_empty())
        .ok_or_else(|| AuthError::NoContext("the request has no methodArn".into()))?;

    let mut statement = IamPolicyStatement::default();
    statement.action = vec!["execute-api:Invoke".to_owned()];
    statement.effect = IamPolicyEffect::Allow;
    statement.resource = vec![method_arn];
    let mut policy = ApiGatewayCustomAuthorizerPolicy::default();
    policy.version = Some("2012-10-17".to_owned());
    policy.statement = vec![statement];

    let mut response = ApiGatewayCustomAuthorizerResponse::<Value>::default();
    response.principal_id = Some(identity.user.clone());
    response.policy_document = policy;
    response.context = Value::Object(identity.to_context().into_iter().collect());
    Ok(response)
}
