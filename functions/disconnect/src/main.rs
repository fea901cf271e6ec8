//! The `disconnect` Lambda: the `$disconnect` route, forgetting the connection.

use herald::compose::Lambda;
use herald::events::apigw::ApiGatewayWebsocketProxyRequest;
use herald::handlers::disconnect;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    herald::telemetry::init_lambda();
    let services = Lambda::from_env()?.services().await?;
    let services = &services;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
            let response = disconnect(services, &event.payload).await;
            // Webhook events go on their queue before the function is frozen.
            services.flush().await;
            Ok::<_, Error>(response)
        },
    ))
    .await
}
