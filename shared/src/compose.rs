//! The composition root: settings are read once into a [`Config`], and every component a
//! host needs (store, services, token verifier, `@connections` clients) is built from it
//! here. The Lambda functions build through [`Lambda`]; `herald-local` through
//! [`store_settings`], [`open`] and [`services`], adding what only it has.
//!
//! Nothing below this module reads the environment or knows the configuration: each layer
//! takes its own small settings value.

use std::sync::Arc;

use aws_config::SdkConfig;

use crate::auth::{AuthConfig, AuthError, JwtKey, MIN_HS256_SECRET_BYTES, Verifier};
use crate::config::{Config, ConfigError};
use crate::error::{self, Source};
use crate::gateway::ManagementClients;
use crate::handlers::{Services, WebhookRetries};
use crate::shard::{PostBudget, Sharding, SqsQueue};
use crate::sinks::mqtt::IotPublisher;
use crate::sinks::webhook::{
    RoomEvents, Secret, SharedWebhooks, SqsWebhooks, WebhookSender, WebhookSettings,
};
use crate::store::{self, ConnectionStore, StoreError, StoreSettings};

/// Why a component could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error("{what}: {source}")]
    Store {
        /// What was being done.
        what: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The JWT key is unusable.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The system's certificate roots (for HTTPS webhooks) could not be loaded.
    #[error("loading the system's certificate roots: {0}")]
    Roots(#[source] std::io::Error),
    /// A secret could not be read from Secrets Manager.
    #[error("reading the secret {arn}: {source}")]
    Secret {
        /// The secret's ARN.
        arn: String,
        /// Secrets Manager's error.
        #[source]
        source: Source,
    },
}

/// Which host a store is opened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// A Lambda function: the store must be shared, and the template created the table.
    Lambda,
    /// `herald-local`: any store; a missing DynamoDB table is created.
    Local,
}

/// Which store `config` names, as `host` needs it: the Lambda functions refuse the memory
/// store (each function instance would see only its own connections).
pub fn store_settings(config: &Config, host: Host) -> Result<StoreSettings, BuildError> {
    let settings = config.store_settings(host == Host::Local)?;
    if host == Host::Lambda && settings == StoreSettings::Memory {
        return Err(ConfigError::Invalid {
            var: "HERALD_STORE",
            reason: "the Lambda functions need a shared store: set it to dynamodb or redis".into(),
        }
        .into());
    }
    Ok(settings)
}

/// Opens the store `settings` name, saying which on failure.
pub async fn open(settings: &StoreSettings) -> Result<Arc<dyn ConnectionStore>, BuildError> {
    store::open(settings)
        .await
        .map_err(|source| BuildError::Store {
            what: match settings {
                StoreSettings::Memory => "opening the memory store".into(),
                StoreSettings::Redis(redis) => format!("cannot reach {}", redis.nodes),
                StoreSettings::Dynamo(dynamo) => {
                    format!("cannot create or reach table {}", dynamo.table)
                }
            },
            source,
        })
}

/// Opens the store `config` names, as `host` needs it.
pub async fn open_store(
    config: &Config,
    host: Host,
) -> Result<Arc<dyn ConnectionStore>, BuildError> {
    open(&store_settings(config, host)?).await
}

/// The handlers' services on `store`, with the limits, pacing, shard threshold and post
/// budget of `config`; the host adds the queue page jobs go to.
pub fn services(store: Arc<dyn ConnectionStore>, config: &Config) -> Services {
    let mut services = Services::new(store.clone(), config.limits.clone(), config.fanout.clone());
    services.sharding = Sharding {
        threshold: config.shards.threshold,
        queue: None,
        budget: PostBudget::new(store, config.shards.post_budget_per_second).map(Arc::new),
    };
    services
}

/// The metrics' function dimension where Lambda named no function (a test, a local run).
const EMF_FUNCTION_FALLBACK: &str = "herald";

/// The string value of the Secrets Manager secret `arn`.
async fn secret_string(arn: &str) -> Result<String, BuildError> {
    let failed = |source: Source| BuildError::Secret {
        arn: arn.to_owned(),
        source,
    };
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let secret = aws_sdk_secretsmanager::Client::new(&sdk)
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| failed(error::source(e)))?;
    secret
        .secret_string()
        .map(str::to_owned)
        .ok_or_else(|| failed(error::because("it must be a string secret")))
}

/// What every Lambda function is built from.
pub struct Lambda {
    /// The configuration, read once.
    pub config: Config,
}

impl Lambda {
    /// Reads the environment.
    pub fn from_env() -> Result<Self, BuildError> {
        Ok(Self {
            config: Config::from_env()?,
        })
    }

