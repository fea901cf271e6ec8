//! The `authorizer` Lambda: API Gateway's REQUEST authorizer for `$connect`.
//!
//! The key comes from `HERALD_JWT_PUBLIC_KEY`, `HERALD_JWT_SECRET`, or, on AWS, a Secrets
//! Manager secret named by `HERALD_JWT_SECRET_ARN`, read once at cold start (see
//! `herald::compose`). Every refusal is reported as the error `Unauthorized`, the one
//! message API Gateway turns into a 401; the real reason goes to the log, never to the client.

use herald::compose::Lambda;
use herald::events::apigw::ApiGatewayCustomAuthorizerRequestTypeRequest;
use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    herald::telemetry::init_lambda();
    let verifier = Lambda::from_env()?.verifier().await?;
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
