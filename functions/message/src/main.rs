//! The `message` Lambda: `$default` and the action routes. Replies go back through the
//! Management API of the endpoint the event came from (or `HERALD_WS_ENDPOINT`).

use herald::aws_config::{self, BehaviorVersion};
use herald::config::Config;
use herald::events::apigw::ApiGatewayWebsocketProxyRequest;
use herald::gateway::ManagementClients;
use herald::handlers::{Services, message};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    herald::telemetry::init_lambda();
    let config = Config::from_env()?;
    let services = Services::new(herald::store::open_shared(&config).await?, &config);
    let sdk = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let clients = ManagementClients::new(sdk, config.ws_endpoint.clone());
    let (services, clients) = (&services, &clients);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
            let ctx = &event.payload.request_context;
            let gateway = clients.client(ctx.domain_name.as_deref(), ctx.stage.as_deref())?;
            Ok::<_, Error>(message(services, &*gateway, &event.payload).await)
        },
    ))
    .await
}
