//! Lambda mode (`--lambda-dir DIR`): the eight function binaries, as built for Lambda
//! (`DIR/<name>/bootstrap`, as `cargo lambda build` lays them out) or natively
//! (`DIR/<name>`, as `cargo build --release` does), each run as Lambda runs it behind the
//! Runtime API (`instances.rs`), with the gateway's configuration as its environment.
//!
//! Every handler call becomes an invocation of the function's binary with the event AWS
//! would send: `$connect` and its authorizer, `$disconnect` and messages as API Gateway's
//! WebSocket events, Invoke API calls as their payload, page jobs as SQS events. The
//! functions share the gateway's store, so it must be Redis or DynamoDB; they post to the
//! gateway's `@connections` (`HERALD_WS_ENDPOINT`), signed with its credentials, and queue
//! page jobs on its delivery queue (`control_plane/delivery_queue.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use herald::auth::JwtKey;
use herald::config::{Config, StoreKind};
use herald::events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayCustomAuthorizerResponse,
    ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest,
};
use herald::shard::PageJob;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::instances::{Function, InitFailure, Spec};
use super::runtime_api::Outcome;
use super::{FunctionError, Handlers};

/// The functions, with the timeouts and memory of the SAM template (`infra/template.yaml`).
pub const FUNCTIONS: [Spec; 8] = [
    spec("authorizer", 30, 256),
    spec("connect", 30, 256),
    spec("disconnect", 30, 256),
    spec("message", 30, 256),
    spec("publish", 60, 256),
    spec("deliver", 60, 256),
    spec("poll", 29, 256),
    spec("stream", 900, 128),
];

const fn spec(name: &'static str, timeout_secs: u64, memory_mb: u32) -> Spec {
    Spec {
        name,
        timeout: Duration::from_secs(timeout_secs),
        memory_mb,
    }
}

/// The region functions are told they run in when the environment names none.
const DEFAULT_REGION: &str = "us-east-1";
/// The credentials functions sign with when the control plane has none (it is then open
/// on loopback and takes any signature).
const LOOPBACK_KEY: &str = "herald-local";
/// The queue name page jobs go to, in the queue URL the functions are given.
pub(crate) const DELIVERY_QUEUE_NAME: &str = "herald-deliver";

/// Why Lambda mode cannot start.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// A function's binary is in neither place.
    #[error("no binary for the {function} function: neither {} nor {} exists (build them with `cargo build --release -p authorizer -p connect -p deliver -p disconnect -p message -p publish -p poll -p stream`, then pass --lambda-dir target/release)", .tried[0].display(), .tried[1].display())]
    Missing {
        /// The function.
        function: &'static str,
        /// Where its binary was looked for.
        tried: [PathBuf; 2],
    },
    /// The functions run in processes of their own: they cannot share a memory store.
    #[error(
        "--lambda-dir runs the functions in processes of their own, which cannot share the memory store: set HERALD_STORE=redis (with HERALD_REDIS_URL) or HERALD_STORE=dynamodb"
    )]
    MemoryStore,
    /// A function failed to start.
    #[error(transparent)]
    Init(#[from] InitFailure),
}

/// A function's cold start: spawn to its first `/next`.
#[derive(Debug, Clone)]
pub struct ColdStart {
    /// The function.
    pub function: &'static str,
    /// How long it took.
    pub took: Duration,
}

/// Where the functions reach the gateway.
pub(crate) struct Endpoints {
    /// `HERALD_WS_ENDPOINT`: the `@connections` API.
    pub management: String,
    /// `AWS_ENDPOINT_URL_SQS`: the delivery queue's endpoint.
    pub queue: String,
}

/// The eight functions, running.
pub(crate) struct Functions {
    by_name: HashMap<&'static str, Arc<Function>>,
    /// Each function's first cold start, in the order they started.
    pub cold_starts: Vec<ColdStart>,
    region: String,
}

/// Variables for the gateway alone, which the functions get blank.
const GATEWAY_ONLY: [&str; 6] = [
    "HERALD_WEBHOOK_URL",
    "HERALD_WEBHOOK_SECRET",
    "HERALD_WEBHOOK_EVENTS",
    "HERALD_MQTT_URL",
    "HERALD_MQTT_PREFIX",
    "HERALD_MQTT_PUBLISH_ROOMS",
];

