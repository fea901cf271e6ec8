//! `infra/openapi.yaml` against the running gateway: the document validates with
//! `openapi-spec-validator`, and real answers of a herald-local (every operation it
//! describes, their successes and their refusals) match it, checked by `openapi-core`
//! (`openapi_check.py`), which also fails on an operation the test never exercised.

use crate::common;

use std::net::SocketAddr;

use common::{Gateway, PATIENCE, settings, settings_with};
use herald_local::Credentials;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request and its answer, as the checker reads them.
#[derive(Serialize)]
struct Exchange {
    method: String,
    path: String,
    query: String,
    request_headers: serde_json::Map<String, Value>,
    request_body: String,
    /// The test sent this on purpose outside the document (to see the refusal).
    bad_input: bool,
    status: u16,
    response_headers: serde_json::Map<String, Value>,
    response_body: String,
}

/// How much of an answer to read.
#[derive(Clone, Copy, PartialEq)]
enum Read {
    /// All of it (the request says `connection: close`).
    All,
    /// The head: a `101` hands the connection over to the WebSocket.
    Head,
    /// The head and the first event of a stream that does not end.
    FirstEvent,
}

/// A request to send.
struct Ask<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: Vec<(&'a str, String)>,
    body: String,
    bad_input: bool,
    read: Read,
    /// A `content-length` declared without sending the body: a refusal by size comes
    /// before a byte of it is read.
    declared: Option<usize>,
}

impl<'a> Ask<'a> {
    fn new(method: &'a str, path: &'a str) -> Self {
        Self {
            method,
            path,
            query: "",
            headers: Vec::new(),
            body: String::new(),
            bad_input: false,
            read: Read::All,
            declared: None,
        }
    }

    fn query(mut self, query: &'a str) -> Self {
        self.query = query;
        self
    }

    fn header(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn json(self, body: &Value) -> Self {
        let mut ask = self.header("content-type", "application/json");
        ask.body = body.to_string();
        ask
    }

    fn bad(mut self) -> Self {
        self.bad_input = true;
        self
    }

    fn declaring(mut self, length: usize) -> Self {
        self.declared = Some(length);
        self.bad_input = true;
        self
    }

    fn reading(mut self, read: Read) -> Self {
        self.read = read;
        self
    }

    /// Sends it to `addr` on a connection of its own.
    async fn send(self, addr: SocketAddr) -> Exchange {
        let target = match self.query {
            "" => self.path.to_owned(),
            query => format!("{}?{query}", self.path),
        };
        let has_host = self.headers.iter().any(|(n, _)| *n == "host");
        let mut head = format!("{} {target} HTTP/1.1\r\nconnection: close\r\n", self.method);
        if !has_host {
            head.push_str(&format!("host: {addr}\r\n"));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(length) = self.declared {
            head.push_str(&format!("content-length: {length}\r\n"));
        } else if !self.body.is_empty() || self.method == "POST" {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(self.body.as_bytes()).await.unwrap();
        let answer = tokio::time::timeout(PATIENCE, read_answer(&mut stream, self.read))
            .await
            .unwrap_or_else(|_| panic!("an answer to {} {target} in time", self.method));
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole head");
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        let mut response_headers = serde_json::Map::new();
        for line in lines {
            let (name, value) = line.split_once(':').unwrap();
            response_headers.insert(name.to_ascii_lowercase(), value.trim().into());
        }
        let chunked = response_headers
            .get("transfer-encoding")
            .is_some_and(|v| v == "chunked");
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Exchange {
            method: self.method.to_owned(),
            path: self.path.to_owned(),
            query: self.query.to_owned(),
            request_headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), Value::from(v.as_str())))
                .collect(),
            request_body: self.body,
            bad_input: self.bad_input,
            status: status.parse().unwrap(),
            response_headers,
            response_body: body,
        }
    }
}

async fn read_answer(stream: &mut TcpStream, read: Read) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        // A reset after the answer ends it as the close would.
        let n = stream.read(&mut buf).await.unwrap_or(0);
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        let done = match read {
            Read::All => n == 0,
            Read::Head => n == 0 || text.contains("\r\n\r\n"),
            Read::FirstEvent => {
                n == 0
                    || text
                        .split_once("\r\n\r\n")
                        .is_some_and(|(_, body)| body.contains("\n\n"))
            }
        };
        if done {
            return text.into_owned();
        }
    }
}

