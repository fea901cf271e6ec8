//! The `authorizer` Lambda: API Gateway's REQUEST authorizer for `$connect`.
//!
//! Every refusal is reported as the error `Unauthorized`, the one message API Gateway turns
//! into a 401; the real reason goes to the log, never to the client.

use herald::auth::Verifier;
use herald::config::Config;
use herald::events::apigw::ApiGatewayCustomAuthorizerRequestTypeRequest;
use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    herald::telemetry::init_lambda();
    let config = Config::from_env()?;
    let auth = config
        .auth
        .ok_or("set HERALD_JWT_SECRET or HERALD_JWT_PUBLIC_KEY")?;
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