/// `DIR/<name>/bootstrap`, else `DIR/<name>`.
fn binary(dir: &Path, function: &'static str) -> Result<PathBuf, LambdaError> {
    let tried = [dir.join(function).join("bootstrap"), dir.join(function)];
    tried
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or(LambdaError::Missing { function, tried })
}

/// The environment the functions get on top of the gateway's own: the configuration the
/// gateway runs with (its flags included, and in `dev_mode` its generated secret), where to
/// reach it, and the control plane's key pair (access key id, secret) to sign with.
pub(crate) fn environment(
    config: &Config,
    endpoints: &Endpoints,
    credentials: Option<(&str, &str)>,
    dev_mode: bool,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: String| env.push((name.to_owned(), value));
    let limits = &config.limits;
    // No history is size 0, as the variable says it.
    let (size, age) = limits
        .history
        .as_ref()
        .map_or((0, 0), |h| (h.size, h.age.as_secs()));
    set("HERALD_HISTORY_SIZE", size.to_string());
    set("HERALD_HISTORY_TTL_SECS", age.to_string());
    set(
        "HERALD_MAX_CONNECTIONS_PER_USER",
        limits.max_connections_per_user.unwrap_or(0).to_string(),
    );
    set(
        "HERALD_MAX_ROOMS_PER_CONNECTION",
        limits.max_rooms_per_connection.unwrap_or(0).to_string(),
    );
    set(
        "HERALD_SHARD_THRESHOLD",
        config.shards.threshold.to_string(),
    );
    set(
        "HERALD_POST_BUDGET_PER_SECOND",
        config.shards.post_budget_per_second.to_string(),
    );
    // Dev mode's secret lives in the gateway only: the functions check tokens with it too.
    // A configured key is in the environment the functions inherit.
    if dev_mode
        && let Some(auth) = &config.auth
        && let JwtKey::Secret(secret) = &auth.key
    {
        set(
            "HERALD_JWT_SECRET",
            String::from_utf8_lossy(secret).into_owned(),
        );
    }
    // The gateway runs the sinks the functions cannot (webhooks, MQTT): blank, as the
    // functions read them, so they start rather than refuse the variables they inherit.
    for gateway_only in GATEWAY_ONLY {
        set(gateway_only, String::new());
    }
    set("HERALD_WS_ENDPOINT", endpoints.management.clone());
    set("AWS_ENDPOINT_URL_SQS", endpoints.queue.clone());
    set(
        "HERALD_DELIVERY_QUEUE_URL",
        format!("{}/000000000000/{DELIVERY_QUEUE_NAME}", endpoints.queue),
    );
    let (key, secret) = credentials.unwrap_or((LOOPBACK_KEY, LOOPBACK_KEY));
    set("AWS_ACCESS_KEY_ID", key.to_owned());
    set("AWS_SECRET_ACCESS_KEY", secret.to_owned());
    set("AWS_REGION", region());
    env
}

fn region() -> String {
    std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|_| DEFAULT_REGION.to_owned())
}

impl Functions {
    /// Starts one instance of each function from `dir`, one after another so that each
    /// cold start is its own; the first that fails stops the rest.
    pub(crate) async fn start(
        dir: &Path,
        config: &Config,
        env: Vec<(String, String)>,
        stop: CancellationToken,
    ) -> Result<Self, LambdaError> {
        if config.store == StoreKind::Memory {
            return Err(LambdaError::MemoryStore);
        }
        let binaries = FUNCTIONS
            .iter()
            .map(|spec| Ok((spec, binary(dir, spec.name)?)))
            .collect::<Result<Vec<_>, LambdaError>>()?;
        let region = region();
        let mut by_name = HashMap::new();
        let mut cold_starts = Vec::new();
        for (spec, binary) in binaries {
            let function = Function::new(spec, binary, env.clone(), region.clone(), stop.clone());
            let took = match function.start_instance().await {
                Ok(took) => took,
                Err(failure) => {
                    stop.cancel();
                    return Err(failure.into());
                }
            };
            cold_starts.push(ColdStart {
                function: spec.name,
                took,
            });
            by_name.insert(spec.name, function);
        }
        Ok(Self {
            by_name,
            cold_starts,
            region,
        })
    }

