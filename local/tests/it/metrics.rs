//! `GET /metrics`: parsed by a real Prometheus parser (Python's `prometheus_client`), its
//! counts moving with the traffic that made them; on the control plane, so with credentials
//! configured an unsigned scrape is refused and one signed with SigV4 (as Prometheus'
//! `sigv4` setting signs, here by botocore) is served. The demo page's figures are the same
//! numbers.

use crate::common;

use std::collections::BTreeMap;

use common::{Gateway, settings, settings_with};
use herald_local::Credentials;
use serde_json::json;

/// The samples of a scrape, by name and labels, as `prometheus_client`'s parser reads them.
fn parse(text: &str) -> BTreeMap<String, f64> {
    const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        samples[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(samples))
"#;
    let out = common::python(&["-c", PARSER], text.as_bytes());
    assert!(
        out.status.success(),
        "the scrape did not parse (needs `python3 -m pip install prometheus_client`; \
         scripts/test installs it): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn scrape(gw: &Gateway) -> BTreeMap<String, f64> {
    let (status, body) = common::http_get(gw.addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

fn sample(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("{key} in {samples:#?}"))
}

#[tokio::test]
async fn counts_move_with_the_traffic_that_made_them() {
    let gw = Gateway::start().await;
    let before = scrape(&gw).await;
    assert_eq!(
        sample(&before, "herald_connections{transport=websocket}"),
        0.0
    );
    assert_eq!(sample(&before, "herald_store_errors_total{}"), 0.0);

    let mut ann = gw.connect("ann", &["orders"], &[]).await;
    let mut bob = gw.connect("bob", &["orders"], &[]).await;
    ann.subscribe("orders").await;
    bob.subscribe("orders").await;
    for n in 0..3 {
        gw.invoke(json!({"room": "orders", "data": n}))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        ann.recv().await;
        bob.recv().await;
    }
    let refused = ann
        .ask(json!({"action": "subscribe", "room": "payroll"}))
        .await;
    assert_eq!(refused["code"], "forbidden");
    let history = ann
        .ask(json!({"action": "history", "room": "orders"}))
        .await;
    assert_eq!(history["type"], "history");

    let after = scrape(&gw).await;
    assert_eq!(
        sample(&after, "herald_connections{transport=websocket}"),
        2.0
    );
    assert_eq!(sample(&after, "herald_publishes_total{target=room}"), 3.0);
    assert_eq!(
        sample(&after, "herald_deliveries_total{outcome=delivered}"),
        6.0
    );
    assert_eq!(sample(&after, "herald_deliveries_total{outcome=gone}"), 0.0);
    assert_eq!(
        sample(&after, "herald_refusals_total{reason=forbidden}"),
        1.0
    );
    assert!(sample(&after, "herald_history_reads_total{}") >= 1.0);
    assert_eq!(
        sample(&after, "herald_publish_duration_seconds_count{}"),
        3.0
    );
    // The demo page's chart reads the same numbers.
    let (status, figures) = common::http_get(gw.addr, "/_herald/stats").await;
    assert_eq!(status, 200, "{figures}");
    let figures: serde_json::Value = serde_json::from_str(&figures).unwrap();
    assert_eq!(
        figures,
        json!({"connections": 2, "websockets": 2, "readers": 0,
               "publishes": 3, "delivered": 6, "gone": 0, "failed": 0})
    );

    drop(bob);
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        let now = scrape(&gw).await;
        if sample(&now, "herald_connections{transport=websocket}") == 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "bob still counted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn with_credentials_a_scrape_must_be_signed() {
    let (key, secret) = ("AKIDHERALDMETRICS", "herald-metrics-test-secret");
    let mut signed = settings();
    signed.control_plane.credentials = Some(Credentials {
        access_key_id: key.into(),
        secret_access_key: secret.into(),
    });
    let gw = Gateway::start_with(signed).await;
    let (status, body) = common::http_get(gw.addr, "/metrics").await;
    assert_eq!(status, 403, "{body}");

    // Signed as Prometheus' sigv4 setting signs a scrape, here by botocore.
    const SIGNED_GET: &str = r#"
import sys, urllib.request
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
url, key, secret = sys.argv[1:4]
request = AWSRequest(method="GET", url=url)
SigV4Auth(Credentials(key, secret), "execute-api", "us-east-1").add_auth(request)
with urllib.request.urlopen(urllib.request.Request(url, headers=dict(request.headers))) as r:
    print(r.status)
    sys.stdout.write(r.read().decode())
"#;
    let url = format!("http://{}/metrics", gw.addr);
    let out = tokio::process::Command::new("python3")
        .args(["-c", SIGNED_GET, &url, key, secret])
        .output()
        .await
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "a signed scrape (needs botocore, from `pip install awscli`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = text.split_once('\n').unwrap();
    assert_eq!(status, "200");
    let samples = parse(body);
    assert_eq!(sample(&samples, "herald_store_errors_total{}"), 0.0);
    gw.stop().await;

    // Without credentials the loopback gateway serves anyone, as its other endpoints.
    let open = Gateway::start_with(settings_with(&[])).await;
    let (status, _) = common::http_get(open.addr, "/metrics").await;
    assert_eq!(status, 200);
    open.stop().await;
}
