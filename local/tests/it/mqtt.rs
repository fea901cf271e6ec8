//! MQTT through a real broker (`mosquitto`, started on a free port) and real MQTT clients
//! (`mosquitto_sub` and `mosquitto_pub`): what a subscriber receives is exactly what a
//! WebSocket client receives, in order, for room and user notifications, on the memory
//! store and on Redis; a device's publish to an allowed room reaches WebSocket clients and
//! nothing else does; a broker that is down or goes away costs WebSocket delivery nothing,
//! the answer says `"mqtt":"failed"`, and the link comes back with the broker; `mqtts://`
//! with a password reaches a broker whose authority is trusted, and only that.

use crate::common;

use std::process::Stdio;

use common::{Client, Gateway, PATIENCE, SharedRedis, settings_with, spawn_binary};
use futures::StreamExt;
use herald::testing::{Server, TlsMosquitto};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio_tungstenite::tungstenite::Message;

/// `mosquitto_sub` on `topics` of the broker at `port`, subscribed (its grant seen).
struct Subscriber {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Subscriber {
    async fn start(port: u16, topics: &[&str]) -> Self {
        Self::start_with(&["-p", &port.to_string()], topics).await
    }

    /// [`Subscriber::start`] with the connection's arguments given (port, TLS, user).
    async fn start_with(connection: &[&str], topics: &[&str]) -> Self {
        // Line-buffered: piped, mosquitto_sub would hold its output in a block.
        let mut command = Command::new("stdbuf");
        command
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-q",
                "1",
                "-v",
                "-d",
            ])
            .args(connection);
        for topic in topics {
            command.args(["-t", topic]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub runs: apt-get install mosquitto-clients, or run scripts/test");
        let mut subscriber = Self {
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            _child: child,
        };
        // `-d` says "Subscribed (mid: …)" once the broker granted every topic.
        while !subscriber.line("the grant").await.starts_with("Subscribed") {}
        subscriber
    }

    /// Its next line of output; panics after [`PATIENCE`].
    async fn line(&mut self, what: &str) -> String {
        tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{what} from mosquitto_sub in time"))
            .unwrap()
            .expect("mosquitto_sub runs")
    }

    /// The next message: its topic and payload.
    async fn next(&mut self) -> (String, String) {
        loop {
            let line = self.line("an MQTT message").await;
            // `-d` writes its protocol log on the same stream, each line from "Client ".
            if line.starts_with("Client ") {
                continue;
            }
            let (topic, payload) = line.split_once(' ').expect("topic, space, payload");
            return (topic.to_owned(), payload.to_owned());
        }
    }
}

/// A device's publish, QoS 1, with `mosquitto_pub`.
async fn device_publish(port: u16, topic: &str, body: &str) {
    let done = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", body])
        .output()
        .await
        .expect("mosquitto_pub runs: apt-get install mosquitto-clients, or run scripts/test");
    assert!(done.status.success(), "{done:?}");
}

/// The next text frame exactly as the socket received it.
async fn next_text(client: &mut Client) -> String {
    loop {
        let message = tokio::time::timeout(PATIENCE, client.ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a readable frame");
        match message {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Room and user notifications, published through the Invoke API, reach a WebSocket
/// client and an MQTT subscriber byte for byte the same, in the same order.
async fn mirrored_exactly(extra: &[(&str, String)]) {
    let broker = Server::mosquitto();
    let url = broker.url();
    let mut vars: Vec<(&str, &str)> = vec![("HERALD_MQTT_URL", &url)];
    vars.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
    let gw = Gateway::start_with(settings_with(&vars)).await;
    let mut ann = gw.connect("ann", &["orders"], &[]).await;
    ann.subscribe("orders").await;
    let mut mqtt =
        Subscriber::start(broker.port(), &["herald/rooms/orders", "herald/users/ann"]).await;

    let publishes = [
        json!({"room":"orders","data":{"n":1}}),
        json!({"user":"ann","data":{"n":2,"text":"héllo \"quoted\""}}),
        json!({"room":"orders","data":[3, null, true]}),
        json!({"user":"ann","data":"four"}),
        json!({"room":"orders","data":{"n":5}}),
    ];
    for publish in &publishes {
        let answer = gw.invoke(publish.clone()).await.unwrap();
        assert_eq!(answer["mqtt"], "queued", "{answer}");
        assert_eq!(answer["delivered"], 1, "{answer}");
    }
    for publish in &publishes {
        let over_ws = next_text(&mut ann).await;
        let (topic, over_mqtt) = mqtt.next().await;
        assert_eq!(over_mqtt, over_ws, "the same bytes");
        let expected_topic = match publish.get("room") {
            Some(room) => format!("herald/rooms/{}", room.as_str().unwrap()),
            None => format!("herald/users/{}", publish["user"].as_str().unwrap()),
        };
        assert_eq!(topic, expected_topic);
        let notification: Value = serde_json::from_str(&over_mqtt).unwrap();
        assert_eq!(notification["data"], publish["data"], "in order");
        assert!(notification["offset"].is_u64(), "{notification}");
        assert!(notification["epoch"].is_string(), "{notification}");
    }
    // A publish without a topic (named connections) says nothing about MQTT.
    let answer = gw
        .invoke(json!({"connections":[ann.id.clone()],"data":6}))
        .await
        .unwrap();
    assert!(answer.get("mqtt").is_none(), "{answer}");
    gw.stop().await;
}

#[tokio::test]
async fn an_mqtt_subscriber_receives_what_a_websocket_client_does_on_memory() {
    mirrored_exactly(&[]).await;
}

#[tokio::test]
async fn an_mqtt_subscriber_receives_what_a_websocket_client_does_on_redis() {
    let redis = SharedRedis::single();
    mirrored_exactly(&redis.vars()).await;
}

#[tokio::test]
async fn a_device_publishes_to_an_allowed_room_and_nowhere_else() {
    let broker = Server::mosquitto();
    let url = broker.url();
    let gw = Gateway::start_with(settings_with(&[
        ("HERALD_MQTT_URL", &url),
        ("HERALD_MQTT_PREFIX", "acme/herald"),
        ("HERALD_MQTT_PUBLISH_ROOMS", "devices:*"),
    ]))
    .await;
    let mut ann = gw.connect("ann", &["devices:1", "secret"], &[]).await;
    ann.subscribe("devices:1").await;
    ann.subscribe("secret").await;
    let mut mirror = Subscriber::start(broker.port(), &["acme/herald/rooms/#"]).await;
    let port = broker.port();

    // Refused: a room not allowed, a body that is not JSON, a topic under no room.
    device_publish(port, "acme/herald/publish/secret", r#"{"x":1}"#).await;
    device_publish(port, "acme/herald/publish/devices:1", "not json").await;
    device_publish(port, "herald/publish/devices:1", r#"{"x":2}"#).await;
    // Accepted, in order.
    device_publish(port, "acme/herald/publish/devices:1", r#"{"t":21}"#).await;
    device_publish(port, "acme/herald/publish/devices:1", r#"{"t":22}"#).await;

    for t in [21, 22] {
        let notification = ann.recv().await;
        assert_eq!(notification["type"], "notification", "{notification}");
        assert_eq!(notification["room"], "devices:1", "{notification}");
        assert_eq!(notification["data"], json!({ "t": t }), "{notification}");
        assert!(
            notification["offset"].is_u64(),
            "kept in history: {notification}"
        );
        // And mirrored, as every room notification is.
        let (topic, payload) = mirror.next().await;
        assert_eq!(topic, "acme/herald/rooms/devices:1");
        assert_eq!(
            serde_json::from_str::<Value>(&payload).unwrap(),
            notification
        );
    }
    ann.expect_nothing(std::time::Duration::from_millis(500))
        .await;
    gw.stop().await;
}

/// Publishes `{"n": n+1}`, `{"n": n+2}`, … to `orders` until the answer says `mqtt`,
/// each delivered to `ann` all the same; panics after [`PATIENCE`].
async fn publish_until(gw: &Gateway, ann: &mut Client, n: &mut u64, mqtt: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        *n += 1;
        let answer = gw
            .invoke(json!({"room":"orders","data":{"n":*n}}))
            .await
            .unwrap();
        assert_eq!(
            answer["delivered"], 1,
            "WebSocket delivery goes on: {answer}"
        );
        assert_eq!(ann.recv().await["data"]["n"], *n);
        if answer["mqtt"] == mqtt {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no \"mqtt\":\"{mqtt}\" in time: {answer}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_broker_that_is_down_costs_delivery_nothing_and_the_link_comes_back() {
    let mut broker = Server::mosquitto();
    let url = broker.url();
    let gw = Gateway::start_with(settings_with(&[("HERALD_MQTT_URL", &url)])).await;
    let mut ann = gw.connect("ann", &["orders"], &[]).await;
    ann.subscribe("orders").await;

    broker.stop();
    // The link notices the broker's end; until then a publish may still be queued.
    let mut n = 0;
    publish_until(&gw, &mut ann, &mut n, "failed").await;

    broker.restart();
    let mut mqtt = Subscriber::start(broker.port(), &["herald/rooms/orders"]).await;
    publish_until(&gw, &mut ann, &mut n, "queued").await;
    let (_, payload) = mqtt.next().await;
    assert_eq!(
        serde_json::from_str::<Value>(&payload).unwrap()["data"]["n"],
        n
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_broker_that_never_answered_does_not_stop_the_start() {
    let (_held, port) = herald::testing::refused_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let gw = Gateway::start_with(settings_with(&[("HERALD_MQTT_URL", &url)])).await;
    assert!(
        started.elapsed() < herald::sinks::mqtt::CONNECT_GRACE + PATIENCE / 2,
        "{:?}",
        started.elapsed()
    );
    let mut ann = gw.connect("ann", &["orders"], &[]).await;
    ann.subscribe("orders").await;
    let answer = gw.invoke(json!({"user":"ann","data":1})).await.unwrap();
    assert_eq!(answer["mqtt"], "failed", "{answer}");
    assert_eq!(answer["delivered"], 1, "{answer}");
    assert_eq!(ann.recv().await["data"], 1);
    gw.stop().await;
}

#[tokio::test]
async fn mqtt_settings_are_checked_at_start() {
    let cases = [
        (
            vec![("HERALD_MQTT_URL", "http://127.0.0.1:1883")],
            "mqtt://",
        ),
        (
            vec![("HERALD_MQTT_URL", "mqtt://127.0.0.1:0")],
            "not a port",
        ),
        (
            vec![("HERALD_MQTT_PUBLISH_ROOMS", "devices:*")],
            "HERALD_MQTT_URL",
        ),
        (
            vec![
                ("HERALD_MQTT_URL", "mqtt://127.0.0.1:1883"),
                ("HERALD_MQTT_PREFIX", "a/#"),
            ],
            "HERALD_MQTT_PREFIX",
        ),
        (
            vec![
                ("HERALD_MQTT_URL", "mqtt://127.0.0.1:1883"),
                ("HERALD_MQTT_PUBLISH_ROOMS", "a b"),
            ],
            "not a room pattern",
        ),
    ];
    for (vars, expected) in cases {
        let mut command = common::binary();
        command.args(["--port", "0"]).env_clear().envs(vars.clone());
        let said = common::refused_start(command).await;
        assert!(said.contains(expected), "{vars:?}: {said}");
    }
}

/// What a gateway answers for MQTT when it runs with `mqtt_url` and `SSL_CERT_FILE`.
async fn answer_over(mqtt_url: &str, trusted: &str) -> (Value, Client, tokio::process::Child) {
    let (child, addr) = spawn_binary(
        &[],
        &[("HERALD_MQTT_URL", mqtt_url), ("SSL_CERT_FILE", trusted)],
    )
    .await;
    let gw = Gateway::at(addr);
    let mut ann = gw.connect("ann", &["orders"], &[]).await;
    ann.subscribe("orders").await;
    let answer = gw
        .invoke(json!({"room":"orders","data":"over tls"}))
        .await
        .unwrap();
    (answer, ann, child)
}

#[tokio::test]
async fn mqtts_with_a_password_carries_notifications_only_to_a_trusted_broker() {
    let broker = TlsMosquitto::start();
    let ca = broker.ca_file().display().to_string();
    let port = broker.port().to_string();
    let mut mqtt = Subscriber::start_with(
        &[
            "-p",
            &port,
            "--cafile",
            &ca,
            "-u",
            TlsMosquitto::USER,
            "-P",
            TlsMosquitto::PASSWORD,
        ],
        &["herald/rooms/orders"],
    )
    .await;

    // Trusted, with the password from the URL: the copy goes out over TLS.
    let (answer, mut ann, _gateway) = answer_over(&broker.url(), &ca).await;
    assert_eq!(answer["mqtt"], "queued", "{answer}");
    let (topic, payload) = mqtt.next().await;
    assert_eq!(topic, "herald/rooms/orders");
    assert_eq!(payload, next_text(&mut ann).await, "the same bytes");

    // Not trusted (an empty trust store), or the wrong password: no link, delivery goes on.
    let wrong = broker.url().replace("p%40ss", "nope");
    for (url, trusted) in [(broker.url(), "/dev/null"), (wrong, ca.as_str())] {
        let (answer, mut ann, _gateway) = answer_over(&url, trusted).await;
        assert_eq!(
            answer["mqtt"], "failed",
            "{url} trusting {trusted}: {answer}"
        );
        assert_eq!(answer["delivered"], 1, "{answer}");
        assert_eq!(ann.recv().await["data"], "over tls");
    }
}