    /// Invokes `function` with `event`.
    pub(crate) async fn invoke(&self, function: &str, event: Bytes) -> Outcome {
        match self.by_name.get(function) {
            Some(function) => function.invoke(event).await,
            None => Outcome::Failed(FunctionError::new(
                "ResourceNotFoundException",
                format!("Function not found: {function}"),
            )),
        }
    }

    /// Invokes `function` with `event` and reads its buffered answer as `A`.
    async fn call<A: DeserializeOwned>(
        &self,
        function: &str,
        event: &impl Serialize,
    ) -> Result<A, FunctionError> {
        let event = serde_json::to_vec(event)
            .map_err(|e| FunctionError::new("InvalidRequestContentException", e.to_string()))?;
        match self.invoke(function, Bytes::from(event)).await {
            Outcome::Response(body) => serde_json::from_slice(&body).map_err(|e| {
                FunctionError::new(
                    "Runtime.InvalidResponse",
                    format!("the {function} function answered what its route cannot read: {e}"),
                )
            }),
            Outcome::Streamed { .. } => Err(FunctionError::new(
                "Runtime.InvalidResponse",
                format!("the {function} function streamed an answer its route reads whole"),
            )),
            Outcome::Failed(e) => Err(e),
        }
    }

    /// The SQS event the `deliver` function gets for `job`.
    fn sqs_event(&self, job: &PageJob) -> Value {
        let id = uuid::Uuid::new_v4().to_string();
        json!({"Records": [{
            "messageId": id,
            "receiptHandle": id,
            "body": job.to_json(),
            "attributes": {
                "ApproximateReceiveCount": "1",
                "SentTimestamp": herald::ids::now_ms().to_string(),
            },
            "messageAttributes": {},
            "md5OfBody": "",
            "eventSource": "aws:sqs",
            "eventSourceARN": format!("arn:aws:sqs:{}:000000000000:{DELIVERY_QUEUE_NAME}", self.region),
            "awsRegion": self.region,
        }]})
    }
}

/// What API Gateway answers a client when the route's function fails.
fn internal_error() -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = 500;
    response.body = Some(herald::events::encodings::Body::Text(
        "Internal server error".into(),
    ));
    response
}

#[async_trait]
impl Handlers for Functions {
    async fn authorize(
        &self,
        event: &ApiGatewayCustomAuthorizerRequestTypeRequest,
    ) -> Result<ApiGatewayCustomAuthorizerResponse, FunctionError> {
        self.call("authorizer", event).await.inspect_err(|e| {
            tracing::info!(error = %e, "handshake refused by the authorizer function");
        })
    }