    /// The services of the connect, disconnect, message, publish, deliver, poll and stream
    /// functions: publishes above the shard threshold go to `HERALD_DELIVERY_QUEUE_URL`, and
    /// webhook events to `HERALD_WEBHOOK_QUEUE_URL` (each when set; call
    /// [`Services::flush`] before answering).
    pub async fn services(&self) -> Result<Services, BuildError> {
        if self.config.webhook.is_some() || self.config.webhook_by_arn.is_some() {
            return Err(ConfigError::Invalid {
                var: "HERALD_WEBHOOK_URL",
                reason: "only the webhook function delivers webhooks; the others put events on \
                         HERALD_WEBHOOK_QUEUE_URL: unset it for them"
                    .into(),
            }
            .into());
        }
        if self.config.mqtt.is_some() {
            return Err(ConfigError::Invalid {
                var: "HERALD_MQTT_URL",
                reason: "the Lambda functions do not connect to an MQTT broker (herald-local \
                         does); they publish through AWS IoT Core: set it to iot"
                    .into(),
            }
            .into());
        }
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let store = open_store(&self.config, Host::Lambda).await?;
        Ok(self.services_on(store, &sdk))
    }

    /// The functions' services on `store`, their queues reached through clients built from
    /// `sdk`.
    pub fn services_on(&self, mut store: Arc<dyn ConnectionStore>, sdk: &SdkConfig) -> Services {
        let webhooks = self.config.webhook_queue.as_ref().map(|queue| {
            let webhooks: SharedWebhooks = Arc::new(SqsWebhooks::new(sdk, queue));
            // Below everything, so every path that changes a membership reports its room.
            store = Arc::new(RoomEvents::new(store.clone(), webhooks.clone()));
            webhooks
        });
        let mut services = services(store, &self.config);
        services.webhooks = webhooks;
        services.emf_function = Some(
            self.config
                .function_name
                .clone()
                .unwrap_or_else(|| EMF_FUNCTION_FALLBACK.to_owned()),
        );
        if let Some(iot) = &self.config.mqtt_iot {
            services.mqtt = Some(Arc::new(IotPublisher::new(sdk, iot)));
            services.devices = Some(iot.rules.clone());
        }
        if let Some(url) = &self.config.delivery_queue_url {
            services.sharding.queue = Some(Arc::new(SqsQueue::new(sdk, url)));
        }
        services
    }

    /// The authorizer's verifier: the key from the environment or, on AWS, the Secrets
    /// Manager secret `HERALD_JWT_SECRET_ARN` names, read once at cold start.
    pub async fn verifier(&self) -> Result<Verifier, BuildError> {
        let (auth, var) = match (&self.config.auth, &self.config.jwt_secret_arn) {
            (Some(auth), _) => (auth.clone(), "HERALD_JWT_SECRET"),
            (None, Some(arn)) => (self.secret_auth(arn).await?, "HERALD_JWT_SECRET_ARN"),
            (None, None) => {
                return Err(ConfigError::Missing(
                    "HERALD_JWT_SECRET_ARN, HERALD_JWT_SECRET or HERALD_JWT_PUBLIC_KEY",
                )
                .into());
            }
        };
        if let JwtKey::Secret(secret) = &auth.key
            && secret.len() < MIN_HS256_SECRET_BYTES
        {
            return Err(ConfigError::Invalid {
                var,
                reason: format!(
                    "an HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes; this one \
                     has {} (generate one with `openssl rand -base64 48`)",
                    secret.len()
                ),
            }
            .into());
        }
        Ok(Verifier::new(&auth)?)
    }

    async fn secret_auth(&self, arn: &str) -> Result<AuthConfig, BuildError> {
        let value = secret_string(arn).await?;
        Ok(self
            .config
            .auth_with_secret(value.trim().as_bytes().to_vec()))
    }

    /// The `webhook` function's receiver: `HERALD_WEBHOOK_URL`, signed with
    /// `HERALD_WEBHOOK_SECRET` or, on AWS, the Secrets Manager secret
    /// `HERALD_WEBHOOK_SECRET_ARN` names, read once at cold start.
    pub async fn webhook_sender(&self) -> Result<WebhookSender, BuildError> {
        let settings = match (&self.config.webhook, &self.config.webhook_by_arn) {
            (Some(settings), _) => settings.clone(),
            (None, Some(by_arn)) => {
                let value = secret_string(&by_arn.secret_arn).await?;
                let secret = Secret::parse(value.trim()).map_err(|e| BuildError::Secret {
                    arn: by_arn.secret_arn.clone(),
                    source: error::source(e),
                })?;
                WebhookSettings {
                    url: by_arn.url.clone(),
                    secret,
                    events: by_arn.events.clone(),
                }
            }
            (None, None) => return Err(ConfigError::Missing("HERALD_WEBHOOK_URL").into()),
        };
        WebhookSender::new(&settings.url, &settings.secret).map_err(BuildError::Roots)
    }

    /// The `webhook` function's retries: through `HERALD_WEBHOOK_QUEUE_URL` (the queue its
    /// records come from), when set; without it a failed record waits the queue's
    /// visibility timeout.
    pub async fn webhook_retries(&self) -> Option<WebhookRetries> {
        let queue = self.config.webhook_queue.as_ref()?;
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Some(WebhookRetries::new(&sdk, &queue.url))
    }

