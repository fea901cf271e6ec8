//! The subcommands as a shell runs them: the real `herald-local` binary mints a token the
//! gateway accepts, publishes through the Invoke API with the real SDK (once, and with
//! `--count`), and listens across forced reconnects, printing every notification once, in
//! order; bad input is refused with a clear message and a failing exit status.

use crate::common;

use std::process::Output;
use std::time::Duration;

use common::{Gateway, PATIENCE, SECRET, settings};
use serde_json::{Value, json};

fn secret() -> String {
    String::from_utf8(SECRET.to_vec()).unwrap()
}

/// Runs `herald-local ARGS` to completion with only `env` (and no inherited variables).
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-local"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output();
    tokio::time::timeout(PATIENCE * 3, run)
        .await
        .expect("the command finishes")
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn token_mints_what_the_gateway_accepts_and_publish_answers_like_the_function() {
    let gw = Gateway::start().await;
    let minted = run(
        &[
            "token",
            "--sub",
            "carol",
            "--rooms",
            "orders,team:*",
            "--exp-secs",
            "60",
        ],
        &[("HERALD_JWT_SECRET", &secret())],
    )
    .await;
    assert!(minted.status.success(), "{minted:?}");
    let token = stdout(&minted).trim().to_owned();
    let mut client = common::Client::open(&format!("{}?token={token}", gw.url()))
        .await
        .expect("the minted token is accepted");
    let me = client.ask(json!({"action": "whoami"})).await;
    assert_eq!(me["user"], "carol");
    client.subscribe("team:blue").await;

    let endpoint = format!("http://{}", gw.addr);
    let once = run(
        &[
            "publish",
            "team:blue",
            r#"{"n":1}"#,
            "--endpoint",
            &endpoint,
        ],
        &[],
    )
    .await;
    assert!(once.status.success(), "{once:?}");
    let answer: Value = serde_json::from_str(stdout(&once).trim()).unwrap();
    assert_eq!(
        (answer["delivered"].clone(), answer["offset"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(client.recv().await["data"], json!({"n": 1}));

    let many = run(
        &[
            "publish",
            "team:blue",
            r#"{"n":2}"#,
            "--endpoint",
            &endpoint,
            "--count",
            "5",
        ],
        &[],
    )
    .await;
    assert!(many.status.success(), "{many:?}");
    let summary: Value = serde_json::from_str(stdout(&many).trim()).unwrap();
    assert_eq!(summary["published"], 5);
    assert_eq!(summary["delivered"], 5);
    let bar = String::from_utf8_lossy(&many.stderr);
    assert!(bar.contains("5/5"), "a progress bar: {bar}");
    for _ in 0..5 {
        assert_eq!(client.recv().await["data"], json!({"n": 2}));
    }
}

#[tokio::test]
async fn a_token_lifetime_is_bounded_and_a_short_secret_is_warned_about() {
    let secret = std::str::from_utf8(SECRET).unwrap();
    for bad in ["0", "9223372036854775807", "315360001"] {
        let out = run(
            &["token", "--exp-secs", bad],
            &[("HERALD_JWT_SECRET", secret)],
        )
        .await;
        assert!(!out.status.success(), "--exp-secs {bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--exp-secs must be 1 to"),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let env = [("HERALD_JWT_SECRET", secret)];
    let longest = run(&["token", "--exp-secs", "315360000"], &env).await;
    assert!(longest.status.success());
    assert!(
        longest.stderr.is_empty(),
        "a long secret is not warned about"
    );
    let short = run(&["token"], &[("HERALD_JWT_SECRET", "short")]).await;
    assert!(short.status.success(), "it still signs, for loopback tests");
    assert!(String::from_utf8_lossy(&short.stderr).contains("warning"));
}

#[tokio::test]
async fn bad_input_is_refused_with_a_message_and_a_failing_status() {
    let no_secret = run(&["token"], &[]).await;
    assert!(!no_secret.status.success());
    assert!(String::from_utf8_lossy(&no_secret.stderr).contains("HERALD_JWT_SECRET"));
    let not_json = run(&["publish", "orders", "{nope"], &[]).await;
    assert!(!not_json.status.success());
    assert!(String::from_utf8_lossy(&not_json.stderr).contains("not JSON"));
    let gw = Gateway::start().await;
    let url = gw.url();
    let refused = run(
        &["listen", "orders", "--url", &url, "--token", "not-a-token"],
        &[],
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("refused"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn listen_prints_each_notification_once_in_order_across_forced_reconnects() {
    let mut s = settings();
    // Every connection is closed after a second: the listener reconnects several times.
    s.limits.max_duration = Duration::from_secs(1);
    let gw = Gateway::start_with(s).await;
    let token = gw.token("dave", &["orders"], &[]);
    let url = gw.url();
    let total = 12;
    let count = total.to_string();
    let listener = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-local"))
        .args([
            "listen", "orders", "--url", &url, "--token", &token, "--count", &count,
        ])
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Give it time to subscribe before the first publish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 1..=total {
        gw.invoke(json!({"room": "orders", "data": {"n": n}}))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let output = tokio::time::timeout(PATIENCE, listener.wait_with_output())
        .await
        .expect("it stops after --count notifications")
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    let offsets: Vec<u64> = lines
        .iter()
        .map(|n| n["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        offsets,
        (1..=total).collect::<Vec<u64>>(),
        "once each, in order"
    );
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.matches("reconnecting").count() >= 2,
        "it did reconnect: {log}"
    );
}

#[tokio::test]
async fn publish_with_a_function_name_goes_through_the_sdks_usual_environment() {
    let gw = Gateway::start().await;
    let mut client = gw.connect("erin", &["orders"], &[]).await;
    client.subscribe("orders").await;
    // What a user's shell has for AWS, with the endpoint pointed at this gateway instead.
    let endpoint = format!("http://{}", gw.addr);
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        ),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ENDPOINT_URL_LAMBDA", endpoint.as_str()),
    ];
    let published = run(
        &[
            "publish",
            "orders",
            r#"{"via":"sdk"}"#,
            "--function-name",
            "publish",
        ],
        &env,
    )
    .await;
    assert!(published.status.success(), "{published:?}");
    let answer: Value = serde_json::from_str(stdout(&published).trim()).unwrap();
    assert_eq!(answer["delivered"], 1);
    assert_eq!(client.recv().await["data"], json!({"via": "sdk"}));
}
