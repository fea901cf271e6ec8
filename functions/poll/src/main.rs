//! The `poll` Lambda: long polling behind an HTTP API route `GET /poll`, for clients that
//! can hold neither a WebSocket nor a stream. It reads the same history as every other
//! transport; the token is checked with the same key as the `authorizer`'s.

use herald::compose::Lambda;
use herald::events::apigw::ApiGatewayV2httpRequest;
use herald::handlers::poll;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    herald::telemetry::init_lambda();
    let root = Lambda::from_env()?;
    let services = root.services().await?;
    let verifier = root.verifier().await?;
    let (services, verifier) = (&services, &verifier);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayV2httpRequest>| async move {
            Ok::<_, Error>(poll(services, verifier, &event.payload).await)
        },
    ))
    .await
}
