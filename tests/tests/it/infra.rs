//! The SAM template (`infra/template.yaml`) against the code: every function names a binary
//! of the workspace, the table has exactly the schema `DynamoStore` uses, every route of the
//! contract exists, and every Herald variable it sets is one the code reads.

use std::collections::BTreeSet;
use std::path::Path;

use herald::config::Config;
use herald::protocol::CLIENT_ACTIONS;
use herald::store::TABLE;
use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
}

fn template() -> Value {
    let text = std::fs::read_to_string(root().join("infra/template.yaml")).expect("the template");
    serde_yaml::from_str(&text).expect("the template is YAML")
}

fn resources_of(template: &Value, kind: &str) -> Vec<(String, Value)> {
    template["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(kind))
        .map(|(name, r)| (name.as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Every variable `Config` reads, recorded by asking it to read an empty environment.
fn variables_the_code_reads() -> BTreeSet<String> {
    let seen = std::sync::Mutex::new(BTreeSet::new());
    Config::from_lookup(|name| {
        seen.lock().unwrap().insert(name.to_owned());
        None
    })
    .unwrap();
    seen.into_inner().unwrap()
}

#[test]
fn every_function_names_a_binary_of_the_workspace() {
    let template = template();
    let functions = resources_of(&template, "AWS::Serverless::Function");
    let mut binaries = BTreeSet::new();
    for (name, function) in &functions {
        assert_eq!(
            function["Metadata"]["BuildMethod"], "rust-cargolambda",
            "{name}"
        );
        let binary = function["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} names no Binary"));
        let manifest = root().join("functions").join(binary).join("Cargo.toml");
        let manifest = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("{name}: no crate for binary {binary}: {e}"));
        assert!(
            manifest.contains(&format!("name = \"{binary}\"")),
            "{name}: functions/{binary} does not build a binary named {binary}"
        );
        binaries.insert(binary.to_owned());
    }
    let expected: BTreeSet<String> = [
        "authorizer",
        "connect",
        "deliver",
        "disconnect",
        "message",
        "publish",
        "poll",
        "stream",
        "webhook",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(binaries, expected);
    let globals = &template["Globals"]["Function"];
    assert_eq!(globals["Runtime"], "provided.al2023");
    assert_eq!(strings(&globals["Architectures"]), vec!["arm64"]);
}

#[test]
fn the_table_has_the_schema_the_code_uses() {
    let template = template();
    let tables = resources_of(&template, "AWS::DynamoDB::Table");
    assert_eq!(tables.len(), 1);
    let table = &tables[0].1["Properties"];
    assert_eq!(table["BillingMode"], "PAY_PER_REQUEST");
    let key = |schema: &Value| -> Vec<(String, String)> {
        schema
            .as_sequence()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["AttributeName"].as_str().unwrap().to_owned(),
                    k["KeyType"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        key(&table["KeySchema"]),
        vec![
            (TABLE.partition_key.to_owned(), "HASH".to_owned()),
            (TABLE.sort_key.to_owned(), "RANGE".to_owned())
        ]
    );
    let indexes = table["GlobalSecondaryIndexes"].as_sequence().unwrap();
    assert_eq!(indexes.len(), 1);
    let index = &indexes[0];
    assert_eq!(index["IndexName"], TABLE.index);
    assert_eq!(
        key(&index["KeySchema"]),
        vec![
            (TABLE.index_partition_key.to_owned(), "HASH".to_owned()),
            (TABLE.index_sort_key.to_owned(), "RANGE".to_owned())
        ]
    );
    assert_eq!(index["Projection"]["ProjectionType"], "INCLUDE");
    assert_eq!(
        strings(&index["Projection"]["NonKeyAttributes"]),
        TABLE.index_projects
    );
    let attributes: BTreeSet<(String, String)> = table["AttributeDefinitions"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["AttributeName"].as_str().unwrap().to_owned(),
                a["AttributeType"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        TABLE.partition_key,
        TABLE.sort_key,
        TABLE.index_partition_key,
        TABLE.index_sort_key,
    ]
    .into_iter()
    .map(|a| (a.to_owned(), "S".to_owned()))
    .collect();
    assert_eq!(attributes, expected);
    assert_eq!(
        table["TimeToLiveSpecification"]["AttributeName"],
        TABLE.ttl_attribute
    );
    assert_eq!(table["TimeToLiveSpecification"]["Enabled"], true);
}

#[test]
fn every_route_of_the_contract_exists() {
    let template = template();
    let apis = resources_of(&template, "AWS::ApiGatewayV2::Api");
    assert_eq!(apis[0].1["Properties"]["ProtocolType"], "WEBSOCKET");
    assert_eq!(
        apis[0].1["Properties"]["RouteSelectionExpression"],
        "$request.body.action"
    );
    let routes: BTreeSet<String> = resources_of(&template, "AWS::ApiGatewayV2::Route")
        .iter()
        .map(|(_, r)| r["Properties"]["RouteKey"].as_str().unwrap().to_owned())
        .collect();
    let mut expected: BTreeSet<String> = CLIENT_ACTIONS.iter().map(|a| (*a).to_owned()).collect();
    expected.extend(["$connect", "$disconnect", "$default"].map(str::to_owned));
    assert_eq!(routes, expected);
    let authorizers = resources_of(&template, "AWS::ApiGatewayV2::Authorizer");
    let authorizer = &authorizers[0].1["Properties"];
    assert_eq!(authorizer["AuthorizerType"], "REQUEST");
    assert_eq!(
        strings(&authorizer["IdentitySource"]),
        vec!["route.request.querystring.token"]
    );
}

#[test]
fn every_herald_variable_in_the_template_is_read_by_the_code() {
    let known = variables_the_code_reads();
    let template = template();
    let mut sets = Vec::new();
    let global = &template["Globals"]["Function"]["Environment"]["Variables"];
    sets.push(global.clone());
    for (_, function) in resources_of(&template, "AWS::Serverless::Function") {
        sets.push(function["Properties"]["Environment"]["Variables"].clone());
    }
    let mut checked = 0;
    for variables in sets {
        for (name, _) in variables.as_mapping().into_iter().flatten() {
            let name = name.as_str().unwrap();
            if name.starts_with("HERALD_") {
                assert!(known.contains(name), "{name} is set but nothing reads it");
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} variables checked");
}

#[test]
fn the_stage_throttles_every_route() {
    let template = template();
    let stages = resources_of(&template, "AWS::ApiGatewayV2::Stage");
    assert_eq!(stages.len(), 1);
    let settings = &stages[0].1["Properties"]["DefaultRouteSettings"];
    for limit in ["ThrottlingRateLimit", "ThrottlingBurstLimit"] {
        let parameter = match &settings[limit] {
            Value::Tagged(tagged) if tagged.tag == "Ref" => tagged.value.as_str(),
            _ => None,
        }
        .unwrap_or_else(|| panic!("{limit} is set from a parameter"));
        let default = template["Parameters"][parameter]["Default"].as_u64();
        assert!(default.is_some_and(|d| d > 0), "{parameter} has a default");
    }
}

#[test]
fn no_secret_is_a_plain_text_parameter() {
    let template = template();
    let parameters = template["Parameters"].as_mapping().unwrap();
    for (name, _) in parameters {
        let name = name.as_str().unwrap().to_ascii_lowercase();
        assert!(
            !name.contains("secret") || name.ends_with("arn"),
            "{name}: secrets come from Secrets Manager, by ARN"
        );
    }
}

#[test]
fn the_poll_function_sits_behind_get_poll_within_the_integration_timeout() {
    let template = template();
    let functions = resources_of(&template, "AWS::Serverless::Function");
    let (_, poll) = functions
        .iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"] == "poll")
        .expect("a poll function");
    let event = &poll["Properties"]["Events"]["Poll"];
    assert_eq!(event["Type"], "HttpApi");
    assert_eq!(event["Properties"]["Path"], "/poll");
    assert_eq!(event["Properties"]["Method"], "GET");
    // API Gateway gives up on an integration after 29 s; the longest wait is 25 s.
    let timeout = poll["Properties"]["Timeout"].as_u64().unwrap();
    assert!(
        timeout <= 29 && timeout > herald::reader::MAX_POLL_WAIT_SECS,
        "{timeout}"
    );
}

#[test]
fn the_stream_function_streams_behind_a_url_and_ends_before_its_timeout() {
    let template = template();
    let functions = resources_of(&template, "AWS::Serverless::Function");
    let (_, stream) = functions
        .iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"] == "stream")
        .expect("a stream function");
    let url = &stream["Properties"]["FunctionUrlConfig"];
    assert_eq!(
        url["InvokeMode"], "RESPONSE_STREAM",
        "a buffered URL never streams"
    );
    assert_eq!(
        url["AuthType"], "NONE",
        "the function checks the JWT itself"
    );
    assert_eq!(strings(&url["Cors"]["AllowMethods"]), vec!["GET"]);
    // Lambda stops an invocation at its timeout (900 s at most); the stream must end first.
    let timeout = stream["Properties"]["Timeout"].as_u64().unwrap();
    let margin = herald::handlers::STREAM_END_MARGIN.as_secs();
    assert!(timeout <= 900 && timeout > 2 * margin, "{timeout}");
    // It reads history (and puts the position a first read creates), and is a member of
    // its rooms while it reads: nothing else, and no index.
    let statements = stream["Properties"]["Policies"][0]["Statement"]
        .as_sequence()
        .unwrap();
    assert_eq!(statements.len(), 1);
    let mut actions = strings(&statements[0]["Action"]);
    actions.sort();
    assert_eq!(
        actions,
        vec![
            "dynamodb:BatchWriteItem",
            "dynamodb:DeleteItem",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:Query",
            "dynamodb:UpdateItem"
        ]
    );
}

#[test]
fn large_publishes_queue_pages_for_a_deliver_function_with_a_dead_letter_queue() {
    let template = template();
    let resources = &template["Resources"];
    let queue = &resources["DeliveryQueue"]["Properties"];
    assert_eq!(
        tagged(&queue["RedrivePolicy"]["deadLetterTargetArn"], "GetAtt"),
        Some("DeliveryDeadLetterQueue.Arn"),
        "a page that cannot be read ends in the dead-letter queue"
    );
    let deliver = &resources["DeliverFunction"]["Properties"];
    let timeout = deliver["Timeout"].as_u64().unwrap();
    assert!(
        queue["VisibilityTimeout"].as_u64().unwrap() >= 6 * timeout,
        "AWS: visibility at least six times the function's timeout"
    );
    let event = &deliver["Events"]["Pages"];
    assert_eq!(event["Type"], "SQS");
    assert_eq!(
        strings(&event["Properties"]["FunctionResponseTypes"]),
        ["ReportBatchItemFailures"]
    );
    // Only the functions that publish may queue pages.
    assert_eq!(
        functions_sending_to(&template, "DeliveryQueue"),
        ["MessageFunction", "PublishFunction"]
    );
    let globals = &template["Globals"]["Function"]["Environment"]["Variables"];
    assert_eq!(
        tagged(&globals["HERALD_DELIVERY_QUEUE_URL"], "Ref"),
        Some("DeliveryQueue")
    );
}

/// The functions whose policies may send to `queue`.
fn functions_sending_to(template: &Value, queue: &str) -> Vec<String> {
    let mut senders = Vec::new();
    for (name, function) in resources_of(template, "AWS::Serverless::Function") {
        let statements = function["Properties"]["Policies"][0]["Statement"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        let sends = statements.iter().any(|statement| {
            // A statement, or one under `!If [condition, statement, !Ref AWS::NoValue]`.
            let statement = match statement {
                Value::Tagged(tagged) if tagged.tag == "If" => &tagged.value[1],
                plain => plain,
            };
            statement["Action"] == "sqs:SendMessage"
                && tagged(&statement["Resource"], "GetAtt") == Some(&format!("{queue}.Arn"))
        });
        if sends {
            senders.push(name);
        }
    }
    senders.sort();
    senders
}

#[test]
fn webhooks_are_queued_by_the_functions_that_change_connections_and_delivered_by_one() {
    let template = template();
    let resources = &template["Resources"];
    for name in [
        "WebhookQueue",
        "WebhookDeadLetterQueue",
        "WebhookFunction",
        "WebhookSecretAccess",
        "WebhookLogs",
    ] {
        assert_eq!(
            resources[name]["Condition"], "HasWebhooks",
            "{name} exists only with WebhookUrl"
        );
    }
    let queue = &resources["WebhookQueue"]["Properties"];
    assert_eq!(
        tagged(&queue["RedrivePolicy"]["deadLetterTargetArn"], "GetAtt"),
        Some("WebhookDeadLetterQueue.Arn")
    );
    assert_eq!(
        queue["RedrivePolicy"]["maxReceiveCount"].as_u64(),
        Some(u64::from(herald::sinks::webhook::MAX_ATTEMPTS)),
        "one attempt per receive, as many as herald-local makes"
    );
    let webhook = &resources["WebhookFunction"]["Properties"];
    let timeout = template["Globals"]["Function"]["Timeout"].as_u64().unwrap();
    assert!(queue["VisibilityTimeout"].as_u64().unwrap() >= 6 * timeout);
    assert_eq!(
        tagged(
            &webhook["Environment"]["Variables"]["HERALD_WEBHOOK_URL"],
            "Ref"
        ),
        Some("WebhookUrl")
    );
    let event = &webhook["Events"]["Webhooks"];
    assert_eq!(event["Type"], "SQS");
    assert_eq!(
        tagged(&event["Properties"]["Queue"], "GetAtt"),
        Some("WebhookQueue.Arn")
    );
    assert_eq!(
        strings(&event["Properties"]["FunctionResponseTypes"]),
        ["ReportBatchItemFailures"]
    );
    assert_eq!(
        functions_sending_to(&template, "WebhookQueue"),
        [
            "ConnectFunction",
            "DeliverFunction",
            "DisconnectFunction",
            "MessageFunction",
            "PublishFunction"
        ]
    );
    let secret = serde_yaml::to_string(&resources["WebhookSecretAccess"]).unwrap();
    assert!(secret.contains("WebhookFunctionRole") && secret.contains("WebhookSecretArn"));
}

#[test]
fn mqtt_publishes_through_iot_core_and_a_rule_brings_devices_publishes_to_publish() {
    let template = template();
    let resources = &template["Resources"];
    // iot:Publish on the prefix's topics only, for the functions that publish.
    let mut publishers = Vec::new();
    for (name, function) in resources_of(&template, "AWS::Serverless::Function") {
        let policies = serde_yaml::to_string(&function["Properties"]["Policies"]).unwrap();
        if policies.contains("iot:") {
            assert!(
                policies.contains(":topic/${MqttPrefix}/*") && policies.contains("HasMqtt"),
                "{name}: {policies}"
            );
            publishers.push(name);
        }
    }
    publishers.sort();
    assert_eq!(publishers, ["MessageFunction", "PublishFunction"]);
    let globals = serde_yaml::to_string(&template["Globals"]["Function"]["Environment"]).unwrap();
    assert!(
        globals.contains("HERALD_MQTT_URL") && globals.contains("- iot"),
        "{globals}"
    );

    let rule = &resources["DevicePublishRule"];
    assert_eq!(rule["Condition"], "HasDeviceRooms");
    let sql = tagged(&rule["Properties"]["TopicRulePayload"]["Sql"], "Sub").unwrap();
    assert!(
        sql.contains(&format!("topic() AS {}", herald::handlers::DEVICE_TOPIC))
            && sql.contains(&format!(
                "encode(*, 'base64') AS {}",
                herald::handlers::DEVICE_PAYLOAD
            ))
            && sql.ends_with("FROM '${MqttPrefix}/publish/+'"),
        "the rule gives the publish handler the fields it reads: {sql}"
    );
    let actions =
        serde_yaml::to_string(&rule["Properties"]["TopicRulePayload"]["Actions"]).unwrap();
    assert!(actions.contains("PublishFunction.Arn"), "{actions}");
    let permission = &resources["DevicePublishPermission"]["Properties"];
    assert_eq!(permission["Principal"], "iot.amazonaws.com");
    assert_eq!(
        tagged(&permission["SourceArn"], "GetAtt"),
        Some("DevicePublishRule.Arn")
    );
}

#[test]
fn presence_events_are_a_parameter_and_let_disconnect_post_only_when_on() {
    let template = template();
    let parameter = &template["Parameters"]["PresenceEvents"];
    assert_eq!(parameter["Default"], "false", "off unless asked for");
    let globals = &template["Globals"]["Function"]["Environment"]["Variables"];
    assert_eq!(
        tagged(&globals["HERALD_PRESENCE_EVENTS"], "Ref"),
        Some("PresenceEvents")
    );
    // Every function that may post to a room has the Management API: the message function
    // always, the disconnect function (the rooms a connection left) only with events on.
    let functions = resources_of(&template, "AWS::Serverless::Function");
    let (_, disconnect) = functions
        .iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"] == "disconnect")
        .expect("a disconnect function");
    let statements = disconnect["Properties"]["Policies"][0]["Statement"]
        .as_sequence()
        .unwrap();
    let posting: Vec<&Value> = statements
        .iter()
        .filter(|s| {
            serde_yaml::to_string(s)
                .unwrap()
                .contains("execute-api:ManageConnections")
        })
        .collect();
    assert_eq!(posting.len(), 1, "{statements:?}");
    let condition = serde_yaml::to_string(posting[0]).unwrap();
    assert!(condition.contains("HasPresenceEvents"), "{condition}");
}

/// The text under a short-form intrinsic (`!Ref X`, `!GetAtt X.Y`) tagged `tag`.
fn tagged<'a>(value: &'a Value, tag: &str) -> Option<&'a str> {
    match value {
        Value::Tagged(tagged) if tagged.tag == tag => tagged.value.as_str(),
        _ => None,
    }
}
