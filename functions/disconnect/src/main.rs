//! The `disconnect` Lambda: the `$disconnect` route, forgetting the connection.

use herald::config::Config;
use herald::events::apigw::ApiGatewayWebsocketProxyRequest;
use herald::handlers::{Services, disconnect};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    herald::telemetry::init_lambda();
    let config = Config::from_env()?;
    let services = Services::new(herald::store::open_shared(&config).await?, &config);
    let services = &services;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
            Ok::<_, Error>(disconnect(services, &event.payload).await)
        },
    ))
    .await
}
