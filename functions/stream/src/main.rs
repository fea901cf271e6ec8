//! The `stream` Lambda: Server-Sent Events behind a Function URL with response streaming,
//! for browsers whose WebSockets a proxy blocks. It reads the same history as every other
//! transport; the token is checked with the same key as the `authorizer`'s.

use herald::compose::Lambda;
use herald::events::lambda_function_urls::LambdaFunctionUrlRequest;
use herald::handlers::{stream, time_left};
use lambda_runtime::{Error, LambdaEvent, MetadataPrelude, StreamResponse, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    herald::telemetry::init_lambda();
    let root = Lambda::from_env()?;
    let services = root.services().await?;
    let verifier = root.verifier().await?;
    let (services, verifier) = (&services, &verifier);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<LambdaFunctionUrlRequest>| async move {
            let streamed = stream(
                services.clone(),
                verifier,
                &event.payload,
                time_left(event.context.deadline),
            )
            .await;
            Ok::<_, Error>(StreamResponse {
                metadata_prelude: MetadataPrelude {
                    status_code: streamed.status,
                    headers: streamed.headers,
                    cookies: Vec::new(),
                },
                stream: streamed.body,
            })
        },
    ))
    .await
}
