//! Building the events API Gateway sends, so the handlers cannot tell `herald-local` from AWS.
//!
//! Events are written as the JSON API Gateway puts on the wire and parsed into the
//! `aws_lambda_events` types, which keeps field names and shapes exactly as on AWS:
//! `connectedAt` and `requestTimeEpoch` always, `messageId` on MESSAGE only,
//! `disconnectStatusCode` / `disconnectReason` on DISCONNECT, the authorizer context on
//! every route.

use std::collections::HashMap;

use herald::events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayWebsocketProxyRequest,
};
use herald::ids::{ConnectionId, now_ms};
use herald::protocol::CLIENT_ACTIONS;
use serde_json::{Map, Value, json};

/// ISO 8601 with milliseconds, as the Management API's `GET` answers times.
pub use herald::ids::iso8601;

/// What is known of a connection from its handshake on, carried into every event.
#[derive(Clone, Debug)]
pub struct ConnectionMeta {
    /// The connection's id.
    pub id: ConnectionId,
    /// When the handshake arrived, ms since the epoch.
    pub connected_at: i64,
    /// The client's address.
    pub source_ip: String,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
    /// The `Host` the client connected to.
    pub domain_name: String,
    /// The authorizer's context, once it has run.
    pub context: Context,
}

/// The authorizer's context of one connection, kept as its JSON text: a connection holds
/// it for its whole life and reads it only to build an event, which copies it anyway, so
/// the text (tens of bytes) stands in for a map of strings and arrays (hundreds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context(Option<Box<str>>);

impl Context {
    /// The context `map` holds; none when it is empty.
    pub fn new(map: &Map<String, Value>) -> Self {
        if map.is_empty() {
            return Self(None);
        }
        Self(Some(
            Value::Object(map.clone()).to_string().into_boxed_str(),
        ))
    }

    /// Whether the authorizer gave no context.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The context as a map.
    pub fn map(&self) -> Map<String, Value> {
        match self.0.as_deref().map(serde_json::from_str) {
            Some(Ok(Value::Object(map))) => map,
            // Written from a map by `new`, so it reads back as one.
            _ => Map::new(),
        }
    }

    /// The text of entry `key`, when it is a string.
    pub fn text(&self, key: &str) -> Option<String> {
        self.map().get(key)?.as_str().map(str::to_owned)
    }
}

/// Builds events for one API (stage and API id).
#[derive(Clone, Debug)]
pub struct EventFactory {
    /// The stage, e.g. `local`.
    pub stage: String,
    /// The API id, e.g. `herald-local`.
    pub api_id: String,
}

impl EventFactory {
    /// The `methodArn` of `$connect`, as the authorizer receives it.
    pub fn connect_arn(&self) -> String {
        format!(
            "arn:aws:execute-api:local:000000000000:{}/{}/$connect",
            self.api_id, self.stage
        )
    }

    fn request_context(
        &self,
        meta: &ConnectionMeta,
        route_key: &str,
        event_type: &str,
    ) -> Map<String, Value> {
        let now = now_ms();
        let request_id = request_id();
        let mut ctx = json!({
            "routeKey": route_key,
            "eventType": event_type,
            "extendedRequestId": request_id,
            "requestTime": request_time(now),
            "messageDirection": "IN",
            "stage": self.stage,
            "connectedAt": meta.connected_at,
            "requestTimeEpoch": now,
            "identity": {"sourceIp": meta.source_ip, "userAgent": meta.user_agent},
            "requestId": request_id,
            "domainName": meta.domain_name,
            "connectionId": meta.id.as_str(),
            "apiId": self.api_id,
        });
        if !meta.context.is_empty() {
            let mut authorizer = meta.context.map();
            let principal = authorizer.get("sub").cloned().unwrap_or(Value::Null);
            authorizer.insert("principalId".into(), principal);
            authorizer.insert("integrationLatency".into(), json!(0));
            ctx["authorizer"] = Value::Object(authorizer);
        }
        match ctx {
            Value::Object(map) => map,
            _ => unreachable!("built as an object above"),
        }
    }

