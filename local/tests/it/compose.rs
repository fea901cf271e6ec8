//! `local/docker-compose.yml` and `local/Dockerfile`, checked for structure since no Docker
//! engine runs here: the services exist, herald's settings are ones `herald-local` reads,
//! its ports, hosts and service references agree with each other.

use std::collections::BTreeSet;
use std::path::Path;

use serde_yaml::Value;

fn local_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(local_dir().join("docker-compose.yml")).unwrap();
    serde_yaml::from_str(&text).expect("the compose file is YAML")
}

/// Every variable `herald-local` reads: its flags' (from `--help`) and the library's.
fn variables_herald_reads() -> BTreeSet<String> {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_herald-local"))
        .arg("--help")
        .output()
        .expect("herald-local --help runs");
    let help = String::from_utf8(help.stdout).unwrap();
    let mut names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect();
    let seen = std::sync::Mutex::new(BTreeSet::new());
    herald::config::Config::from_lookup(|name| {
        seen.lock().unwrap().insert(name.to_owned());
        None
    })
    .unwrap();
    names.extend(seen.into_inner().unwrap());
    names.extend(
        [
            "RUST_LOG",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
        ]
        .map(str::to_owned),
    );
    names
}

fn env_of(service: &Value) -> Vec<(String, String)> {
    service["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        other => panic!("unexpected value {other:?}"),
                    };
                    (k.as_str().unwrap().to_owned(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_stack_has_dynamodb_local_redis_and_herald() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    for needed in ["dynamodb", "redis", "herald", "herald-a", "herald-b"] {
        assert!(names.contains(needed), "no {needed} service");
    }
    assert!(
        compose["services"]["dynamodb"]["image"]
            .as_str()
            .unwrap()
            .starts_with("amazon/dynamodb-local")
    );
    let redis: Vec<&str> = compose["services"]["redis"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        redis.windows(2).any(|w| w == ["--appendonly", "yes"]),
        "Redis keeps history across restarts with AOF: {redis:?}"
    );
    assert!(
        compose["services"]["redis"]["volumes"]
            .as_sequence()
            .is_some(),
        "the AOF lives on a volume"
    );
    for (name, service) in services {
        for dependency in service["depends_on"].as_sequence().into_iter().flatten() {
            let dependency = dependency.as_str().unwrap();
            assert!(
                names.contains(dependency),
                "{name:?} depends on unknown {dependency}"
            );
        }
    }
}

#[test]
fn herald_services_are_configured_as_the_gateway_reads_it() {
    let compose = compose();
    let known = variables_herald_reads();
    let mut checked = 0;
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        if service.get("build").is_none() {
            continue;
        }
        let build = &service["build"];
        let context = local_dir().join(build["context"].as_str().unwrap());
        assert!(
            context.join("Cargo.toml").exists(),
            "{name}: context is the workspace"
        );
        assert!(context.join(build["dockerfile"].as_str().unwrap()).exists());

        let env = env_of(service);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        for (variable, _) in &env {
            assert!(known.contains(variable), "{name}: nothing reads {variable}");
        }
        assert_eq!(
            get("HERALD_HOST").as_deref(),
            Some("0.0.0.0"),
            "{name} must listen beyond the container"
        );
        let port = get("HERALD_PORT").expect("a port");
        let published: Vec<String> = service["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect();
        assert!(
            published.contains(&format!("127.0.0.1:{port}:{port}")),
            "{name}: port {port} is not published on loopback only ({published:?})"
        );
        assert!(
            get("HERALD_ACCESS_KEY_ID").is_some() && get("HERALD_SECRET_ACCESS_KEY").is_some(),
            "{name}: listening beyond the container needs control-plane credentials"
        );
        match get("HERALD_STORE").as_deref() {
            Some("dynamodb") => {
                assert!(get("HERALD_TABLE").is_some());
                let endpoint = get("AWS_ENDPOINT_URL_DYNAMODB").unwrap();
                assert_eq!(endpoint, "http://dynamodb:8000");
                assert!(
                    get("AWS_ACCESS_KEY_ID").is_some(),
                    "{name}: the SDK needs credentials"
                );
            }
            Some("redis") => {
                assert_eq!(
                    get("HERALD_REDIS_URL").as_deref(),
                    Some("redis://redis:6379")
                );
                assert!(get("HERALD_INSTANCE_ID").is_some());
            }
            other => panic!("{name}: unexpected store {other:?}"),
        }
        let secret = get("HERALD_JWT_SECRET").expect("no dev mode in a shared stack");
        // `${HERALD_JWT_SECRET:-default}`: the default must be one the gateway accepts on
        // 0.0.0.0, or `docker compose up` would stop at once.
        let default = secret
            .strip_prefix("${HERALD_JWT_SECRET:-")
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap_or(&secret);
        assert!(
            default.len() >= herald_local::MIN_HS256_SECRET_BYTES,
            "{name}: the JWT secret {default:?} is refused beyond loopback"
        );
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn every_published_port_is_on_loopback_only() {
    let compose = compose();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap();
            assert!(
                port.starts_with("127.0.0.1:"),
                "{}: {port} is reachable from other machines",
                name.as_str().unwrap()
            );
        }
    }
}

#[test]
fn the_dockerfile_is_multi_stage_and_small() {
    let dockerfile = std::fs::read_to_string(local_dir().join("Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    assert!(stages[0].contains(" AS build"));
    assert!(
        stages[1].contains("distroless"),
        "the final image carries no toolchain"
    );
    assert!(dockerfile.contains("cargo build --release --locked -p herald-local"));
    assert!(dockerfile.contains("COPY --from=build"));
    assert!(dockerfile.contains("EXPOSE 3001"));
    assert!(dockerfile.contains("HERALD_HOST=0.0.0.0"));
}
