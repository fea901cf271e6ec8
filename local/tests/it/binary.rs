//! The `herald-local` binary as a user runs it: with no configuration it starts in dev
//! mode on the memory store, prints where it listens and a token that works, and on
//! SIGTERM closes every client with 1001 and exits cleanly.

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::{Client, PATIENCE};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn dev_mode_then_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald-local"))
        .args(["--port", "0"])
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut url, mut token) = (None, None);
    while url.is_none() {
        let line = tokio::time::timeout(PATIENCE, stdout.next_line())
            .await
            .expect("start-up output in time")
            .unwrap()
            .expect("more output");
        if let Some(rest) = line.strip_prefix("herald-local listening on ") {
            url = Some(rest.trim().to_owned());
        } else if let Some((_, t)) = line.split_once("24 h): ") {
            token = Some(t.trim().to_owned());
        }
    }
    let (url, token) = (
        url.unwrap(),
        token.expect("a dev token is printed before the address"),
    );
    let warning = tokio::time::timeout(PATIENCE, stderr.next_line())
        .await
        .expect("a warning in time")
        .unwrap()
        .unwrap_or_default();
    assert!(warning.contains("DEV MODE"), "{warning}");
    assert!(
        !warning.contains('\u{1b}'),
        "no colour codes when stderr is a pipe: {warning:?}"
    );
    let demo = tokio::time::timeout(PATIENCE, stdout.next_line())
        .await
        .expect("the demo page's address in time")
        .unwrap()
        .unwrap_or_default();
    let origin = url.trim_start_matches("ws://").split('/').next().unwrap();
    assert_eq!(demo.trim(), format!("demo page: http://{origin}/"));

    let mut client = Client::open(&format!("{url}?token={token}")).await.unwrap();
    client.subscribe("orders").await;
    assert_eq!(client.ask(json!({"action":"whoami"})).await["user"], "dev");

    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(client.closed().await.0, 1001);
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("it exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn history_flags_win_over_their_variables() {
    let (_child, addr) =
        common::spawn_binary(&["--history-size", "3"], &[("HERALD_HISTORY_SIZE", "0")]).await;
    let gw = common::Gateway::at(addr);
    for n in 1..=5 {
        let answer = gw.invoke(json!({"room":"orders","data":n})).await.unwrap();
        assert_eq!(answer["offset"], n, "{answer}");
    }
    let mut client = gw.connect("alice", &["orders"], &[]).await;
    let kept = client
        .ask(json!({"action":"history","room":"orders"}))
        .await;
    assert_eq!(kept["notifications"].as_array().unwrap().len(), 3, "{kept}");

    let (_child, addr) = common::spawn_binary(&["--history-ttl-secs", "0"], &[]).await;
    let answer = common::Gateway::at(addr)
        .invoke(json!({"room":"orders","data":1}))
        .await
        .unwrap();
    assert_eq!(answer.get("offset"), None, "0 turns history off: {answer}");
}

/// What `herald-local ARGS --help` prints, as (argument, its text) pairs: each entry starts
/// with an indented `-…` or `<…>` and runs to the next.
fn help_entries(args: &[&str]) -> Vec<(String, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald-local"))
        .args(args)
        .arg("--help")
        .output()
        .expect("herald-local --help runs");
    assert!(out.status.success(), "{out:?}");
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let trimmed = line.trim_start();
        let starts_entry =
            line.starts_with("  ") && (trimmed.starts_with('-') || trimmed.starts_with('<'));
        if starts_entry {
            let (name, text) = trimmed
                .split_once("  ")
                .map_or((trimmed, ""), |(name, text)| (name, text));
            entries.push((name.trim().to_owned(), text.to_owned()));
        } else if let Some((_, text)) = entries.last_mut() {
            if line.starts_with(' ') {
                text.push(' ');
                text.push_str(trimmed);
            } else {
                // A section heading ends the entry before it.
                entries.push((String::new(), String::new()));
            }
        }
    }
    entries.retain(|(name, _)| !name.is_empty());
    entries
}

/// The text an entry has once its `[env: …]` and `[default: …]` are taken out.
fn description(text: &str) -> String {
    let mut rest = text.to_owned();
    for tag in ["[env: ", "[default: ", "[possible values: "] {
        while let Some(start) = rest.find(tag) {
            let end = rest[start..]
                .find(']')
                .map_or(rest.len(), |e| start + e + 1);
            rest.replace_range(start..end, "");
        }
    }
    rest.trim().to_owned()
}

#[test]
fn help_names_every_flags_variable_and_default_and_describes_every_argument() {
    let served = help_entries(&[]);
    assert!(served.len() > 20, "{served:?}");
    for (name, text) in &served {
        if name.starts_with("-h") || name.starts_with("-V") {
            continue;
        }
        assert!(
            text.contains("[env: HERALD_"),
            "{name} names its variable as clap does: {text}"
        );
        assert!(
            !description(text).contains("[default: HERALD_"),
            "{name}'s default is a value, not a variable: {text}"
        );
        assert!(!description(text).is_empty(), "{name} is described");
    }
    for sub in ["token", "listen", "publish"] {
        let entries = help_entries(&[sub]);
        assert!(!entries.is_empty(), "{sub}");
        for (name, text) in entries {
            assert!(
                !description(&text).is_empty(),
                "`{sub}` {name} is described: {text:?}"
            );
        }
    }
}