    /// The REQUEST authorizer's event for a handshake.
    pub fn authorizer_request(
        &self,
        meta: &ConnectionMeta,
        headers: &[(String, String)],
        query: &[(String, String)],
    ) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
        let event = json!({
            "type": "REQUEST",
            "methodArn": self.connect_arn(),
            "headers": single(headers),
            "multiValueHeaders": multi(headers),
            "queryStringParameters": single(query),
            "multiValueQueryStringParameters": multi(query),
            "stageVariables": {},
            "requestContext": self.request_context(meta, "$connect", "CONNECT"),
        });
        serde_json::from_value(event).expect("an authorizer event built from its own shape")
    }

    /// The `$connect` event.
    pub fn connect(
        &self,
        meta: &ConnectionMeta,
        headers: &[(String, String)],
        query: &[(String, String)],
    ) -> ApiGatewayWebsocketProxyRequest {
        let event = json!({
            "headers": single(headers),
            "multiValueHeaders": multi(headers),
            "queryStringParameters": single(query),
            "multiValueQueryStringParameters": multi(query),
            "requestContext": self.request_context(meta, "$connect", "CONNECT"),
            "isBase64Encoded": false,
        });
        serde_json::from_value(event).expect("a connect event built from its own shape")
    }

    /// A MESSAGE event for a text frame, routed by its `action`.
    pub fn message(&self, meta: &ConnectionMeta, body: &str) -> ApiGatewayWebsocketProxyRequest {
        let mut ctx = self.request_context(meta, route_key(body), "MESSAGE");
        ctx.insert("messageId".into(), json!(request_id()));
        let event = json!({
            "requestContext": ctx,
            "body": body,
            "isBase64Encoded": false,
        });
        serde_json::from_value(event).expect("a message event built from its own shape")
    }

    /// The `$disconnect` event, with the close code and reason.
    pub fn disconnect(
        &self,
        meta: &ConnectionMeta,
        status: u16,
        reason: &str,
    ) -> ApiGatewayWebsocketProxyRequest {
        let mut ctx = self.request_context(meta, "$disconnect", "DISCONNECT");
        ctx.insert("disconnectStatusCode".into(), json!(status));
        ctx.insert("disconnectReason".into(), json!(reason));
        let event = json!({
            "headers": {"Host": meta.domain_name},
            "multiValueHeaders": {"Host": [meta.domain_name]},
            "requestContext": ctx,
            "isBase64Encoded": false,
        });
        serde_json::from_value(event).expect("a disconnect event built from its own shape")
    }
}

/// Route selection by `$request.body.action`: a known action is its own route, anything
/// else (not JSON, no action, an unknown one) goes to `$default`.
pub fn route_key(body: &str) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Action<'a> {
        #[serde(borrow)]
        action: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Action<'_>>(body)
        .ok()
        .and_then(|a| a.action)
        .and_then(|action| CLIENT_ACTIONS.iter().find(|known| **known == action))
        .copied()
        .unwrap_or("$default")
}

fn single(pairs: &[(String, String)]) -> Value {
    let mut map = Map::new();
    for (k, v) in pairs {
        // API Gateway keeps the last value of a repeated header or parameter.
        map.insert(k.clone(), json!(v));
    }
    Value::Object(map)
}

fn multi(pairs: &[(String, String)]) -> Value {
    let mut map: HashMap<&str, Vec<&str>> = HashMap::new();
    for (k, v) in pairs {
        map.entry(k).or_default().push(v);
    }
    json!(map)
}

/// An id shaped like API Gateway's request ids.
fn request_id() -> String {
    ConnectionId::generate().as_str().to_owned()
}

