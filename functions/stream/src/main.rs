//! The `stream` Lambda: Server-Sent Events behind a Function URL with response streaming,
//! for browsers whose WebSockets a proxy blocks. It reads the same history as every other
//! transport; the token is checked with the same key as the `authorizer`'s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::compose::Lambda;
use herald::events::lambda_function_urls::LambdaFunctionUrlRequest;
use herald::handlers::stream;
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
                remaining(event.context.deadline),
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

/// How long until the invocation's deadline (ms since the epoch).
fn remaining(deadline_ms: u64) -> Duration {
    // A clock before 1970 would be a broken machine: then assume no time has passed.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_millis(deadline_ms).saturating_sub(now)
}
