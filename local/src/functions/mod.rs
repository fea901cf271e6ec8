//! How the gateway runs Herald's functions: in this process (the default), or, with
//! `--lambda-dir`, as the real function binaries behind an embedded Lambda Runtime API,
//! exactly as Lambda runs them.
//!
//! Everything that runs a handler (the handshake's authorizer and `$connect`, `$disconnect`,
//! a socket's messages, the Invoke API, the page queue) goes through [`Handlers`]. In Lambda
//! mode the fallback readers invoke `poll` and `stream` themselves (`readers/lambda.rs`),
//! and the `publish` binary queues page jobs on the control plane's delivery queue
//! (`control_plane/delivery_queue.rs`). This folder knows nothing above it.
//!
//! # Layout
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the [`Handlers`] seam, and [`InProcess`], the handlers called directly |
//! | `lambda.rs` | [`lambda::Functions`]: the eight binaries, started and invoked as Lambda does |
//! | `instances.rs` | one function's instances: child processes, cold starts, scale-out, timeouts, exits |
//! | `runtime_api.rs` | the 2018-06-01 Runtime API an instance polls, including streamed responses |

use std::sync::Arc;

use async_trait::async_trait;
use herald::auth::Verifier;
use herald::events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayCustomAuthorizerResponse,
    ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest,
};
use herald::gateway::Gateway;
use herald::handlers::{Services, deliver_job};
use herald::shard::PageJob;
use serde_json::Value;

pub mod instances;
pub mod lambda;
pub(crate) mod runtime_api;

/// A function's error, as Lambda reports it: `errorType` and `errorMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionError {
    /// `errorType`: the handler's own (`BadRequest`, `Unauthorized`) or Lambda's
    /// (`Sandbox.Timedout`, `Runtime.ExitError`).
    pub error_type: String,
    /// `errorMessage`.
    pub message: String,
}

impl FunctionError {
    /// An error of `error_type` saying `message`.
    pub fn new(error_type: &str, message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.to_owned(),
            message: message.into(),
        }
    }
}

impl FunctionError {
    /// Lambda's answer for an invocation past its function's `timeout`.
    pub fn timed_out(timeout: std::time::Duration) -> Self {
        Self::new(
            "Sandbox.Timedout",
            format!("Task timed out after {:.2} seconds", timeout.as_secs_f64()),
        )
    }
}

impl std::fmt::Display for FunctionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

/// The functions the gateway invokes, by route. Each takes the event the route's function
/// gets on AWS and answers what API Gateway or Lambda would make of the function's answer.
#[async_trait]
pub(crate) trait Handlers: Send + Sync + 'static {
    /// The `authorizer`: its policy, or the error it refused with.
    async fn authorize(
        &self,
        event: &ApiGatewayCustomAuthorizerRequestTypeRequest,
    ) -> Result<ApiGatewayCustomAuthorizerResponse, FunctionError>;
    /// `$connect`: a non-2xx answer refuses the connection.
    async fn connect(&self, event: &ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse;
    /// `$disconnect`.
    async fn disconnect(&self, event: &ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse;
    /// `$default`: a client's message (replies go out through `@connections`).
    async fn message(&self, event: &ApiGatewayWebsocketProxyRequest);
    /// `publish`, invoked with `payload`: its answer, or its error.
    async fn publish(&self, payload: Value) -> Result<Value, FunctionError>;
    /// `deliver`, for one page job.
    async fn deliver(&self, job: PageJob);
}

/// The handlers called in this process, on the gateway's own services.
pub(crate) struct InProcess {
    /// The store, limits and sharding every handler runs on.
    pub services: Services,
    /// The key tokens are checked with.
    pub verifier: Verifier,
    /// Where a socket's replies go.
    pub gateway: Arc<dyn Gateway>,
    /// Where publishes and page jobs post: the control plane's gateway, faults and all.
    pub publisher: Arc<dyn Gateway>,
}

#[async_trait]
impl Handlers for InProcess {
    async fn authorize(
        &self,
        event: &ApiGatewayCustomAuthorizerRequestTypeRequest,
    ) -> Result<ApiGatewayCustomAuthorizerResponse, FunctionError> {
        herald::handlers::authorize(&self.verifier, event).map_err(|e| {
            // The client is told only `Unauthorized`, as the `authorizer` function tells it.
            tracing::info!(error = %e, "handshake refused by the authorizer");
            FunctionError::new("Unauthorized", "Unauthorized")
        })
    }

    async fn connect(&self, event: &ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        herald::handlers::connect(&self.services, event).await
    }

    async fn disconnect(&self, event: &ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        herald::handlers::disconnect(&self.services, &*self.gateway, event).await
    }

    async fn message(&self, event: &ApiGatewayWebsocketProxyRequest) {
        herald::handlers::message(&self.services, &*self.gateway, event).await;
    }

    async fn publish(&self, payload: Value) -> Result<Value, FunctionError> {
        herald::handlers::publish(&self.services, &*self.publisher, payload)
            .await
            .map_err(|e| FunctionError::new(e.error_type(), e.to_string()))
    }

    async fn deliver(&self, job: PageJob) {
        deliver_job(&self.services, &self.publisher, job).await;
    }
}

/// Handlers shared by the routes.
pub(crate) type SharedHandlers = Arc<dyn Handlers>;
