//! The `publish` Lambda: invoked directly (one request or a batch) or by SQS, it fans a
//! notification out through the Management API at `HERALD_WS_ENDPOINT`.

use herald::compose::Lambda;
use herald::handlers::publish;
use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    herald::telemetry::init_lambda();
    let root = Lambda::from_env()?;
    let services = root.services().await?;
    // Without an event there is no endpoint to derive: fail at cold start, not per publish.
    let gateway = root.management_clients().await.client(None, None)?;
    let (services, gateway) = (&services, &*gateway);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let answer = publish(services, gateway, event.payload).await;
        // Webhook events (rooms a gone member emptied) go on their queue before the
        // function is frozen.
        services.flush().await;
        answer.map_err(|e| Diagnostic {
            error_type: e.error_type().into(),
            error_message: e.to_string(),
        })
    }))
    .await
}