/// The body of a chunked answer, as far as it came.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            out.push_str(&rest[..size.min(rest.len())]);
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Runs the checker on the exchanges; its report when it failed.
fn check(exchanges: &[Exchange]) {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/openapi.yaml");
    let checker = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/openapi_check.py");
    let input = serde_json::to_string(exchanges).unwrap();
    let out = common::python(&[checker, spec], input.as_bytes());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "infra/openapi.yaml and the gateway disagree (the checker needs \
         `python3 -m pip install openapi-core openapi-spec-validator`; scripts/test installs \
         them):\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains(" exchanges, "), "{report}");
}

const INVOKE: &str = "/2015-03-31/functions/publish/invocations";

#[tokio::test]
async fn the_document_validates_and_real_answers_match_it() {
    // Past one recipient a room publish goes out in page jobs: its answer has another shape.
    let gw = Gateway::start_with(settings_with(&[("HERALD_SHARD_THRESHOLD", "1")])).await;
    let addr = gw.addr;
    let token = gw.token("ann", &["orders"], &["orders"]);
    let bearer = format!("Bearer {token}");
    let mut x = Vec::new();

    // A member in `orders`, so publishes deliver and presence lists someone.
    let mut ann = gw.connect("ann", &["orders"], &[]).await;
    ann.subscribe("orders").await;
    let id = ann.whoami().await;

    // Long polling first: a cursor at "now", then what was published after it.
    let empty = Ask::new("GET", "/local/poll")
        .query("rooms=orders&wait=0")
        .header("authorization", bearer.clone())
        .send(addr)
        .await;
    let cursor: Value = serde_json::from_str(&empty.response_body).unwrap();
    let cursor = cursor["cursor"].as_str().unwrap().to_owned();
    x.push(empty);

    // The Invoke API: each payload it takes, and its refusals.
    for payload in [
        json!({"room": "orders", "data": {"n": 1}}),
        json!({"room": "orders", "data": 2, "id": "key-1"}),
        json!({"user": "ann", "data": "to ann"}),
        json!({"connections": [id], "data": [3]}),
        json!({"broadcast": true, "data": null}),
        json!({"messages": [{"room": "orders", "data": 4}, {"user": "bob", "data": 5}]}),
        json!({"presence": "orders"}),
        json!({"Records": [
            {"messageId": "m1", "body": json!({"room": "orders", "data": 6}).to_string()},
            {"messageId": "m2", "body": "not json"},
        ]}),
    ] {
        x.push(Ask::new("POST", INVOKE).json(&payload).send(addr).await);
    }
    // A second member: the next room publish is sharded, answered with `queued_pages`.
    let mut bo = gw.connect("bo", &["orders"], &[]).await;
    bo.subscribe("orders").await;
    let sharded = Ask::new("POST", INVOKE)
        .json(&json!({"room": "orders", "data": "to both"}))
        .send(addr)
        .await;
    let answer: Value = serde_json::from_str(&sharded.response_body).unwrap();
    assert_eq!(answer["queued_pages"], 1, "{answer}");
    x.push(sharded);
    assert_eq!(bo.recv().await["data"], "to both");
    drop(bo);
    x.push(
        Ask::new(
            "POST",
            "/2015-03-31/functions/publish%3A%24LATEST/invocations",
        )
        .json(&json!({"room": "orders", "data": 7}))
        .header("x-amz-invocation-type", "Event")
        .send(addr)
        .await,
    );
    x.push(
        Ask::new("POST", INVOKE)
            .json(&json!({"presence": "orders"}))
            .header("x-amz-invocation-type", "DryRun")
            .send(addr)
            .await,
    );
    // Function errors: a publish with two targets, a room name it refuses, an IoT rule
    // event where MQTT is off.
    for bad in [
        json!({"room": "orders", "user": "ann", "data": 1}),
        json!({"room": "no spaces", "data": 1}),
        json!({"mqttTopic": "herald/publish/orders", "mqttPayload": "e30="}),
    ] {
        x.push(Ask::new("POST", INVOKE).json(&bad).bad().send(addr).await);
    }
    let mut not_json = Ask::new("POST", INVOKE).header("content-type", "application/json");
    not_json.body = "{not json".into();
    x.push(not_json.bad().send(addr).await);
    x.push(
        Ask::new("POST", INVOKE)
            .json(&json!({}))
            .header("x-amz-invocation-type", "Sideways")
            .bad()
            .send(addr)
            .await,
    );
    x.push(
        Ask::new("POST", "/2015-03-31/functions/elsewhere/invocations")
            .json(&json!({"room": "orders", "data": 1}))
            .send(addr)
            .await,
    );
    x.push(
        Ask::new("POST", INVOKE)
            .header("content-type", "application/json")
            .declaring(7 * 1024 * 1024)
            .send(addr)
            .await,
    );
    x.push(
        Ask::new("POST", INVOKE)
            .json(&json!({"room": "orders", "data": 1}))
            .header("origin", "https://example.com")
            .send(addr)
            .await,
    );

    // What the poll's cursor missed meanwhile, at once.
    x.push(
        Ask::new("GET", "/local/poll")
            .query(&format!("rooms=orders&wait=0&cursor={cursor}"))
            .header("authorization", bearer.clone())
            .send(addr)
            .await,
    );
    for ask in [
        Ask::new("GET", "/local/poll")
            .query("rooms=orders&wait=99")
            .header("authorization", bearer.clone())
            .bad(),
        Ask::new("GET", "/local/poll")
            .query("rooms=no%20spaces&wait=0")
            .header("authorization", bearer.clone()),
        Ask::new("GET", "/local/poll")
            .query("rooms=secret&wait=0")
            .header("authorization", bearer.clone()),
        // Without a token.
        Ask::new("GET", "/local/poll").query("rooms=orders&wait=0"),
        Ask::new("OPTIONS", "/local/poll"),
    ] {
        x.push(ask.send(addr).await);
    }

    // Server-Sent Events: the stream's first event, and its refusals.
    let sse_query = format!("rooms=orders&token={token}");
    x.push(
        Ask::new("GET", "/local/events")
            .query(&sse_query)
            .reading(Read::FirstEvent)
            .send(addr)
            .await,
    );
    x.push(
        Ask::new("GET", "/local/events")
            .query("rooms=secret")
            .header("authorization", bearer.clone())
            .send(addr)
            .await,
    );
    x.push(Ask::new("OPTIONS", "/local/events").send(addr).await);

    // The Management API on the member's connection.
    let connection = format!("/local/@connections/{id}");
    let encoded = format!("/local/%40connections/{id}");
    let mut post = Ask::new("POST", &encoded).header("content-type", "text/plain");
    post.body = "hello".into();
    x.push(post.send(addr).await);
    x.push(Ask::new("GET", &connection).send(addr).await);
    x.push(
        Ask::new("POST", &connection)
            .header("content-type", "text/plain")
            .declaring(200 * 1024)
            .send(addr)
            .await,
    );
    x.push(
        Ask::new("GET", "/prod/@connections/nobody")
            .send(addr)
            .await,
    );
    x.push(Ask::new("DELETE", &connection).send(addr).await);
    x.push(Ask::new("DELETE", &connection).send(addr).await);
    x.push(Ask::new("GET", &connection).send(addr).await);
    let mut gone = Ask::new("POST", &connection).header("content-type", "application/json");
    gone.body = "{}".into();
    x.push(gone.send(addr).await);
    let (code, _) = ann.closed().await;
    assert_eq!(code, 1000);

    // The WebSocket handshake and its refusals.
    let upgrade = |ask: Ask<'static>| {
        ask.header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    };
    x.push(
        upgrade(Ask::new("GET", "/local"))
            .header("sec-websocket-version", "13")
            .header("authorization", bearer.clone())
            .reading(Read::Head)
            .send(addr)
            .await,
    );
    x.push(
        upgrade(Ask::new("GET", "/local"))
            .header("sec-websocket-version", "13")
            .send(addr)
            .await,
    );
    x.push(
        upgrade(Ask::new("GET", "/prod"))
            .header("sec-websocket-version", "13")
            .header("authorization", bearer.clone())
            .send(addr)
            .await,
    );
    x.push(
        upgrade(Ask::new("GET", "/local"))
            .header("sec-websocket-version", "8")
            .bad()
            .send(addr)
            .await,
    );
    x.push(Ask::new("GET", "/local").bad().send(addr).await);

    // Metrics, and the demo page with its figures and client.
    x.push(Ask::new("GET", "/metrics").send(addr).await);
    x.push(Ask::new("GET", "/").send(addr).await);
    let stats = Ask::new("GET", "/_herald/stats").send(addr).await;
    let figures: Value = serde_json::from_str(&stats.response_body).unwrap();
    assert!(figures["publishes"].as_u64().unwrap() >= 8, "{figures}");
    x.push(stats);
    x.push(
        Ask::new("GET", "/_herald/stats")
            .header("host", format!("evil.example:{}", addr.port()))
            .send(addr)
            .await,
    );
    x.push(
        Ask::new("GET", "/_herald/client/herald-client.js")
            .send(addr)
            .await,
    );
    x.push(
        Ask::new("GET", "/_herald/client/src/cursor.js")
            .send(addr)
            .await,
    );
    x.push(
        Ask::new("GET", "/_herald/client/src/nothing.js")
            .send(addr)
            .await,
    );

    // The control plane off loopback: an unsigned request is refused, as AWS refuses it.
    let mut signed = settings();
    signed.control_plane.credentials = Some(Credentials {
        access_key_id: "AKIDHERALDOPENAPI".into(),
        secret_access_key: "herald-openapi-test-secret".into(),
    });
    let guarded = Gateway::start_with(signed).await;
    for ask in [
        Ask::new("GET", "/metrics"),
        Ask::new("POST", INVOKE).json(&json!({"presence": "orders"})),
        Ask::new("GET", "/local/@connections/someone"),
    ] {
        x.push(ask.send(guarded.addr).await);
    }
    guarded.stop().await;

    // Each status the test meant to see, so a change of behaviour cannot pass unnoticed.
    let statuses: Vec<(String, u16)> = x
        .iter()
        .map(|e| (format!("{} {}", e.method, e.path), e.status))
        .collect();
    for (what, status) in [
        ("POST /2015-03-31/functions/publish/invocations", 200),
        (
            "POST /2015-03-31/functions/publish%3A%24LATEST/invocations",
            202,
        ),
        ("POST /2015-03-31/functions/publish/invocations", 204),
        ("POST /2015-03-31/functions/publish/invocations", 400),
        ("POST /2015-03-31/functions/publish/invocations", 403),
        ("POST /2015-03-31/functions/publish/invocations", 413),
        ("POST /2015-03-31/functions/elsewhere/invocations", 404),
        ("GET /local/poll", 200),
        ("GET /local/poll", 400),
        ("GET /local/poll", 401),
        ("GET /local/poll", 403),
        ("GET /local/events", 200),
        ("GET /local/events", 403),
        ("OPTIONS /local/events", 204),
        ("GET /local", 101),
        ("GET /local", 400),
        ("GET /local", 401),
        ("GET /local", 426),
        ("GET /prod", 403),
        ("GET /metrics", 200),
        ("GET /metrics", 403),
        ("GET /_herald/stats", 200),
        ("GET /_herald/stats", 403),
        ("GET /_herald/client/src/nothing.js", 404),
        ("GET /prod/@connections/nobody", 403),
        ("DELETE /local/@connections/{id}", 204),
        ("DELETE /local/@connections/{id}", 410),
        ("POST /local/@connections/{id}", 410),
        ("POST /local/@connections/{id}", 413),
    ] {
        let what = what.replace("{id}", &id);
        assert!(
            statuses.contains(&(what.clone(), status)),
            "{what} {status} was not answered: {statuses:?}"
        );
    }
    let function_errors = x
        .iter()
        .filter(|e| e.response_headers.contains_key("x-amz-function-error"))
        .count();
    assert_eq!(
        function_errors, 3,
        "three publishes refused as function errors"
    );
    check(&x);
    gw.stop().await;
}
