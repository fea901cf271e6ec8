//! The `publish` Lambda: invoked directly (one request or a batch) or by SQS, it fans a
//! notification out through the Management API at `HERALD_WS_ENDPOINT`.

use herald::aws_config::{self, BehaviorVersion};
use herald::config::Config;
use herald::gateway::ManagementClients;
use herald::handlers::{Services, publish};
use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    herald::telemetry::init_lambda();
    let config = Config::from_env()?;
    let services = Services::new(herald::store::open_shared(&config).await?, &config);
    let sdk = aws_config::load_defaults(BehaviorVersion::latest()).await;
    // Without an event there is no endpoint to derive: fail at cold start, not per publish.
    let gateway = ManagementClients::new(sdk, config.ws_endpoint.clone()).client(None, None)?;
    let (services, gateway) = (&services, &*gateway);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        publish(services, gateway, event.payload)
            .await
            .map_err(|e| Diagnostic {
                error_type: e.error_type().into(),
                error_message: e.to_string(),
            })
    }))
    .await
}
