//! The `connect` Lambda: the `$connect` route, recording the connection.

use herald::config::Config;
use herald::events::apigw::ApiGatewayWebsocketProxyRequest;
use herald::handlers::{Services, connect};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    herald::telemetry::init_lambda();
    let config = Config::from_env()?;
    let services = Services::new(herald::store::open_shared(&config).await?, &config);
    let services = &services;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
            Ok::<_, Error>(connect(services, &event.payload).await)
        },
    ))
    .await
}