    /// `@connections` clients: for `HERALD_WS_ENDPOINT`, or the endpoint each event names.
    pub async fn management_clients(&self) -> ManagementClients {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        ManagementClients::new(sdk, self.config.ws_endpoint.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        let vars: std::collections::HashMap<_, _> = vars.iter().copied().collect();
        Config::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned())).unwrap()
    }

    #[tokio::test]
    async fn lambda_functions_refuse_the_memory_store() {
        let err = open_store(&config(&[]), Host::Lambda).await.err().unwrap();
        assert!(
            matches!(
                err,
                BuildError::Config(ConfigError::Invalid {
                    var: "HERALD_STORE",
                    ..
                })
            ),
            "{err}"
        );
        assert!(open_store(&config(&[]), Host::Local).await.is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_store_is_a_store_error_not_a_configuration_error() {
        // A port held by a listener that never answers, so no server a parallel test starts
        // can take it.
        let (_silent, port) = crate::testing::silent_port();
        let url = format!("redis://127.0.0.1:{port}");
        let config = config(&[("HERALD_STORE", "redis"), ("HERALD_REDIS_URL", &url)]);
        let err = open_store(&config, Host::Local).await.err().unwrap();
        let BuildError::Store { what, source } = &err else {
            panic!("a store error: {err}");
        };
        assert!(what.contains(&url), "{what}");
        assert!(source.is_unavailable(), "{source}");
    }

    #[tokio::test]
    async fn the_lambda_functions_open_a_redis_cluster_from_its_seed_list() {
        let cluster = crate::testing::RedisCluster::start();
        let list = cluster.list();
        let store = open_store(&config(&[("HERALD_REDIS_CLUSTER", &list)]), Host::Lambda)
            .await
            .expect("a cluster store");
        let c = crate::store::suite::connection("on-a-cluster");
        store.add(&c).await.unwrap();
        assert_eq!(
            store.get(&c.id).await.unwrap().map(|c| c.user),
            Some(c.user)
        );

        let (_silent, port) = crate::testing::silent_port();
        let nowhere = format!("redis://127.0.0.1:{port}");
        let config = config(&[
            ("HERALD_STORE", "redis"),
            ("HERALD_REDIS_CLUSTER", &nowhere),
        ]);
        let err = open_store(&config, Host::Lambda).await.err().unwrap();
        let BuildError::Store { what, .. } = &err else {
            panic!("a store error: {err}");
        };
        assert!(
            what.contains("Redis Cluster") && what.contains(&nowhere),
            "{what}"
        );
    }

    #[tokio::test]
    async fn only_the_webhook_function_takes_the_webhook_url() {
        let lambda = Lambda {
            config: config(&[
                ("HERALD_STORE", "redis"),
                ("HERALD_REDIS_URL", "redis://127.0.0.1:9"),
                ("HERALD_WEBHOOK_URL", "https://example.com/hooks"),
                (
                    "HERALD_WEBHOOK_SECRET",
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                ),
            ]),
        };
        let err = lambda.services().await.err().unwrap();
        assert!(
            matches!(
                err,
                BuildError::Config(ConfigError::Invalid {
                    var: "HERALD_WEBHOOK_URL",
                    ..
                })
            ),
            "{err}"
        );
        assert!(
            lambda.webhook_sender().await.is_ok(),
            "the webhook function"
        );
        let none = Lambda {
            config: config(&[]),
        };
        let err = none.webhook_sender().await.err().unwrap();
        assert!(matches!(
            err,
            BuildError::Config(ConfigError::Missing("HERALD_WEBHOOK_URL"))
        ));
    }

    #[tokio::test]
    async fn a_verifier_needs_a_key_source() {
        let lambda = Lambda {
            config: config(&[]),
        };
        let err = lambda.verifier().await.err().unwrap();
        assert!(matches!(err, BuildError::Config(ConfigError::Missing(_))));
        let lambda = Lambda {
            config: config(&[("HERALD_JWT_SECRET", &"s".repeat(MIN_HS256_SECRET_BYTES))]),
        };
        assert!(lambda.verifier().await.is_ok(), "at the bound");
    }

    #[tokio::test]
    async fn a_secret_shorter_than_32_bytes_is_refused_at_cold_start() {
        let short = "s".repeat(MIN_HS256_SECRET_BYTES - 1);
        let lambda = Lambda {
            config: config(&[("HERALD_JWT_SECRET", &short)]),
        };
        let err = lambda
            .verifier()
            .await
            .err()
            .expect("one short of the bound");
        assert!(matches!(
            err,
            BuildError::Config(ConfigError::Invalid {
                var: "HERALD_JWT_SECRET",
                ..
            })
        ));
        let lambda = Lambda {
            config: config(&[("HERALD_JWT_PUBLIC_KEY", "not checked for length")]),
        };
        assert!(!matches!(
            lambda.verifier().await,
            Err(BuildError::Config(ConfigError::Invalid { .. }))
        ));
    }
}
