//! `ApiGatewayManagement`: the real `@connections` API over HTTP, through
//! `aws-sdk-apigatewaymanagement`.
//!
//! The SDK's own retries are turned off: fan-out owns the retry policy (429 only, with
//! jittered backoff), and a second layer of retries underneath would multiply attempts and
//! hide throttling from the counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_apigatewaymanagement::Client;
use aws_sdk_apigatewaymanagement::config::http::HttpResponse;
use aws_sdk_apigatewaymanagement::config::retry::RetryConfig;
use aws_sdk_apigatewaymanagement::config::timeout::TimeoutConfig;
use aws_sdk_apigatewaymanagement::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_apigatewaymanagement::primitives::{Blob, DateTime};
use bytes::Bytes;

use super::{ConnectionInfo, Gateway, PushError};
use crate::error::{self, Described};
use crate::ids::ConnectionId;

/// How long one `@connections` call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// [`Gateway`] on the API Gateway Management API of one endpoint.
#[derive(Clone, Debug)]
pub struct ApiGatewayManagement {
    client: Client,
    endpoint: String,
}

impl ApiGatewayManagement {
    /// A client for `endpoint`, for example `https://abc123.execute-api.eu-west-1.amazonaws.com/prod`
    /// or `http://127.0.0.1:3001/local`.
    pub fn new(sdk: &SdkConfig, endpoint: &str) -> Self {
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(sdk)
            .endpoint_url(endpoint)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(CALL_TIMEOUT)
                    .connect_timeout(Duration::from_secs(2))
                    .build(),
            )
            .build();
        Self {
            client: Client::from_conf(config),
            endpoint: endpoint.to_owned(),
        }
    }

    /// A client for a local endpoint (such as `herald-local`'s own), which accepts any
    /// signature: fixed dummy credentials and region, nothing read from the environment.
    pub fn local(endpoint: &str) -> Self {
        Self::new(&crate::aws::local_sdk_config(endpoint), endpoint)
    }

    /// The endpoint this client posts to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// Maps an SDK error to a [`PushError`] by the service's error code, falling back on the
/// HTTP status for answers without a modelled code.
fn classify<E>(error: SdkError<E, HttpResponse>) -> PushError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    let code = error.code().map(str::to_owned);
    let kept = |error: SdkError<E, HttpResponse>| {
        error::source(Described::new(
            DisplayErrorContext(&error).to_string(),
            error,
        ))
    };
    match (code.as_deref(), status) {
        (Some("GoneException"), _) | (_, Some(410)) => PushError::Gone,
        (Some("LimitExceededException"), _) | (_, Some(429)) => PushError::Throttled,
        (Some("PayloadTooLargeException"), _) | (_, Some(413)) => PushError::PayloadTooLarge,
        (Some("ForbiddenException"), _) | (_, Some(403)) => PushError::Forbidden(kept(error)),
        _ => PushError::Other(kept(error)),
    }
}

fn millis(time: Option<&DateTime>) -> i64 {
    time.and_then(|t| t.to_millis().ok()).unwrap_or(0)
}

#[async_trait]
impl Gateway for ApiGatewayManagement {
    async fn post(&self, id: &ConnectionId, payload: Bytes) -> Result<(), PushError> {
        self.client
            .post_to_connection()
            .connection_id(id.as_str())
            .data(Blob::new(payload.to_vec()))
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    async fn get(&self, id: &ConnectionId) -> Result<ConnectionInfo, PushError> {
        let out = self
            .client
            .get_connection()
            .connection_id(id.as_str())
            .send()
            .await
            .map_err(classify)?;
        Ok(ConnectionInfo {
            connected_at: millis(out.connected_at()),
            last_active_at: millis(out.last_active_at()),
            source_ip: out
                .identity()
                .and_then(|i| i.source_ip())
                .map(str::to_owned),
            user_agent: out
                .identity()
                .and_then(|i| i.user_agent())
                .map(str::to_owned),
        })
    }

    async fn delete(&self, id: &ConnectionId) -> Result<(), PushError> {
        self.client
            .delete_connection()
            .connection_id(id.as_str())
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }
}

/// Management API clients by endpoint, built once and reused across invocations.
///
/// The `message` function answers on the endpoint of the event that invoked it
/// (`https://{domainName}/{stage}`), unless `HERALD_WS_ENDPOINT` overrides it (needed behind
/// a custom domain, whose name is not the API's); `publish` has no event and uses the
/// override alone.
pub struct ManagementClients {
    sdk: SdkConfig,
    fixed: Option<String>,
    clients: Mutex<HashMap<String, Arc<ApiGatewayManagement>>>,
}

/// No management endpoint could be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no management endpoint: set HERALD_WS_ENDPOINT (e.g. https://abc123.execute-api.eu-west-1.amazonaws.com/prod)"
)]
pub struct NoEndpoint;

impl ManagementClients {
    /// Clients built from `sdk`, posting to `fixed` when set.
    pub fn new(sdk: SdkConfig, fixed: Option<String>) -> Self {
        Self {
            sdk,
            fixed,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The endpoint for an event from `domain_name` and `stage`.
    pub fn endpoint_for(
        &self,
        domain_name: Option<&str>,
        stage: Option<&str>,
    ) -> Result<String, NoEndpoint> {
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.clone());
        }
        match (domain_name, stage) {
            (Some(domain), Some(stage)) if !domain.is_empty() && !stage.is_empty() => {
                Ok(format!("https://{domain}/{stage}"))
            }
            _ => Err(NoEndpoint),
        }
    }

    /// The client for an event from `domain_name` and `stage` (or for the fixed endpoint).
    pub fn client(
        &self,
        domain_name: Option<&str>,
        stage: Option<&str>,
    ) -> Result<Arc<ApiGatewayManagement>, NoEndpoint> {
        let endpoint = self.endpoint_for(domain_name, stage)?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        Ok(clients
            .entry(endpoint)
            .or_insert_with_key(|endpoint| Arc::new(ApiGatewayManagement::new(&self.sdk, endpoint)))
            .clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk() -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build()
    }

    #[test]
    fn endpoints_come_from_the_event_unless_fixed() {
        let clients = ManagementClients::new(sdk(), None);
        assert_eq!(
            clients.endpoint_for(
                Some("abc.execute-api.eu-west-1.amazonaws.com"),
                Some("prod")
            ),
            Ok("https://abc.execute-api.eu-west-1.amazonaws.com/prod".to_owned())
        );
        assert_eq!(clients.endpoint_for(None, Some("prod")), Err(NoEndpoint));
        let fixed = ManagementClients::new(sdk(), Some("http://127.0.0.1:3001/local".into()));
        assert_eq!(
            fixed.endpoint_for(Some("x"), Some("y")),
            Ok("http://127.0.0.1:3001/local".to_owned())
        );
    }

    #[test]
    fn clients_are_reused_per_endpoint() {
        let clients = ManagementClients::new(sdk(), None);
        let a = clients.client(Some("a.example"), Some("s")).unwrap();
        let again = clients.client(Some("a.example"), Some("s")).unwrap();
        let b = clients.client(Some("b.example"), Some("s")).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(b.endpoint(), "https://b.example/s");
    }
}
