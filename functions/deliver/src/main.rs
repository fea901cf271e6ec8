//! The `deliver` Lambda: takes the page jobs a sharded publish queued on SQS and posts each
//! page through the Management API at `HERALD_WS_ENDPOINT`, under the deployment's
//! `@connections` budget (`HERALD_POST_BUDGET_PER_SECOND`).

use std::sync::Arc;

use herald::compose::Lambda;
use herald::events::sqs::SqsEvent;
use herald::gateway::Gateway;
use herald::handlers::deliver;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    herald::telemetry::init_lambda();
    let root = Lambda::from_env()?;
    let services = root.services().await?;
    // Without an event there is no endpoint to derive: fail at cold start, not per page.
    let gateway: Arc<dyn Gateway> = root.management_clients().await.client(None, None)?;
    let (services, gateway) = (&services, &gateway);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let response = deliver(services, gateway, event.payload).await;
        // Webhook events (rooms a gone member emptied) go on their queue before the
        // function is frozen.
        services.flush().await;
        Ok::<_, Error>(response)
    }))
    .await
}