    async fn connect(&self, event: &ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        self.call("connect", event).await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "the connect function failed");
            internal_error()
        })
    }

    async fn disconnect(&self, event: &ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        self.call("disconnect", event).await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "the disconnect function failed");
            internal_error()
        })
    }

    async fn message(&self, event: &ApiGatewayWebsocketProxyRequest) {
        if let Err(e) = self.call::<Value>("message", event).await {
            tracing::error!(error = %e, "the message function failed");
        }
    }

    async fn publish(&self, payload: Value) -> Result<Value, FunctionError> {
        self.call("publish", &payload).await
    }

    async fn deliver(&self, job: PageJob) {
        let event = self.sqs_event(&job);
        match self.call::<Value>("deliver", &event).await {
            Ok(answer) => {
                let failures = answer["batchItemFailures"].as_array().map_or(0, Vec::len);
                if failures > 0 {
                    tracing::error!(page = job.page, "the deliver function failed the page job");
                }
            }
            Err(e) => tracing::error!(error = %e, page = job.page, "the deliver function failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use herald::auth::AuthConfig;
    use herald::events::sqs::SqsEvent;
    use herald::ids::ConnectionId;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        let vars: HashMap<_, _> = vars.iter().copied().collect();
        Config::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned())).unwrap()
    }

    fn endpoints() -> Endpoints {
        Endpoints {
            management: "http://127.0.0.1:3001/local".into(),
            queue: "http://127.0.0.1:4001".into(),
        }
    }

    fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_functions_get_the_gateways_settings_and_where_to_reach_it() {
        let mut config = config(&[
            ("HERALD_HISTORY_SIZE", "0"),
            ("HERALD_SHARD_THRESHOLD", "7"),
        ]);
        config.auth = Some(AuthConfig {
            key: JwtKey::Secret(b"generated-in-dev-mode".to_vec()),
            issuer: None,
            audience: None,
        });
        let env = environment(&config, &endpoints(), None, true);
        assert_eq!(get(&env, "HERALD_HISTORY_SIZE"), Some("0"), "no history");
        assert_eq!(get(&env, "HERALD_SHARD_THRESHOLD"), Some("7"));
        assert_eq!(
            get(&env, "HERALD_JWT_SECRET"),
            Some("generated-in-dev-mode")
        );
        assert_eq!(
            get(&env, "HERALD_WS_ENDPOINT"),
            Some("http://127.0.0.1:3001/local")
        );
        assert_eq!(
            get(&env, "HERALD_DELIVERY_QUEUE_URL"),
            Some("http://127.0.0.1:4001/000000000000/herald-deliver")
        );
        assert_eq!(get(&env, "AWS_ACCESS_KEY_ID"), Some(LOOPBACK_KEY));

        let env = environment(&config, &endpoints(), Some(("AKID", "s3cret")), false);
        assert_eq!(
            get(&env, "HERALD_JWT_SECRET"),
            None,
            "a configured key is inherited"
        );
        assert_eq!(get(&env, "AWS_ACCESS_KEY_ID"), Some("AKID"));
        assert_eq!(get(&env, "AWS_SECRET_ACCESS_KEY"), Some("s3cret"));
        // Blank, so the functions start beside a gateway with webhooks or MQTT on.
        for name in GATEWAY_ONLY {
            assert_eq!(get(&env, name), Some(""), "{name}");
        }
        let inherited = herald::config::Config::from_lookup(|name| {
            get(&env, name)
                .map(str::to_owned)
                .or_else(|| (name == "HERALD_MQTT_URL").then(|| "mqtt://h".to_owned()))
        })
        .unwrap();
        assert_eq!(inherited.mqtt, None);
    }

    #[test]
    fn a_page_job_goes_to_deliver_as_the_sqs_event_it_reads() {
        let functions = Functions {
            by_name: HashMap::new(),
            cold_starts: Vec::new(),
            region: DEFAULT_REGION.into(),
        };
        let job = PageJob {
            notification: "n1".into(),
            page: 3,
            connections: vec![ConnectionId::new("c1")],
            payload: Bytes::from_static(br#"{"data":1}"#),
        };
        let event: SqsEvent = serde_json::from_value(functions.sqs_event(&job)).unwrap();
        let body = event.records[0].body.as_deref().unwrap();
        let back = PageJob::from_json(body).unwrap();
        assert_eq!((back.page, back.connections), (3, job.connections));
    }

    #[test]
    fn every_function_runs_with_the_timeout_and_memory_of_the_template() {
        let template: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../../infra/template.yaml")).unwrap();
        let globals = &template["Globals"]["Function"];
        for spec in &FUNCTIONS {
            let mut resource = spec.name.to_owned();
            resource[..1].make_ascii_uppercase();
            let properties = &template["Resources"][format!("{resource}Function")]["Properties"];
            assert!(!properties.is_null(), "{resource}Function in the template");
            let setting = |name: &str| {
                properties
                    .get(name)
                    .unwrap_or(&globals[name])
                    .as_u64()
                    .unwrap()
            };
            assert_eq!(setting("Timeout"), spec.timeout.as_secs(), "{}", spec.name);
            assert_eq!(
                setting("MemorySize"),
                u64::from(spec.memory_mb),
                "{}",
                spec.name
            );
        }
    }
}
