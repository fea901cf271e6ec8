//! The `webhook` Lambda: takes the webhook events the other functions put on the webhook
//! queue and delivers each to `HERALD_WEBHOOK_URL`, signed with the `whsec_` key from
//! `HERALD_WEBHOOK_SECRET_ARN` (or `HERALD_WEBHOOK_SECRET`); failed attempts are received
//! again after a backoff, then reach the dead-letter queue.

use herald::compose::Lambda;
use herald::events::sqs::SqsEvent;
use herald::handlers::webhook;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    herald::telemetry::init_lambda();
    let root = Lambda::from_env()?;
    let sender = root.webhook_sender().await?;
    let retries = root.webhook_retries().await;
    let (sender, retries) = (&sender, retries.as_ref());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(webhook(sender, retries, event.payload).await)
    }))
    .await
}