/// `30/Nov/2026:09:40:00 +0000`, API Gateway's `requestTime` format.
pub fn request_time(ms: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, hh, mm, ss) = herald::ids::civil(ms);
    format!(
        "{d:02}/{}/{y}:{hh:02}:{mm:02}:{ss:02} +0000",
        MONTHS[(m - 1) as usize]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_api_gateway_writes_them() {
        assert_eq!(
            request_time(1_796_031_600_000),
            "30/Nov/2026:09:40:00 +0000"
        );
        assert_eq!(iso8601(1_796_031_660_500), "2026-11-30T09:41:00.500Z");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn routes_are_chosen_by_action() {
        assert_eq!(
            route_key(r#"{"action":"subscribe","room":"a"}"#),
            "subscribe"
        );
        assert_eq!(route_key(r#"{"action":"ping"}"#), "ping");
        assert_eq!(route_key(r#"{"action":"dance"}"#), "$default");
        assert_eq!(route_key(r#"{"room":"a"}"#), "$default");
        assert_eq!(route_key("not json"), "$default");
        assert_eq!(route_key(r#"{"action":5}"#), "$default");
    }

    fn meta() -> ConnectionMeta {
        let mut context = Map::new();
        context.insert("sub".into(), json!("alice"));
        context.insert("rooms".into(), json!("orders"));
        ConnectionMeta {
            id: ConnectionId::new("abc="),
            connected_at: 1_796_031_600_000,
            source_ip: "127.0.0.1".into(),
            user_agent: Some("test".into()),
            domain_name: "127.0.0.1:3001".into(),
            context: Context::new(&context),
        }
    }

    #[test]
    fn a_context_reads_back_as_it_was_given() {
        let mut map = Map::new();
        map.insert("sub".into(), json!("alice"));
        map.insert("rooms".into(), json!(["orders", "news*"]));
        let context = Context::new(&map);
        assert_eq!(context.map(), map);
        assert_eq!(context.text("sub").as_deref(), Some("alice"));
        assert_eq!(context.text("rooms"), None, "not a string");
        assert!(!context.is_empty());
        assert!(Context::new(&Map::new()).is_empty());
        assert_eq!(Context::default().map(), Map::new());
    }

    #[test]
    fn events_carry_what_api_gateway_sends() {
        let factory = EventFactory {
            stage: "local".into(),
            api_id: "herald-local".into(),
        };
        let message = factory.message(&meta(), r#"{"action":"ping"}"#);
        let ctx = &message.request_context;
        assert_eq!(ctx.route_key.as_deref(), Some("ping"));
        assert_eq!(ctx.event_type.as_deref(), Some("MESSAGE"));
        assert_eq!(ctx.connected_at, 1_796_031_600_000);
        assert!(ctx.request_time_epoch >= ctx.connected_at);
        assert!(ctx.message_id.is_some());
        assert_eq!(ctx.authorizer.fields["sub"], json!("alice"));
        assert_eq!(ctx.authorizer.fields["principalId"], json!("alice"));
        assert_eq!(ctx.identity.source_ip.as_deref(), Some("127.0.0.1"));

        let gone = factory.disconnect(
            &meta(),
            crate::connection::close_code::GOING_AWAY,
            "Going away",
        );
        let ctx = &gone.request_context;
        assert_eq!(ctx.route_key.as_deref(), Some("$disconnect"));
        assert_eq!(
            ctx.disconnect_status_code,
            Some(i64::from(crate::connection::close_code::GOING_AWAY))
        );
        assert_eq!(ctx.disconnect_reason.as_deref(), Some("Going away"));
        assert!(ctx.message_id.is_none());
        assert_eq!(ctx.authorizer.fields["rooms"], json!("orders"));

        let query = vec![("token".to_owned(), "t".to_owned())];
        let auth = factory.authorizer_request(&meta(), &[], &query);
        assert_eq!(auth.query_string_parameters.first("token"), Some("t"));
        assert_eq!(
            auth.method_arn.as_deref(),
            Some("arn:aws:execute-api:local:000000000000:herald-local/local/$connect")
        );
    }
}
