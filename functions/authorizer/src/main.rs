//! The `authorizer` Lambda: API Gateway's REQUEST authorizer for `$connect`.
//!
//! The key comes from `HERALD_JWT_PUBLIC_KEY`, `HERALD_JWT_SECRET`, or, on AWS, a Secrets
//! Manager secret named by `HERALD_JWT_SECRET_ARN`, read once at cold start. Every refusal
//! is reported as the error `Unauthorized`, the one message API Gateway turns into a 401;
//! the real reason goes to the log, never to the client.

use herald::auth::Verifier;
use herald::aws_config::{self, BehaviorVersion};
use herald::config::Config;
use herald::events::apigw::ApiGatewayCustomAuthorizerRequestTypeRequest;
use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    herald::telemetry::init_lambda();
    let config = Config::from_env()?;
    let auth = match (&config.auth, &config.jwt_secret_arn) {
        (Some(auth), _) => auth.clone(),
        (None, Some(arn)) => {
            let sdk = aws_config::load_defaults(BehaviorVersion::latest()).await;
            let secret = aws_sdk_secretsmanager::Client::new(&sdk)
                .get_secret_value()
                .secret_id(arn)
                .send()
                .await?;
            let value = secret
                .secret_string()
                .ok_or("the JWT secret must be a string secret")?;
            config.auth_with_secret(value.trim().as_bytes().to_vec())
        }
        (None, None) => {
            return Err(
                "set HERALD_JWT_SECRET_ARN, HERALD_JWT_SECRET or HERALD_JWT_PUBLIC_KEY".into(),
            );
        }
    };
    let verifier = Verifier::new(&auth)?;
    let verifier = &verifier;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest>| async move {
            herald::handlers::authorize(verifier, &event.payload).map_err(|e| {
                tracing::info!(error = %e, "connection refused");
                Diagnostic {
                    error_type: "Unauthorized".into(),
                    error_message: "Unauthorized".into(),
                }
            })
        },
    ))
    .await
}
