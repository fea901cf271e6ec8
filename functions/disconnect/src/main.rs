//! The `disconnect` Lambda: the `$disconnect` route, forgetting the connection. With
//! presence events on, the rooms it left hear of it through the Management API of the
//! endpoint the event came from (or `HERALD_WS_ENDPOINT`).

use herald::compose::Lambda;
use herald::events::apigw::ApiGatewayWebsocketProxyRequest;
use herald::handlers::disconnect;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    herald::telemetry::init_lambda();
    let root = Lambda::from_env()?;
    let services = root.services().await?;
    let clients = root.management_clients().await;
    let (services, clients) = (&services, &clients);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
            let ctx = &event.payload.request_context;
            let gateway = clients.client(ctx.domain_name.as_deref(), ctx.stage.as_deref())?;
            let response = disconnect(services, &*gateway, &event.payload).await;
            // Webhook events go on their queue before the function is frozen.
            services.flush().await;
            Ok::<_, Error>(response)
        },
    ))
    .await
}
