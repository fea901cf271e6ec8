//! The demo page in dev mode: the dev token and the gateway's figures go to a loopback
//! visitor who asked for a loopback host, never to a page served under another name that
//! resolves to 127.0.0.1 (DNS rebinding).

use crate::common::{self, Gateway};

/// `GET path` with `Host: host`; the whole answer.
async fn get(gw: &Gateway, path: &str, host: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    common::raw_http(gw.addr, &request).await
}

async fn dev_gateway() -> (Gateway, String) {
    let mut settings = common::settings();
    settings.config.auth = None;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ready = herald_local::prepare(listener, settings).await.unwrap();
    let herald_local::AuthMode::Dev { token } = &ready.auth else {
        panic!("no key configured: dev mode");
    };
    let token = token.clone();
    (Gateway::serve(ready), token)
}

#[tokio::test]
async fn the_dev_token_is_for_loopback_hosts_only() {
    let (gw, token) = dev_gateway().await;
    let port = gw.addr.port();
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let page = get(&gw, "/", &host).await;
        assert!(page.starts_with("HTTP/1.1 200"), "{host}");
        assert!(
            page.contains(&token),
            "{host}: a loopback visitor gets the token"
        );
    }
    for host in [format!("evil.example:{port}"), "evil.example".to_owned()] {
        let page = get(&gw, "/", &host).await;
        assert!(
            page.starts_with("HTTP/1.1 200"),
            "{host}: the page itself is served"
        );
        assert!(
            !page.contains(&token),
            "{host}: a rebinding page must not get the token"
        );
    }
}

#[tokio::test]
async fn the_stats_are_for_loopback_hosts_only() {
    let (gw, _) = dev_gateway().await;
    let port = gw.addr.port();
    let local = get(&gw, "/_herald/stats", &format!("127.0.0.1:{port}")).await;
    assert!(local.starts_with("HTTP/1.1 200"), "{local}");
    let rebound = get(&gw, "/_herald/stats", &format!("evil.example:{port}")).await;
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
}
