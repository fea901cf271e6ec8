//! SDK settings for AWS clients: the default chain on AWS; fixed dummy credentials and
//! region for a server on loopback (`herald-local`, DynamoDB Local, a test server), which
//! accepts any signature and must not depend on what the environment happens to hold.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};

/// The region given to clients of a loopback server.
pub const LOCAL_REGION: &str = "us-east-1";
/// The access key (and secret) given to clients of a loopback server.
pub const LOCAL_ACCESS_KEY: &str = "local";

/// Whether `endpoint` is on this machine.
pub fn is_loopback(endpoint: &str) -> bool {
    ["http://127.", "http://localhost", "http://[::1]"]
        .iter()
        .any(|start| endpoint.starts_with(start))
}

/// SDK settings for `endpoint`: [`local_sdk_config`] on loopback, else the default chain
/// (with `endpoint` as the URL when one is given).
pub async fn sdk_config(endpoint: Option<&str>) -> SdkConfig {
    match endpoint {
        Some(endpoint) if is_loopback(endpoint) => local_sdk_config(endpoint),
        _ => aws_config::load_defaults(BehaviorVersion::latest()).await,
    }
}

/// SDK settings for a loopback server at `endpoint`: fixed dummy credentials and region,
/// nothing read from the environment.
pub fn local_sdk_config(endpoint: &str) -> SdkConfig {
    keyed_sdk_config(endpoint, LOCAL_ACCESS_KEY, LOCAL_ACCESS_KEY)
}

/// SDK settings for a server at `endpoint` that checks signatures against this key pair
/// (`herald-local` with control-plane credentials), nothing read from the environment.
pub fn keyed_sdk_config(endpoint: &str, access_key_id: &str, secret_access_key: &str) -> SdkConfig {
    let credentials =
        Credentials::new(access_key_id, secret_access_key, None, None, "herald-local");
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(LOCAL_REGION))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_are_told_apart() {
        for local in [
            "http://127.0.0.1:8000",
            "http://localhost:3001/x",
            "http://[::1]:1",
        ] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in [
            "https://dynamodb.eu-west-1.amazonaws.com",
            "http://10.0.0.1:8000",
        ] {
            assert!(!is_loopback(remote), "{remote}");
        }
    }

    #[test]
    fn local_settings_carry_the_endpoint_and_region() {
        let sdk = local_sdk_config("http://127.0.0.1:9");
        assert_eq!(sdk.endpoint_url(), Some("http://127.0.0.1:9"));
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some(LOCAL_REGION));
    }
}
