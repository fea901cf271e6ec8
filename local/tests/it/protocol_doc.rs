//! `docs/protocol.md` against the code: every client action, error code, close code and
//! default limit the gateway uses is documented there, the README and the JavaScript client
//! point to it, and nothing in the repository points outside it for the protocol.

use std::path::{Path, PathBuf};
use std::process::Command;

use herald::limits::{DEFAULT_MAX_CONNECTIONS_PER_USER, DEFAULT_MAX_ROOMS_PER_CONNECTION};
use herald::protocol::{CLIENT_ACTIONS, ErrorCode, MAX_HISTORY_LIMIT, MAX_ROOM_LEN};
use herald_local::close_code;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_action_error_and_close_code_is_documented() {
    let doc = read("docs/protocol.md");
    for action in CLIENT_ACTIONS {
        assert!(
            doc.contains(&format!("{{\"action\":\"{action}\"")),
            "action {action}"
        );
    }
    for code in ErrorCode::ALL {
        assert!(
            doc.contains(&format!("| `{}` |", code.as_str())),
            "error code {code:?}"
        );
    }
    let sent = [
        close_code::NORMAL,
        close_code::GOING_AWAY,
        close_code::PROTOCOL_ERROR,
        close_code::UNSUPPORTED_DATA,
        close_code::ABNORMAL,
        close_code::INVALID_PAYLOAD,
        close_code::POLICY_VIOLATION,
        close_code::MESSAGE_TOO_BIG,
    ];
    for code in sent {
        assert!(doc.contains(&format!("| `{code}` |")), "close code {code}");
    }
    for (what, figure) in [
        (
            "rooms per connection",
            DEFAULT_MAX_ROOMS_PER_CONNECTION.to_string(),
        ),
        (
            "connections per user",
            DEFAULT_MAX_CONNECTIONS_PER_USER.to_string(),
        ),
        ("history limit", "1,000".to_owned()),
        (
            "outbound queue",
            format!(
                "| 1,024 and {} KiB |",
                herald_local::DEFAULT_OUTBOUND_QUEUE_BYTES / 1024
            ),
        ),
        (
            "room name length",
            format!("1 to {MAX_ROOM_LEN} characters"),
        ),
    ] {
        assert!(doc.contains(&figure), "{what}: {figure}");
    }
    assert_eq!(MAX_HISTORY_LIMIT, 1_000, "the figure above");
    assert_eq!(
        herald_local::DEFAULT_OUTBOUND_QUEUE,
        1_024,
        "the figure above"
    );
}

#[test]
fn the_readme_and_the_client_point_to_it_and_nothing_points_outside() {
    assert!(read("README.md").contains("(docs/protocol.md)"));
    assert!(read("clients/js/herald-client.js").contains("docs/protocol.md"));
    let files = Command::new("git")
        .args(["grep", "-l", "CONTRACT\\.md"])
        .current_dir(root())
        .output()
        .expect("git runs");
    let listed = String::from_utf8_lossy(&files.stdout);
    let offenders: Vec<&str> = listed
        .lines()
        .filter(|f| !f.ends_with("protocol_doc.rs"))
        .collect();
    assert!(
        offenders.is_empty(),
        "files that point outside: {offenders:?}"
    );
}
